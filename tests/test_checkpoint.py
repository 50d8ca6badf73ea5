"""Checkpoints: round trip, atomic writes, config differences, exact resume (schedule included), NaN stops."""

import pytest
import torch

from genfield.checkpoint import (
    config_differences,
    load_checkpoint,
    read_checkpoint_metadata,
    save_checkpoint,
)
from genfield.datasets.builtin import builtin_faces
from genfield.datasets.images import ImageSplit
from genfield.datasets.sampling import StepBatches
from genfield.errors import InputError
from genfield.fields import build_field
from genfield.meta import build_meta_learner
from genfield.training import TrainConfig, TrainingDiverged, train


def learner(seed=0):
    torch.manual_seed(seed)
    field = build_field("siren", head="grey", hidden=8, n_layers=2)
    return build_meta_learner("fomaml", field, inner_steps=2)


def batches():
    return StepBatches(builtin_faces("train", size=8), ImageSplit(context_fraction=0.25), 2, seed=3)


def test_round_trip_restores_weights_optimizer_and_rng(tmp_path):
    model = learner()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.compute_gradients(batches()[0])
    optimizer.step()
    path = save_checkpoint(tmp_path / "c.safetensors", model, optimizer, step=7, config={"a": {"b": 1}})
    expected_draw = torch.rand(3)
    other = learner(seed=1)
    other_optimizer = torch.optim.Adam(other.parameters(), lr=1e-2)
    meta = load_checkpoint(path, other, other_optimizer)
    assert meta["step"] == 7 and meta["config"] == {"a": {"b": 1}}
    for a, b in zip(model.state_dict().values(), other.state_dict().values()):
        torch.testing.assert_close(a, b)
    state, restored = optimizer.state_dict()["state"], other_optimizer.state_dict()["state"]
    for index in state:
        torch.testing.assert_close(state[index]["exp_avg_sq"], restored[index]["exp_avg_sq"])
    torch.testing.assert_close(torch.rand(3), expected_draw)  # the RNG continues where it was saved


def test_failed_write_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch):
    model = learner()
    path = save_checkpoint(tmp_path / "last.safetensors", model, step=1)
    before = path.read_bytes()

    def crash(tensors, file, metadata):
        file.write(b"half a checkpoint")
        raise KeyboardInterrupt  # killed in the middle of writing

    monkeypatch.setattr("genfield.checkpoint.save_file", crash)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, model, step=2)
    assert path.read_bytes() == before
    assert read_checkpoint_metadata(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.safetensors"]  # no temporary left behind


def test_incompatible_checkpoint_names_the_keys(tmp_path):
    path = save_checkpoint(tmp_path / "c.safetensors", learner())
    wider = build_meta_learner("fomaml", build_field("siren", head="grey", hidden=16, n_layers=2))
    with pytest.raises(InputError, match="shape mismatch .*init"):
        load_checkpoint(path, wider)
    with pytest.raises(InputError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "missing.safetensors", wider)
    assert config_differences({"field": {"hidden": 8}, "a": 1}, {"field": {"hidden": 16}, "a": 1}) == [
        "field.hidden: 8 != 16"
    ]


def test_resume_gives_the_same_parameters_as_an_uninterrupted_run(tmp_path):
    config = TrainConfig(steps=6, lr=1e-2, checkpoint_every=3, progress=False)
    straight = learner()
    train(straight, batches(), config, tmp_path / "straight")
    interrupted = learner()
    train(interrupted, batches(), TrainConfig(steps=3, lr=1e-2, progress=False), tmp_path / "resumed")
    resumed = learner(seed=5)  # fresh weights: everything must come from the checkpoint
    result = train(resumed, batches(), config, tmp_path / "resumed", resume=True)
    assert result.steps == 6
    for a, b in zip(straight.state_dict().values(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


class Interrupted:
    """The same meta-batches, with a Ctrl-C arriving before step ``stop``."""

    def __init__(self, stop: int) -> None:
        self.batches, self.stop = batches(), stop

    def __getitem__(self, step):
        if step == self.stop:
            raise KeyboardInterrupt
        return self.batches[step]


def test_resume_mid_schedule_continues_the_cosine_schedule_exactly(tmp_path):
    config = TrainConfig(steps=8, lr=1e-2, warmup_steps=3, checkpoint_every=1, log_every=1, progress=False)
    straight = learner()
    full = train(straight, batches(), config, tmp_path / "straight")
    with pytest.raises(KeyboardInterrupt):
        train(learner(), Interrupted(5), config, tmp_path / "resumed")
    meta = read_checkpoint_metadata(tmp_path / "resumed" / "checkpoints" / "last.safetensors")
    assert meta["step"] == 5 and meta["extra"]["scheduler"]["last_epoch"] == 5
    resumed = learner(seed=5)
    rest = train(resumed, batches(), config, tmp_path / "resumed", resume=True)
    assert [row["lr"] for row in rest.history] == [row["lr"] for row in full.history[5:]]
    for a, b in zip(straight.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)  # bit-identical


def test_non_finite_loss_stops_training_and_keeps_the_last_checkpoint(tmp_path):
    model = learner()
    train(model, batches(), TrainConfig(steps=2, lr=1e-2, progress=False), tmp_path)
    checkpoint = tmp_path / "checkpoints" / "last.safetensors"
    saved = checkpoint.read_bytes()
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(float("nan"))
    with pytest.raises(
        TrainingDiverged,
        match=r"non-finite loss at step 0; last finite checkpoint: .*last.safetensors \(step 2\)",
    ):
        train(model, batches(), TrainConfig(steps=4, lr=1e-2, progress=False), tmp_path, resume=False)
    assert checkpoint.read_bytes() == saved
