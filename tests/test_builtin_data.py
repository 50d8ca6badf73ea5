"""The built-in glyph collection: held-out typefaces, deterministic poses, sizes, values, and that a
prior learned from it beats a smoothness prior on held-out glyphs."""

import numpy as np
import pytest
import torch

from genfield.builders import build_data
from genfield.classical import build_baseline
from genfield.comparison import load_group
from genfield.datasets.builtin import (
    COLOUR_PHOTOS,
    GLYPH_CHARACTERS,
    GLYPH_FONTS,
    GREY_PHOTOS,
    Glyphs,
    builtin_glyphs,
    builtin_natural,
    font_file,
    natural_photos,
)
from genfield.datasets.images import ImageSplit
from genfield.datasets.sampling import seeded_generator
from genfield.errors import InputError
from genfield.evaluation import as_images
from genfield.metrics import psnr

SPLITS = ("train", "val", "test")


def test_typefaces_of_the_splits_are_disjoint_and_bundled():
    fonts = [set(GLYPH_FONTS[s]) for s in SPLITS]
    assert sum(len(f) for f in fonts) == len(set.union(*fonts))
    for name in set.union(*fonts):
        assert font_file(name).is_file(), name


def test_every_glyph_uses_a_typeface_of_its_split_and_no_held_out_glyph_is_a_training_one():
    parts = {s: Glyphs(s, 64, 16, seed=0) for s in SPLITS}
    for split, glyphs in parts.items():
        used = {glyphs.pose(i)[0] for i in range(len(glyphs))}
        assert used <= set(GLYPH_FONTS[split])
        assert len(used) > 1
    train = {np.asarray(parts["train"].render(i)).tobytes() for i in range(64)}
    assert len(train) == 64  # distinct training signals
    for split in ("val", "test"):
        held_out = {np.asarray(parts[split].render(i)).tobytes() for i in range(64)}
        assert not held_out & train


def test_glyphs_are_deterministic_per_index_and_seed():
    a, b = builtin_glyphs("val", size=16, n=5, seed=2), builtin_glyphs("val", size=16, n=9, seed=2)
    for i in range(5):
        assert a[i].name == b[i].name
        torch.testing.assert_close(a[i].image, b[i].image)
    other = builtin_glyphs("val", size=16, n=5, seed=3)
    assert [s.name for s in other] != [s.name for s in a]


def test_sizes_counts_and_values():
    val = builtin_glyphs("val", size=24)
    assert len(val) == 256 and val.channels == 1
    for signal in val:
        image = signal.image
        assert image.shape == (24, 24, 1) and image.dtype == torch.float32
        assert image.min() >= 0 and image.max() <= 1
        assert image.min() == 0 and image.max() > 0.5  # black background, an inked glyph
    characters = {s.name.rsplit("_", 1)[1] for s in val}
    assert characters <= set(GLYPH_CHARACTERS) and len(characters) > 40


def test_glyph_is_centred_within_its_shift():
    """The ink's bounding box is centred up to the drawn shift (rotated, so within its length) + 1 px."""
    size = 32
    glyphs = Glyphs("train", 32, size, seed=5)
    for i in range(len(glyphs)):
        _, _, _, shift_x, shift_y, _ = glyphs.pose(i)
        rows, cols = np.nonzero(glyphs.render(i) > 0.25)
        centre = np.array([(rows.min() + rows.max()) / 2, (cols.min() + cols.max()) / 2])
        offset = np.linalg.norm(centre - (size - 1) / 2)
        assert offset <= np.hypot(shift_x, shift_y) + 1.5, (i, offset)


def test_the_data_config_builds_the_splits():
    cfg = load_group("data", "glyphs", {"n_signals": 24, "size": 16})
    bundle = build_data(cfg, seed=0)
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (24, 256, 256)
    assert bundle.head == "grey" and bundle.train[0].image.shape == (16, 16, 1)
    batch = bundle.eval_batch("test")
    assert batch.extras["context_index"].shape == (8, round(0.1 * 16 * 16))


def test_bad_input_names_the_value():
    with pytest.raises(InputError, match="validation"):
        builtin_glyphs("validation")
    with pytest.raises(InputError, match="size"):
        builtin_glyphs("val", size=4)
    with pytest.raises(InputError, match="n >= 1"):
        builtin_glyphs("val", n=0)


def test_learned_gaussian_prior_beats_biharmonic_beats_mean_on_held_out_typefaces():
    """At 10 % context on unseen typefaces, the linear prior fitted on training glyphs beats the
    smoothness prior, which beats the mean training glyph."""
    train = builtin_glyphs("train", size=32, n=1024)
    test = list(builtin_glyphs("test", size=32, n=16))
    batch = ImageSplit(context_fraction=0.1)(test, seeded_generator(0, 7919))
    scores = {}
    for name in ("gaussian-prior", "biharmonic", "mean"):
        prediction = build_baseline(name).fit(train).reconstruct(batch)
        image = as_images(prediction.mean, batch.ground_truth).clamp(0, 1)
        scores[name] = psnr(image, batch.ground_truth).mean().item()
    assert scores["gaussian-prior"] > scores["biharmonic"] + 0.5, scores
    assert scores["biharmonic"] > scores["mean"] + 0.5, scores


@pytest.mark.parametrize("grey", [True, False])
def test_natural_crop_splits_hold_out_whole_photographs(grey):
    photos = {s: set(natural_photos(s, grey)) for s in SPLITS}
    assert all(photos.values())
    assert not photos["train"] & photos["val"] and not photos["train"] & photos["test"]
    assert not photos["val"] & photos["test"]
    assert set.union(*photos.values()) == set(COLOUR_PHOTOS + GREY_PHOTOS if grey else COLOUR_PHOTOS)
    crops = builtin_natural(40, 8, seed=0, grey=grey, photos=natural_photos("train", grey))
    assert {crops.crop_box(i)[0] for i in range(40)} <= photos["train"]


def test_ct_images_without_a_folder_tests_on_held_out_photographs():
    bundle = build_data(load_group("data", "ct_images", {"n_signals": 12, "resolution": 16}), seed=0)
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (12, 16, 16)
    for part, split in ((bundle.train, "train"), (bundle.test, "test")):
        used = {part.images.crop_box(i)[0] for i in range(len(part))}
        assert used <= set(natural_photos(split, True))
