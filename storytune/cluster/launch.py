"""Submitting a grid: plan it, show the plan, hand the pending jobs to an executor, show what happened."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from storytune.cluster.executors import EXECUTORS, SlurmExecutor, Submitted, default_executor_name
from storytune.study.grid import Grid
from storytune.study.plan import Plan, make_plan

log = logging.getLogger("storytune")


def submit_grid(grid: Grid, executor_name: str | None = None, dry_run: bool = False, force: bool = False,
                parallel: int = 1, status_only: bool = False) -> int:
    """Plan the grid, print the plan, and submit what is missing; the exit status of `storytune submit`."""
    from storytune.cluster.worker import write_manifest

    plan = make_plan(grid, force=force)
    executor_name = executor_name or default_executor_name()
    print(format_plan(grid, plan, executor_name))
    if status_only:
        return print_status(plan.root)
    executor_cls = EXECUTORS[executor_name]
    resources, eval_resources = grid.spec.resources, grid.eval_resources
    if dry_run:
        preview = SlurmExecutor(plan, eval_resources, resources).sbatch_preview()
        print("\n# sbatch script for the fine-tune array (dry run: nothing submitted)\n" + preview)
        return 0
    write_manifest(plan)
    if executor_name == "slurm":
        executor = executor_cls(plan, eval_resources, resources)
    else:
        stream = sys.stdout if parallel == 1 else None
        executor = executor_cls(plan, eval_resources, resources, parallel=parallel, stream=stream)
    try:
        outcome = executor.submit()
    except Exception as err:  # sbatch refused (bad partition, account...): say so in one line
        print(f"error: submission failed: {str(err).strip().splitlines()[-1] if str(err).strip() else err}",
              file=sys.stderr)
        return 1
    print(format_outcome(outcome, executor_name))
    return 1 if any(o.status == "failed" for o in outcome) else 0


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


def print_status(root: Path) -> int:
    from storytune.cluster.status import format_status, grid_status

    print(format_status(grid_status(root)))
    return 0
