"""Image files, built-in images, the image context/target split and batch iteration."""

from __future__ import annotations

import warnings

import imageio.v3 as iio
import numpy as np
import pytest
import skimage.color
import skimage.data
import torch
from PIL import Image

from genfield.datasets.builtin import builtin_faces, builtin_natural
from genfield.datasets.images import (
    IMAGE_EXTENSIONS,
    ImageFolder,
    ImageList,
    ImageSignal,
    ImageSplit,
    UnreadableImageWarning,
    resize,
)
from genfield.datasets.sampling import iterate_batches, split_indices
from genfield.errors import InputError
from genfield.forward import PointMap

RNG = np.random.default_rng(0)


def _u8(shape) -> np.ndarray:
    return RNG.integers(0, 256, size=shape, dtype=np.uint8)


def _only(folder, grey=False, size=None) -> np.ndarray:
    ds = ImageFolder(folder, size=size, grey=grey)
    assert len(ds) == 1
    return ds[0].image.numpy()


# --------------------------------------------------------------------------------------------------
# ImageFolder: formats
# --------------------------------------------------------------------------------------------------


def test_png_grey_rgb_and_bmp_are_exact(tmp_path):
    grey, rgb = _u8((9, 9)), _u8((9, 9, 3))
    for name, array in [("grey.png", grey), ("rgb.png", rgb), ("rgb.bmp", rgb)]:
        folder = tmp_path / name.replace(".", "_")
        folder.mkdir()
        iio.imwrite(folder / name, array)
        got = _only(folder)
        expected = np.repeat(grey[..., None], 3, -1) if array.ndim == 2 else array
        assert got.dtype == np.float32 and got.shape == (9, 9, 3)
        np.testing.assert_allclose(got, expected / 255.0, atol=1e-6)


def test_grey_option_uses_rgb2gray_luminance(tmp_path):
    rgb = _u8((8, 8, 3))
    iio.imwrite(tmp_path / "a.png", rgb)
    got = _only(tmp_path, grey=True)
    assert got.shape == (8, 8, 1)
    np.testing.assert_allclose(got[..., 0], skimage.color.rgb2gray(rgb), atol=1e-5)


def test_rgba_is_composited_on_white(tmp_path):
    rgba = _u8((8, 8, 4))
    iio.imwrite(tmp_path / "a.png", rgba)
    got = _only(tmp_path)
    f = rgba / 255.0
    expected = f[..., :3] * f[..., 3:] + (1 - f[..., 3:])
    np.testing.assert_allclose(got, expected, atol=1e-5)
    fully_transparent = rgba.copy()
    fully_transparent[..., 3] = 0
    iio.imwrite(tmp_path / "a.png", fully_transparent)
    np.testing.assert_allclose(_only(tmp_path), 1.0)


def test_sixteen_bit_png_and_tiff_use_the_full_range(tmp_path):
    grey16 = RNG.integers(0, 65536, size=(8, 8), dtype=np.uint16)
    rgb16 = RNG.integers(0, 65536, size=(8, 8, 3), dtype=np.uint16)
    (tmp_path / "p").mkdir()
    (tmp_path / "t").mkdir()
    iio.imwrite(tmp_path / "p" / "g16.png", grey16)
    iio.imwrite(tmp_path / "t" / "c16.tiff", rgb16)
    got = _only(tmp_path / "p", grey=True)[..., 0]
    np.testing.assert_allclose(got, grey16 / 65535.0, atol=1e-6)
    assert got.max() > 0.9  # not divided by 255 then clipped, nor by 2**32
    np.testing.assert_allclose(_only(tmp_path / "t"), rgb16 / 65535.0, atol=1e-6)


def test_jpeg_matches_pillow_decode(tmp_path):
    ramp = np.linspace(0, 255, 16)
    rgb = np.stack(np.broadcast_arrays(ramp[:, None], ramp[None, :], 128.0), -1).astype(np.uint8)
    iio.imwrite(tmp_path / "a.JPG", rgb, quality=95)  # upper-case extension is accepted
    expected = np.asarray(Image.open(tmp_path / "a.JPG").convert("RGB")) / 255.0
    np.testing.assert_allclose(_only(tmp_path), expected, atol=1e-6)
    assert np.abs(_only(tmp_path) - rgb / 255.0).max() < 0.05  # and it is the image we wrote


def test_gif_first_frame(tmp_path):
    first = np.zeros((8, 8, 3), np.uint8)
    first[:4] = 255
    second = 255 - first
    iio.imwrite(tmp_path / "a.gif", np.stack([first, second]), loop=0)
    np.testing.assert_allclose(_only(tmp_path), first / 255.0, atol=1e-6)


@pytest.mark.skipif(".webp" not in IMAGE_EXTENSIONS, reason="Pillow built without WebP")
def test_webp_lossless(tmp_path):
    rgb = _u8((8, 8, 3))
    iio.imwrite(tmp_path / "a.webp", rgb, lossless=True)
    np.testing.assert_allclose(_only(tmp_path), rgb / 255.0, atol=1e-6)


def test_nan_tiff_is_an_input_error_naming_the_file(tmp_path):
    data = np.full((8, 8), 0.5, np.float32)
    data[3, 3] = np.nan
    iio.imwrite(tmp_path / "bad.tif", data)
    with pytest.raises(InputError, match="bad.tif"):
        ImageFolder(tmp_path, size=None)[0]


# --------------------------------------------------------------------------------------------------
# ImageFolder: crop, resize, listing, errors
# --------------------------------------------------------------------------------------------------


def test_centre_crop_then_resize(tmp_path):
    rgb = _u8((6, 10, 3))
    iio.imwrite(tmp_path / "a.png", rgb)
    signal = ImageFolder(tmp_path, size=6)[0]
    assert signal.original_size == (6, 10) and signal.name == "a.png"
    np.testing.assert_allclose(signal.image.numpy(), rgb[:, 2:8] / 255.0, atol=1e-6)
    tall = _u8((11, 7, 3))
    iio.imwrite(tmp_path / "a.png", tall)
    np.testing.assert_allclose(_only(tmp_path, size=7), tall[2:9] / 255.0, atol=1e-6)


@pytest.mark.parametrize("size", [7, 16, 37])
def test_resize_matches_pillow_bilinear(size):
    """The antialiased bilinear filter equals Pillow's BILINEAR resize in float ('F') mode."""
    image = RNG.random((24, 24)).astype(np.float32)
    ours = resize(torch.from_numpy(image)[..., None], size)[..., 0].numpy()
    pillow = np.asarray(Image.fromarray(image, mode="F").resize((size, size), Image.BILINEAR))
    np.testing.assert_allclose(ours, np.clip(pillow, 0, 1), atol=2e-5)


def test_listing_is_sorted_recursive_and_lazy(tmp_path):
    (tmp_path / "sub").mkdir()
    for name in ["b.png", "a.png", "sub/c.png", ".hidden.png", "notes.txt"]:
        (tmp_path / name).write_bytes(b"not an image")  # nothing is decoded at construction
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds = ImageFolder(tmp_path)
    assert ds.files == ["a.png", "b.png", "sub/c.png"]
    assert ImageFolder(tmp_path, recursive=False).files == ["a.png", "b.png"]
    assert len(ImageFolder(tmp_path, extensions=("txt",))) == 1


def test_corrupt_file_is_skipped_with_warning_or_strict_error(tmp_path):
    iio.imwrite(tmp_path / "a.png", _u8((5, 5, 3)))
    (tmp_path / "b.png").write_bytes(RNG.integers(0, 256, 200, dtype=np.uint8).tobytes())
    iio.imwrite(tmp_path / "c.png", _u8((5, 5, 3)))
    ds = ImageFolder(tmp_path, size=5)
    with pytest.warns(UnreadableImageWarning, match="b.png"):
        item = ds[1]
    assert item.name == "c.png"  # the next readable file
    assert ds[1].name == "c.png"  # deterministic, and the bad file is remembered
    with pytest.raises(InputError, match="b.png"):
        ImageFolder(tmp_path, size=5, strict=True)[1]
    assert ImageFolder(tmp_path, size=5, strict=True)[2].name == "c.png"


def test_corrupt_last_file_wraps_to_the_first(tmp_path):
    iio.imwrite(tmp_path / "a.png", _u8((5, 5, 3)))
    (tmp_path / "z.png").write_bytes(b"\x89PNG broken")
    with pytest.warns(UnreadableImageWarning, match="z.png"):
        assert ImageFolder(tmp_path, size=5)[1].name == "a.png"
    with pytest.raises(IndexError):
        ImageFolder(tmp_path, size=5)[2]


def test_all_corrupt_is_an_input_error(tmp_path):
    (tmp_path / "a.png").write_bytes(b"junk")
    with pytest.warns(UnreadableImageWarning), pytest.raises(InputError, match="can be read"):
        ImageFolder(tmp_path)[0]


def test_empty_and_missing_folders(tmp_path):
    (tmp_path / "readme.txt").write_text("no images here")
    with pytest.raises(InputError) as info:
        ImageFolder(tmp_path)
    message = str(info.value)
    assert str(tmp_path) in message and ".png" in message and ".jpg" in message
    assert "\n" not in message
    with pytest.raises(InputError, match="nowhere"):
        ImageFolder(tmp_path / "nowhere")
    with pytest.raises(InputError, match="size"):
        ImageFolder(tmp_path, size=0)


# --------------------------------------------------------------------------------------------------
# Built-in data
# --------------------------------------------------------------------------------------------------


def test_builtin_faces_splits():
    splits = {name: builtin_faces(name, size=16) for name in ("train", "val", "test")}
    assert [len(splits[k]) for k in ("train", "val", "test")] == [80, 10, 10]
    names = [{s.name for s in ds} for ds in splits.values()]
    assert set.union(*names) == {f"lfw_face_{i:03d}" for i in range(100)}
    assert sum(len(n) for n in names) == 100  # disjoint
    assert splits["train"].channels == 1 and splits["train"][0].image.shape == (16, 16, 1)
    again = builtin_faces("val", size=16)
    assert [s.name for s in again] == [s.name for s in splits["val"]]
    torch.testing.assert_close(again[0].image, splits["val"][0].image)
    with pytest.raises(InputError, match="validation"):
        builtin_faces("validation")


def test_builtin_faces_are_the_lfw_faces():
    faces = skimage.data.lfw_subset()
    signal = builtin_faces("all", size=25)[7]
    np.testing.assert_allclose(signal.image[..., 0].numpy(), faces[7], atol=1e-6)
    assert signal.original_size == (25, 25)


def test_builtin_natural_is_deterministic_per_index():
    a, b = builtin_natural(n=6, size=12, seed=3), builtin_natural(n=20, size=12, seed=3)
    assert a.channels == 3 and a[0].image.shape == (12, 12, 3)
    for i in range(6):
        assert a[i].name == b[i].name
        torch.testing.assert_close(a[i].image, b[i].image)
    other = builtin_natural(n=6, size=12, seed=4)
    assert [s.name for s in other] != [s.name for s in a]
    grey = builtin_natural(n=4, size=12, seed=3, grey=True)
    assert grey.channels == 1 and grey[0].image.shape == (12, 12, 1)
    for s in a:
        assert 0 <= s.image.min() and s.image.max() <= 1
    with pytest.raises(InputError, match="lena"):
        builtin_natural(photos=["lena"])


def test_builtin_natural_crop_is_the_named_region():
    ds = builtin_natural(n=3, size=8, seed=0, photos=["astronaut"], crop_range=(8, 8))
    name, top, left, side = ds.crop_box(2)
    assert side == 8
    expected = skimage.data.astronaut()[top : top + 8, left : left + 8] / 255.0
    np.testing.assert_allclose(ds[2].image.numpy(), expected, atol=1e-6)


# --------------------------------------------------------------------------------------------------
# ImageSplit
# --------------------------------------------------------------------------------------------------


def _signals(count=3, h=6, w=5, c=3) -> list[ImageSignal]:
    return [ImageSignal(torch.rand(h, w, c), f"s{i}", (h, w)) for i in range(count)]


def test_image_split_context_and_target():
    signals = _signals()
    batch = ImageSplit(context_count=7)(signals, torch.Generator().manual_seed(0))
    assert batch.kind == "image" and isinstance(batch.forward_map, PointMap)
    assert batch.context.queries.shape == (3, 7, 2) and batch.context.values.shape == (3, 7, 3)
    assert batch.target.queries.shape == (3, 30, 2) and batch.target.values.shape == (3, 30, 3)
    assert batch.ground_truth.shape == (3, 6, 5, 3)
    assert batch.extras["image_size"] == (6, 5)
    assert batch.metadata[1] == {"name": "s1", "original_size": (6, 5)}
    index = batch.extras["context_index"]
    assert index.shape == (3, 7) and index.dtype == torch.long
    for s, sig in enumerate(signals):
        rows, cols = index[s] // 5, index[s] % 5
        assert len(set(index[s].tolist())) == 7
        torch.testing.assert_close(batch.context.values[s], sig.image[rows, cols])
        # pixel centres, computed independently of grid_coords
        expected = torch.stack([-1 + (2 * rows + 1) / 6, -1 + (2 * cols + 1) / 5], dim=-1)
        torch.testing.assert_close(batch.context.queries[s], expected.float())
    torch.testing.assert_close(batch.target.values[2], signals[2].image.reshape(30, 3))
    assert not torch.equal(index[0], index[1])  # each signal draws its own subset


def test_image_split_same_seed_same_batch():
    signals = _signals()
    split = ImageSplit(context_fraction=0.25, target=12)
    a = split(signals, torch.Generator().manual_seed(5))
    b = split(signals, torch.Generator().manual_seed(5))
    c = split(signals, torch.Generator().manual_seed(6))
    assert torch.equal(a.extras["context_index"], b.extras["context_index"])
    assert torch.equal(a.context.values, b.context.values)
    assert not torch.equal(a.extras["context_index"], c.extras["context_index"])
    assert a.context.num_observations == round(0.25 * 30)
    assert a.target.num_observations == 12
    # the target starts with the context (neural-process convention)
    torch.testing.assert_close(a.target.values[:, : a.context.num_observations], a.context.values)


def test_image_split_errors():
    with pytest.raises(InputError, match="equal shapes"):
        ImageSplit(context_count=2)(_signals(1, 6, 5) + _signals(1, 6, 6), None)
    with pytest.raises(InputError, match="31"):
        ImageSplit(context_count=31)(_signals(1, 6, 5), None)
    with pytest.raises(InputError, match="not both"):
        ImageSplit(context_fraction=0.5, context_count=3)
    with pytest.raises(InputError, match="context_fraction"):
        ImageSplit(context_fraction=1.5)
    with pytest.raises(InputError, match="target"):
        ImageSplit(target="some")


# --------------------------------------------------------------------------------------------------
# split_indices and iterate_batches
# --------------------------------------------------------------------------------------------------


def test_split_indices_partition_and_determinism():
    parts = split_indices(103, (0.8, 0.1, 0.1), seed=1)
    sizes = [len(parts[k]) for k in ("train", "val", "test")]
    assert sum(sizes) == 103 and abs(sizes[0] - 82.4) < 1 and abs(sizes[1] - 10.3) < 1
    assert sorted(torch.cat(list(parts.values())).tolist()) == list(range(103))
    again = split_indices(103, (0.8, 0.1, 0.1), seed=1)
    assert all(torch.equal(parts[k], again[k]) for k in parts)
    assert not torch.equal(parts["val"], split_indices(103, seed=2)["val"])
    half = split_indices(10, {"a": 0.5, "b": 0.2})
    assert [len(half["a"]), len(half["b"])] == [5, 2]
    with pytest.raises(InputError, match="at most 1"):
        split_indices(10, (0.8, 0.3, 0.1))


def _tiny_dataset(n=10) -> ImageList:
    return ImageList([ImageSignal(torch.full((4, 4, 1), i / n), f"img{i}", (4, 4)) for i in range(n)])


def _summary(batch):
    return [m["name"] for m in batch.metadata], batch.extras["context_index"].clone()


def test_iterate_batches_resume_matches_uninterrupted():
    ds, split = _tiny_dataset(), ImageSplit(context_count=3)
    full = iterate_batches(ds, split, batch_size=3, seed=7)
    uninterrupted = [_summary(next(full)) for _ in range(10)]  # 3 steps/epoch: crosses epochs
    resumed = iterate_batches(ds, split, batch_size=3, seed=7, start_step=6)
    for expected in uninterrupted[6:]:
        names, index = _summary(next(resumed))
        assert names == expected[0] and torch.equal(index, expected[1])
    other_seed = iterate_batches(ds, split, batch_size=3, seed=8)
    assert [_summary(next(other_seed))[0] for _ in range(3)] != [u[0] for u in uninterrupted[:3]]


def test_iterate_batches_epochs_cover_each_signal_once():
    ds, split = _tiny_dataset(), ImageSplit()
    batches = list(iterate_batches(ds, split, 4, seed=0, epochs=2, drop_last=False))
    assert [b.num_signals for b in batches] == [4, 4, 2, 4, 4, 2]
    first_epoch = [n for b in batches[:3] for n in _summary(b)[0]]
    assert sorted(first_epoch) == sorted(f"img{i}" for i in range(10))
    assert first_epoch != [n for b in batches[3:] for n in _summary(b)[0]]  # reshuffled
    ordered = list(iterate_batches(ds, split, 5, seed=0, epochs=1, shuffle=False))
    assert _summary(ordered[0])[0] == [f"img{i}" for i in range(5)]
    subset = list(iterate_batches(ds, split, 2, seed=0, indices=[1, 3], epochs=3))
    assert all(sorted(_summary(b)[0]) == ["img1", "img3"] for b in subset) and len(subset) == 3
    with pytest.raises(InputError, match="batch_size"):
        iterate_batches(ds, split, 11, seed=0)


def test_iterate_batches_workers_give_the_same_batches():
    ds, split = _tiny_dataset(), ImageSplit(context_count=2)
    serial = list(iterate_batches(ds, split, 3, seed=1, epochs=2))
    parallel = list(iterate_batches(ds, split, 3, seed=1, epochs=2, num_workers=2))
    assert len(serial) == len(parallel) == 6
    for a, b in zip(serial, parallel, strict=True):
        assert _summary(a)[0] == _summary(b)[0]
        assert torch.equal(a.context.values, b.context.values)


def test_as_images_inverts_the_split_flattening_and_names_a_bad_count():
    from genfield.datasets.images import as_images

    images = torch.rand(2, 3, 5, 1, generator=torch.Generator().manual_seed(0))
    signals = [ImageSignal(image, f"i{k}", (3, 5)) for k, image in enumerate(images)]
    batch = ImageSplit(context_count=4)(signals, torch.Generator().manual_seed(1))  # target: every pixel
    torch.testing.assert_close(as_images(batch.target.values, images), images)
    torch.testing.assert_close(as_images(images, images.shape), images)  # images pass through
    with pytest.raises(InputError, match="prediction"):
        as_images(batch.target.values[:, :-1], images, "prediction")
