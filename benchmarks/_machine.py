"""Describe the machine a benchmark ran on, and save results as JSON beside it."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe_machine(device: str = "cpu") -> dict[str, Any]:
    info: dict[str, Any] = {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": device,
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    if hasattr(os, "getloadavg"):  # a shared machine's figures are slower; say how shared it was
        info["load_average_1_5_15"] = [round(x, 2) for x in os.getloadavg()]
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
        info["cuda"] = torch.version.cuda
    return info


def save_results(name: str, results: Any, device: str = "cpu") -> Path:
    """Write ``{"machine": ..., "results": ...}`` to ``benchmarks/results/<name>.json``."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    payload = {"machine": describe_machine(device), "results": results}
    path.write_text(json.dumps(payload, indent=2))
    print(f"wrote {path}")
    return path


def median_seconds(fn: Callable[[], Any], reps: int, device: str = "cpu") -> float:
    """Median wall time of ``fn()`` over ``reps`` runs after one warm-up run (CUDA synchronised)."""
    return interleaved_seconds({"fn": fn}, reps, device)["fn"]


def interleaved_seconds(
    fns: dict[str, Callable[[], Any]], reps: int, device: str = "cpu", warmup: bool = True
) -> dict[str, float]:
    """Median wall time of each ``fns[name]()`` over ``reps`` rounds run A B C, A B C, ...

    One warm-up round first (``warmup=False``: the caller has run each once already). Interleaving
    exposes every candidate to the same load on a shared machine, so the *ratios* of the medians are
    meaningful even when absolute times drift.
    """
    times: dict[str, list[float]] = {name: [] for name in fns}
    for rep in range(reps + int(warmup)):
        for name, fn in fns.items():
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            start = time.perf_counter()
            fn()
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            if rep or not warmup:
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}
