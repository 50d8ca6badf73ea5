"""Stable meta-training: outer schedule, clipping, best checkpoint, monitors, non-finite inner loops."""

import math
import warnings
from pathlib import Path

import pytest
import torch

from genfield.checkpoint import load_checkpoint, read_checkpoint_metadata
from genfield.datasets.builtin import builtin_faces
from genfield.datasets.images import ImageSplit
from genfield.datasets.sampling import StepBatches
from genfield.errors import InputError
from genfield.evaluation import evaluate
from genfield.fields import build_field
from genfield.meta import MetaStepSkipped, build_meta_learner
from genfield.meta.inner import NonFiniteAdaptation
from genfield.monitor import LossRising, RisingLoss
from genfield.schedules import build_scheduler
from genfield.training import TrainConfig, load_best, train

pytestmark = pytest.mark.usefixtures("one_thread")


def learner(name="fomaml", seed=0, **options):
    torch.manual_seed(seed)
    field = build_field("siren", head="grey", hidden=8, n_layers=2)
    return build_meta_learner(name, field, inner_steps=2, **options)


def batches(seed=3):
    return StepBatches(builtin_faces("train", size=8), ImageSplit(context_fraction=0.25), 2, seed=seed)


# -- schedule ------------------------------------------------------------------------------------
@pytest.mark.parametrize("schedule", ["cosine", "constant"])
def test_schedule_warms_up_linearly_then_decays_as_the_formula(schedule):
    base, total, warmup, floor = 0.02, 30, 5, 0.1
    weight = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([weight], lr=base)
    scheduler = build_scheduler(optimizer, total, warmup, schedule, floor)
    seen = []
    for _ in range(total):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    # the schedule written out independently: numpy-free, one branch per phase
    expected = [base * (k + 1) / warmup for k in range(warmup)]
    for k in range(warmup, total):
        t = (k - warmup) / (total - warmup)
        cosine = floor + (1 - floor) * (1 + math.cos(math.pi * t)) / 2
        expected.append(base * (cosine if schedule == "cosine" else 1.0))
    assert seen == pytest.approx(expected, rel=1e-12)
    assert max(seen) == pytest.approx(base)
    if schedule == "cosine":
        assert all(a >= b for a, b in zip(seen[warmup:], seen[warmup + 1 :]))  # decays monotonically


@pytest.mark.parametrize(
    "bad, match",
    [
        ({"grad_clip": 0.0}, "train.grad_clip=0.0"),
        ({"grad_clip": -1.0}, "train.grad_clip=-1.0"),
        ({"schedule": "linear"}, "cosine"),
        ({"warmup_steps": -1}, "train.warmup_steps=-1"),
        ({"min_lr_factor": 2.0}, r"train.min_lr_factor=2.0: need a value in \[0, 1\]"),
    ],
)
def test_bad_training_settings_are_input_errors(bad, match):
    with pytest.raises(InputError, match=match):
        TrainConfig(**bad)


def test_clipping_bounds_the_update_and_the_log_records_norm_and_rate(tmp_path):
    config = TrainConfig(steps=4, lr=1e-2, grad_clip=1e-6, log_every=1, warmup_steps=2, progress=False)
    model = learner()
    result = train(model, batches(), config, tmp_path)
    norms = [row["grad_norm"] for row in result.history]
    assert all(n > 1e-6 for n in norms)  # the unclipped norm is what is logged
    assert [row["lr"] for row in result.history] == pytest.approx([5e-3, 1e-2, 1e-2, 5.5e-3])
    # SGD on the clipped gradient would move less than lr * clip; Adam's first step moves ~lr per
    # entry whatever the scale, so compare against a run without clipping instead
    free = learner()
    train(free, batches(), TrainConfig(**{**config.__dict__, "grad_clip": None}), tmp_path / "free")
    moved = [(a - b).abs().max() for a, b in zip(model.state_dict().values(), free.state_dict().values())]
    assert max(moved) > 0  # clipping changed the trajectory (Adam's epsilon sees the tiny gradients)


# -- best checkpoint -----------------------------------------------------------------------------
def test_best_checkpoint_holds_the_weights_of_the_best_validation_score(tmp_path):
    val = batches(seed=9)[0]
    model = learner(inner_lr=0.3)

    def validate(m):
        return evaluate(m, val, steps=2).summary()

    config = TrainConfig(steps=12, lr=3e-2, val_every=2, checkpoint_every=4, progress=False)
    result = train(model, batches(), config, tmp_path, validate=validate)
    scores = [row["psnr"] for row in result.validation]
    best_step = result.validation[scores.index(max(scores))]["step"]
    assert result.best == {"metric": "psnr", "value": max(scores), "step": best_step}
    path = tmp_path / "checkpoints" / "best.safetensors"
    assert result.best_checkpoint == path and read_checkpoint_metadata(path)["step"] == best_step
    restored = learner(seed=4, inner_lr=0.3)
    assert load_best(restored, result) == result.best
    assert validate(restored)["psnr"] == pytest.approx(max(scores), abs=1e-5)
    # the last checkpoint is the last step's, whatever was best
    last = learner(seed=5, inner_lr=0.3)
    assert load_checkpoint(tmp_path / "checkpoints" / "last.safetensors", last)["step"] == 12
    assert validate(last)["psnr"] == pytest.approx(scores[-1], abs=1e-5)


# -- rising loss ---------------------------------------------------------------------------------
def test_rising_loss_fires_once_on_a_sustained_rise_and_not_on_a_noisy_fall():
    g = torch.Generator().manual_seed(0)
    noise = (0.3 * torch.randn(200, generator=g)).exp().tolist()  # +-30 % multiplicative noise
    falling = [(0.05 * math.exp(-k / 60) + 0.005) * n for k, n in enumerate(noise)]
    monitor = RisingLoss()
    assert not any(monitor.update(10 * k, v) for k, v in enumerate(falling))
    # falls to a minimum at log 50, then climbs back up by 10x over 150 logs (MAML on faces)
    rising = [0.01 * (1 + max(k - 50, 0) / 15) * n for k, n in enumerate(noise)]
    monitor = RisingLoss()
    fired = [10 * k for k, v in enumerate(rising) if monitor.update(10 * k, v)]
    assert len(fired) == 1 and 500 < fired[0] < 1200 and monitor.fired_at == fired[0]
    # a Gaussian NLL that falls below zero and then wanders at its minimum does not fire (a margin
    # relative to a negative minimum would); one that climbs back by most of its drop does
    flat = [max(1.0 - k / 20, -0.26) + 0.02 * math.sin(k) for k in range(200)]
    monitor = RisingLoss()
    assert not any(monitor.update(k, v) for k, v in enumerate(flat))
    climbing = flat[:60] + [-0.26 + 1.2 * (k / 100) for k in range(140)]
    monitor = RisingLoss()
    assert sum(monitor.update(k, v) for k, v in enumerate(climbing)) == 1


def test_training_warns_once_and_marks_the_metrics_when_the_loss_rises(tmp_path):
    # MAML with a too large outer rate: the small-scale version of its divergence on faces
    model = learner("maml", inner_lr=0.3)
    config = TrainConfig(steps=120, lr=3e-2, schedule="constant", warmup_steps=0, grad_clip=None, log_every=4)
    config.progress = False
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = train(model, batches(), config, tmp_path)
    losses = [row["loss"] for row in result.history]
    marked = [row["step"] for row in result.history if row.get("loss_rising")]
    rises = [w for w in caught if issubclass(w.category, LossRising)]
    assert sum(losses[-5:]) / 5 > 2 * sum(losses[:5]) / 5  # it did rise
    assert len(marked) == 1 and len(rises) == 1 and f"step {marked[0]}" in str(rises[0].message)


@pytest.mark.parametrize("name", ["reptile", "ibaml"])
def test_lr_scale_sets_the_outer_rate_of_every_group_through_the_trainer(name, tmp_path):
    # Adam's first step moves every entry with a non-negligible gradient by its group's rate exactly
    config = TrainConfig(
        steps=1, lr=1e-2, schedule="constant", warmup_steps=0, grad_clip=None, progress=False
    )
    moved = {}
    for scale in (1.0, 0.25):
        model = learner(name, inner_lr=0.3, lr_scale=scale)
        before = {k: p.detach().clone() for k, p in model.named_parameters() if p.requires_grad}
        train(model, batches(), config, tmp_path / str(scale))
        moved[scale] = {
            k: (p.detach() - before[k]).abs().max() for k, p in model.named_parameters() if k in before
        }
    for key, step in moved[1.0].items():
        torch.testing.assert_close(moved[0.25][key], 0.25 * step, rtol=1e-3, atol=0)
    assert max(moved[1.0].values()) == pytest.approx(1e-2 * (30.0 if name == "ibaml" else 1.0), rel=1e-3)


# -- non-finite inner loops ----------------------------------------------------------------------
@pytest.mark.parametrize("name", ["maml", "fomaml", "reptile", "imaml"])
def test_a_nan_in_one_signals_inner_loop_is_reported_and_skipped(name, tmp_path):
    batch = batches()[0]
    poisoned = batch.context.values.clone()
    poisoned[1, 0] = float("nan")  # signal 1's context: its inner loop goes NaN, signal 0's does not
    batch.context.values = poisoned
    model = learner(name, inner_lr=0.3)
    with pytest.warns(NonFiniteAdaptation, match=rf"{name}: non-finite values .* signal\(s\) \[1\] of 2"):
        state = model.adapt(batch.context, batch.forward_map)
    assert state.finite.tolist() == [True, False]
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.warns(MetaStepSkipped, match="non-finite values in the inner loop"):
        metrics = model.compute_gradients(batch)
    assert metrics["skipped"] == 1 and all(p.grad is None for p in model.parameters())
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_a_meta_gradient_whose_norm_overflows_is_a_skipped_step_not_a_silent_no_op(tmp_path):
    # a diverging inner loop, differentiated (MAML on shapes at the image inner rate): every entry of
    # the gradient and the loss finite, their norm not; clipping would scale every step to zero
    torch.manual_seed(0)
    field = build_field("siren", head="grey", hidden=8, n_layers=2)
    model = build_meta_learner("maml", field, inner_steps=4, inner_lr=30.0)
    grads, metrics = model._outer_and_gradient(batches()[0])
    assert all(torch.isfinite(g).all() for g in grads.values()) and torch.isfinite(metrics["loss"])
    before = [p.detach().clone() for p in model.parameters()]
    config = TrainConfig(steps=2, lr=1e-2, log_every=1, progress=False)
    with pytest.warns(MetaStepSkipped, match="norm inf"):
        result = train(model, batches(), config, tmp_path)
    assert [row["skipped"] for row in result.history] == [1.0, 1.0]
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_reconstruct_warns_for_a_learner_whose_adapt_does_not_check(tmp_path):
    batch = batches()[0]
    model = learner("ibaml", inner_lr=0.3)
    poisoned = batch.context.values.clone()
    poisoned[0, 0] = float("inf")
    batch.context.values = poisoned
    queries, where = batch.target.queries, batch.forward_map
    with pytest.warns(NonFiniteAdaptation, match=r"ibaml: non-finite values .* signal\(s\) \[0\] of 2"):
        model.reconstruct(batch.context, where, queries, where, steps=2, variance=False)


# -- bounded learned inner rates -----------------------------------------------------------------
def test_bounded_per_layer_inner_rates_start_at_inner_lr_and_stay_below_the_bound(tmp_path):
    model = learner("maml", inner_lr=0.3, meta_sgd=True, inner_lr_per="layer", inner_lr_max=0.5)
    rates = model._rates()
    assert all(r.shape == () for r in rates.values())
    assert [float(r) for r in rates.values()] == pytest.approx([0.3] * len(rates))
    train(model, batches(), TrainConfig(steps=5, lr=1.0, warmup_steps=0, progress=False), tmp_path)
    after = [float(r) for r in model._rates().values()]
    assert all(0 < r < 0.5 for r in after) and after != pytest.approx([0.3] * len(rates))
    with pytest.raises(InputError, match="inner_lr_max=0.2: need a bound above inner_lr=0.3"):
        learner("maml", inner_lr=0.3, meta_sgd=True, inner_lr_max=0.2)
    with pytest.raises(InputError, match="inner_lr_per"):
        learner("maml", meta_sgd=True, inner_lr_per="block")


def test_train_command_summary_names_the_best_step_and_scores_its_weights(tmp_path):
    import csv

    from hydra import compose, initialize_config_dir

    import genfield
    from genfield.app import run_train

    overrides = ["experiment=faces_maml", "train.steps=4", "train.val_every=1", "train.progress=false"]
    overrides += ["data.size=8", "data.batch_size=2", "data.eval_signals=2", "eval.figure=false"]
    overrides += ["field.options.hidden=16", "field.options.n_layers=2"]
    configs = str(Path(genfield.__file__).parent / "configs")
    with initialize_config_dir(config_dir=configs, version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    summary = run_train(cfg, out_dir=tmp_path)
    with (tmp_path / "validation.csv").open() as file:
        rows = [{k: float(v) for k, v in row.items()} for row in csv.DictReader(file)]
    best = max(rows, key=lambda row: row["psnr"])
    assert summary["best_step"] == best["step"] and summary["best_val_psnr"] == pytest.approx(best["psnr"])
    assert (tmp_path / "checkpoints" / "best.safetensors").is_file()
    assert math.isfinite(summary["best_test_psnr"]) and math.isfinite(summary["test_psnr"])


@pytest.mark.usefixtures("float64_one_thread")
def test_top_curvature_matches_a_dense_eigendecomposition_and_caps_the_rates():
    from genfield.meta.inner import cap_rates, top_curvature
    from genfield.meta.tree import expand_signals

    model = learner("maml")
    batch = batches()[0]
    context = batch.context
    init = expand_signals({k: v.detach() for k, v in model.theta().items()}, context.num_signals)
    objective = model.context_objective(context, batch.forward_map)
    estimate = top_curvature(objective, init, iterations=300)
    differences = top_curvature(objective, init, iterations=300, double_backward=False)  # no 2nd backward
    torch.testing.assert_close(differences, estimate, rtol=2e-3, atol=0)
    names, shapes = list(init), [v.shape[1:] for v in init.values()]
    sizes = [math.prod(s) for s in shapes]
    for s in range(context.num_signals):

        def loss(flat, s=s):
            pieces = torch.split(flat, sizes)
            params = {k: p.reshape(1, *shape) for k, p, shape in zip(names, pieces, shapes)}
            one = type(context)(context.queries[s : s + 1], context.values[s : s + 1])
            return model.inner_loss(params, one, batch.forward_map).sum()

        flat = torch.cat([init[k][s].reshape(-1) for k in names])
        dense = torch.autograd.functional.hessian(loss, flat)
        exact = torch.linalg.eigvalsh(dense).abs().max()
        assert float(estimate[s]) == pytest.approx(float(exact), rel=1e-3)
    capped = cap_rates(0.3, init, estimate, cap=1.0)
    for s in range(context.num_signals):
        alpha = max(float(r[s].max()) for r in capped.values())
        assert alpha == pytest.approx(min(0.3, 1.0 / float(estimate[s])))
