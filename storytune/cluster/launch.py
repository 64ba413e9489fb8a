"""Submitting a grid: plan it, show the plan, hand the pending jobs to an executor, show what happened."""

from __future__ import annotations

import fcntl
import logging
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from storytune.cluster.executors import (
    EXECUTORS,
    NOT_STARTED,
    STOPPED,
    SlurmExecutor,
    Stage,
    StopNow,
    Submitted,
    default_executor_name,
)
from storytune.errors import last_line
from storytune.paths import GridDir, OutputError
from storytune.stop import exit_code, signal_name
from storytune.study.grid import Grid
from storytune.study.plan import Plan, make_plan

log = logging.getLogger("storytune")

LOCK_WAIT_S = 10.0
"""Seconds a second submission of the same grid waits for the first one's lock before giving up."""
LOCK_POLL_S = 0.1


def submit_grid(grid: Grid, executor_name: str | None = None, dry_run: bool = False, force: bool = False,
                parallel: int = 1, status_only: bool = False, lock_wait_s: float = LOCK_WAIT_S) -> int:
    """Plan the grid, print the plan, and submit what is missing; the exit status of `storytune submit`.

    A real submission holds the grid directory's lock (`grid_lock`) from planning to the end of
    submitting, so two submissions of the same grid never both see a cell pending and submit it twice.
    A dry run or `--status` submits nothing and takes no lock."""
    if dry_run or status_only:
        return _submit_grid(grid, executor_name, dry_run, force, parallel, status_only)
    check_writable(grid.root)
    with grid_lock(GridDir(grid.root), lock_wait_s):
        return _submit_grid(grid, executor_name, dry_run, force, parallel, status_only)


class GridLocked(OutputError):
    """Another process is submitting this grid."""


@contextmanager
def grid_lock(grid_dir: GridDir, wait_s: float) -> Iterator[None]:
    """Hold an exclusive `fcntl.flock` on `<grid>/.submit.lock` (the holder's pid written inside).

    Non-blocking tries for up to `wait_s` seconds, then `GridLocked`. The kernel drops the lock when
    the holder's file is closed or its process dies (even by SIGKILL), so no stale lock survives a crash;
    the file itself stays (removing it would let a third process lock a different inode)."""
    handle = open(grid_dir.lock, "a+")  # noqa: SIM115 - closed in `finally`, which also releases the lock
    try:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    handle.seek(0)
                    holder = handle.read().strip() or "unknown"
                    raise GridLocked(f"another submission of this grid is running (pid {holder}); waited "
                                     f"{wait_s:g} s for {grid_dir.lock}: try again when it has finished") from None
                time.sleep(LOCK_POLL_S)
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        yield
    finally:
        handle.close()


def _submit_grid(grid: Grid, executor_name: str | None, dry_run: bool, force: bool, parallel: int,
                 status_only: bool) -> int:
    from storytune.cluster.worker import write_manifest

    plan = make_plan(grid, force=force)
    executor_name = executor_name or default_executor_name()
    print(format_plan(grid, plan, executor_name))
    if status_only:
        return print_status(plan.root)
    executor_cls = EXECUTORS[executor_name]
    resources, eval_resources = grid.spec.resources, grid.eval_resources
    if dry_run:
        print(checkpoint_lines(plan))
        stages = SlurmExecutor(plan, eval_resources, resources, aggregate_resources=grid.aggregate_resources).stages()
        print(format_dry_run(stages))
        return 0
    had_manifest = GridDir(plan.root).plan.exists()
    write_manifest(plan)
    if executor_name == "slurm":
        executor = executor_cls(plan, eval_resources, resources, aggregate_resources=grid.aggregate_resources)
    else:
        stream = sys.stdout if parallel == 1 else None
        executor = executor_cls(plan, eval_resources, resources, parallel=parallel, stream=stream,
                                aggregate_resources=grid.aggregate_resources)
    try:
        outcome = executor.submit()
    except StopNow as stop:  # a second Ctrl-C: the running jobs were killed mid-step
        print(f"stopped at once; resume with: {resume_command()}", file=sys.stderr)
        return exit_code(stop.signum)
    except Exception as err:  # sbatch refused (bad partition, account...): say so in one line
        if not had_manifest:  # nothing was submitted: leave no plan.json that looks like a submitted grid
            GridDir(plan.root).plan.unlink(missing_ok=True)
        print(f"error: submission failed: {last_line(err)}", file=sys.stderr)
        return 1
    print(format_outcome(outcome, executor_name))
    if (signum := getattr(getattr(executor, "stop", None), "signum", None)) is not None:
        print(format_stopped(outcome, signal_name(signum)))
        return exit_code(signum)  # 130 for Ctrl-C, 143 for SIGTERM, as a shell reports them
    grid_dir = GridDir(plan.root)
    if executor_name != "slurm" and grid_dir.summary.exists():  # the study's answer, last
        print(f"\nreport: {grid_dir.report_html}")
    return 1 if any(o.status == "failed" for o in outcome) else 0


def format_stopped(outcome: list[Submitted], signal: str) -> str:
    """What a stop on request left: finished, stopped (checkpoints kept), never started; how to go on."""
    def names(*statuses: str) -> str:
        return ", ".join(o.name for o in outcome if o.status in statuses) or "none"

    return "\n".join([
        f"\nstopped on request ({signal}).",
        f"  finished: {names('done', 'skipped (done)')}",
        f"  stopped (their complete checkpoints are kept): {names(STOPPED)}",
        f"  never started: {names(NOT_STARTED)}",
        f"resume with: {resume_command()}",
    ])


def resume_command(argv: list[str] | None = None) -> str:
    """The command line that submits this grid again (what is done is skipped, stopped fine-tunes
    resume from their checkpoints); `--force` is dropped, it would start every cell over."""
    import shlex

    argv = list(sys.argv if argv is None else argv)
    program, args = argv[0], [a for a in argv[1:] if a != "--force"]
    if program.endswith("__main__.py"):
        head = ["python", "-m", "storytune"]
    elif program.endswith(".py"):
        head = ["python", program]
    else:
        head = [Path(program).name]
    return shlex.join([*head, *args])


def check_writable(root: Path) -> None:
    """Fail before submitting anything when the grid's root cannot be written (every job writes there)."""
    import tempfile

    try:
        root.mkdir(parents=True, exist_ok=True)
        tempfile.NamedTemporaryFile(dir=root, prefix=".write-test-").close()
    except OSError as err:
        raise OutputError(f"output directory {root} is not writable: {err.strerror}; set output_dir=... "
                          "to a folder every node can write (e.g. on /scratch)") from None


def checkpoint_lines(plan: Plan) -> str:
    """Estimated peak checkpoint bytes of each distinct training job shape (`checkpoint_bytes`)."""
    from storytune.train.checkpoint_bytes import describe_peak

    lines = {describe_peak(job.config, len(job.replays)) for job in plan.finetunes}
    return "\n".join(sorted(lines)) if lines else "checkpoints: no training job"


def format_dry_run(stages: list[Stage]) -> str:
    """Every stage Slurm would get (jobs, resources, dependencies), the GPU-hours each requests,
    then each stage's sbatch script."""
    active = [stage for stage in stages if stage.jobs]
    lines = ["", "# dry run: nothing submitted. Slurm stages in submission order (X_ID: stage X's job id)"]
    lines += [f"  {stage.summary()}" for stage in active]
    lines += ["", "# GPU-hours requested (jobs x nodes x GPUs x time limit; an upper bound on what is used)"]
    lines += [f"  {stage.kind:<14} {stage.gpu_hours:>8,.1f}" for stage in active]
    lines.append(f"  {'total':<14} {sum(stage.gpu_hours for stage in active):>8,.1f}")
    for stage in active:
        lines += ["", f"# sbatch script: {stage.kind} ({stage.job_name})", stage.script.rstrip()]
    return "\n".join(lines)


def format_plan(grid: Grid, plan: Plan, executor: str) -> str:
    lines = [f"grid {grid.spec.name!r}: {len(grid.cells)} cells, executor {executor}",
             f"run directory: {plan.root}", f"W&B group: {grid.base_config.wandb.group or grid.spec.name}", ""]
    width = max(len(c.run_id) for c in grid.cells)
    lines.append(f"{'cell'.ljust(width)}  {'variant':<20} {'seed':<5} {'fine-tune':<10} evaluate")
    finetunes = {j.run_id: j for j in plan.finetunes}
    evals = {j.run_id: j for j in plan.evaluations}  # one per training: it evaluates the cells trained there
    sources = grid.replay_sources()
    for cell in grid.cells:
        source = finetunes[sources[cell.run_id].run_id]
        trained = ("done" if source.done else "pending") if source.run_id == cell.run_id else "replayed"
        ev = evals.get(source.run_id)
        evaluation = "-" if ev is None else "done" if ev.done else "pending"
        lines.append(f"{cell.run_id.ljust(width)}  {cell.config.early_stopping.variant:<20} "
                     f"{cell.config.train.seed:<5} {trained:<10} {evaluation}")
    if plan.base_evaluation:
        lines.append(f"{'base model'.ljust(width)}  evaluation: {base_eval_state(plan)}")
    lines.append(replay_line(grid, plan))
    return "\n".join(lines)


def base_eval_state(plan: Plan) -> str:
    """`done (key 1a2b3c4d: base/eval-1a2b3c4d)`, or pending with the keys done under other settings."""
    job = plan.base_evaluation
    assert job is not None
    folder = GridDir(plan.root).base_eval(str(job.key)).relative_to(plan.root)
    if job.done:
        return f"done (key {job.key}: {folder})"
    others = [key for key in GridDir(plan.root).base_eval_keys_done() if key != job.key]
    stale = f"; done under other settings: {', '.join(others)}, not reused" if others else ""
    return f"pending (key {job.key}: {folder}{stale})"


def replay_line(grid: Grid, plan: Plan) -> str:
    """Trainings and requested GPU-hours (Slurm time limit x GPUs) with and without replay."""
    resources = grid.spec.resources
    hours = resources.time_min / 60 * resources.nodes * max(1, resources.gpus_per_node)
    unit = "GPU-hours" if resources.gpus_per_node else "node-hours"
    cells, replayed = len(grid.cells), trainings_with_replay(grid)
    if grid.spec.replay:
        return (f"\nreplay: {replayed} trainings instead of {cells} (requested {unit}: {replayed * hours:,.1f} "
                f"instead of {cells * hours:,.1f}); each stopping arm is derived from its seed's `none` run")
    return (f"\ntrainings: {cells} (requested {unit}: {cells * hours:,.1f}); with `replay: true`: {replayed} "
            f"({replayed * hours:,.1f})")


def trainings_with_replay(grid: Grid) -> int:
    """Trainings the grid needs in replay mode: one per `none` cell, plus cells without a `none` arm."""
    from dataclasses import replace

    sources = replace(grid, spec=replace(grid.spec, replay=True)).replay_sources()
    return len({source.run_id for source in sources.values()}) + len(grid.cells) - len(sources)


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
