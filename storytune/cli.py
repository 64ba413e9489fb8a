"""The commands users type, with one error policy: a known problem is one line on stderr and exit
status 2 (1 when a submission or a job failed), never a traceback deep in a library (`--debug`
shows it).

    storytune submit --grid GRID.yaml [--executor slurm|local|debug] [--dry-run] [key.path=value ...]
    storytune status RUN_DIR
    storytune finetune --config RUN.yaml [key.path=value ...]
    storytune evaluate --run-dir RUN_DIR | --config CFG [--base | --model PATH --out DIR]
    storytune aggregate GRID_ROOT

`launch/*.py` and `jobs/*.py` are the same commands as scripts (`python launch/submit.py ...`).
This module parses arguments and wires; the work is in `storytune.cluster` and below.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from storytune.config import ConfigError, RunConfig, load_run_config
from storytune.paths import GridDir, OutputError, RunDir, evaluation_key
from storytune.train.data import DataError
from storytune.train.model import ModelLoadError

EXPECTED_ERRORS = (ConfigError, DataError, ModelLoadError, OutputError, FileNotFoundError)
SHIPPED_GRIDS = Path(__file__).resolve().parents[1] / "configs" / "grids"


class UsageError(ValueError):
    """The arguments do not say what to do."""


def one_line(err: BaseException) -> str:
    if isinstance(err, ConfigError):
        return str(err)
    return " ".join(str(err).split())


def guarded(main: Callable[[], int | None], debug: bool = False) -> int:
    """Run `main`; known problems exit 2 with one clear message (the traceback only with --debug)."""
    try:
        return main() or 0
    except (*EXPECTED_ERRORS, UsageError) as err:
        if debug:
            raise
        print(f"error: {one_line(err)}", file=sys.stderr)
        return 2


# --------------------------------------------------------------------------------------------------
# submit / status


def resolve_grid_path(name: str) -> Path:
    """A grid path as given, else the shipped grid of that name (`early_stopping.yaml`)."""
    path = Path(name)
    shipped = SHIPPED_GRIDS / path.name
    return path if path.exists() or not shipped.exists() else shipped


def submit(args: argparse.Namespace) -> int:
    from storytune.cluster.launch import submit_grid
    from storytune.study.grid import load_grid

    grid = load_grid(resolve_grid_path(args.grid), args.overrides)
    return submit_grid(grid, executor_name=args.executor, dry_run=args.dry_run, force=args.force,
                       parallel=args.parallel, status_only=args.status)


def status(args: argparse.Namespace) -> int:
    from storytune.cluster.status import format_status, grid_status

    root = Path(args.root)
    if not GridDir(root).exists():
        raise FileNotFoundError(f"{root} holds no {GridDir(root).plan.name} (was the grid submitted with this "
                                "output_dir?)")
    print(format_status(grid_status(root)))
    return 0


# --------------------------------------------------------------------------------------------------
# finetune / evaluate / aggregate


def finetune(args: argparse.Namespace) -> int:
    from storytune.cluster.worker import run_finetune

    run_finetune(load_run_config(args.config, args.overrides), force=args.force)
    return 0


def aggregate(args: argparse.Namespace) -> int:
    from storytune.cluster.worker import run_aggregate

    root = Path(args.root)
    if not GridDir(root).exists():
        raise FileNotFoundError(f"{root} holds no {GridDir(root).plan.name}: pass the grid's root "
                                "(<output_dir>/<name>)")
    run_aggregate(root)
    return 0


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
    from storytune.train.model import resolve_base_model

    if args.base and args.model:
        raise UsageError("--base and --model exclude each other")
    run_dir = RunDir(Path(args.run_dir) if args.run_dir else cfg_path.parent)
    if args.base:
        out = Path(args.out) if args.out else GridDir(Path(config.output.dir)).base_eval(evaluation_key(config))
        return Target(resolve_base_model(config.model, config.output.dir), out, args.label or "base")
    if args.model:
        if not args.out:
            raise UsageError("--model needs --out DIR (results of an explicitly named model go where you say)")
        return Target(args.model, Path(args.out), args.label or Path(args.model.rstrip("/")).name)
    if not (run_dir.model / "config.json").exists():
        raise FileNotFoundError(f"no fine-tuned model at {run_dir.model} (has the fine-tune finished? "
                                f"{run_dir.result.name} {'exists' if run_dir.is_complete() else 'is missing'})")
    return Target(str(run_dir.model), Path(args.out) if args.out else run_dir.eval_dir, args.label or run_dir.path.name)


def evaluate(args: argparse.Namespace) -> int:
    from storytune.cluster.worker import run_evaluate_job

    cfg_path = config_path(args)
    config = load_run_config(cfg_path, args.overrides)
    target = resolve_target(args, config, cfg_path)
    run_evaluate_job(config, target.model, target.out, target.label, force=args.force)
    return 0


# --------------------------------------------------------------------------------------------------
# Argument parsing


def _overrides(parser: argparse.ArgumentParser, help: str = "config overrides") -> None:
    parser.add_argument("overrides", nargs="*", metavar="key.path=value", help=help)


def add_submit_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--grid", required=True, help="grid YAML file, or the name of a shipped grid")
    parser.add_argument("--executor", choices=["slurm", "local", "debug"],
                        help="default: slurm when sbatch is on PATH, else local")
    parser.add_argument("--dry-run", action="store_true", help="print the plan and sbatch scripts; submit nothing")
    parser.add_argument("--force", action="store_true", help="rerun cells that already have results")
    parser.add_argument("--parallel", type=int, default=1, help="local executor: jobs at a time")
    parser.add_argument("--status", action="store_true", help="show where each job stands and exit")
    _overrides(parser, "grid-file overrides, e.g. base.train.max_steps=100 output_dir=/scratch/runs")


def add_status_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("root", help="grid root directory (holds plan.json)")


def add_finetune_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="run config YAML")
    parser.add_argument("--force", action="store_true", help="rerun even if result.json exists")
    _overrides(parser)


def add_evaluate_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="config YAML, usually RUN_DIR/config.yaml")
    parser.add_argument("--run-dir", help="a fine-tuning run directory (its config.yaml and model/)")
    parser.add_argument("--model", help="model path or hub name to evaluate instead of the run's model/")
    parser.add_argument("--base", action="store_true", help="evaluate the run's base model")
    parser.add_argument("--out", help="output folder (default RUN_DIR/eval, or <output.dir>/base/eval-<key> with "
                                      "--base; <key> hashes the model, data, generation and eval settings)")
    parser.add_argument("--label", help="model label in the results (default: run name, `base`, or the model)")
    parser.add_argument("--force", action="store_true", help="re-evaluate even if eval.json exists")
    _overrides(parser)


def add_aggregate_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("root", help="grid root directory (holds plan.json)")


COMMANDS: dict[str, tuple[Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int], str]] = {
    "submit": (add_submit_args, submit, "submit a grid: fine-tune array, evaluations, base evaluation, aggregation"),
    "status": (add_status_args, status, "where each job of a submitted grid stands"),
    "finetune": (add_finetune_args, finetune, "fine-tune one early-stopping arm (writes result.json last)"),
    "evaluate": (add_evaluate_args, evaluate, "evaluate one model: generate, score, write eval.json"),
    "aggregate": (add_aggregate_args, aggregate, "compare every cell of a grid; write its report"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="storytune", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    for name, (add_args, _, help) in COMMANDS.items():
        sub = commands.add_parser(name, help=help, description=help)
        add_args(sub)
        sub.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """`storytune COMMAND ...`; the scripts in launch/ and jobs/ call `main([COMMAND, *sys.argv[1:]])`."""
    from storytune.process import setup_logging

    args = build_parser().parse_args(argv)
    setup_logging()
    return guarded(lambda: COMMANDS[args.command][1](args), debug=args.debug)


def script(command: str) -> int:
    """What `launch/<command>.py` and `jobs/<command>.py` run."""
    return main([command, *sys.argv[1:]])


if __name__ == "__main__":
    sys.exit(main())
