"""The cost of a study: trainings, training tokens and evaluation work with and without replay, from
each grid's plan; and, for a finished grid, the measured wall time of every stage.

    python benchmarks/bench_study.py                                   # the demo and the GPU grid's plans
    python benchmarks/bench_study.py --run runs/demo                   # + the demo's measured stages

Plans need no data or GPU. Training tokens = trainings x max_steps x tokens per step (blocks per
device x accumulation x GPUs x block size): an upper bound for the stopping arms when they are
trained (they stop early), exact for replay (it trains `none` only). Evaluation jobs: one per
training plus the base model; with replay, a training's job evaluates each distinct kept checkpoint
of its cells once (the others get a copy, `copied_from`), which the measured run shows. Stage times
come from each job's submitit log (first and last timestamps).
"""

from __future__ import annotations

import argparse
import re
from dataclasses import replace
from datetime import datetime
from pathlib import Path

from storytune.paths import GridDir
from storytune.study.grid import Grid, load_grid
from storytune.study.plan import make_plan

REPO = Path(__file__).resolve().parents[1]
GRIDS = [REPO / "configs" / "demo.yaml", REPO / "configs" / "grids" / "early_stopping.yaml"]
STAMP = re.compile(r"submitit \w+ \((\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\)")


def plan_cost(grid: Grid) -> dict[str, float]:
    plan = make_plan(grid, force=True)
    train = grid.base_config.train
    res = grid.spec.resources
    per_step = train.batch_size * train.gradient_accumulation_steps * res.nodes * res.processes_per_node \
        * grid.base_config.data.block_size
    return {"cells": len(grid.cells), "trainings": len(plan.finetunes),
            "train_tokens": len(plan.finetunes) * train.max_steps * per_step,
            "evaluation_jobs": len(plan.evaluations) + (1 if plan.base_evaluation else 0),
            "requested_hours": len(plan.finetunes) * res.time_min / 60 * res.nodes * max(1, res.gpus_per_node)}


def compare_plans(path: Path) -> None:
    grid = load_grid(path)
    modes = {"replay": replace(grid, spec=replace(grid.spec, replay=True)),
             "train every cell": replace(grid, spec=replace(grid.spec, replay=False))}
    print(f"\n{path.relative_to(REPO)} ({grid.spec.name}: {len(grid.cells)} cells)")
    print(f"  {'mode':<18} {'trainings':>9} {'training tokens':>16} {'evaluation jobs':>16} {'requested h':>12}")
    costs = {name: plan_cost(g) for name, g in modes.items()}
    for name, cost in costs.items():
        print(f"  {name:<18} {cost['trainings']:>9} {cost['train_tokens']:>16,.0f} {cost['evaluation_jobs']:>16} "
              f"{cost['requested_hours']:>12,.1f}")
    saved = 1 - costs["replay"]["train_tokens"] / costs["train every cell"]["train_tokens"]
    print(f"  replay trains {saved:.0%} fewer tokens (before early stopping shortens the trained arms)")


def job_times(root: Path) -> list[tuple[str, float, datetime, datetime]]:
    """(job name, seconds, start, end) of every job of a finished local or Slurm grid, from its logs."""
    import cloudpickle

    out = []
    for folder in sorted(GridDir(root).logs.iterdir()):
        pickled = folder / f"{folder.name}_submitted.pkl"
        logs = sorted(folder.glob("*_log.out")) + sorted(folder.glob("*_log.err"))
        if not pickled.exists() or not logs:
            continue
        with pickled.open("rb") as handle:
            name = cloudpickle.load(handle).args[0].name
        # Start: when the job was handed over (its pickle written); end: submitit's last log line.
        start = datetime.fromtimestamp(pickled.stat().st_mtime)
        stamps = [datetime.strptime(m, "%Y-%m-%d %H:%M:%S,%f") for log in logs
                  for m in STAMP.findall(log.read_text(errors="replace"))]
        if stamps:
            out.append((name, (max(stamps) - start).total_seconds(), start, max(stamps)))
    return out


def measured(root: Path) -> None:
    times = job_times(root)
    if not times:
        print(f"\n{root}: no job logs with timestamps")
        return
    start, end = min(t[2] for t in times), max(t[3] for t in times)
    wall = (end - start).total_seconds()
    print(f"\n{root}: {len(times)} jobs, {wall:.0f} s from the first job's start to the last job's end")
    stages: dict[str, float] = {}
    for name, seconds, _, _ in times:
        stage = "evaluate (base)" if name == "evaluate/base" else name.split("/")[0]
        stages[stage] = stages.get(stage, 0.0) + seconds
    for stage, seconds in sorted(stages.items(), key=lambda kv: -kv[1]):
        print(f"  {stage:<18} {seconds:>7.0f} s  {seconds / wall:>5.0%}")
    slowest = sorted(times, key=lambda t: -t[1])[:4]
    print("  slowest jobs: " + ", ".join(f"{n} {s:.0f} s" for n, s, _, _ in slowest))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, help="a finished grid's root (e.g. runs/demo) to time its stages")
    args = parser.parse_args()
    for path in GRIDS:
        compare_plans(path)
    if args.run:
        measured(args.run)


if __name__ == "__main__":
    main()
