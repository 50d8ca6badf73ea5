"""Metrics against independent computations: scikit-image, NumPy brute force, exact geometry."""

from __future__ import annotations

import numpy as np
import pytest
import skimage.data
import torch
import trimesh
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from genfield.errors import InputError
from genfield.metrics import UndefinedMetric, chamfer_distance, chamfer_points, iou, mse, psnr, ssim

GEN = torch.Generator().manual_seed(0)


def _noisy_pair(shape, noise=0.1):
    clean = torch.rand(shape, generator=GEN, dtype=torch.float64)
    noisy = (clean + noise * torch.randn(shape, generator=GEN, dtype=torch.float64)).clamp(0, 1)
    return noisy, clean


def test_psnr_matches_skimage_per_signal():
    pred, target = _noisy_pair((3, 8, 9, 3))
    pred[1] = target[1] + 0.3 * (pred[1] - target[1])  # a different error level per signal
    ours = psnr(pred, target)
    assert ours.shape == (3,)
    for s in range(3):
        expected = peak_signal_noise_ratio(target[s].numpy(), pred[s].numpy(), data_range=1.0)
        assert ours[s].item() == pytest.approx(expected, rel=1e-10)
    assert ours[1] > ours[0] + 5
    scaled = psnr(255 * pred, 255 * target, data_range=255.0)
    torch.testing.assert_close(scaled, ours)
    assert torch.isinf(psnr(target, target)).all()


def test_psnr_dims_and_mse():
    pred, target = _noisy_pair((2, 5, 4))
    per_row = psnr(pred, target, dims=(2,))
    assert per_row.shape == (2, 5)
    expected = ((pred - target) ** 2).mean(-1)
    torch.testing.assert_close(mse(pred, target, dims=(2,)), expected)
    torch.testing.assert_close(per_row, 10 * torch.log10(1 / expected))
    with pytest.raises(InputError, match="differ"):
        psnr(pred, target[:, :4])


def _skimage_ssim(a: np.ndarray, b: np.ndarray) -> float:
    return structural_similarity(
        a,
        b,
        data_range=1.0,
        gaussian_weights=True,
        sigma=1.5,
        use_sample_covariance=False,
        channel_axis=-1,
    )


@pytest.mark.parametrize("channels", [1, 3])
def test_ssim_matches_skimage(channels):
    pred, target = _noisy_pair((3, 24, 30, channels), noise=0.2)
    pred[2] = target[2]  # identical images score 1
    ours = ssim(pred, target)
    assert ours.shape == (3,)
    for s in range(3):
        expected = _skimage_ssim(pred[s].numpy(), target[s].numpy())
        assert ours[s].item() == pytest.approx(expected, abs=1e-6)
    assert ours[2].item() == pytest.approx(1.0)


def test_ssim_on_a_photograph_and_float32():
    photo = skimage.data.camera()[::8, ::8].astype(np.float32) / 255.0  # 64 x 64, real structure
    blurred = (photo + np.roll(photo, 1, axis=0) + np.roll(photo, 1, axis=1)) / 3
    expected = _skimage_ssim(blurred[..., None], photo[..., None])
    ours = ssim(torch.from_numpy(blurred)[None], torch.from_numpy(photo)[None])
    assert ours.dtype == torch.float32 and ours.shape == (1,)
    assert ours.item() == pytest.approx(expected, abs=1e-3)
    with pytest.raises(InputError, match="11"):
        ssim(torch.rand(1, 8, 8, 1), torch.rand(1, 8, 8, 1))


def test_iou_matches_numpy():
    a = torch.rand(4, 5, 6, 7, generator=GEN) > 0.6
    b = torch.rand(4, 5, 6, 7, generator=GEN) > 0.4
    b[3] = False
    a[3] = False  # both empty: undefined, not a perfect score
    with pytest.warns(UndefinedMetric, match="1 of 4 signal"):
        ours = iou(a, b)
    for s in range(3):
        x, y = a[s].numpy(), b[s].numpy()
        assert ours[s].item() == pytest.approx(np.logical_and(x, y).sum() / np.logical_or(x, y).sum())
    assert torch.isnan(ours[3])
    assert iou(a[:1], a[:1]).item() == 1.0 and iou(a[:1], ~a[:1]).item() == 0.0


def _brute_chamfer(a: np.ndarray, b: np.ndarray) -> float:
    d = np.array([[np.sqrt(((p - q) ** 2).sum()) for q in b] for p in a])
    return 0.5 * (d.min(axis=1).mean() + d.min(axis=0).mean())


def test_chamfer_points_matches_brute_force():
    a = torch.randn(2, 17, 3, generator=GEN, dtype=torch.float64)
    b = torch.randn(2, 11, 3, generator=GEN, dtype=torch.float64)
    ours = chamfer_points(a, b)
    assert ours.shape == (2,)
    for s in range(2):
        assert ours[s].item() == pytest.approx(_brute_chamfer(a[s].numpy(), b[s].numpy()))
    torch.testing.assert_close(chamfer_points(b, a), ours)  # symmetric
    assert chamfer_points(a, a).abs().max() < 1e-6
    far = chamfer_points(a[0], a[0] + torch.tensor([0.0, 0.0, 1e6], dtype=torch.float64))
    assert far.item() == pytest.approx(1e6, rel=1e-5)  # nearest neighbours are ~1e6 away
    squared = chamfer_points(a[0], b[0], squared=True)
    d = torch.cdist(a[0], b[0]) ** 2
    assert squared.item() == pytest.approx(0.5 * (d.min(1).values.mean() + d.min(0).values.mean()))


def test_chamfer_distance_of_meshes():
    small = trimesh.creation.icosphere(subdivisions=4, radius=1.0)
    large = trimesh.creation.icosphere(subdivisions=4, radius=1.3)
    # concentric spheres: every point lies |r1 - r2| from the other surface
    assert chamfer_distance(small, large, n_points=4000) == pytest.approx(0.3, abs=0.01)
    # the same samples, brute-forced (the samples are deterministic from the seed)
    box = trimesh.creation.box(extents=(1, 2, 1))
    moved = box.copy()
    moved.apply_translation((0.25, 0, 0))
    pa, _ = trimesh.sample.sample_surface(box, 300, seed=3)
    pb, _ = trimesh.sample.sample_surface(moved, 300, seed=4)
    ours = chamfer_distance(box, moved, n_points=300, seed=3)
    assert ours == pytest.approx(_brute_chamfer(pa, pb), rel=1e-9)
    assert chamfer_distance(box, box, n_points=2000) < 0.05
    with pytest.raises(InputError, match="mesh b"):
        chamfer_distance(box, trimesh.Trimesh(), n_points=10)
