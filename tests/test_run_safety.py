"""No silent data loss in training runs: refused re-runs, booleans, resume checks, logs that survive
interruptions (SIGKILL, SIGTERM, Ctrl-C), checkpoint files, empty splits, a closed output pipe."""

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch

from genfield.app import _guard
from genfield.checkpoint import read_checkpoint_metadata, save_checkpoint
from genfield.cli import choose_threads, main
from genfield.datasets.builtin import builtin_faces
from genfield.datasets.images import ImageSplit
from genfield.datasets.sampling import StepBatches
from genfield.fields.field import build_field
from genfield.meta import build_meta_learner
from genfield.runfiles import Interrupted, append_rows, keep_rows, kept, read_rows
from genfield.training import TrainConfig, train

TINY = [
    "method=reptile",
    "data.size=8",
    "data.batch_size=2",
    "data.eval_signals=2",
    "field.options.hidden=16",
    "field.options.n_layers=2",
    "train.progress=false",
    "train.log_every=1",
    "eval.figure=false",
]


def genfield(run: Path, *overrides: str) -> int:
    """``genfield train`` in-process into ``run``; the exit status (0 when it returns)."""
    try:
        main(["train", *TINY, *overrides, f"hydra.run.dir={run}"])
    except SystemExit as exit_info:
        return exit_info.code
    return 0


def step_of(run: Path) -> int:
    return read_checkpoint_metadata(run / "checkpoints" / "last.safetensors")["step"]


def rows(path: Path) -> list[dict[str, str]]:
    return read_rows(path)


def one_error_line(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("genfield: error: "), lines
    return lines[0]


# --------------------------------------------------------------------------------------------------
# 1, 2, 4: a run folder holding a checkpoint is reused only on purpose
# --------------------------------------------------------------------------------------------------
def test_second_train_into_a_run_folder_refuses_and_keeps_every_file(tmp_path, capsys):
    run = tmp_path / "run"
    assert genfield(run, "train.steps=3") == 0
    capsys.readouterr()
    files = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    assert genfield(run, "train.steps=5") == 2
    line = one_error_line(capsys)
    assert str(run) in line and "resume=true" in line and "overwrite=true" in line and "(step 3)" in line
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == files  # .hydra/ included
    assert step_of(run) == 3


def test_overwrite_replaces_the_checkpoint_and_the_logs(tmp_path, capsys):
    run = tmp_path / "run"
    assert genfield(run, "train.steps=4") == 0
    assert genfield(run, "train.steps=2", "overwrite=true") == 0
    assert step_of(run) == 2
    assert [r["step"] for r in rows(run / "metrics.csv")] == ["0", "1"]


@pytest.mark.parametrize("value", ["no", "0"])
def test_resume_needs_a_boolean_and_a_bad_one_resumes_nothing(value, tmp_path, capsys):
    run = tmp_path / "run"
    assert genfield(run, "train.steps=2") == 0
    capsys.readouterr()
    before = (run / "checkpoints" / "last.safetensors").read_bytes(), (run / "metrics.csv").read_text()
    assert genfield(run, "train.steps=4", f"resume={value}") == 2
    assert "resume=" in one_error_line(capsys)
    after = (run / "checkpoints" / "last.safetensors").read_bytes(), (run / "metrics.csv").read_text()
    assert after == before


@pytest.mark.parametrize(
    "changed, listed",
    [(["method=maml"], "method.name: 'reptile' != 'maml'"), (["method.lr=0.01"], "method.lr: 0.003 != 0.01")],
)
def test_resume_lists_the_config_keys_that_differ_and_refuses(changed, listed, tmp_path, capsys):
    run = tmp_path / "run"
    assert genfield(run, "train.steps=2") == 0
    capsys.readouterr()
    assert genfield(run, "train.steps=4", "resume=true", *changed) == 2
    assert listed in one_error_line(capsys)
    assert step_of(run) == 2


def test_resume_below_the_checkpoint_step_says_so(tmp_path, capsys):
    run = tmp_path / "run"
    assert genfield(run, "train.steps=4") == 0
    capsys.readouterr()
    assert genfield(run, "train.steps=2", "resume=true") == 2
    assert "train.steps=2 is below the step of checkpoint" in one_error_line(capsys)
    assert step_of(run) == 4


def test_resume_continues_with_the_rows_of_an_uninterrupted_run(tmp_path, capsys):
    """Allowed keys change (train.steps, the validation cadence); the logs match a straight run."""
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert genfield(straight, "train.steps=6", "train.val_every=2") == 0
    assert genfield(resumed, "train.steps=3", "train.val_every=2") == 0
    assert genfield(resumed, "train.steps=6", "train.val_every=2", "resume=true") == 0
    assert step_of(resumed) == 6
    assert rows(resumed / "metrics.csv") == rows(straight / "metrics.csv")
    assert [r["step"] for r in rows(resumed / "metrics.csv")] == [str(s) for s in range(6)]
    assert rows(resumed / "validation.csv") == rows(straight / "validation.csv")


# --------------------------------------------------------------------------------------------------
# 5, 14: the logs grow as training goes; SIGKILL, SIGTERM and Ctrl-C keep them
# --------------------------------------------------------------------------------------------------
def start_training(run: Path, *overrides: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[1])}
    command = [sys.executable, "-m", "genfield", "train", *TINY, *overrides, f"hydra.run.dir={run}"]
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_rows(process: subprocess.Popen, path: Path, count: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        if path.is_file() and len(path.read_text().splitlines()) > count:
            return
        time.sleep(0.05)
    process.kill()
    raise AssertionError(f"no {count} rows in {path}: {process.communicate()}")


def test_sigkill_keeps_the_logged_rows_and_resume_logs_each_step_once(tmp_path):
    run, straight = tmp_path / "run", tmp_path / "straight"
    process = start_training(run, "train.steps=100000", "train.checkpoint_every=3")
    wait_for_rows(process, run / "metrics.csv", 8)
    process.kill()
    process.wait()
    logged = [int(r["step"]) for r in rows(run / "metrics.csv")]
    step = step_of(run)
    assert logged == list(range(len(logged))) and len(logged) >= 8 and step >= 6
    total = step + 2
    assert genfield(run, f"train.steps={total}", "train.checkpoint_every=3", "resume=true") == 0
    assert genfield(straight, f"train.steps={total}", "train.checkpoint_every=3") == 0
    assert [int(r["step"]) for r in rows(run / "metrics.csv")] == list(range(total))
    for mine, theirs in zip(rows(run / "metrics.csv"), rows(straight / "metrics.csv"), strict=True):
        assert float(mine["loss"]) == pytest.approx(float(theirs["loss"]), rel=1e-5)
    assert not list((run / "checkpoints").glob(".*.tmp"))


def test_sigterm_checkpoints_keeps_the_rows_and_exits_143(tmp_path):
    run = tmp_path / "run"
    process = start_training(run, "train.steps=100000", "train.checkpoint_every=100000")
    wait_for_rows(process, run / "metrics.csv", 3)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 143, err
    assert "Traceback" not in err
    step = step_of(run)
    logged = [int(r["step"]) for r in rows(run / "metrics.csv")]
    assert logged == list(range(step)) and step >= 3  # every finished step: a row and the checkpoint
    assert f"(step {step})" in err and "metrics.csv" in err and "SIGTERM" in err


def learner():
    torch.manual_seed(0)
    return build_meta_learner(
        "fomaml", build_field("siren", head="grey", hidden=16, n_layers=2), inner_steps=1
    )


def faces_batches():
    return StepBatches(builtin_faces("train", size=8), ImageSplit(context_fraction=0.25), 2, seed=3)


def test_ctrl_c_stops_at_a_step_boundary_with_a_checkpoint_it_names(tmp_path):
    def validate(method):  # Ctrl-C arrives while step 2 is validated
        signal.raise_signal(signal.SIGINT)
        return {"psnr": 1.0}

    config = TrainConfig(steps=50, lr=1e-2, val_every=2, checkpoint_every=1000, progress=False)
    with pytest.raises(Interrupted) as interrupt:
        train(learner(), faces_batches(), config, tmp_path, validate=validate)
    assert interrupt.value.exit_code == 130
    assert read_checkpoint_metadata(tmp_path / "checkpoints" / "last.safetensors")["step"] == 2
    assert "after step 2 of 50" in str(interrupt.value) and "(step 2)" in str(interrupt.value)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers restored


def test_an_interrupt_before_any_checkpoint_claims_none(tmp_path, capsys):
    def work():
        raise KeyboardInterrupt

    with pytest.raises(SystemExit) as exit_info:
        _guard(work)
    assert exit_info.value.code == 130
    assert capsys.readouterr().err.strip() == "genfield: interrupted; kept: nothing (no run folder yet)"
    append_rows(tmp_path / "metrics.csv", [{"step": 0, "loss": 1.0}])
    assert kept(tmp_path) == "metrics.csv (1 rows)"  # rows, and no checkpoint named
    save_checkpoint(tmp_path / "checkpoints" / "last.safetensors", learner(), step=1)
    assert kept(tmp_path).startswith(f"checkpoint {tmp_path / 'checkpoints' / 'last.safetensors'} (step 1)")


def test_train_progress_bar_carries_its_label(tmp_path, capsys):
    config = TrainConfig(steps=1, lr=1e-2, progress=True)
    train(learner(), faces_batches(), config, tmp_path, label="fomaml on faces")
    assert "fomaml on faces" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------------
# The pieces: CSV logs, checkpoint files
# --------------------------------------------------------------------------------------------------
def test_rows_append_and_a_new_column_keeps_the_old_rows(tmp_path):
    path = tmp_path / "metrics.csv"
    append_rows(path, [{"step": 0, "loss": 1.5}])
    append_rows(path, [{"step": 1, "loss": float("nan")}])
    append_rows(path, [{"step": 2, "loss": 0.5, "psnr": 20.0}])
    with path.open(newline="") as file:
        table = list(csv.reader(file))
    assert table == [["step", "loss", "psnr"], ["0", "1.5", ""], ["1", "nan", ""], ["2", "0.5", "20.0"]]
    keep_rows(path, lambda step: step < 2)
    assert [r["step"] for r in read_rows(path)] == ["0", "1"]
    keep_rows(path, lambda step: step < 0)
    assert not path.exists()


def test_checkpoint_has_the_umask_mode_and_a_stale_temporary_is_removed(tmp_path):
    stale = tmp_path / ".last.safetensors.12345.dead.tmp"
    stale.write_bytes(b"left by a SIGKILL mid-write")
    umask = os.umask(0o022)
    try:
        path = save_checkpoint(tmp_path / "last.safetensors", learner(), step=1)
    finally:
        os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.safetensors"]
    assert read_checkpoint_metadata(path)["step"] == 1


# --------------------------------------------------------------------------------------------------
# 12, 13, 16, 17: empty splits, output folders, threads, a closed pipe
# --------------------------------------------------------------------------------------------------
def test_an_empty_validation_split_names_it_and_the_minimum_count(tmp_path, capsys):
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(3):
        iio.imwrite(folder / f"im{i}.png", np.full((12, 12, 3), 40 * i, dtype=np.uint8))
    overrides = ["data=images", f"data.root={folder}", "train.steps=1"]
    assert genfield(tmp_path / "run", *overrides) == 2
    line = one_error_line(capsys)
    assert "split is empty (3 signals" in line and "data.split_fractions=[0.8, 0.1, 0.1]" in line
    assert "give at least 8 signals" in line  # 8 x (0.8, 0.1, 0.1) -> 6 / 1 / 1; 7 -> 6 / 0 / 1


def test_threads_follow_omp_num_threads(monkeypatch):
    threads = torch.get_num_threads()
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    try:
        assert choose_threads() == 3 and torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("args", [["--help"], ["train", "--help"]])
def test_help_into_a_closed_pipe_ends_quietly(args):
    read, write = os.pipe()
    os.close(read)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    result = subprocess.run(
        [sys.executable, "-m", "genfield", *args], stdout=write, stderr=subprocess.PIPE, text=True, env=env
    )
    os.close(write)
    assert result.returncode == 141 and "Traceback" not in result.stderr, result.stderr
