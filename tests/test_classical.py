"""Classical baselines against their library calls and independent computations on tiny cases."""

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from scipy.stats import multivariate_normal
from skimage.restoration import inpaint_biharmonic
from skimage.transform import iradon, iradon_sart, radon

import genfield.classical as classical
from genfield.classical.gaussian import (
    NOISE_GRID,
    GaussianPrior,
    gaussian_posterior,
    image_operator,
    linear_operator,
    noise_by_marginal_likelihood,
    shrunk_covariance,
)
from genfield.datasets.batch import Observations, ProjectionLayout, SignalBatch
from genfield.datasets.ct import CTSignal, CTSplit, PhantomDataset
from genfield.datasets.images import ImageSignal, ImageSplit
from genfield.datasets.views import ViewSignal, ViewSplit, look_at
from genfield.errors import InputError
from genfield.evaluation import as_images, dense_queries
from genfield.forward import PointMap
from genfield.forward.ct import project_image
from genfield.metrics import psnr


def ct_batch(
    n: int, n_angles: int, signals: int = 2, seed: int = 0, skimage_circle: bool = False
) -> SignalBatch:
    """Even-angle projections of phantoms; ``skimage_circle`` zeroes them beyond ``n // 2 - 1``
    pixels from the centre, so that their bilinear interpolant vanishes inside both skimage's
    reconstruction circle and genfield's disc (where the two would otherwise cut it differently)."""
    phantoms = [PhantomDataset(signals, n, seed=seed)[i] for i in range(signals)]
    if skimage_circle:
        rows, cols = np.mgrid[:n, :n] - n // 2
        mask = torch.tensor(rows**2 + cols**2 <= (n // 2 - 1) ** 2, dtype=torch.float32)[..., None]
        phantoms = [CTSignal(p.image * mask, p.name) for p in phantoms]
    split = CTSplit(n_context_angles=n_angles, context_angles="even", n_target_angles=4)
    return split(phantoms, torch.Generator().manual_seed(0))


def image_batch(images: torch.Tensor, fraction: float, seed: int = 0) -> SignalBatch:
    signals = [ImageSignal(image, f"img{i}", tuple(image.shape[:2])) for i, image in enumerate(images)]
    return ImageSplit(context_fraction=fraction)(signals, torch.Generator().manual_seed(seed))


def inner_disc(n: int) -> np.ndarray:
    rows, cols = np.mgrid[:n, :n] - n // 2
    return rows**2 + cols**2 < (n // 2 - 1) ** 2  # skimage's reconstruction circle is a pixel narrower


def relative(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


# --------------------------------------------------------------------------------------------------
# CT: SART and FBP through genfield's geometry equal skimage's own pipeline on odd sizes
# --------------------------------------------------------------------------------------------------


def test_sart_from_genfield_projections_equals_the_skimage_pipeline_on_an_odd_image():
    batch = ct_batch(25, 6, skimage_circle=True)
    prediction = classical.SART(iterations=3).reconstruct(batch)
    ours = as_images(prediction.mean, batch.ground_truth)[..., 0].numpy()
    degrees = np.degrees(batch.extras["context_angles"][0].double().numpy())
    for s in range(batch.num_signals):
        image = batch.ground_truth[s, ..., 0].double().numpy()
        expected = None
        for _ in range(3):
            expected = iradon_sart(
                radon(image, theta=degrees, circle=True), theta=degrees, image=expected, clip=(0, np.inf)
            )
        assert relative(ours[s], expected) < 1e-5
        assert ours[s].min() >= 0


def test_sart_geometry_shift_on_even_images_recovers_the_phantom_better():
    """For even N skimage's centre is half a pixel off; the projection shifts realign it."""
    batch = ct_batch(32, 16)
    ours = as_images(classical.SART(iterations=5).reconstruct(batch).mean, batch.ground_truth)
    sinogram = batch.context.values[0, :, 0].reshape(16, 32).double().numpy().T * 16
    degrees = np.degrees(batch.extras["context_angles"][0].double().numpy())
    unshifted = None
    for _ in range(5):
        unshifted = iradon_sart(sinogram, theta=degrees, image=unshifted, clip=(0, np.inf))
    truth = batch.ground_truth[:1]
    unshifted = torch.as_tensor(unshifted, dtype=torch.float32)[None, ..., None]
    assert psnr(ours[:1].clamp(0, 1), truth) > psnr(unshifted.clamp(0, 1), truth) + 3


def test_fbp_baseline_equals_iradon_of_radon_inside_the_disc():
    batch = ct_batch(25, 8, skimage_circle=True)
    ours = as_images(classical.FBP().reconstruct(batch).mean, batch.ground_truth)[..., 0].numpy()
    degrees = np.degrees(batch.extras["context_angles"][0].double().numpy())
    inner = inner_disc(25)
    for s in range(batch.num_signals):
        image = batch.ground_truth[s, ..., 0].double().numpy()
        expected = iradon(radon(image, theta=degrees, circle=True), theta=degrees, circle=True)
        assert relative(ours[s][inner], expected[inner]) < 1e-5


def test_ct_baselines_read_the_detector_count_from_the_context_layout():
    batch = CTSplit(n_context_angles=3, context_angles="even", n_detectors=11, n_target_angles=2)(
        [CTSignal(PhantomDataset(1, 9, seed=0)[0].image, "p")]
    )
    assert classical.FBP().reconstruct(batch).mean.shape == (1, 81, 1)  # 11 bins, a 9 x 9 slice
    context = batch.context
    for layout in (None, ProjectionLayout(11, 3)):  # none, or one that is not these 3 x 11 values
        batch.context = Observations(context.queries, context.values, layout, check=False)
        with pytest.raises(InputError, match="ProjectionLayout" if layout is None else "disagrees"):
            classical.FBP().reconstruct(batch)
    batch.context = Observations(context.queries[:, :22], context.values[:, :22], ProjectionLayout(2, 11))
    with pytest.raises(InputError, match="3 context_angles"):  # the angles are of the 3 projections
        classical.FBP().reconstruct(batch)


def test_ct_baselines_predict_at_the_dense_queries():
    batch = ct_batch(15, 4)
    queries, _ = dense_queries(batch)
    for name in ("fbp", "sart", "gaussian-prior", "mean"):
        baseline = classical.build_baseline(name).fit(PhantomDataset(12, 15, seed=5))
        assert baseline.reconstruct(batch).mean.shape == (*queries.shape[:2], 1)


# --------------------------------------------------------------------------------------------------
# Images: biharmonic inpainting and the mean image
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("channels", [1, 3])
def test_biharmonic_equals_inpaint_biharmonic_on_the_context_pixels(channels):
    images = torch.rand(2, 12, 12, channels, generator=torch.Generator().manual_seed(1))
    batch = image_batch(images, 0.3)
    ours = as_images(classical.Biharmonic().reconstruct(batch).mean, images).numpy()
    for s in range(2):
        mask = np.ones(144, dtype=bool)
        mask[batch.extras["context_index"][s].numpy()] = False  # True where unknown
        mask = mask.reshape(12, 12)
        image = images[s].double().numpy()
        image = np.where(mask[..., None], 0.0, image)  # what the baseline may not see is not there
        if channels == 1:
            expected = inpaint_biharmonic(image[..., 0], mask)[..., None]
        else:
            expected = inpaint_biharmonic(image, mask, channel_axis=-1)
        np.testing.assert_allclose(ours[s], expected, atol=1e-6)
        np.testing.assert_allclose(ours[s][~mask], images[s].numpy()[~mask], atol=1e-6)


def test_mean_signal_is_the_mean_training_image():
    train = [ImageSignal(torch.full((4, 4, 1), float(v)), f"{v}", (4, 4)) for v in (0.2, 0.4, 0.9)]
    batch = image_batch(torch.rand(2, 4, 4, 1), 0.5)
    prediction = classical.MeanSignal().fit(train).reconstruct(batch)
    torch.testing.assert_close(prediction.mean, torch.full((2, 16, 1), 0.5))


# --------------------------------------------------------------------------------------------------
# The linear Gaussian prior
# --------------------------------------------------------------------------------------------------


def test_shrinkage_coefficient_matches_a_slow_reference():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(7, 5)) @ rng.normal(size=(5, 5))
    mean, cov, coefficient = shrunk_covariance(torch.tensor(x))
    n, d = x.shape
    xc = x - x.mean(0)
    w = np.einsum("ki,kj->kij", xc, xc)
    s = w.sum(0) / (n - 1)
    var_s = n / (n - 1) ** 3 * ((w - w.mean(0)) ** 2).sum(0)
    off = ~np.eye(d, dtype=bool)
    expected = min(1.0, var_s[off].sum() / (s[off] ** 2).sum())
    assert 0 < expected < 1
    assert coefficient == pytest.approx(expected, rel=1e-10)
    np.testing.assert_allclose(cov.numpy(), np.where(off, (1 - expected) * s, s), rtol=1e-10)
    np.testing.assert_allclose(mean.numpy(), x.mean(0))


def information_form(a, y, mu, sigma, noise):
    """The posterior of x given y = A x + e by its precision (an independent route)."""
    precision = np.linalg.inv(sigma) + a.T @ a / noise
    cov = np.linalg.inv(precision)
    mean = cov @ (np.linalg.solve(sigma, mu) + a.T @ y / noise)
    return mean, np.diag(cov)


def test_gaussian_posterior_matches_the_information_form():
    rng = np.random.default_rng(2)
    d, n_obs = 9, 4
    root = rng.normal(size=(d, d))
    sigma, mu = root @ root.T / d + 0.1 * np.eye(d), rng.normal(size=d)
    a = rng.normal(size=(2, n_obs, d))
    y = rng.normal(size=(2, n_obs))
    noise = np.array([0.05, 0.3])
    mean, var = gaussian_posterior(*(torch.tensor(v) for v in (a, y, mu, sigma, noise)))
    for s in range(2):
        expected_mean, expected_var = information_form(a[s], y[s], mu, sigma, noise[s])
        np.testing.assert_allclose(mean[s].numpy(), expected_mean, rtol=1e-8, atol=1e-10)
        np.testing.assert_allclose(var[s].numpy(), expected_var, rtol=1e-8, atol=1e-10)


def test_noise_is_the_maximum_marginal_likelihood_value_of_the_grid():
    rng = np.random.default_rng(3)
    d, n_obs = 6, 3
    root = rng.normal(size=(d, d))
    sigma, mu = root @ root.T / d, rng.normal(size=d)
    a = rng.normal(size=(2, n_obs, d))
    validation = rng.multivariate_normal(mu, sigma + 0.5 * np.eye(d), size=5)
    chosen = noise_by_marginal_likelihood(*(torch.tensor(v) for v in (a, mu, sigma, validation)))
    for s in range(2):
        prior = a[s] @ sigma @ a[s].T
        values = np.mean(np.diag(prior)) * 10.0 ** np.array(NOISE_GRID)
        scores = [
            multivariate_normal(a[s] @ mu, prior + v * np.eye(n_obs)).logpdf(validation @ a[s].T).sum()
            for v in values
        ]
        assert chosen[s].item() == pytest.approx(values[int(np.argmax(scores))])


def test_ct_operator_is_genfields_projector():
    batch = ct_batch(9, 3, signals=1)
    operator = linear_operator(batch.forward_map, batch.context.queries[0], (9, 9))
    image = torch.rand(1, 9, 9, 1, dtype=torch.float64)
    expected = project_image(image, batch.context.queries.double(), batch.forward_map.n_samples)
    torch.testing.assert_close(operator @ image.reshape(81), expected[0, :, 0])


def test_gaussian_prior_on_ct_matches_the_dense_joint_gaussian():
    train = PhantomDataset(12, 7, seed=4)
    prior = GaussianPrior(noise=1e-3).fit(train)
    batch = ct_batch(7, 3, signals=2)
    prediction = prior.reconstruct(batch)
    assert prediction.noise_variance is None  # slice pixels, not projections
    images = np.stack([train[i].image.double().numpy().ravel() for i in range(12)])
    mu, s = images.mean(0), np.cov(images, rowvar=False)
    off = ~np.eye(49, dtype=bool)
    sigma = np.where(off, (1 - prior.coefficient) * s, s)
    for k in range(2):
        a = linear_operator(batch.forward_map, batch.context.queries[k], (7, 7)).numpy()
        y = batch.context.values[k, :, 0].double().numpy()
        joint_cross = sigma @ a.T
        gram = a @ sigma @ a.T + 1e-3 * np.eye(len(y))
        expected = mu + joint_cross @ np.linalg.solve(gram, y - a @ mu)
        expected_var = np.diag(sigma - joint_cross @ np.linalg.solve(gram, joint_cross.T))
        np.testing.assert_allclose(prediction.mean[k, :, 0].numpy(), expected, atol=1e-4)
        np.testing.assert_allclose(prediction.variance[k, :, 0].numpy(), expected_var, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("channels", [1, 3])
def test_image_operator_selects_the_context_pixels(channels):
    images = torch.rand(2, 5, 4, channels, dtype=torch.float64)
    batch = image_batch(images, 0.3)
    operator, values = image_operator(batch)
    flat = images.reshape(2, -1)
    torch.testing.assert_close(torch.einsum("snd,sd->sn", operator.dense(), flat), values)
    torch.testing.assert_close(values, batch.context.values.double().reshape(2, -1))


def test_gaussian_prior_with_a_fixed_shrinkage_and_too_few_signals():
    train = PhantomDataset(6, 5, seed=1)
    prior = GaussianPrior(shrinkage=0.25, noise=1e-2).fit(train)
    images = np.stack([train[i].image.double().numpy().ravel() for i in range(6)])
    s = np.cov(images, rowvar=False)
    np.testing.assert_allclose(prior.cov.numpy(), np.where(np.eye(25, dtype=bool), s, 0.75 * s), atol=1e-12)
    with pytest.raises(InputError, match="at least 3 training signals"):
        GaussianPrior().fit(PhantomDataset(2, 5))
    with pytest.raises(InputError, match="max_dim"):
        GaussianPrior(max_dim=10).fit(train)


def test_gaussian_prior_on_images_adds_the_noise_of_a_new_pixel():
    rng = torch.Generator().manual_seed(5)
    train = [ImageSignal(torch.rand(5, 5, 1, generator=rng), f"t{i}", (5, 5)) for i in range(10)]
    batch = image_batch(torch.rand(2, 5, 5, 1, generator=rng), 0.4)
    prediction = GaussianPrior().fit(train).reconstruct(batch)
    noise = prediction.noise_variance
    assert noise is not None and bool((noise > 0).all())
    torch.testing.assert_close(prediction.signal_std.square() + noise, prediction.variance)
    observed = batch.extras["context_index"]
    signal_var = prediction.signal_std.square()[..., 0]
    unobserved = torch.ones_like(signal_var, dtype=torch.bool).scatter_(1, observed, False)
    assert signal_var[~unobserved].mean() < signal_var[unobserved].mean()  # observing shrinks it


def test_gaussian_prior_beats_the_mean_signal_and_covers_held_out_ct():
    train = PhantomDataset(120, 16, seed=7)
    batch = ct_batch(16, 4, signals=6, seed=99)
    truth = batch.ground_truth
    scores = {}
    for baseline in (classical.MeanSignal(), GaussianPrior()):
        prediction = baseline.fit(train).reconstruct(batch)
        scores[baseline.name] = psnr(as_images(prediction.mean, truth).clamp(0, 1), truth).mean()
    assert scores["gaussian-prior"] > scores["mean"] + 3
    prediction = GaussianPrior().fit(train).reconstruct(batch)
    disc = prediction.variance > 1e-8  # outside the disc every phantom is 0
    error = (prediction.mean - truth.reshape(6, -1, 1)).abs()[disc]
    coverage = (error < 1.6449 * prediction.std[disc]).float().mean()
    assert 0.7 < coverage < 0.99


# --------------------------------------------------------------------------------------------------
# Shapes and views
# --------------------------------------------------------------------------------------------------


def shape_batch(points: torch.Tensor, values: torch.Tensor, queries: torch.Tensor, target="sdf"):
    return SignalBatch(
        kind="shape",
        forward_map=PointMap(),
        context=Observations(points, values),
        target=Observations(queries, torch.zeros(*queries.shape[:2], 1)),
        extras={"target": target, "context": "labelled"},
    )


def test_thin_plate_rbf_reproduces_an_affine_field_and_nearest_copies_the_closest_value():
    rng = torch.Generator().manual_seed(0)
    points = torch.rand(2, 40, 3, generator=rng) * 2 - 1
    queries = torch.rand(2, 25, 3, generator=rng) * 2 - 1
    slope, offset = torch.tensor([0.3, -0.7, 0.2]), 0.1
    batch = shape_batch(points, points @ slope[:, None] + offset, queries)
    rbf = classical.RBF().reconstruct(batch).mean
    torch.testing.assert_close(rbf, queries @ slope[:, None] + offset, atol=1e-5, rtol=1e-5)
    nearest = classical.Nearest().reconstruct(batch).mean
    closest = torch.cdist(queries, points).argmin(-1)
    expected = batch.context.values.gather(1, closest[..., None])
    torch.testing.assert_close(nearest, expected)


def test_mean_shape_averages_each_training_shapes_nearest_sample():
    def shape(centre: float) -> SimpleNamespace:
        points = torch.linspace(-1, 1, 21)[:, None].expand(21, 3).contiguous()
        sdf = (points - centre).norm(dim=-1, keepdim=True) - 0.5
        return SimpleNamespace(points=points, sdf=sdf, occupancy=sdf <= 0)

    train = [shape(0.0), shape(0.5)]
    queries = torch.tensor([[[0.0, 0.0, 0.0], [0.5, 0.5, 0.5], [1.0, 1.0, 1.0]]])
    batch = shape_batch(queries, torch.zeros(1, 3, 1), queries, target="occupancy")
    occupancy = classical.MeanShape().fit(train).reconstruct(batch).mean[0, :, 0]
    torch.testing.assert_close(occupancy, torch.tensor([0.5, 0.5, 0.0]))
    batch.extras["target"] = "sdf"
    sdf = classical.MeanShape().fit(train).reconstruct(batch).mean[0, :, 0]
    expected = torch.stack([s.sdf[[10, 15, 20], 0] for s in train]).mean(0)
    torch.testing.assert_close(sdf, expected)


def test_nearest_view_copies_the_context_view_closest_to_the_target_camera():
    positions = np.array([[3.0, 0.0, 0.5], [0.0, 3.0, 0.5], [2.9, 0.4, 0.6], [-3.0, 0.2, 0.0]])
    images = torch.rand(4, 6, 6, 3, generator=torch.Generator().manual_seed(0))
    c2w = look_at(torch.as_tensor(positions)).float()
    scene = ViewSignal(images, c2w, focal=6.0, cx=3.0, cy=3.0, near=1.0, far=5.0, name="s")
    split = ViewSplit(n_context_views=3, n_target_views=1, rays_per_signal=None, n_samples=4)
    batch = split([scene, scene], torch.Generator().manual_seed(3))
    for by in ("position", "direction"):
        prediction = classical.NearestView(by=by).reconstruct(batch).mean
        for s in range(2):
            target = positions[batch.extras["target_views"][s, 0]]
            context = positions[batch.extras["context_views"][s].numpy()]
            if by == "position":
                pick = np.linalg.norm(context - target, axis=1).argmin()
            else:
                unit = context / np.linalg.norm(context, axis=1, keepdims=True)
                pick = (unit @ (target / np.linalg.norm(target))).argmax()
            expected = images[batch.extras["context_views"][s, pick]].reshape(-1, 3)
            torch.testing.assert_close(prediction[s], expected)


# --------------------------------------------------------------------------------------------------
# Bad input and the registry
# --------------------------------------------------------------------------------------------------


def test_baselines_that_cannot_run_name_the_setting():
    images = torch.rand(1, 6, 6, 1)
    batch = image_batch(images, 0.5)
    empty = SignalBatch(
        kind="image",
        forward_map=PointMap(),
        context=Observations(torch.zeros(1, 0, 2), torch.zeros(1, 0, 1)),
        target=batch.target,
        ground_truth=images,
        extras={"context_index": torch.zeros(1, 0, dtype=torch.long)},
    )
    with pytest.raises(InputError, match="at least one context pixel"):
        classical.Biharmonic().reconstruct(empty)
    with pytest.raises(InputError, match="n_context_angles"):
        classical.SART().reconstruct(ct_batch(9, 1))
    shapes = shape_batch(torch.rand(1, 5, 3), torch.rand(1, 5, 1), torch.rand(1, 5, 3))
    with pytest.raises(InputError, match="linear forward map"):
        GaussianPrior().reconstruct(shapes)
    with pytest.raises(InputError, match="runs on data kind"):
        classical.FBP().reconstruct(batch)
    with pytest.raises(InputError, match="valid names: biharmonic, fbp"):
        classical.build_baseline("inpaint")
    with pytest.raises(InputError, match="iterations"):
        classical.build_baseline("sart", iterations=0)
    with pytest.raises(InputError, match="n_detectors"):
        split = CTSplit(n_context_angles=3, context_angles="even", n_detectors=11, n_target_angles=2)
        classical.SART().reconstruct(split([CTSignal(torch.zeros(9, 9, 1), "z")]))


def test_every_kind_lists_baselines_that_build_and_satisfy_the_protocol():
    from genfield.kinds import get_kind

    for kind in ("image", "ct", "shape", "views"):
        names = [factory().name for factory in get_kind(kind).baselines]
        assert names, kind
        for name in names:
            baseline = classical.build_baseline(name.removesuffix("-5"))
            assert isinstance(baseline, classical.Baseline)
            assert baseline.name == name
    assert classical.build_baseline("sart", iterations=7).name == "sart-7"


# --------------------------------------------------------------------------------------------------
# The metric-vs-steps plot's reference lines
# --------------------------------------------------------------------------------------------------


def test_metric_plot_draws_reference_lines(tmp_path):
    from genfield.viz.plots import curves_figure, plot_psnr_vs_steps

    curves = {"maml": ([0, 2, 10], [12.0, 18.0, 21.0])}
    references = {"sart-5": 21.6, "fbp": 19.2}
    figure = curves_figure(curves, "steps", "PSNR", references=references)
    lines = {line.get_label(): line for line in figure.axes[0].get_lines()}
    for name, value in references.items():
        np.testing.assert_allclose(lines[name].get_ydata(), [value, value])
        assert lines[name].get_linestyle() == "--"
    legend = [text.get_text() for text in figure.axes[0].get_legend().get_texts()]
    assert legend == ["maml", "sart-5", "fbp"]
    path = plot_psnr_vs_steps(tmp_path / "psnr.png", curves, references=[("biharmonic", 20.6)])
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(InputError, match="finite"):
        curves_figure(curves, "steps", "PSNR", references={"bad": math.nan})
