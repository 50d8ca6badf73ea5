"""Tests of parallel-beam CT: the projector against scikit-image and closed forms, FBP against
``iradon``, the phantoms, the image-derived slices and the CT context/target split."""

import math

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from skimage.color import rgb2gray
from skimage.data import shepp_logan_phantom
from skimage.transform import iradon, radon, resize
from torch.func import functional_call, grad, vmap

from genfield.datasets.batch import ProjectionLayout
from genfield.datasets.ct import (
    CTSignal,
    CTSplit,
    PhantomDataset,
    SinogramImageDataset,
    disc_mask,
    rasterize_ellipses,
    shepp_logan_ellipses,
)
from genfield.datasets.images import ImageFolder
from genfield.errors import InputError
from genfield.forward import build_forward_map
from genfield.forward.ct import (
    ParallelBeamProjection,
    as_sinogram,
    ct_queries,
    fbp,
    image_field,
    project_image,
)


def phantom(n: int) -> np.ndarray:
    return resize(shepp_logan_phantom(), (n, n), anti_aliasing=True)


def rel_err(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def psnr_db(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(10 * np.log10(1.0 / np.mean((a - b) ** 2)))


DEGREES = np.linspace(0.0, 180.0, 45, endpoint=False) + 1.7  # many angles, none a round number


# --------------------------------------------------------------------------------------------------
# Projector
# --------------------------------------------------------------------------------------------------


def test_ct_queries_are_angle_major_bin_centres():
    angles = torch.tensor([[0.1, 0.5, 2.0], [0.3, 0.4, 3.0]])
    q = ct_queries(angles, 4)
    assert q.shape == (2, 12, 2)
    grid = q.reshape(2, 3, 4, 2)
    torch.testing.assert_close(grid[..., 0], angles[..., None].expand(2, 3, 4))
    torch.testing.assert_close(grid[0, 1, :, 1], torch.tensor([-0.75, -0.25, 0.25, 0.75]))
    values = torch.arange(24.0).reshape(2, 12, 1)
    assert as_sinogram(values, 4).shape == (2, 1, 3, 4)
    assert as_sinogram(values, 4)[1, 0, 2, 3] == 23.0
    with pytest.raises(InputError, match="n_detectors"):
        ct_queries(angles, 0)


@pytest.mark.parametrize("n", [65, 129])
def test_image_projector_reproduces_skimage_radon_for_odd_sizes(n):
    image = phantom(n)
    expected = radon(image, theta=DEGREES, circle=True).T * (2.0 / n)  # (A, D), domain units
    queries = ct_queries(torch.tensor(np.deg2rad(DEGREES)), n)
    image_t = torch.tensor(image)[None]
    ours = project_image(image_t, queries, n_samples=n)[0, :, 0].reshape(len(DEGREES), n)
    assert rel_err(ours, expected) < 1e-9  # same rays, same bilinear samples, same midpoint rule
    finer = project_image(image_t, queries, n_samples=3 * n)[0, :, 0].reshape(len(DEGREES), n)
    assert rel_err(finer, expected) < 0.02


def test_image_projector_matches_skimage_for_even_size_with_its_centre():
    n = 64
    image = phantom(n)
    expected = radon(image, theta=DEGREES, circle=True).T * (2.0 / n)
    theta = torch.tensor(np.deg2rad(DEGREES))
    queries = ct_queries(theta, n).clone()
    # skimage rotates about pixel n // 2, half a pixel from the domain centre (module docstring)
    queries[:, 1] -= (1 - torch.cos(queries[:, 0]) + torch.sin(queries[:, 0])) / n
    image_t = torch.tensor(image)[None]
    ours = project_image(image_t, queries, n_samples=2 * n)[0, :, 0].reshape(len(DEGREES), n)
    assert rel_err(ours, expected) < 0.02
    unshifted = project_image(image_t, ct_queries(theta, n), n_samples=2 * n)[0, :, 0]
    assert rel_err(unshifted.reshape(len(DEGREES), n), expected) > 0.02  # the shift matters


def gaussian_blob(centre, sigma):
    centre = torch.tensor(centre, dtype=torch.float64)

    def field_fn(points):
        r2 = (points - centre).square().sum(-1, keepdim=True)
        return torch.cat([torch.exp(-r2 / (2 * sigma**2)), 2 * torch.exp(-r2 / (2 * sigma**2))], -1)

    return field_fn


@pytest.mark.parametrize("support", ["disc", "square"])
def test_field_projector_matches_radon_transform_of_a_gaussian(support):
    # f = exp(-|x - c|^2 / 2 s^2) has R f(theta, t) = s sqrt(2 pi) exp(-(t - c . e_perp)^2 / 2 s^2)
    centre, sigma = (0.2, -0.3), 0.12
    theta = torch.linspace(0, math.pi, 17, dtype=torch.float64)[:-1]
    queries = ct_queries(theta, 41)
    out = ParallelBeamProjection(n_samples=256, support=support)(
        gaussian_blob(centre, sigma), queries
    )
    e_perp = torch.stack([-torch.sin(queries[:, 0]), torch.cos(queries[:, 0])], -1)
    offset = queries[:, 1] - e_perp @ torch.tensor(centre, dtype=torch.float64)
    expected = sigma * math.sqrt(2 * math.pi) * torch.exp(-offset.square() / (2 * sigma**2))
    assert out.shape == (16 * 41, 2)
    torch.testing.assert_close(out[:, 0], expected, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(out[:, 1], 2 * expected, atol=1e-6, rtol=1e-6)


def test_support_masks_disc_and_square_chords():
    ones = lambda p: torch.ones(*p.shape[:-1], 1, dtype=p.dtype)  # noqa: E731
    t = torch.linspace(-0.95, 0.95, 9, dtype=torch.float64)
    q0 = torch.stack([torch.full_like(t, 0.3), t], -1)
    disc = ParallelBeamProjection(n_samples=4000, support="disc")(ones, q0)[:, 0]
    torch.testing.assert_close(disc, 2 * torch.sqrt(1 - t**2), atol=2e-3, rtol=0)
    diagonal = torch.tensor([[math.pi / 4, 0.0], [3 * math.pi / 4, 0.5]], dtype=torch.float64)
    square = ParallelBeamProjection(n_samples=4000, support="square")(ones, diagonal)[:, 0]
    # the diagonal chord of [-1, 1]^2 is 2 sqrt 2; at offset t it is 2 sqrt 2 - 2 |t|
    torch.testing.assert_close(
        square,
        torch.tensor([2 * math.sqrt(2), 2 * math.sqrt(2) - 1.0], dtype=torch.float64),
        atol=3e-3,
        rtol=0,
    )


def ellipse_field(ellipses):
    """The exact phantom as a field: the sum of the values of the ellipses holding a point."""
    value, a, b, x0, y0, phi = ellipses.unbind(-1)

    def field_fn(points):
        dx, dy = points[..., 1:2] - x0, -points[..., 0:1] - y0  # textbook frame: x = col, y = -row
        u = dx * torch.cos(phi) + dy * torch.sin(phi)
        v = -dx * torch.sin(phi) + dy * torch.cos(phi)
        return (((u / a).square() + (v / b).square() <= 1) * value).sum(-1, keepdim=True)

    return field_fn


def test_projections_of_shepp_logan_match_its_analytic_sinogram():
    # Line integral of a filled ellipse (value v, semi-axes a, b, centre (x0, y0), angle phi) in the
    # textbook frame: 2 v a b sqrt(alpha^2 - u^2) / alpha^2, alpha^2 = a^2 cos^2(theta - phi)
    # + b^2 sin^2(theta - phi), u = t - x0 cos theta - y0 sin theta (Kak & Slaney, eq. 3.11).
    ellipses = shepp_logan_ellipses()
    theta = torch.linspace(0, math.pi, 7, dtype=torch.float64)[:-1]
    n = 96
    queries = ct_queries(theta, n)
    th, t = queries[:, 0:1], queries[:, 1:2]
    value, a, b, x0, y0, phi = ellipses.unbind(-1)
    alpha2 = (a * torch.cos(th - phi)).square() + (b * torch.sin(th - phi)).square()
    u = t - (x0 * torch.cos(th) + y0 * torch.sin(th))
    chord = 2 * a * b * torch.sqrt((alpha2 - u.square()).clamp_min(0)) / alpha2
    analytic = (value * chord).sum(-1)
    # the field projector on the exact (discontinuous) phantom converges at the midpoint-rule rate
    exact = ParallelBeamProjection(n_samples=2048)(ellipse_field(ellipses), queries)[:, 0]
    assert rel_err(exact, analytic) < 3e-3
    # the pixel projector sees the rasterised phantom (antialiased edges)
    image = rasterize_ellipses(ellipses, n, supersample=4, clip=False).double()
    ours = project_image(image[None], queries, n_samples=2 * n)[0, :, 0]
    assert rel_err(ours, analytic) < 0.035
    flipped = project_image(image.flip(0)[None], queries, n_samples=2 * n)[0, :, 0]
    assert rel_err(flipped, analytic) > 0.1  # orientation is really tested


class LinearField(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.inner = torch.nn.Linear(2, 8)
        self.outer = torch.nn.Linear(8, 1)

    def forward(self, points):
        return self.outer(torch.tanh(self.inner(points)))


def test_gradients_reach_field_parameters_and_match_finite_differences():
    torch.manual_seed(0)
    net = LinearField().double()
    queries = ct_queries(torch.tensor([0.2, 1.1, 2.5], dtype=torch.float64), 5)
    projector = ParallelBeamProjection(n_samples=16)
    names = [name for name, _ in net.named_parameters()]

    def loss(*params):
        values = dict(zip(names, params, strict=True))
        return projector(lambda x: functional_call(net, values, (x,)), queries).square().sum()

    params = tuple(p.detach().clone().requires_grad_() for p in net.parameters())
    assert torch.autograd.gradcheck(loss, params)
    grads = torch.autograd.grad(loss(*params), params)
    assert all(g.abs().sum() > 0 for g in grads)


def test_projector_runs_under_vmap_over_signals():
    torch.manual_seed(1)
    net = LinearField()
    n_signals = 3
    params = {
        k: v.detach() + 0.1 * torch.randn(n_signals, *v.shape) for k, v in net.named_parameters()
    }
    queries = torch.stack([ct_queries(torch.rand(4) * math.pi, 6) for _ in range(n_signals)])
    projector = build_forward_map("ct", n_samples=32)
    assert isinstance(projector, ParallelBeamProjection) and projector.name == "ct"

    def one(p, q):
        return projector(lambda x: functional_call(net, p, (x,)), q)

    batched = vmap(one)(params, queries)
    looped = torch.stack(
        [one({k: v[s] for k, v in params.items()}, queries[s]) for s in range(n_signals)]
    )
    assert batched.shape == (n_signals, 24, 1)
    torch.testing.assert_close(batched, looped)

    # per-signal gradients (an inner-loop step over a meta-batch): vmap of grad equals autograd
    def loss(p, q):
        return one(p, q).square().sum()

    grads = vmap(grad(loss))(params, queries)
    for s in range(n_signals):
        p = {k: v[s].clone().requires_grad_() for k, v in params.items()}
        expected = torch.autograd.grad(loss(p, queries[s]), list(p.values()))
        for name, g in zip(p, expected, strict=True):
            torch.testing.assert_close(grads[name][s], g)


def test_projector_rejects_bad_options():
    with pytest.raises(InputError, match="n_samples"):
        ParallelBeamProjection(n_samples=0)
    with pytest.raises(InputError, match="support"):
        ParallelBeamProjection(support="circle")
    with pytest.raises(InputError, match="images"):
        project_image(torch.zeros(4, 4), ct_queries(torch.zeros(1), 4))


# --------------------------------------------------------------------------------------------------
# Filtered back-projection
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("filter_name", ["ramp", "hann", "shepp-logan"])
def test_fbp_matches_skimage_iradon(filter_name):
    n = 65
    image = phantom(n)
    sk_sino = radon(image, theta=DEGREES, circle=True)
    expected = iradon(sk_sino, theta=DEGREES, circle=True, filter_name=filter_name)
    ours = fbp(
        torch.tensor(sk_sino.T * 2 / n), torch.tensor(np.deg2rad(DEGREES)), filter_name=filter_name
    ).numpy()
    assert ours.shape == (n, n)
    rows, cols = np.mgrid[:n, :n] - n // 2
    inner = rows**2 + cols**2 < (n // 2 - 1) ** 2  # skimage's circle is a pixel narrower
    assert rel_err(ours[inner], expected[inner]) < 1e-9
    assert psnr_db(ours, expected) > 30


def test_fbp_from_many_angles_recovers_the_phantom_in_a_batch():
    n = 64
    images = torch.stack([torch.tensor(phantom(n)), torch.tensor(phantom(n)).flip(1)])
    angles = torch.linspace(0, math.pi, 181, dtype=torch.float64)[:-1]
    sino = as_sinogram(project_image(images, ct_queries(angles, n), n_samples=2 * n), n)[:, 0]
    recon = fbp(sino, angles)
    assert recon.shape == (2, n, n)
    truth = images * disc_mask(n, torch.float64)
    assert psnr_db(recon[0], truth[0]) > 27 and psnr_db(recon[1], truth[1]) > 27
    assert psnr_db(fbp(sino, angles, filter_name="hann")[0], truth[0]) > 22  # smoother, blurrier
    few = fbp(sino[:, ::20], angles[::20])  # 9 angles: streaks
    assert psnr_db(few[0], truth[0]) < psnr_db(recon[0], truth[0]) - 5
    per_signal = fbp(sino, angles.expand(2, -1))  # (S, A) angles
    torch.testing.assert_close(per_signal, recon)
    with pytest.raises(InputError, match="fbp"):
        fbp(sino, angles[:5])
    with pytest.raises(InputError, match="filter"):
        fbp(sino, angles, filter_name="gauss")


# --------------------------------------------------------------------------------------------------
# Phantoms and slices from images
# --------------------------------------------------------------------------------------------------


def test_shepp_logan_raster_has_skimage_orientation():
    ours = rasterize_ellipses(shepp_logan_ellipses(), 100, supersample=4).numpy()
    sk = resize(shepp_logan_phantom(), (100, 100), anti_aliasing=True)
    assert np.abs(ours - sk).mean() < 0.01
    assert np.abs(ours[::-1] - sk).mean() > 0.03


def test_phantom_dataset_is_lazy_deterministic_and_in_the_disc():
    a, b = PhantomDataset(5, resolution=48, seed=3), PhantomDataset(5, resolution=48, seed=3)
    assert len(a) == 5
    first = a[2]
    assert isinstance(first, CTSignal) and first.image.shape == (48, 48, 1)
    assert first.image.dtype == torch.float32
    torch.testing.assert_close(first.image, b[2].image)
    torch.testing.assert_close(a[-1].image, a[4].image)
    assert first.name == a[2].name != a[3].name
    assert (first.image - a[3].image).abs().max() > 0.05
    other = PhantomDataset(5, resolution=48, seed=4)[2].image
    assert (first.image - other).abs().max() > 0.05
    for signal in (a[0], a[1], a[4]):
        assert signal.image.min() >= 0 and signal.image.max() <= 1
        assert signal.image.std() > 0.1
        assert (signal.image[..., 0] * (1 - disc_mask(48))).abs().max() == 0
    # the same phantom at another resolution is the same object
    coarse = PhantomDataset(5, resolution=24, seed=3)[2].image
    pooled = torch.nn.functional.avg_pool2d(first.image[None, ..., 0], 2)[0]
    assert (coarse[..., 0] - pooled).abs().mean() < 0.02
    with pytest.raises(IndexError):
        a[5]


def test_sinogram_image_dataset_from_image_files(tmp_path):
    rng = np.random.default_rng(0)
    rgb = (rng.uniform(size=(40, 50, 3)) * 255).astype(np.uint8)
    iio.imwrite(tmp_path / "a.png", rgb)
    iio.imwrite(tmp_path / "b.png", rgb[::-1])
    folder = ImageFolder(tmp_path, size=None)
    data = SinogramImageDataset(folder, resolution=40)
    assert len(data) == 2
    signal = data[0]
    assert signal.name == "a.png" and signal.image.shape == (40, 40, 1)
    grey = rgb2gray(rgb[:, 5:45] / 255.0)  # centre crop of the 50 columns
    expected = torch.tensor(grey, dtype=torch.float32) * disc_mask(40)
    torch.testing.assert_close(signal.image[..., 0], expected, atol=1e-5, rtol=0)
    small = SinogramImageDataset(folder, resolution=20, mask_disc=False)[1]
    assert small.image.shape == (20, 20, 1) and small.image[0, 0, 0] > 0


def test_sinogram_image_dataset_rejects_nan_naming_the_signal():
    images = [torch.rand(8, 8, 3), torch.rand(8, 8, 3)]
    images[1][2, 3, 0] = float("nan")
    data = SinogramImageDataset(images, name="scan")
    assert data[0].image.shape == (8, 8, 1)
    with pytest.raises(InputError, match="scan-00001"):
        data[1]
    with pytest.raises(InputError, match="crop"):
        SinogramImageDataset([torch.rand(8, 6)])[0]


# --------------------------------------------------------------------------------------------------
# Context / target split
# --------------------------------------------------------------------------------------------------


def test_ct_split_builds_projection_batches():
    n = 33
    signals = [PhantomDataset(3, resolution=n, seed=0)[i] for i in range(3)]
    split = CTSplit(n_context_angles=6, n_target_angles=10, n_samples=n)
    batch = split(signals, torch.Generator().manual_seed(7))
    assert batch.kind == "ct" and isinstance(batch.forward_map, ParallelBeamProjection)
    assert batch.context.queries.shape == (3, 6 * n, 2)
    assert batch.context.values.shape == (3, 6 * n, 1)
    assert batch.target.queries.shape == (3, 10 * n, 2)
    assert batch.ground_truth.shape == (3, n, n, 1)
    extras = batch.extras
    assert extras["context_angles"].shape == (3, 6) and extras["target_angles"].shape == (3, 10)
    assert batch.context.layout == ProjectionLayout(6, n) and batch.target.layout == ProjectionLayout(10, n)
    assert extras["resolution"] == n and "n_detectors" not in extras  # the layout's, not repeated
    assert [m["name"] for m in batch.metadata] == [s.name for s in signals]
    angles = extras["context_angles"]
    assert (angles >= 0).all() and (angles < math.pi).all() and (angles.diff(dim=-1) >= 0).all()
    assert not torch.equal(angles[0], angles[1])  # random angles per signal
    torch.testing.assert_close(extras["target_angles"][1], torch.arange(10) * math.pi / 10)
    # angle-major values are skimage's sinogram at the context angles (odd size: exact geometry)
    sino = batch.context.values[1, :, 0].reshape(6, n).numpy()
    image = signals[1].image[..., 0].double().numpy()
    expected = radon(image, theta=np.rad2deg(angles[1].double().numpy()), circle=True).T * 2 / n
    assert rel_err(sino, expected) < 1e-5
    # the forward map applied to the ground truth's interpolant reproduces the observations
    predicted = batch.forward_map(image_field(batch.ground_truth), batch.target.queries)
    torch.testing.assert_close(predicted, batch.target.values)


def test_ct_split_is_deterministic_and_validates():
    signals = [PhantomDataset(2, resolution=16, seed=1)[i] for i in range(2)]
    split = CTSplit(n_context_angles=4, n_detectors=12, n_target_angles=5, target_angles="random")
    one = split(signals, torch.Generator().manual_seed(3))
    two = split(signals, torch.Generator().manual_seed(3))
    three = split(signals, torch.Generator().manual_seed(4))
    for a, b in ((one.context, two.context), (one.target, two.target)):
        torch.testing.assert_close(a.queries, b.queries)
        torch.testing.assert_close(a.values, b.values)
    assert not torch.equal(one.context.queries, three.context.queries)
    assert one.context.queries.shape == (2, 4 * 12, 2) and one.context.layout.n_detectors == 12
    even = CTSplit(n_context_angles=4, context_angles="even", n_target_angles="all")(signals)
    torch.testing.assert_close(
        even.extras["context_angles"], (torch.arange(4) * math.pi / 4).expand(2, 4)
    )
    assert even.target.queries.shape == (2, 16 * 16, 2)  # default: D = resolution = n angles
    with pytest.raises(InputError, match="equal shapes"):
        split([signals[0], PhantomDataset(1, resolution=8)[0]])
    bad = CTSignal(signals[0].image.clone(), "broken")
    bad.image[3, 3, 0] = float("inf")
    with pytest.raises(InputError, match="broken"):
        split([bad])
    for kwargs in (
        {"context_angles": "spiral"},
        {"n_context_angles": 0},
        {"n_target_angles": "most"},
        {"target": "pixels"},
        {"support": "ring"},
    ):
        with pytest.raises(InputError):
            CTSplit(**kwargs)
