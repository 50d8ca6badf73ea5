"""Fitting fields from scratch: the random-initialisation baseline every comparison uses.

:func:`fit_from_scratch` fits one field per signal, for a whole batch of signals at once (per-signal
parameters with a leading signal dimension, one vectorised call per step). :class:`RandomInitFit`
wraps it in the :class:`~genfield.interface.Reconstructor` interface so that the CLI, ``compare`` and
the notebooks treat it like any learned method.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Mapping
from typing import Any

import torch

from genfield import compiling
from genfield.compiling import check_compile, compiled_loss
from genfield.datasets.batch import Observations, SignalBatch
from genfield.errors import InputError
from genfield.fields.field import Field, Params
from genfield.forward import ForwardMap
from genfield.interface import Adapted, Prediction, Reconstructor


def fit_from_scratch(
    field: Field,
    observations: Observations,
    forward_map: ForwardMap,
    steps: int = 500,
    lr: float = 1e-3,
    seed: int = 0,
    params: Params | None = None,
    progress: bool = False,
    compile: bool | str = "auto",
) -> tuple[Params, torch.Tensor]:
    """Fit a field to each signal's observations by Adam on the mean squared error.

    Args:
        field: the field architecture.
        observations: ``(S, N, q)`` queries and ``(S, N, c)`` values.
        forward_map: how the field is observed (pixels, CT projections, rays).
        steps, lr: Adam's budget and learning rate.
        seed: seeds of the random initialisations (signal ``s`` uses ``seed + s``).
        params: optional starting parameters (with a leading signal dimension) instead of random ones.
        progress: show a progress bar with ETA.
        compile: run the loss (forward map, field, error) through ``torch.compile``
            (:func:`~genfield.compiling.compiled_loss`): one compilation, then fused kernels for
            every step. It pays off on long fits of large fields; fitting is first order, so the
            compiled graph is never differentiated twice. ``"auto"`` times the first (eager) step
            and compiles when the remaining steps would take longer than
            :data:`~genfield.compiling.COMPILE_WORTH_SECONDS` eagerly.

    Returns:
        The fitted per-signal parameters and the loss history ``(steps, S)`` (kept on device; nothing
        is copied to the host inside the loop).
    """
    device = observations.values.device
    if params is None:
        params = field.init_batch(observations.num_signals, seed=seed, device=device)
    params = {k: v.detach().clone().requires_grad_(True) for k, v in params.items()}
    optimizer = torch.optim.Adam(params.values(), lr=lr)
    history = torch.empty(steps, observations.num_signals, device=device)
    iterator = range(steps)
    if progress:
        from tqdm import tqdm

        iterator = tqdm(iterator, desc="fit", unit="step")
    check_compile(compile)
    loss = compiled_loss(fitting_loss) if compile is True else fitting_loss
    for step in iterator:
        began = time.perf_counter() if compile == "auto" and step == 0 else None
        per_signal = loss(field, forward_map, params, observations.queries, observations.values)
        optimizer.zero_grad(set_to_none=True)
        per_signal.sum().backward()  # signals are independent: the sum gives each its own gradient
        optimizer.step()
        history[step] = per_signal.detach()
        if began is not None:  # one timing, after the first step (a device sync only here)
            if observations.values.is_cuda:
                torch.cuda.synchronize()
            if (time.perf_counter() - began) * (steps - 1) > compiling.COMPILE_WORTH_SECONDS:
                loss = compiled_loss(fitting_loss)
    return {k: v.detach() for k, v in params.items()}, history


def fitting_loss(
    field: Field, forward_map: ForwardMap, params: Params, queries: torch.Tensor, values: torch.Tensor
) -> torch.Tensor:
    """Each signal's mean squared error ``(S,)`` of the field observed through ``forward_map``."""
    return (forward_map(field.bind(params), queries) - values).pow(2).mean(dim=(1, 2))


class RandomInitFit(Reconstructor):
    """Fit each new signal from a random initialisation: nothing is learned across signals."""

    learns_from_collection = False

    def __init__(
        self,
        field: Field,
        steps: int = 100,
        lr: float = 1e-3,
        seed: int = 0,
        compile: bool | str = "auto",
    ) -> None:
        super().__init__()
        check_compile(compile)
        self.field, self.steps, self.lr, self.seed, self.compile = field, steps, lr, seed, compile

    def compute_gradients(self, batch: SignalBatch) -> dict[str, torch.Tensor]:
        return {}

    def settings(self, budget: Mapping[str, Any]) -> list[tuple[str, int | None]]:
        """Fits of each count of ``budget["random_init_steps"]`` (one count or a list)."""
        steps = budget["random_init_steps"]
        return [(f"fit {k}", int(k)) for k in (steps if isinstance(steps, list | tuple) else [steps])]

    def reconstruct(
        self,
        context: Observations,
        context_map: ForwardMap,
        queries: torch.Tensor,
        query_map: ForwardMap,
        *,
        steps: int | None = None,
        num_samples: int = 16,
        variance: bool = True,
    ) -> Prediction:
        return self.condition_on(context, context_map, steps=steps).predict(queries, query_map)

    def condition_on(
        self,
        context: Observations,
        context_map: ForwardMap,
        *,
        steps: int | None = None,
        num_samples: int = 16,
    ) -> FittedFields:
        """Fit once; the fitted parameters serve every later prediction."""
        with torch.enable_grad():
            params, _ = fit_from_scratch(
                self.field,
                context,
                context_map,
                steps=self.steps if steps is None else steps,
                lr=self.lr,
                seed=self.seed,
                compile=self.compile,
            )
        return FittedFields(self.field, params)


class FittedFields(Adapted):
    """Per-signal fitted parameters: a deterministic prediction (no variance)."""

    def __init__(self, field: Field, params: Params) -> None:
        self.field, self.params = field, params

    def predict(self, queries: torch.Tensor, query_map: ForwardMap, *, variance: bool = True) -> Prediction:
        with torch.no_grad():
            return Prediction(mean=query_map(self.field.bind(self.params), queries))


def load_image_signal(source: str, size: int | None = None, grey: bool = False) -> torch.Tensor:
    """An image ``(H, W, C)`` in [0, 1] from a file path or ``builtin:<photo>`` (scikit-image data).

    Unreadable files are an :class:`~genfield.errors.InputError` naming the file.
    """
    from pathlib import Path

    from genfield.datasets.images import read_image, square_image

    if source.startswith("builtin:"):
        from genfield.datasets.builtin import load_photo

        return square_image(load_photo(source.split(":", 1)[1], grey), size or 64)
    path = Path(source)
    if not path.is_file():
        raise InputError(f"image file not found: {path}")
    try:
        array = read_image(path, grey=grey)
    except InputError:
        raise
    except Exception as error:  # noqa: BLE001 - decoders raise many types
        raise InputError(f"cannot read image {path}: {type(error).__name__}") from error
    return square_image(array, size)


#: SSIM's Gaussian window: the smallest image side that ``fit`` can score.
MIN_SIZE = 11
#: Without ``--size``, an image with more pixels than this is fitted at ``AUTO_SIZE`` (each step
#: evaluates every pixel: a 512 x 512 photo already takes seconds per step on a laptop CPU).
AUTO_SIZE = 256
#: Points per field evaluation when the fitted field is evaluated on the whole image.
EVAL_CHUNK = 65_536


def check_fit_options(steps: int, size: int | None, lr: float | None, out_dir: str | os.PathLike) -> None:
    """Every option of :func:`fit_image` checked before the image is read: one line naming it."""
    from genfield.outputs import check_output_folder

    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise InputError(f"--steps must be positive (an integer >= 1), got {steps}")
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < MIN_SIZE):
        raise InputError(f"--size {size}: expected an integer >= {MIN_SIZE} (SSIM's window), or no --size")
    if lr is not None and not (isinstance(lr, int | float) and math.isfinite(lr) and lr > 0):
        raise InputError(f"--lr {lr}: expected a finite number > 0, or no --lr (the field's default)")
    check_output_folder(out_dir, "--out")


def activation_bytes(field: Field, points: int) -> int:
    """A rough estimate of the memory one full-batch Adam step needs: the float32 activations of
    every linear layer at every point, kept for the backward pass, with their gradients (x 3)."""
    widths = sum(m.out_features for m in field.module.modules() if isinstance(m, torch.nn.Linear))
    return 3 * 4 * points * max(widths, 1)


def predict_in_chunks(
    field: Field, params: Params, queries: torch.Tensor, chunk: int = EVAL_CHUNK
) -> torch.Tensor:
    """``field(params, queries)`` for ``(S, M, d)`` queries, ``chunk`` points at a time (bounded memory)."""
    with torch.no_grad():
        return torch.cat([field(params, part) for part in queries.split(chunk, dim=1)], dim=1)


def fit_image(
    source: str,
    steps: int = 500,
    field_name: str = "siren",
    out_dir: str = "genfield-fit",
    size: int | None = None,
    lr: float | None = None,
    seed: int = 0,
    progress: bool = True,
    compile: bool | str = "auto",
) -> dict[str, float | str]:
    """Fit one field from a random initialisation to an image and write the results.

    Every option is checked first (``size`` >= 11 for SSIM, ``lr`` finite and > 0, ``out_dir``
    writable). Without ``size``, an image of more than ``AUTO_SIZE^2`` pixels is centre-cropped and
    resized to ``AUTO_SIZE`` with a note on stderr giving the full-size memory estimate (each step
    is one batch of every pixel). ``compile``: see :func:`fit_from_scratch`. Writes
    ``reconstruction.png``, ``comparison.png`` (ground truth beside reconstruction) and
    ``metrics.json`` (PSNR, SSIM, steps, seconds) into ``out_dir``; returns the metrics.
    """
    import json
    import sys
    from pathlib import Path

    import numpy as np

    from genfield.fields import build_field, grid_coords
    from genfield.forward import PointMap
    from genfield.metrics import psnr, ssim
    from genfield.viz.figures import save_image

    check_fit_options(steps, size, lr, out_dir)
    image = load_image_signal(source, size)
    height, width, channels = image.shape
    field = build_field(field_name, head="rgb" if channels == 3 else "grey")
    if size is None and height * width > AUTO_SIZE**2:
        estimate = activation_bytes(field, height * width) / 2**30
        print(
            f"genfield: note: {source} is {height} x {width}; every step fits all pixels at once "
            f"(~{estimate:.1f} GiB at full size), so it is centre-cropped and resized to {AUTO_SIZE} x "
            f"{AUTO_SIZE}: give --size N to choose",
            file=sys.stderr,
        )
        image = load_image_signal(source, AUTO_SIZE)
        height, width, channels = image.shape
    if min(height, width) < MIN_SIZE:
        raise InputError(
            f"image {source} is {height} x {width}; fit scores SSIM, which needs at least "
            f"{MIN_SIZE} x {MIN_SIZE} pixels"
        )
    observations = Observations(grid_coords((height, width))[None], image.reshape(1, -1, channels))
    default_lr = {"hashgrid": 1e-2}.get(field_name, 1e-3)
    began = time.perf_counter()
    params, history = fit_from_scratch(
        field,
        observations,
        PointMap(),
        steps=steps,
        lr=default_lr if lr is None else lr,
        seed=seed,
        progress=progress,
        compile=compile,
    )
    seconds = time.perf_counter() - began
    reconstruction = predict_in_chunks(field, params, observations.queries).reshape(
        1, height, width, channels
    )
    metrics: dict[str, float | str] = {
        "source": source,
        "field": field_name,
        "steps": steps,
        "image_size": f"{height}x{width}",
        "psnr": float(psnr(reconstruction, image[None])[0]),
        "ssim": float(ssim(reconstruction, image[None])[0]),
        "final_loss": float(history[-1, 0]),
        "seconds": seconds,
    }
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_image(out / "reconstruction.png", reconstruction[0])
    side_by_side = np.concatenate([image.numpy(), reconstruction[0].numpy()], axis=1)
    save_image(out / "comparison.png", side_by_side)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return metrics
