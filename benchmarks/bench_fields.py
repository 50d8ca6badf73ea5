"""Field throughput: forward + backward points per second of each encoding and each field preset.

Times ``field(params, x).square().sum().backward()`` at a stated size (points, hidden width, layers)
for the four presets (siren, relu_pe, fourier, hashgrid with the torch backend, and tcnn beside it
where tinycudann is importable on CUDA), and the encodings alone; plus a meta-batch of 16 signals
evaluated in one vmapped call against a Python loop over the signals. Medians over repetitions.

    python -m benchmarks.bench_fields [--quick] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import os

import torch

from benchmarks._machine import median_seconds, save_results
from genfield.fields import FIELD_PRESETS, build_field
from genfield.fields.field import build_encoding, field_config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device, reps = args.device, 3 if args.quick else 10
    n_points = 4096 if args.quick else 65536
    results: dict = {"setup": {"points": n_points, "reps": reps, "in_dim": 2}, "fields": {}, "encodings": {}}
    backends = ["torch"]
    try:
        import tinycudann  # noqa: F401

        if device.startswith("cuda"):
            backends.append("tcnn")
    except ImportError:
        pass
    x = torch.rand(n_points, 2, device=device) * 2 - 1
    for name in FIELD_PRESETS:
        for backend in backends if name == "hashgrid" else ["torch"]:
            field = build_field(name, head="rgb", backend=backend).to(device)
            params = {k: v.requires_grad_() for k, v in field.init(0, device=device).items()}

            def step(field=field, params=params):
                field(params, x).square().sum().backward()

            seconds = median_seconds(step, reps, device)
            config = field_config(name)
            label = name if backend == "torch" else f"{name}[tcnn]"
            results["fields"][label] = {
                "points_per_second": n_points / seconds,
                "hidden": config.hidden,
                "n_layers": config.n_layers,
                "parameters": sum(p.numel() for p in params.values()),
            }
            encoding = build_encoding(field_config(name, backend=backend)).to(device)
            inputs = (x if encoding.input_range == (-1.0, 1.0) else (x + 1) / 2).clone().requires_grad_()

            def encode(encoding=encoding, inputs=inputs):
                encoding(inputs).square().sum().backward()

            results["encodings"][f"{config.encoding}" + ("" if backend == "torch" else "[tcnn]")] = {
                "points_per_second": n_points / median_seconds(encode, reps, device),
                "out_dim": encoding.out_dim,
            }
    # a meta-batch in one vmapped call against a loop over signals
    field = build_field("siren", head="grey", hidden=64).to(device)
    signals, per_signal = 16, n_points // 16
    batch = {k: v.requires_grad_() for k, v in field.init_batch(signals, device=device).items()}
    coords = torch.rand(signals, per_signal, 2, device=device) * 2 - 1

    def batched():
        field(batch, coords).square().sum().backward()

    def looped():
        total = sum(
            field({k: v[s] for k, v in batch.items()}, coords[s]).square().sum() for s in range(signals)
        )
        total.backward()

    t_batched, t_looped = median_seconds(batched, reps, device), median_seconds(looped, reps, device)
    results["meta_batch"] = {
        "signals": signals,
        "points_per_signal": per_signal,
        "vmapped_seconds": t_batched,
        "loop_seconds": t_looped,
        "speedup": t_looped / t_batched,
    }
    results["load_average"] = os.getloadavg()
    for kind in ("fields", "encodings"):
        for label, row in results[kind].items():
            print(f"{kind:9s} {label:12s} {row['points_per_second']:>12,.0f} points/s")
    print(f"meta-batch of {signals}: vmapped call {t_looped / t_batched:.1f}x faster than a loop")
    save_results("bench_fields" + ("_quick" if args.quick else ""), results, device)


if __name__ == "__main__":
    main()
