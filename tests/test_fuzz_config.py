"""Fuzzed train / compare / demo configs: each bad value is one line naming it, exit status 2, no
traceback, before any work -- and nothing already written in the run folder changes."""

import hashlib

import pytest
import torch

from genfield.cli import main

TINY = [
    "method=reptile",
    "data.size=8",
    "data.batch_size=2",
    "data.eval_signals=2",
    "field.options.hidden=16",
    "field.options.n_layers=2",
    "train.steps=2",
    "train.progress=false",
    "eval.figure=false",
]
NO_CUDA = "CUDA is not available" if not torch.cuda.is_available() else "CUDA device"

# (command, overrides, text the one line must contain)
CASES = [
    ("train", ["train.steps=abc"], "train.steps='abc': expected an integer >= 1"),
    ("train", ["train.steps=2.5"], "train.steps=2.5: expected an integer >= 1"),
    ("train", ["train.steps=-5"], "train.steps=-5: expected an integer >= 1"),
    ("train", ["train.steps=0"], "train.steps=0: expected an integer >= 1"),
    ("train", ["train.lr=fast"], "train.lr='fast': expected a finite number > 0"),
    ("train", ["train.lr=-1"], "train.lr=-1: expected a finite number > 0"),
    ("train", ["method.lr=inf"], "method.lr=inf: expected a finite number > 0"),
    ("train", ["train.grad_clip=-1"], "train.grad_clip=-1: expected a finite number > 0 (or null)"),
    ("train", ["train.grad_clip=0"], "train.grad_clip=0: expected a finite number > 0"),
    ("train", ["train.val_every=0"], "train.val_every=0: expected an integer >= 1"),
    ("train", ["train.log_every=0"], "train.log_every=0: expected an integer >= 1"),
    ("train", ["train.checkpoint_every=0"], "train.checkpoint_every=0: expected an integer >= 1"),
    ("train", ["train.progress=yes"], "train.progress='yes': expected true or false"),
    ("train", ["resume=no"], "resume='no': expected true or false"),
    ("train", ["resume=off"], "resume='off': expected true or false"),
    ("train", ["resume=maybe"], "resume='maybe': expected true or false"),
    ("train", ["resume=1"], "resume=1: expected true or false"),
    ("train", ["overwrite=sure"], "overwrite='sure': expected true or false"),
    ("train", ["resume=true", "overwrite=true"], "resume=true and overwrite=true exclude each other"),
    ("train", ["seed=-1"], "seed=-1: expected an integer >= 0"),
    ("train", ["device=tpu"], "device='tpu': expected auto, cpu, cuda or cuda:<index>"),
    ("train", ["device=cuda:99"], f"device='cuda:99': {NO_CUDA}"),
    ("train", ["data.size=0"], "data.size=0: expected an integer >= 1"),
    ("train", ["data.batch_size=0"], "data.batch_size=0: expected an integer >= 1"),
    ("train", ["data.context_fraction=0"], "data.context_fraction=0: expected a number in (0, 1]"),
    ("train", ["data.context_fraction=1.5"], "data.context_fraction=1.5: expected a number in (0, 1]"),
    ("train", ["field.options.hidden=0"], "field.options.hidden=0: expected an integer >= 1"),
    ("train", ["field.options.omega0=nan"], "field.options.omega0=nan: expected a finite number > 0"),
    ("train", ["method.options.inner_steps=0"], "method.options.inner_steps=0: expected an integer >= 1"),
    ("train", ["method.options.inner_lr=-0.1"], "method.options.inner_lr=-0.1: expected a finite number > 0"),
    (
        "train",
        ["method=maml", "method.options.by_kind.ct.inner_lr=0"],
        "method.options.by_kind.ct.inner_lr=0",
    ),
    (
        "train",
        ["method._target_=genfield.meta.Nope"],
        "method._target_='genfield.meta.Nope': no class or function of that name imports",
    ),
    ("train", ["field._target_=siren"], "field._target_='siren': expected a dotted path to a class"),
    ("train", ["method._target_=genfield.meta.ESTIMATORS"], "names a dict, not a class or function"),
    (
        "train",
        ["+method.options.inner_lrr=0.1"],
        "method._target_='genfield.meta.Reptile' takes no option(s)",
    ),
    ("train", ["+method.options.by_kind.ct.lamb=1"], "takes no option(s) ['lamb']"),
    (
        "train",
        ["method=fomaml", "method.options.first_order=1"],
        "method.options.first_order=1: expected true",
    ),
    ("train", ["eval.num_samples=0"], "eval.num_samples=0: expected an integer >= 1"),
    ("train", ["eval.steps=-1"], "eval.steps=-1: expected an integer >= 0 (or null)"),
    ("train", ["data=views", "data.rays_per_signal=0"], "data.rays_per_signal=0: expected an integer >= 1"),
    ("train", ["data=views", "data.split_fractions=[0.9,0.2,0.1]"], "data.split_fractions=[0.9, 0.2, 0.1]"),
    ("train", ["hydra.run.dir={blocker}/run"], "hydra.run.dir={blocker}/run: cannot write there"),
    ("compare", ["budget=tiny", "budget.meta_steps=-1"], "budget.meta_steps=-1: expected an integer >= 1"),
    ("compare", ["budget=tiny", "budget.adapt_steps=[]"], "budget.adapt_steps=[]: expected an integer >= 0"),
    ("compare", ["budget=tiny", "budget.random_init_steps=0"], "budget.random_init_steps=0"),
    ("compare", ["device=tpu"], "device='tpu': expected auto, cpu, cuda or cuda:<index>"),
    (
        "compare",
        ["data_overrides.ct_phantoms.resolution=0"],
        "data_overrides.ct_phantoms.resolution=0: expected an integer >= 1",
    ),
    ("compare", ["+field_options.hidden=0"], "field_options.hidden=0: expected an integer >= 1"),
    ("compare", ["datasets=[]"], "datasets=[]: expected a non-empty list of names"),
    ("compare", ["progress=maybe"], "progress='maybe': expected true or false"),
    (
        "compare",
        ["+method_overrides.maml.lr=-3"],
        "method_overrides.maml.lr=-3: expected a finite number > 0",
    ),
    (
        "compare",
        ["+method_overrides.maml._target_=genfield.nope.Learner"],
        "method_overrides.maml._target_='genfield.nope.Learner': no class or function",
    ),
    ("compare", ["hydra.run.dir={blocker}/run"], "hydra.run.dir={blocker}/run: cannot write there"),
    ("demo", ["budget.meta_steps=0"], "budget.meta_steps=0: expected an integer >= 1"),
    ("demo", ["seed=abc"], "seed='abc': expected an integer >= 0"),
    ("demo", ["budget.tto_steps=-2"], "budget.tto_steps=-2: expected an integer >= 0"),
    ("demo", ["budget.method_steps.ibaml=-1"], "expected a mapping of method name to an integer >= 0"),
    ("demo", ["+budget.method_steps.maml=5"], "budget.method_steps names ['maml'], not among the methods"),
]


def snapshot(root):
    """Every file under ``root`` with its bytes' hash (a changed, new or deleted file shows)."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in root.rglob("*")
        if p.is_file()
    }


@pytest.fixture
def workspace(tmp_path, monkeypatch):
    """A working directory whose run folder already holds files of an earlier job, and a plain
    file standing where a folder would have to be created (unwritable even for root)."""
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "config.yaml").write_text("seed: 0\n")
    (run / "metrics.csv").write_text("step,loss\n0,0.5\n")
    (tmp_path / "blocker").write_text("a file, not a folder")
    return tmp_path


@pytest.mark.parametrize("command, overrides, message", CASES, ids=[" ".join(c[1]) for c in CASES])
def test_bad_config_value_is_one_line_exit_2_and_changes_nothing(
    command, overrides, message, workspace, capsys
):
    blocker = workspace / "blocker"
    overrides = [o.format(blocker=blocker) for o in overrides]
    if not any(o.startswith("hydra.run.dir=") for o in overrides):
        overrides.append(f"hydra.run.dir={workspace / 'run'}")
    before = snapshot(workspace)
    with pytest.raises(SystemExit) as exit_info:
        main([command, *(TINY if command == "train" else []), *overrides])
    captured = capsys.readouterr()
    assert exit_info.value.code == 2, captured.err
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("genfield: error: ")
    assert message.format(blocker=blocker) in lines[0]
    assert "Traceback" not in captured.err + captured.out
    assert snapshot(workspace) == before
