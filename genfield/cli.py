"""The ``genfield`` command line.

``genfield fit IMAGE`` fits one field from scratch (argparse options). ``train``, ``reconstruct``,
``compare`` and ``demo`` are Hydra applications: their options are Hydra overrides
(``genfield train method=ibaml data=faces field=siren train.steps=100``), and ``--help``,
``--cfg job`` and ``-m`` (multirun) work as in any Hydra application.

Bad input (a missing file, an unknown name, an invalid value) prints one line and exits with 2.
Ctrl-C and SIGTERM say what was kept and exit with 130 and 143. A closed output pipe
(``genfield --help | head``) ends the command quietly.
"""

from __future__ import annotations

import os
import sys

from genfield.commands.base import fail
from genfield.commands.fit import main as fit_main
from genfield.errors import InputError

__all__ = ["HYDRA_COMMANDS", "choose_threads", "fail", "fit_main", "main"]

HYDRA_COMMANDS = ("train", "reconstruct", "compare", "demo")
USAGE = """usage: genfield <command> [options]

commands:
  fit IMAGE          fit one field from a random initialisation to an image (the baseline)
  train ...          meta-train a method on a dataset (Hydra overrides: method=, data=, field=)
  reconstruct ...    reconstruct a new signal from its observations with a trained run
  compare ...        compare methods x datasets under one budget, write results.csv / results.md
  demo               the main job on built-in data: iBaML and PONP on glyphs, figures and a table

`genfield <command> --help` describes a command.
"""


def choose_threads() -> int:
    """Torch's intra-op thread count for a command: ``OMP_NUM_THREADS`` when set, else
    ``min(4, CPUs this process may use // 2)``, at least 1.

    genfield's CPU work is many small kernels (fields of 64-256 units on batches of a few
    thousand points): beyond a few threads they gain little, and one thread per hyper-threaded
    core pair avoids spinning OpenMP workers fighting over a shared or loaded machine, which made
    a demo step ~30x slower than one thread. The count is fixed per machine (not from the load),
    so a resumed run computes the same sums in the same order as the run it continues.
    """
    import torch

    if os.environ.get("OMP_NUM_THREADS", "").isdigit() and int(os.environ["OMP_NUM_THREADS"]) >= 1:
        threads = int(os.environ["OMP_NUM_THREADS"])
    else:
        usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        threads = max(1, min(4, usable // 2))
    torch.set_num_threads(threads)
    return threads


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        try:
            _main(argv)
        finally:  # what Hydra's --help printed is flushed here, where a closed pipe is caught
            sys.stdout.flush()
    except BrokenPipeError:  # the reader went away (`genfield --help | head`): stop quietly
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        raise SystemExit(141) from None


def _main(argv: list[str]) -> None:
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        sys.stdout.flush()
        raise SystemExit(0 if argv else 2)
    from genfield.runfiles import Interrupted, kept, terminate_as_interrupt

    command, rest = argv[0], argv[1:]
    try:
        with terminate_as_interrupt():
            _run(command, rest)
    except InputError as error:
        fail(str(error))
    except KeyboardInterrupt as error:
        code = error.exit_code if isinstance(error, Interrupted) else 130
        what = "nothing (fit writes its files when it ends)" if command == "fit" else kept(None)
        print(f"genfield: interrupted; kept: {what}", file=sys.stderr)
        raise SystemExit(code) from None


def _run(command: str, rest: list[str]) -> None:
    if command == "fit":
        choose_threads()
        fit_main(rest)
    elif command in HYDRA_COMMANDS:
        from genfield.app import run_hydra_command

        choose_threads()
        run_hydra_command(command, rest)
    else:
        fail(f"unknown command {command!r}; valid: fit, {', '.join(HYDRA_COMMANDS)}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
