"""``genfield fit IMAGE``: fit one field from a random initialisation to an image (the baseline)."""

from __future__ import annotations

import argparse

from genfield.commands.base import fail


def main(argv: list[str]) -> None:
    """``genfield fit``: every option checked (one line, exit 2) before the image is read or fitted."""
    from genfield.fields.field import FIELD_PRESETS
    from genfield.fitting import MIN_SIZE, fit_image

    parser = argparse.ArgumentParser(
        prog="genfield fit",
        description="Fit one neural field from a random initialisation to an image (Adam on MSE). "
        "IMAGE is a file path or builtin:<photo> (a scikit-image photograph, e.g. builtin:astronaut).",
    )
    parser.error = lambda message: fail(f"fit: {message}")  # one line, not usage + error
    parser.add_argument("image")
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--field", choices=sorted(FIELD_PRESETS), default="siren")
    parser.add_argument("--out", default="genfield-fit", help="output folder (default: genfield-fit)")
    parser.add_argument(
        "--size",
        type=int,
        default=None,
        help=f"centre-crop and resize to SIZE (>= {MIN_SIZE}; default: the image's size, or 256 "
        "for an image of more than 256 x 256 pixels, with a note)",
    )
    parser.add_argument("--lr", type=float, default=None, help="Adam's rate (default: the field's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--compile",
        choices=("auto", "on", "off"),
        default="auto",
        help="torch.compile the fitting step: auto (default) compiles when the fit would take more "
        "than two minutes without it; off turns it off",
    )
    args = parser.parse_args(argv)
    compile_ = {"auto": "auto", "on": True, "off": False}[args.compile]
    metrics = fit_image(
        args.image,
        args.steps,
        args.field,
        args.out,
        size=args.size,
        lr=args.lr,
        seed=args.seed,
        compile=compile_,
    )
    print(
        f"PSNR {metrics['psnr']:.2f} dB, SSIM {metrics['ssim']:.4f} after {args.steps} steps "
        f"({metrics['seconds']:.1f} s); wrote {args.out}/reconstruction.png, comparison.png, metrics.json"
    )
