"""What `launch/submit.py` and `launch/status.py` do, as functions (the scripts only parse arguments)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from storytune.config import ConfigError
from storytune.executors import EXECUTORS, SlurmExecutor, Submitted, default_executor_name
from storytune.grid import Grid, load_grid
from storytune.plan import Plan, make_plan

log = logging.getLogger("storytune")


def submit_main(args: argparse.Namespace) -> int:
    from storytune.runner import setup_logging, write_manifest

    setup_logging()
    try:
        grid = load_grid(resolve_grid_path(args.grid), args.overrides)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    plan = make_plan(grid, force=args.force)
    executor_name = args.executor or default_executor_name()
    print(format_plan(grid, plan, executor_name))
    if args.status:
        return status_main(plan.root)
    executor_cls = EXECUTORS[executor_name]
    resources, eval_resources = grid.spec.resources, grid.eval_resources
    if args.dry_run:
        preview = SlurmExecutor(plan, eval_resources, resources).sbatch_preview()
        print("\n# sbatch script for the fine-tune array (dry run: nothing submitted)\n" + preview)
        return 0
    write_manifest(plan)
    if executor_name == "slurm":
        executor = executor_cls(plan, eval_resources, resources)
    else:
        stream = sys.stdout if args.parallel == 1 else None
        executor = executor_cls(plan, eval_resources, resources, parallel=args.parallel, stream=stream)
    try:
        outcome = executor.submit()
    except Exception as err:  # sbatch refused (bad partition, account...): say so in one line
        print(f"error: submission failed: {str(err).strip().splitlines()[-1] if str(err).strip() else err}",
              file=sys.stderr)
        return 1
    print(format_outcome(outcome, executor_name))
    failed = [o for o in outcome if o.status == "failed"]
    return 1 if failed else 0


def resolve_grid_path(name: str) -> Path:
    """A grid path as given, else the shipped grid of that name (`early_stopping.yaml`)."""
    path = Path(name)
    shipped = Path(__file__).resolve().parents[1] / "configs" / "grids" / path.name
    return path if path.exists() or not shipped.exists() else shipped


def format_plan(grid: Grid, plan: Plan, executor: str) -> str:
    lines = [f"grid {grid.spec.name!r}: {len(grid.cells)} cells, executor {executor}",
             f"run directory: {plan.root}", f"W&B group: {grid.base_config.wandb.group or grid.spec.name}", ""]
    width = max(len(c.run_id) for c in grid.cells)
    lines.append(f"{'cell'.ljust(width)}  {'variant':<20} {'seed':<5} fine-tune  evaluate")
    evals = {j.run_id: j for j in plan.evaluations}
    for job in plan.finetunes:
        ev = evals.get(job.run_id)
        lines.append(f"{str(job.run_id).ljust(width)}  {job.config.early_stopping.variant:<20} "
                     f"{job.config.train.seed:<5} {'done' if job.done else 'pending':<10} "
                     f"{'-' if ev is None else ('done' if ev.done else 'pending')}")
    if plan.base_evaluation:
        lines.append(f"{'base model'.ljust(width)}  evaluation: {'done' if plan.base_evaluation.done else 'pending'}")
    return "\n".join(lines)


def format_outcome(outcome: list[Submitted], executor: str) -> str:
    width = max(len(o.name) for o in outcome)
    lines = ["", f"{'job'.ljust(width)}  {'status':<28} {'job id':<12} log"]
    for o in outcome:
        lines.append(f"{o.name.ljust(width)}  {o.status:<28} {o.job_id or '':<12} {o.log or ''}")
        if o.error:
            lines.append(f"{''.ljust(width)}  error: {o.error}")
    if executor == "slurm":
        lines.append("\nfollow with: python launch/status.py <run directory>")
    return "\n".join(lines)


def status_main(root: Path) -> int:
    from storytune.status import format_status, grid_status

    if not (root / "plan.json").exists():
        print(f"error: {root} holds no plan.json (was the grid submitted with this output_dir?)", file=sys.stderr)
        return 2
    print(format_status(grid_status(root)))
    return 0
