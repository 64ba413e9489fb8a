"""Submitting a 100-cell grid to Slurm: one array per stage vs one sbatch per job.

Needs the local cluster (`bash slurm/local_cluster.sh start`). Every job is submitted HELD
(`--hold`) and cancelled afterwards, so nothing runs; only submission is timed.

    python benchmarks/bench_submit.py [--cells 100] [--repeats 3]

Measured side by side in one run:
  1. `launch/submit.py --executor slurm` as a user types it (new Python process, imports included):
     fine-tune array + evaluation array (aftercorr) + base evaluation + aggregation = 4 sbatch calls.
  2. The same plan's submission in-process (`SlurmExecutor.submit`).
  3. Baseline: the 100 fine-tune jobs submitted one `sbatch` each (submitit `executor.submit`).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from storytune.cluster.executors import JobRunner, SlurmExecutor, import_submitit, submitit_parameters  # noqa: E402
from storytune.config import read_yaml  # noqa: E402
from storytune.study.grid import load_grid  # noqa: E402
from storytune.study.plan import make_plan  # noqa: E402
from storytune.yaml_loader import plain  # noqa: E402


def write_grid(folder: Path, cells: int) -> Path:
    grid = read_yaml(REPO / "configs" / "grids" / "tiny.yaml")
    grid["name"] = "bench"
    grid["output_dir"] = str(folder / "runs")
    grid["base"]["data"]["files"] = ["/nonexistent"]  # never read: every job is held, then cancelled
    grid["axes"] = {"early_stopping": [{"patience": None}], "train.seed": list(range(1, cells + 1))}
    grid["resources"]["sbatch"] = {"hold": True}
    path = folder / "bench.yaml"
    path.write_text(yaml.safe_dump(plain(grid)))
    return path


def cancel_all() -> None:
    for name in ("bench-finetune", "bench-evaluate", "bench-base", "bench-aggregate", "bench-single"):
        subprocess.run(["scancel", "--name", name], check=False)  # scancel 22.05 takes one name at a time


def time_cli(grid_path: Path) -> float:
    shutil.rmtree(grid_path.parent / "runs", ignore_errors=True)
    command = [sys.executable, str(REPO / "launch" / "submit.py"), "--grid", str(grid_path), "--executor", "slurm"]
    start = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    elapsed = time.perf_counter() - start
    cancel_all()
    return elapsed


def time_in_process(grid_path: Path) -> tuple[float, int]:
    shutil.rmtree(grid_path.parent / "runs", ignore_errors=True)
    grid = load_grid(grid_path)
    plan = make_plan(grid)
    start = time.perf_counter()
    outcome = SlurmExecutor(plan, grid.eval_resources, grid.spec.resources).submit()
    elapsed = time.perf_counter() - start
    cancel_all()
    return elapsed, len({o.job_id.split("_")[0] for o in outcome if o.job_id})


def time_one_sbatch_per_job(grid_path: Path) -> float:
    shutil.rmtree(grid_path.parent / "runs", ignore_errors=True)
    grid = load_grid(grid_path)
    plan = make_plan(grid)
    submitit = import_submitit()
    executor = submitit.AutoExecutor(folder=plan.root / "logs" / "%j", cluster="slurm")
    executor.update_parameters(**submitit_parameters(grid.spec.resources, "bench-single"))
    start = time.perf_counter()
    for job in plan.finetunes:
        executor.submit(JobRunner(), job)
    elapsed = time.perf_counter() - start
    cancel_all()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cells", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if shutil.which("sbatch") is None:
        sys.exit("needs Slurm: bash slurm/local_cluster.sh start")
    with tempfile.TemporaryDirectory() as tmp:
        grid_path = write_grid(Path(tmp), args.cells)
        cli, inproc, single = [], [], []
        for _ in range(args.repeats):
            cli.append(time_cli(grid_path))
            seconds, sbatch_calls = time_in_process(grid_path)
            inproc.append(seconds)
            single.append(time_one_sbatch_per_job(grid_path))
    result = {
        "cells": args.cells, "repeats": args.repeats, "sbatch_calls_grid": sbatch_calls,
        "cli_submit_s_median": statistics.median(cli), "in_process_submit_s_median": statistics.median(inproc),
        "one_sbatch_per_finetune_s_median": statistics.median(single),
        "speedup_in_process_vs_one_per_job": statistics.median(single) / statistics.median(inproc),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
