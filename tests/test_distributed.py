"""Distributed training on CPU with gloo: 2 processes compute the meta-gradient of one process.

Two ranks (``torch.multiprocessing`` spawn, loopback only, a free port) each adapt half of a tiny
faces meta-batch and all-reduce; the result must equal the gradient one process computes on the
combined batch (relative difference <= 1e-5) for MAML, iBaML and PONP. Then ``torchrun -m genfield
train`` with 2 processes writes one checkpoint and resumes from it.

Monte-Carlo noise: iBaML's reparameterisation and PONP's latent draws are drawn for the whole global
meta-batch on every rank and each rank keeps the rows of its signals (``randn_for_shard``, placed by
the batch's typed ``shard``), so the stock methods match one process exactly.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file

from genfield.checkpoint import read_checkpoint_metadata
from genfield.datasets.builtin import builtin_faces
from genfield.datasets.images import ImageSplit
from genfield.errors import InputError
from genfield.fields import build_field
from genfield.meta import build_meta_learner
from genfield.processes import build_process
from genfield.training import all_reduce_gradients, shard

REPO = Path(__file__).resolve().parents[1]
METHODS = ("maml", "ibaml", "ponp")
SIGNALS = 4


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def build(name: str):
    """The same tiny method on every rank (seeded construction)."""
    torch.manual_seed(0)
    field = build_field("siren", head="grey", hidden=16, n_layers=2)
    if name == "maml":
        return build_meta_learner("maml", field, inner_steps=2, inner_lr=0.1)
    if name == "ibaml":
        # the stock learner: on a shard it draws the whole batch's noise and keeps its share
        return build_meta_learner(
            "ibaml", field, inner_steps=2, mc_samples=2, cg_iterations=5, cg_damping=1.0, cg_tol=0.5
        )
    model = build_process("ponp", field, "image", width=16, depth=1, heads=2, latent_dim=4,
                          train_samples=2)
    return model  # stock PONP: on a shard it draws the whole batch's latent noise


def meta_batch():
    faces = builtin_faces("train", size=8)
    return ImageSplit(context_fraction=0.25)(
        [faces[i] for i in range(SIGNALS)], torch.Generator().manual_seed(3)
    )


def gradients(method) -> torch.Tensor:
    return torch.cat([p.grad.reshape(-1) for p in method.parameters() if p.requires_grad])


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def worker(rank: int, world: int, port: int, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
    )
    try:
        results = {}
        for name in METHODS:
            method = build(name)
            parameters = [p for p in method.parameters() if p.requires_grad]
            metrics = method.compute_gradients(shard(meta_batch(), rank, world))
            local = gradients(method).clone()
            metrics = all_reduce_gradients(parameters, world, metrics)
            results[name] = {"local": local, "reduced": gradients(method), **metrics}
        # skipped steps: a rank without a .grad does not count in the mean; nobody: stays None
        a, b = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(2))
        a.grad = torch.full((2,), 1.0 + 2 * rank)
        b.grad = torch.full((2,), 4.0) if rank == 1 else None
        c = torch.nn.Parameter(torch.zeros(1))
        all_reduce_gradients([a, b, c], world)
        results["skip"] = {"a": a.grad, "b": b.grad, "c_is_none": c.grad is None}
        torch.save(results, Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("ranks")
    mp.spawn(worker, args=(2, free_port(), str(out)), nprocs=2, join=True)
    return [torch.load(out / f"rank{r}.pt") for r in range(2)]


@pytest.mark.parametrize("name", METHODS)
def test_two_ranks_give_the_gradient_of_the_combined_meta_batch(two_ranks, name):
    torch.set_num_threads(1)
    method = build(name)
    metrics = method.compute_gradients(meta_batch())
    full = gradients(method)
    rank0, rank1 = two_ranks[0][name], two_ranks[1][name]
    assert torch.equal(rank0["reduced"], rank1["reduced"])  # the ranks stay identical
    assert relative(rank0["reduced"], full) <= 1e-5
    # the test can fail: half a batch alone is a different gradient
    assert relative(rank0["local"], full) > 1e-3 and relative(rank1["local"], full) > 1e-3
    # metrics are averaged over ranks: the loss of the whole batch on every rank
    assert float(rank0["loss"]) == pytest.approx(float(metrics["loss"]), rel=1e-5)
    assert float(rank1["loss"]) == float(rank0["loss"])
    if "skipped" in metrics:
        assert float(rank0["skipped"]) == 0.0 == float(metrics["skipped"])


def test_ranks_without_a_gradient_do_not_count_in_the_mean(two_ranks):
    for rank in two_ranks:
        assert torch.equal(rank["skip"]["a"], torch.full((2,), 2.0))  # (1 + 3) / 2
        assert torch.equal(rank["skip"]["b"], torch.full((2,), 4.0))  # only rank 1 had one
        assert rank["skip"]["c_is_none"]  # nobody: no optimizer update, as in one process


def test_shard_is_contiguous_and_rejects_uneven_splits():
    batch = meta_batch()
    parts = [shard(batch, r, 2) for r in range(2)]
    assert [m["name"] for p in parts for m in p.metadata] == [m["name"] for m in batch.metadata]
    assert torch.equal(torch.cat([p.context.values for p in parts]), batch.context.values)
    assert shard(batch, 0, 1) is batch
    with pytest.raises(InputError, match="batch_size=4 does not split evenly over 3 ranks"):
        shard(batch, 0, 3)


def test_ibaml_adapts_a_shard_with_the_rows_of_the_whole_batch_noise():
    """The shard goes to the noise as an argument: a shard adapted with fresh draws at every inner step
    gets the posterior that its signals get in the whole batch, and without it other noise."""
    torch.set_num_threads(1)
    learner, batch = build("ibaml"), meta_batch()
    part = shard(batch, 1, 2)
    assert part.shard == (2, SIGNALS)
    torch.manual_seed(5)
    noise = learner.draw_noise(SIGNALS)
    torch.manual_seed(5)
    ours = learner.draw_noise(2, shard=part.shard)
    for key in noise:
        assert torch.equal(ours[key], noise[key][:, 2:])
    runs = {}
    cases = {"whole": (batch, None), "part": (part, part.shard), "lost": (part, None)}
    for name, (obs, placed) in cases.items():
        torch.manual_seed(7)
        runs[name] = learner.adapt_posterior(obs.context, obs.forward_map, None, 3, shard=placed)
    for key in runs["whole"].mu:
        torch.testing.assert_close(runs["part"].mu[key], runs["whole"].mu[key][2:])
        torch.testing.assert_close(runs["part"].rho[key], runs["whole"].rho[key][2:])
    assert any(not torch.allclose(runs["lost"].mu[k], runs["whole"].mu[k][2:]) for k in runs["whole"].mu)
    assert not hasattr(learner, "_shard")  # nothing is left on the learner between calls


def train_overrides(steps: int) -> list[str]:
    return [
        "method=maml", "data=faces", "data.size=12", "data.batch_size=4", "data.eval_signals=2",
        "field.options.hidden=16", "field.options.n_layers=2", "method.options.inner_steps=1",
        f"train.steps={steps}", "train.checkpoint_every=100", "train.val_every=2",
        "train.log_every=1", "train.progress=false", "eval.figure=false", "device=cpu",
    ]


def torchrun_train(run_dir: Path, steps: int, *extra: str) -> None:
    """``torchrun --nproc_per_node=2 -m genfield train ...`` on the loopback address."""
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2",
        "--master_addr=127.0.0.1", f"--master_port={free_port()}", "-m", "genfield", "train",
        *train_overrides(steps), f"hydra.run.dir={run_dir}", *extra,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]


def one_process_train(run_dir: Path, steps: int) -> None:
    """The same run in this process (``genfield train`` without torchrun)."""
    from hydra import compose, initialize_config_module

    from genfield.app import run_train

    with initialize_config_module("genfield.configs", version_base="1.3"):
        cfg = compose("train", overrides=train_overrides(steps))
    run_train(cfg, out_dir=run_dir)


def model_weights(run: Path) -> dict[str, torch.Tensor]:
    weights = load_file(str(run / "checkpoints" / "last.safetensors"))
    return {k: v for k, v in weights.items() if k.startswith("model/")}


def test_torchrun_train_writes_one_checkpoint_and_resumes(tmp_path):
    run = tmp_path / "run"
    torchrun_train(run, 3)
    files = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert files == ["best.safetensors", "last.safetensors"]  # rank 0 only, no temporary files left
    assert read_checkpoint_metadata(run / "checkpoints" / "last.safetensors")["step"] == 3
    assert len((run / "metrics.csv").read_text().splitlines()) == 1 + 3
    assert len((run / "validation.csv").read_text().splitlines()) == 1 + 1  # step 2, rank 0
    assert (run / "summary.json").is_file()

    torchrun_train(run, 5, "resume=true")
    assert read_checkpoint_metadata(run / "checkpoints" / "last.safetensors")["step"] == 5
    rows = (run / "metrics.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["0", "1", "2", "3", "4"]  # continued: each step once

    # 3 + 2 steps on 2 processes land where 5 uninterrupted steps on 1 process land
    single = tmp_path / "single"
    one_process_train(single, 5)
    two, one = model_weights(run), model_weights(single)
    assert two.keys() == one.keys()
    for key in one:
        assert torch.allclose(two[key], one[key], rtol=1e-4, atol=1e-6), key


def test_submitit_slurm_tasks_become_torch_distributed_ranks(monkeypatch):
    from genfield.distributed import _export_submitit_environment

    pytest.importorskip("submitit")
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.setenv(key, "")  # recorded, so the undo removes what the export sets
        monkeypatch.delenv(key)
    slurm = {"SUBMITIT_EXECUTOR": "slurm", "SLURM_JOB_ID": "123", "SLURM_NTASKS": "4",
             "SLURM_PROCID": "3", "SLURM_LOCALID": "1", "SLURM_JOB_NODELIST": "gpu[07-08]",
             "SLURM_NNODES": "2", "SLURM_NODEID": "1"}
    for key, value in slurm.items():
        monkeypatch.setenv(key, value)
    _export_submitit_environment()
    assert (os.environ["RANK"], os.environ["WORLD_SIZE"], os.environ["LOCAL_RANK"]) == ("3", "4", "1")
    assert os.environ["MASTER_ADDR"] == "gpu07"  # the first node of the job hosts the store


def test_slurm_launcher_config_composes():
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    from hydra import compose, initialize_config_module

    with initialize_config_module("genfield.configs", version_base="1.3"):
        cfg = compose("train", overrides=["hydra/launcher=slurm", "method=ponp"],
                      return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert launcher.tasks_per_node == 1 and launcher.gpus_per_node == 1
    assert launcher.timeout_min == 240
