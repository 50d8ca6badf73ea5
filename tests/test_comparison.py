"""The comparison's verdict: the best learned row against the best reference, per dataset."""

import pytest

from genfield.comparison import Row, results_markdown, verdict


def _row(data, method, route, setting, value, metric="psnr"):
    return Row(data, "image", method, route, setting, 0, metric, value, 0.0, 0.0, 0.0)


def test_verdict_names_the_winner_and_the_margin():
    rows = [
        _row("faces", "biharmonic", "classical", "biharmonic", 20.61),
        _row("faces", "maml", "meta", "10 steps", 19.5),
        _row("faces", "maml", "meta", "5 steps", 21.0),
        _row("faces", "random_init", "baseline", "fit 100", 20.0),
        _row("ct", "sart-5", "classical", "sart-5", 21.6),
        _row("ct", "ponp", "process", "TTO 10", 23.1),
        _row("shapes", "rbf", "classical", "rbf", 0.54, "iou"),
        _row("shapes", "ponp", "process", "one pass", float("nan"), "iou"),
    ]
    lines = verdict(rows).splitlines()
    assert lines[0] == (
        "faces: best learned maml (5 steps) 21.00 dB against best reference biharmonic (biharmonic) "
        "20.61 dB: the learned method wins by 0.39 dB PSNR."
    )
    assert lines[1].startswith("ct: best learned ponp (TTO 10) 23.10 dB against best reference sart-5")
    assert lines[1].endswith("the learned method wins by 1.50 dB PSNR.")
    assert len(lines) == 2  # no finite learned row on shapes: no sentence
    rows[2] = _row("faces", "maml", "meta", "5 steps", 18.0)
    assert "maml (10 steps) 19.50 dB" in verdict(rows) and "the reference wins by 1.11 dB" in verdict(rows)
    assert verdict(rows).splitlines()[0] in results_markdown(rows)


def test_verdict_states_a_linear_learned_prior_apart_from_the_classical_baseline():
    """The Gaussian prior learns from the collection: not the classical baseline, but always stated."""
    rows = [
        _row("glyphs", "biharmonic", "classical", "biharmonic", 15.84),
        _row("glyphs", "gaussian-prior", "classical", "gaussian-prior", 17.32),
        _row("glyphs", "ponp", "process", "one pass", 16.50),
        _row("glyphs", "random_init", "baseline", "fit 100", 15.05),
    ]
    (line,) = verdict(rows).splitlines()
    assert line.startswith("glyphs: best learned ponp (one pass) 16.50 dB against best reference biharmonic")
    assert "the learned method wins by 0.66 dB PSNR." in line
    assert line.endswith("The linear learned prior gaussian-prior gives 17.32 dB: ponp is behind by 0.82 dB.")
    rows[2] = _row("glyphs", "ponp", "process", "one pass", 17.50)
    assert verdict(rows).endswith("ponp is ahead by 0.18 dB.")


def test_compare_on_shapes_writes_each_methods_mesh(tmp_path, capsys):
    from genfield.comparison import load_group, run_comparison

    budget = {**load_group("budget", "tiny"), "random_init_steps": 2}
    rows = run_comparison(
        ["shapes"],
        ["fomaml", "prior_residual"],
        "siren",
        budget,
        tmp_path,
        device="cpu",
        data_overrides={"shapes": {"n_signals": 8, "eval_signals": 2}},
        field_overrides={"hidden": 16, "n_layers": 2},
        progress=False,
    )
    assert {r.route for r in rows} == {"classical", "meta"}
    assert "prior_residual skipped on shapes: it applies to image, ct data only" in capsys.readouterr().out
    written = {p.name for p in (tmp_path / "shapes").iterdir()}
    assert {"mesh_fomaml.ply", "mesh_fomaml.png"} <= written or "mesh_fomaml.txt" in written


def test_compare_trains_the_prior_residual_from_the_gaussian_prior_of_the_same_collection(tmp_path):
    from genfield.comparison import load_group, run_comparison

    budget = {**load_group("budget", "tiny"), "meta_steps": 3, "random_init_steps": [2]}
    rows = run_comparison(
        ["glyphs"],
        ["prior_residual"],
        "siren",
        budget,
        tmp_path,
        device="cpu",
        data_overrides={"glyphs": {"n_signals": 96, "size": 12}},
        method_overrides={"prior_residual": {"options": {"channels": [8, 16]}}},
        progress=False,
    )
    value = {r.method: r.value for r in rows}
    learned = next(r for r in rows if r.method == "prior_residual")
    assert learned.route == "process" and learned.setting == "one pass"
    # three steps from a zero-initialised residual: the method is still the baseline's prior
    assert abs(value["prior_residual"] - value["gaussian-prior"]) < 0.3
    assert value["prior_residual"] > value["mean"]


def test_compare_scores_the_best_weights_on_validation(tmp_path):
    import csv

    from genfield.builders import build_data, build_field_for, build_method
    from genfield.checkpoint import load_checkpoint
    from genfield.comparison import load_group, run_comparison
    from genfield.evaluation import evaluate

    data = {"n_signals": 48, "size": 8, "context_fraction": 0.3}
    budget = {**load_group("budget", "tiny"), "meta_steps": 6, "validations": 3, "adapt_steps": [0, 2]}
    # an outer rate far too large: training degrades after its first check, so the best is not the last
    overrides = {"maml": {"lr": 0.3}}
    rows = run_comparison(
        ["glyphs"],
        ["maml"],
        "siren",
        budget,
        tmp_path,
        device="cpu",
        data_overrides={"glyphs": data},
        method_overrides=overrides,
        field_overrides={"hidden": 16, "n_layers": 2},
        progress=False,
    )
    with (tmp_path / "glyphs" / "maml" / "validation.csv").open() as file:
        checks = [(int(r["step"]), float(r["psnr"])) for r in csv.DictReader(file)]
    assert [step for step, _ in checks] == [2, 4, 6]
    best_step = max(checks, key=lambda c: c[1])[0]
    assert best_step < 6
    learned = [r for r in rows if r.method == "maml"]
    assert {r.weights_step for r in learned} == {best_step}
    assert [r.validation for r in learned] == pytest.approx([max(psnr for _, psnr in checks)] * 2, abs=1e-4)
    assert all(r.coverage90 is None for r in learned)  # MAML reports no variance
    # the rows are the best checkpoint's scores, reloaded and evaluated independently
    config = {**load_group("data", "glyphs", data), "batch_size": budget["batch_size"]}
    config["eval_signals"] = budget["eval_signals"]
    bundle = build_data(config, seed=0)
    fresh = build_method(
        load_group("method", "maml", overrides["maml"]),
        build_field_for(load_group("field", "siren", {"options": {"hidden": 16, "n_layers": 2}}), bundle),
        bundle,
    )
    load_checkpoint(
        tmp_path / "glyphs" / "maml" / "checkpoints" / "best.safetensors", fresh, restore_rng=False
    )
    test = bundle.eval_batch("test", seed=0)
    for row in learned:
        assert row.value == pytest.approx(evaluate(fresh, test, steps=row.steps).summary()["psnr"], abs=1e-4)
