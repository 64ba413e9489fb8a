"""Evaluate one model: generate from held-out prompts, score, write eval.json (see storytune/evaluate.py).

    python jobs/evaluate.py --run-dir RUN_DIR                  # RUN_DIR/model -> RUN_DIR/eval/
    python jobs/evaluate.py --config RUN_DIR/config.yaml       # the same
    python jobs/evaluate.py --run-dir RUN_DIR --base           # the run's base model -> <output.dir>/base/eval/
    python jobs/evaluate.py --config CFG --model PATH_OR_NAME --out DIR [key.path=value ...]

Overrides (`generation.num_prompts=20`, `eval.scorer=base`, ...) apply on top of the config. An
output folder that already holds eval.json is skipped unless --force. Exit status 2 with a one-line
message for a bad config, a missing model or missing data.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from storytune.config import ConfigError, RunConfig, load_run_config  # noqa: E402
from storytune.jobs import EXPECTED_ERRORS  # noqa: E402
from storytune.model import resolve_base_model  # noqa: E402
from storytune.rundir import RunDir  # noqa: E402


class UsageError(ValueError):
    """The arguments do not say what to evaluate."""


@dataclass(frozen=True)
class Target:
    """What to evaluate and where the results go."""

    model: str
    out: Path
    label: str


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--config", help="config YAML, usually RUN_DIR/config.yaml")
    parser.add_argument("--run-dir", help="a fine-tuning run directory (its config.yaml and model/)")
    parser.add_argument("--model", help="model path or hub name to evaluate instead of the run's model/")
    parser.add_argument("--base", action="store_true", help="evaluate the run's base model")
    parser.add_argument("--out", help="output folder (default RUN_DIR/eval, or <output.dir>/base/eval with --base)")
    parser.add_argument("--label", help="model label in the results (default: run name, `base`, or the model)")
    parser.add_argument("--force", action="store_true", help="re-evaluate even if eval.json exists")
    parser.add_argument("overrides", nargs="*", metavar="key.path=value", help="config overrides")
    return parser.parse_args(argv)


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


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        cfg_path = config_path(args)
        config = load_run_config(cfg_path, args.overrides)
        target = resolve_target(args, config, cfg_path)
    except (*EXPECTED_ERRORS, UsageError) as err:
        print(f"error: {one_line(err)}", file=sys.stderr)
        return 2
    from storytune.evaluate import run_evaluate
    from storytune.runner import is_main_process, setup_logging

    setup_logging(is_main_process())
    try:
        run_evaluate(config, target.model, target.out, target.label, force=args.force)
    except EXPECTED_ERRORS as err:
        print(f"error: {one_line(err)}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
