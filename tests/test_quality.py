"""The quality benchmark's pieces: interval coverage, the target verdict and a tiny held-out ordering."""

from __future__ import annotations

import math

import pytest
import torch
from scipy.stats import norm

from benchmarks.bench_quality import CELLS, judge, quality_markdown
from genfield.comparison import load_group, run_comparison
from genfield.errors import InputError
from genfield.metrics import interval_coverage


def test_interval_coverage_matches_a_direct_count():
    gen = torch.Generator().manual_seed(0)
    mean, std = torch.randn(3, 50, 1, generator=gen), torch.rand(3, 50, 1, generator=gen) + 0.1
    truth = torch.randn(3, 50, 1, generator=gen)
    mask = torch.rand(3, 50, 1, generator=gen) > 0.3
    low, high = norm.interval(0.9, loc=mean.numpy(), scale=std.numpy())
    inside = (truth.numpy() >= low) & (truth.numpy() <= high)
    expected = [inside[s][mask[s].numpy()].mean() for s in range(3)]
    got = interval_coverage(mean, std, truth, 0.9, mask)
    assert got.tolist() == pytest.approx(expected, abs=1e-6)
    # Calibrated Gaussian draws: coverage near the level.
    draws = torch.randn(1, 20000, 1, generator=gen)
    assert interval_coverage(torch.zeros_like(draws), torch.ones_like(draws), draws).item() == pytest.approx(
        0.9, abs=0.01
    )
    with pytest.raises(InputError, match="level"):
        interval_coverage(mean, std, truth, 1.5)


def _row(method, route, value, setting="s", steps=0, metric="psnr"):
    return {
        "method": method,
        "route": route,
        "value": value,
        "setting": setting,
        "steps": steps,
        "metric": metric,
    }


def test_table_marks_a_missed_target_as_missed():
    rows = [
        _row("maml", "meta", 21.0, "10 steps", 10),
        _row("biharmonic", "classical", 20.0),
        _row("gaussian-prior", "classical", 30.0),  # not in the image target's reference set
        _row("random_init", "baseline", 18.0, "fit 100", 100),
    ]
    verdict = judge(rows, CELLS["faces-10"]["target"])
    assert verdict["margin"] == pytest.approx(1.0) and not verdict["met"]
    text = quality_markdown([{"cell": "faces-10", "rows": rows}], "t")
    assert "| faces-10 |" in text and "**missed**" in text and "+1.00 dB" in text
    rows[0]["value"] = 21.6
    assert judge(rows, CELLS["faces-10"]["target"])["met"]
    assert "**missed**" not in quality_markdown([{"cell": "faces-10", "rows": rows}], "t")
    # CT: above FBP/SART by 1.5 dB but below the linear Gaussian prior is still missed.
    ct = [
        _row("ponp", "process", 25.0),
        _row("fbp", "classical", 20.0),
        _row("gaussian-prior", "classical", 27.0),
    ]
    assert not judge(ct, CELLS["ct-8"]["target"])["met"]
    # Learned-Initializations: only meta rows at 2 steps against random init at 100 steps.
    init = [
        _row("reptile", "meta", 30.0, "10 steps", 10),
        _row("reptile", "meta", 22.0, "2 steps", 2),
        _row("random_init", "baseline", 25.0, "fit 100", 100),
        _row("random_init", "baseline", 15.0, "fit 10", 10),
    ]
    verdict = judge(init, CELLS["faces-all"]["target"])
    assert verdict["margin"] == pytest.approx(-3.0) and not verdict["met"]


def test_tiny_learned_method_beats_the_mean_signal_on_held_out_faces(tmp_path):
    budget = dict(load_group("budget", "tiny"), meta_steps=30, eval_signals=4, adapt_steps=[10])
    rows = run_comparison(["faces"], ["maml"], "siren", budget, tmp_path, progress=False, device="cpu")
    learned = max(r.value for r in rows if r.method == "maml" and math.isfinite(r.value))
    mean = next(r.value for r in rows if r.method == "mean")
    assert learned > mean


def test_wall_time_is_given_per_cell_and_summed_per_kind():
    from benchmarks.bench_quality import wall_time_lines

    cells = [
        {"cell": "ct-2", "wall_seconds": 120.0},
        {"cell": "faces-10", "wall_seconds": 30.0},
        {"cell": "ct-8", "wall_seconds": 60.0},
        {"cell": "glyphs-10"},  # untimed (a run from before the timing): left out
    ]
    lines = wall_time_lines(cells, {"jobs": 2, "wall_seconds": 150.0})
    assert "| ct-2 | ct | 2.0 |" in lines and "| faces-10 | image | 0.5 |" in lines
    assert "| all ct cells (sum) | ct | 3.0 |" in lines and "| all image cells (sum) | image | 0.5 |" in lines
    assert lines[-1] == "| whole run, 2 at once | - | 2.5 |"
    assert not any("glyphs-10" in line for line in lines)
    assert not any("whole run" in line for line in wall_time_lines(cells))
    assert wall_time_lines([{"cell": "ct-2"}]) == []


def test_a_cells_own_budget_applies_at_its_preset_under_the_command_line_and_scales_with_it():
    from benchmarks.bench_quality import cell_budget

    quality = load_group("budget", "quality")
    tenfold = cell_budget("faces-all", quality, "quality", steps_factor=10)
    assert tenfold["meta_steps"] == 10 * quality["meta_steps"]
    assert tenfold["method_steps"] == {
        m: 10 * n for m, n in CELLS["faces-all"]["budgets"]["quality"]["method_steps"].items()
    }
    assert "method_steps" not in cell_budget("faces-all", quality, "small")  # another preset: its own
    assert cell_budget("glyphs-10", quality, "quality")["batch_size"] == 8
    assert cell_budget("glyphs-10", quality, "quality", given={"batch_size": 2})["batch_size"] == 2
    assert quality["batch_size"] == 4  # the preset itself is left alone


def test_an_option_given_to_the_benchmark_also_replaces_the_methods_by_kind_entry():
    """iBaML's image kind holds its own ``obs_noise``: a probe of that option must reach images."""
    from benchmarks.bench_quality import merged_overrides
    from genfield.kinds.base import options_for_kind

    given = {
        "ibaml": {"options": {"obs_noise": 0.025, "mc_samples": 4, "by_kind": {"ct": {"cg_iterations": 3}}}}
    }
    options = load_group("method", "ibaml", merged_overrides({}, given)["ibaml"])["options"]
    for kind in ("image", "ct", "shape"):
        built = options_for_kind(options, kind, "meta-learner")
        assert built["obs_noise"] == 0.025 and built["mc_samples"] == 4, kind
    assert options_for_kind(options, "ct", "meta-learner")["cg_iterations"] == 3  # given per kind
    assert options_for_kind(options, "image", "meta-learner")["cg_iterations"] == 20
    assert options["by_kind"]["image"]["lr_scale_logvar"] == 1.0  # the kind's other entries stay
    assert "mc_samples" not in options["by_kind"]["image"]
    shipped = load_group("method", "ibaml")["options"]
    assert options_for_kind(shipped, "image", "meta-learner")["obs_noise"] == 0.05  # the shipped default


def test_a_malformed_by_kind_override_is_still_named_by_the_kind_check():
    from genfield.kinds.base import options_for_kind

    options = load_group("method", "ibaml", {"options": {"obs_noise": 0.1, "by_kind": {"image": 3}}})[
        "options"
    ]
    with pytest.raises(InputError, match="by_kind.image must be a mapping"):
        options_for_kind(options, "image", "meta-learner")
