"""What the `jobs/*.py` entry points do, with one error policy: a known problem is one line on
stderr and a non-zero exit, never a traceback deep in a library."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from storytune.config import ConfigError
from storytune.data import DataError
from storytune.model import ModelLoadError
from storytune.rundir import OutputError

EXPECTED_ERRORS = (ConfigError, DataError, ModelLoadError, OutputError, FileNotFoundError)


def guarded(main: Callable[[], object]) -> int:
    """Run `main`; known problems exit 2 with one clear message."""
    try:
        main()
    except EXPECTED_ERRORS as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


def finetune_main(args: argparse.Namespace) -> int:
    from storytune.config import load_run_config
    from storytune.runner import is_main_process, run_finetune, setup_logging

    def main() -> None:
        setup_logging(is_main_process())
        config = load_run_config(args.config, args.overrides)
        run_finetune(config, force=args.force)

    return guarded(main)


def aggregate_main(root: Path) -> int:
    from storytune.runner import run_aggregate, setup_logging

    def main() -> None:
        setup_logging()
        if not (root / "plan.json").exists():
            raise FileNotFoundError(f"{root} holds no plan.json: pass the grid's root (<output_dir>/<name>)")
        run_aggregate(root)

    return guarded(main)
