"""What the `jobs/*.py` entry points do, with one error policy: a known problem is one line on
stderr and a non-zero exit, never a traceback deep in a library."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from storytune.config import ConfigError, RunConfig, load_run_config
from storytune.data import DataError
from storytune.model import ModelLoadError, resolve_base_model
from storytune.rundir import OutputError, RunDir

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


# --------------------------------------------------------------------------------------------------
# jobs/evaluate.py


class UsageError(ValueError):
    """The arguments do not say what to evaluate."""


@dataclass(frozen=True)
class Target:
    """What to evaluate and where the results go."""

    model: str
    out: Path
    label: str


def config_path(args: argparse.Namespace) -> Path:
    if args.config:
        return Path(args.config)
    if args.run_dir:
        return RunDir(Path(args.run_dir)).config
    raise UsageError("pass --config CONFIG or --run-dir RUN_DIR")


def resolve_target(args: argparse.Namespace, config: RunConfig, cfg_path: Path) -> Target:
    """The model, output folder and label the arguments ask for."""
    if args.base and args.model:
        raise UsageError("--base and --model exclude each other")
    run_dir = RunDir(Path(args.run_dir) if args.run_dir else cfg_path.parent)
    if args.base:
        out = Path(args.out) if args.out else Path(config.output.dir) / "base" / "eval"
        return Target(resolve_base_model(config.model, config.output.dir), out, args.label or "base")
    if args.model:
        if not args.out:
            raise UsageError("--model needs --out DIR (results of an explicitly named model go where you say)")
        return Target(args.model, Path(args.out), args.label or Path(args.model.rstrip("/")).name)
    if not (run_dir.model / "config.json").exists():
        raise FileNotFoundError(f"no fine-tuned model at {run_dir.model} (has the fine-tune finished? "
                                f"{run_dir.result.name} {'exists' if run_dir.is_complete() else 'is missing'})")
    return Target(str(run_dir.model), Path(args.out) if args.out else run_dir.eval_dir, args.label or run_dir.path.name)


def one_line(err: BaseException) -> str:
    if isinstance(err, ConfigError):
        where = f"{err.source}: " if err.source else ""
        return "invalid config: " + where + "; ".join(map(str, err.problems))
    return " ".join(str(err).split())


def evaluate_main(args: argparse.Namespace) -> int:
    from storytune.runner import is_main_process, run_evaluate_job, setup_logging

    try:
        cfg_path = config_path(args)
        config = load_run_config(cfg_path, args.overrides)
        target = resolve_target(args, config, cfg_path)
    except (*EXPECTED_ERRORS, UsageError) as err:
        print(f"error: {one_line(err)}", file=sys.stderr)
        return 2
    setup_logging(is_main_process())
    try:
        run_evaluate_job(config, target.model, target.out, target.label, force=args.force)
    except EXPECTED_ERRORS as err:
        print(f"error: {one_line(err)}", file=sys.stderr)
        return 2
    return 0
