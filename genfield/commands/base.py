"""What every CLI command shares: the config path, the one-line error guard, Hydra's run folder."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from genfield.errors import InputError

CONFIG_PATH = "configs"


def fail(message: str) -> None:
    """Print a one-line error and exit with status 2."""
    print(f"genfield: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def guard(work: Callable[[], Any]) -> Any:
    """Run ``work``; bad input becomes a one-line message and exit status 2 (not a traceback); an
    interrupt (Ctrl-C, SIGTERM) says what the run folder kept and exits with 128 + the signal."""
    from genfield.runfiles import Interrupted, kept
    from genfield.training import TrainingDiverged

    try:
        return work()
    except (InputError, TrainingDiverged) as error:
        print(f"genfield: error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt as error:
        code = error.exit_code if isinstance(error, Interrupted) else 130
        what = str(error) if isinstance(error, Interrupted) and "kept:" in str(error) else None
        print(f"genfield: {what or f'interrupted; kept: {kept(current_run_dir())}'}", file=sys.stderr)
        raise SystemExit(code) from None


def current_run_dir() -> Path | None:
    """Hydra's output directory when inside a Hydra job, else None."""
    try:
        return run_dir()
    except Exception:  # noqa: BLE001 - no Hydra job is running
        return None


def run_dir() -> Path:
    """Hydra's output directory of this job."""
    from hydra.core.hydra_config import HydraConfig

    return Path(HydraConfig.get().runtime.output_dir)
