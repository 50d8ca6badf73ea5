"""The ``genfield`` command line.

``genfield fit IMAGE`` fits one field from scratch (argparse options). ``train``, ``reconstruct``,
``compare`` and ``demo`` are Hydra applications: their options are Hydra overrides
(``genfield train method=ibaml data=faces field=siren train.steps=100``), and ``--help``,
``--cfg job`` and ``-m`` (multirun) work as in any Hydra application.

Bad input (a missing file, an unknown name, an invalid value) prints one line and exits with 2.
"""

from __future__ import annotations

import argparse
import sys

from genfield.errors import InputError

HYDRA_COMMANDS = ("train", "reconstruct", "compare", "demo")
USAGE = """usage: genfield <command> [options]

commands:
  fit IMAGE          fit one field from a random initialisation to an image (the baseline)
  train ...          meta-train a method on a dataset (Hydra overrides: method=, data=, field=)
  reconstruct ...    reconstruct a new signal from its observations with a trained run
  compare ...        compare methods x datasets under one budget, write results.csv / results.md
  demo               the main job on built-in data: iBaML and PONP on faces, figures and a table

`genfield <command> --help` describes a command.
"""


def fail(message: str) -> None:
    """Print a one-line error and exit with status 2."""
    print(f"genfield: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def fit_main(argv: list[str]) -> None:
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
    args = parser.parse_args(argv)
    metrics = fit_image(
        args.image, args.steps, args.field, args.out, size=args.size, lr=args.lr, seed=args.seed
    )
    print(
        f"PSNR {metrics['psnr']:.2f} dB, SSIM {metrics['ssim']:.4f} after {args.steps} steps "
        f"({metrics['seconds']:.1f} s); wrote {args.out}/reconstruction.png, comparison.png, metrics.json"
    )


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        raise SystemExit(0 if argv else 2)
    command, rest = argv[0], argv[1:]
    try:
        if command == "fit":
            fit_main(rest)
        elif command in HYDRA_COMMANDS:
            from genfield.app import run_hydra_command

            run_hydra_command(command, rest)
        else:
            fail(f"unknown command {command!r}; valid: fit, {', '.join(HYDRA_COMMANDS)}")
    except InputError as error:
        fail(str(error))
    except KeyboardInterrupt:
        print("genfield: interrupted; the last checkpoint is intact", file=sys.stderr)
        raise SystemExit(130) from None


if __name__ == "__main__":
    main()
