"""Meta-iterations per second with 1 and 2 processes on the same total meta-batch.

Each configuration runs the trainer's step -- build the global batch of step ``k`` from
``(seed, k)``, take this rank's shard, ``compute_gradients``, one all-reduce, an Adam step -- for
MAML, iBaML and PONP on the built-in faces. On CPU the processes share the machine's cores, so the
fair comparison is 1 process x T threads against 2 processes x T/2 threads (both are reported, with
1 x 1 as the baseline); the backend is gloo on CPU and NCCL when two GPUs are present.

    python -m benchmarks.bench_distributed [--quick]
"""

from __future__ import annotations

import argparse
import os
import socket
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from benchmarks._machine import save_results

METHODS = ("maml", "ibaml", "ponp")


def build(name: str, device: torch.device):
    from genfield.fields import build_field
    from genfield.meta import build_meta_learner
    from genfield.processes import build_process

    torch.manual_seed(0)
    field = build_field("siren", head="grey", hidden=64, n_layers=3)
    if name == "maml":
        method = build_meta_learner("maml", field, inner_steps=3, inner_lr=1e-2)
    elif name == "ibaml":
        method = build_meta_learner(
            "ibaml", field, inner_steps=5, mc_samples=2, cg_iterations=10, cg_damping=1.0,
            cg_tol=1e9,  # never skip: the benchmark times full steps
        )
    else:
        method = build_process("ponp", field, "image", width=64, depth=2, heads=4, latent_dim=32)
    return method.to(device)


def run(rank: int, world: int, port: int, backend: str, threads: int, opts: dict, out: str) -> None:
    import warnings

    from genfield.datasets.builtin import builtin_faces
    from genfield.datasets.images import ImageSplit
    from genfield.datasets.sampling import StepBatches
    from genfield.training import all_reduce_gradients, shard

    warnings.simplefilter("ignore")
    torch.set_num_threads(threads)
    if world > 1:
        dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                                world_size=world)
    device = torch.device(f"cuda:{rank}") if backend == "nccl" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    faces = builtin_faces("train", size=opts["size"])
    batches = StepBatches(faces, ImageSplit(context_fraction=0.1), opts["batch"], seed=0)
    rates = {}
    for name in opts["methods"]:
        method = build(name, device)
        parameters = [p for p in method.parameters() if p.requires_grad]
        optimizer = torch.optim.Adam(parameters, lr=1e-4)

        def step(k: int, method=method, parameters=parameters, optimizer=optimizer) -> None:
            batch = shard(batches[k], rank, world).to(device)
            optimizer.zero_grad(set_to_none=True)
            all_reduce_gradients(parameters, world, method.compute_gradients(batch))
            optimizer.step()

        for k in range(opts["warmup"]):
            step(k)
        if world > 1:
            dist.barrier()
        if device.type == "cuda":
            torch.cuda.synchronize()
        began = time.perf_counter()
        for k in range(opts["warmup"], opts["warmup"] + opts["steps"]):
            step(k)
        if device.type == "cuda":
            torch.cuda.synchronize()
        rates[name] = opts["steps"] / (time.perf_counter() - began)
    if rank == 0:
        torch.save(rates, Path(out) / "rates.pt")
    if world > 1:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def measure(world: int, backend: str, threads: int, opts: dict) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as out:
        args = (world, free_port(), backend, threads, opts, out)
        if world == 1:
            run(0, *args)
        else:
            mp.spawn(run, args=args, nprocs=world, join=True)
        return torch.load(Path(out) / "rates.pt")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, a few steps")
    args = parser.parse_args()
    opts = {"size": 16, "batch": 8, "warmup": 1, "steps": 3} if args.quick else {
        "size": 32, "batch": 16, "warmup": 2, "steps": 10}
    opts["methods"] = list(METHODS)
    cores = len(os.sched_getaffinity(0))
    configs = [("gloo", 1, 1), ("gloo", 1, cores), ("gloo", 2, max(1, cores // 2))]
    if torch.cuda.device_count() >= 2:
        configs += [("nccl", 1, 1), ("nccl", 2, 1)]
    results = {
        "meta_batch": opts["batch"],
        "image_size": opts["size"],
        "timed_steps": opts["steps"],
        "load_average_before": os.getloadavg()[0],  # other jobs on the machine skew CPU timings
        "rows": [],
    }
    for backend, world, threads in configs:
        rates = measure(world, backend, threads, opts)
        for name, rate in rates.items():
            row = {"method": name, "backend": backend, "processes": world,
                   "threads_per_process": threads, "meta_iterations_per_s": round(rate, 3)}
            results["rows"].append(row)
            print(row)
    results["load_average_after"] = os.getloadavg()[0]
    device = "cuda" if torch.cuda.device_count() >= 2 else "cpu"
    save_results("bench_distributed_quick" if args.quick else "bench_distributed", results, device)


if __name__ == "__main__":
    main()
