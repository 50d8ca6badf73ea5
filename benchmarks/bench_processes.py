"""Neural processes: time to reconstruct one signal, and peak training memory.

* Reconstruction time of one image signal: one PONP forward pass, PONP with ``K`` test-time
  optimisation steps, and ``K`` Adam steps on the same decoder from an initialisation (the cost of
  meta-initialised adaptation with the same decoder size; ``genfield.fitting.fit_from_scratch``).
* Peak training memory against the batch size and the number of context tokens, measured by
  :func:`genfield.profiling.measure` (the one implementation): on CUDA
  ``torch.cuda.max_memory_allocated``; on CPU the live peak of the bytes autograd saves for
  backward, which is what a training step keeps alive.

* ``--part views``: one PONP training step on a batch of the built-in views, with and without the
  projected local features (:mod:`genfield.processes.projection`), interleaved in one run.

Run ``python -m benchmarks.bench_processes [--quick] [--device cuda] [--part views]``.
"""

from __future__ import annotations

import argparse
import time

import torch

from benchmarks._machine import save_results
from genfield.datasets.batch import Observations, SignalBatch
from genfield.fields.coords import grid_coords
from genfield.fields.field import Field, field_config
from genfield.fitting import fit_from_scratch
from genfield.forward import PointMap
from genfield.processes import build_process
from genfield.profiling import Measurement, measure


def image_batch(n_signals: int, side: int, n_context: int, device: str) -> SignalBatch:
    coords = grid_coords((side, side), device=device).expand(n_signals, -1, -1)
    values = torch.rand(n_signals, side * side, 1, device=device)
    ctx = Observations(coords[:, :n_context].contiguous(), values[:, :n_context].contiguous())
    return SignalBatch("image", PointMap(), ctx, Observations(coords.contiguous(), values))


def timed(fn, repeats: int, device: str) -> float:
    fn()  # warm-up
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeats


def peak_training_memory(model, batch: SignalBatch, device: str) -> Measurement:
    """Peak bytes of one training step (forward and backward), by :func:`genfield.profiling.measure`.

    CUDA: ``torch.cuda.max_memory_allocated``; CPU: the live peak of the bytes saved for backward.
    """
    with measure(device) as result:
        model.compute_gradients(batch)
    return result


def views_local_cost(device: str, reps: int) -> dict:
    """Seconds per PONP training step on one built-in views batch, tokens only and with the
    projected features (the views default), interleaved; their ratio."""
    from benchmarks._machine import interleaved_seconds
    from genfield.builders import build_data, build_field_for, build_method
    from genfield.comparison import load_group
    from genfield.datasets.sampling import StepBatches

    bundle = build_data(load_group("data", "views"), seed=0)
    batch = next(iter(StepBatches(bundle.train, bundle.train_split, bundle.batch_size, 0))).to(device)
    field = build_field_for(load_group("field", "siren"), bundle)
    configs = {  # the method config as compare builds it, the features switched off and on
        name: load_group("method", "ponp", {"options": {"local_features": local}})
        for name, local in (("tokens", False), ("projected", True))
    }
    models = {name: build_method(cfg, field, bundle) for name, cfg in configs.items()}
    models = {name: model.to(device) for name, model in models.items()}
    seconds = interleaved_seconds(
        {name: (lambda m=m: m.compute_gradients(batch)) for name, m in models.items()}, reps, device
    )
    return {"batch": bundle.batch_size, "seconds": seconds, "ratio": seconds["projected"] / seconds["tokens"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--part", choices=("image", "views"), default="image")
    args = parser.parse_args()
    device = args.device
    if args.part == "views":
        results = views_local_cost(device, reps=3 if args.quick else 10)
        print(results)
        save_results("bench_processes_views" + ("_quick" if args.quick else ""), results, device)
        return
    side, hidden, k = (16, 32, 10) if args.quick else (64, 128, 100)
    fc = field_config("fourier", in_dim=2, head="grey", hidden=hidden, n_layers=3, fourier_features=64)
    model = build_process("ponp", fc, "image", width=64 if args.quick else 128).to(device)
    one = image_batch(1, side, side * side // 10, device)
    queries = one.target.queries
    results: dict = {"image_side": side, "decoder_hidden": hidden, "adaptation_steps": k}
    repeats = 2 if args.quick else 5
    results["ponp_forward_s"] = timed(
        lambda: model.reconstruct(one.context, PointMap(), queries, PointMap(), num_samples=1),
        repeats,
        device,
    )
    results["ponp_tto_s"] = timed(
        lambda: model.reconstruct(one.context, PointMap(), queries, PointMap(), steps=k, num_samples=1),
        repeats,
        device,
    )
    field = Field(fc).to(device)

    def adapt() -> None:
        params, _ = fit_from_scratch(field, one.context, PointMap(), steps=k, lr=1e-3)
        with torch.no_grad():
            PointMap()(field.bind(params), queries)

    results["init_plus_k_steps_s"] = timed(adapt, repeats, device)
    memory = []
    sizes = (1, 4) if args.quick else (1, 4, 16, 64)
    tokens = (25, 100) if args.quick else (100, 400, 1600)
    # self-attention holds batch * heads * tokens^2 scores per layer: on the CPU (no allocator cap,
    # shared host memory) keep that under 2^26 floats (256 MiB); 64 signals x 1600 tokens would need ~10 GiB.
    limit = float("inf") if device.startswith("cuda") else 2**26
    for s in sizes:
        for t in tokens:
            if s * 4 * t * t > limit:
                memory.append({"batch": s, "tokens": t, "skipped": "attention scores over the CPU limit"})
                continue
            batch = image_batch(s, side, min(t, side * side), device)
            peak = peak_training_memory(model, batch, device)
            memory.append({"batch": s, "tokens": t, "bytes": peak.peak_bytes, "mib": round(peak.peak_mib, 3)})
            results["memory_method"] = peak.method
    results["training_memory"] = memory
    for key, value in results.items():
        print(key, value)
    save_results("bench_processes" + ("_quick" if args.quick else ""), results, device)


if __name__ == "__main__":
    main()
