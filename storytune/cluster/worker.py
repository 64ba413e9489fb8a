"""What every job runs on its worker: the one place where a job touches the world (files, console, W&B).

`storytune.cli` (the `jobs/*.py` commands) and the executors (Slurm, local, debug) call these.
Every side effect happens on the main process only (`storytune.process.is_main_process`).
A multi-task Slurm job first turns Slurm's variables into torch.distributed's (`export_slurm_distributed_env`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from storytune.config import RunConfig
from storytune.paths import (
    EVAL_FILE,
    GridDir,
    eval_file,
    generations_file,
    read_json,
    run_dir_for,
    write_config,
    write_json_atomic,
    write_text_atomic,
)
from storytune.process import is_main_process, setup_logging
from storytune.study.plan import Job, Plan

log = logging.getLogger("storytune")


def run_finetune(config: RunConfig, extra_callbacks: Sequence[object] = (), force: bool = False) -> dict:
    """Fine-tune one arm into its run directory; returns result.json's content.

    A run directory that already holds result.json is done: its result is returned unless `force`.
    An interrupted run resumes from its last checkpoint, and continues the same W&B run.
    """
    from storytune.tracking import Tracker, finetune_summary, trainer_callback
    from storytune.train.finetune import finetune, last_checkpoint, remove_checkpoints

    run_dir = run_dir_for(config)
    if run_dir.is_complete() and not force:
        log.info("%s is complete; skipping (force=True reruns it)", run_dir.path)
        return read_json(run_dir.result)
    main = is_main_process()
    if main:
        run_dir.create()
        if force:
            run_dir.result.unlink(missing_ok=True)
        write_config(run_dir.config, config)
    tags = [config.early_stopping.variant, f"seed{config.train.seed}"]
    fresh_start = last_checkpoint(run_dir.checkpoints) is None  # else: continue the same W&B run
    with Tracker.start(config, run_dir.path, "finetune", name=run_dir.path.name, tags=tags,
                       restart=fresh_start) as tracker:
        result = finetune(config, run_dir, extra_callbacks=[trainer_callback(tracker), *extra_callbacks])
        payload = {"kind": "finetune", "run_dir": str(run_dir.path), **result.to_dict()}
        if main:
            write_json_atomic(run_dir.result, payload)
            tracker.summary(finetune_summary(payload))
            tracker.log_artifact_dir(run_dir.model, name=f"model-{run_dir.path.name}", type="model")
            if not config.output.keep_checkpoints:
                remove_checkpoints(run_dir)
            log.info("wrote %s", run_dir.result)
            print(format_result_line(payload), flush=True)
    return payload


def format_result_line(result: dict) -> str:
    step = result["stop_step"]
    stop = f"stopped early at step {step}" if result["stopped_early"] else f"ran all {step} steps"
    return (f"[{result['variant']} seed {result['seed']}] {stop}; best eval loss "
            f"{result['best_eval_loss']:.4f} at step {result['best_step']}; kept step {result['kept_step']} "
            f"(eval loss {result['final_eval_loss']:.4f}); {result['tokens_per_s']:.0f} tokens/s")


def run_job(job: Job) -> dict:
    """Run one job of a plan (what every executor calls on its worker)."""
    export_slurm_distributed_env()
    setup_logging()
    if job.kind == "finetune":
        return run_finetune(job.config)
    if job.kind == "evaluate":
        tags = [job.config.early_stopping.variant, f"seed{job.config.train.seed}"]
        return run_evaluate_job(job.config, str(job.run_dir.model), job.run_dir.eval_dir, job.run_id, tags)
    if job.kind == "evaluate_base":
        from storytune.train.model import resolve_base_model

        base = resolve_base_model(job.config.model, job.config.output.dir)
        return run_evaluate_job(job.config, base, GridDir(Path(job.grid_root)).base_eval_dir, "base", ["base"])
    return run_aggregate(Path(job.grid_root), job.config)


def run_evaluate_job(config: RunConfig, model_path: str, out_dir: Path, label: str | None,
                     tags: Sequence[str] = (), force: bool = False) -> dict:
    """Evaluate one model (a fine-tuned cell or the base) into `out_dir`, mirrored to W&B."""
    from storytune.eval.evaluate import run_evaluate
    from storytune.eval.generate import read_generations
    from storytune.tracking import Tracker

    label = label or model_path
    with Tracker.start(config, out_dir, "evaluate", name=f"{label}-eval", tags=list(tags)) as tracker:
        payload = run_evaluate(config, model_path, out_dir, label, force=force)
        if payload and tracker:
            tracker.summary(eval_summary(payload))
            samples = read_generations(generations_file(out_dir))[:SAMPLES_TO_WANDB]
            tracker.table("eval/samples", ["prompt", "continuation", "reference"],
                          [[r["prompt"], r["continuation"], r["reference"]] for r in samples])
    return payload


SAMPLES_TO_WANDB = 50


def eval_summary(payload: dict) -> dict[str, float]:
    """eval.json metrics -> flat W&B summary values: `eval/<metric>` and its 95% CI bounds."""
    summary: dict[str, float] = {}
    for name, agg in (payload.get("metrics") or {}).items():
        if isinstance(agg, dict) and agg.get("mean") is not None:
            summary[f"eval/{name}"] = agg["mean"]
            for bound in ("ci_low", "ci_high"):
                if agg.get(bound) is not None:
                    summary[f"eval/{name}_{bound}"] = agg[bound]
    return summary


def write_manifest(plan: Plan) -> Path:
    """`<grid root>/plan.json`: the cells and jobs, read back by aggregation and status."""
    path = GridDir(plan.root).plan
    write_json_atomic(path, plan.manifest())
    return path


def run_aggregate(root: Path, config: RunConfig | None = None) -> dict:
    """Compare every cell of the grid at `root` with the base model; write `report/`, print the
    table, and (when `config` is given) mirror it to W&B as a table and bar charts."""
    from storytune.study.compare import ExpectedCell, compare, table_rows, to_console, to_csv, to_markdown

    grid = GridDir(root)
    manifest = read_json(grid.plan)
    expected = [ExpectedCell(c["run_id"], c["variant"], c["seed"]) for c in manifest["cells"]]
    results = _read_all([grid.run(c.run_id).result for c in expected])
    evals = _read_all([grid.run(c.run_id).eval_result for c in expected])
    base_eval_path = eval_file(grid.base_eval_dir)
    base_eval = read_json(base_eval_path) if base_eval_path.exists() else None
    comparison = compare(expected, results, evals, base_eval)
    report = grid.report
    title = f"storytune grid `{manifest['grid']}`: early stopping vs base model"
    write_text_atomic(report / "comparison.md", to_markdown(comparison, title))
    write_text_atomic(report / "comparison.csv", to_csv(comparison))
    payload = {"grid": manifest["grid"], "cells": len(expected), "failed": comparison.failed,
               "missing_evals": comparison.missing_evals, "rows": [asdict(r) for r in comparison.rows],
               "base_eval_loss": comparison.base_eval_loss, "base_metrics": comparison.base_metrics}
    write_json_atomic(grid.summary, payload)
    print(f"\n{title}\n{to_console(comparison)}\nreport: {report / 'comparison.md'}", flush=True)
    if config is not None:
        _aggregate_to_wandb(config, report, manifest["grid"], table_rows(comparison), comparison)
    return payload


def _aggregate_to_wandb(config: RunConfig, report: Path, grid: str, table: tuple, comparison) -> None:
    from storytune.tracking import Tracker

    header, rows = table
    with Tracker.start(config, report, "aggregate", name=f"{grid}-aggregate", tags=["aggregate"]) as tracker:
        if not tracker:
            return
        tracker.table("grid/comparison", header, rows)
        bars = {"kept_eval_loss": lambda r: r.kept_eval_loss, "stop_step": lambda r: r.stop_step,
                "compute_saved": lambda r: r.compute_saved,
                **{f"eval_{k}": (lambda r, k=k: r.metrics.get(k)) for k in comparison.base_metrics}}
        for key, value in bars.items():
            points = [[r.variant, value(r)] for r in comparison.rows if value(r) is not None]
            base = comparison.base_metrics.get(key.removeprefix("eval_")) if key.startswith("eval_") else None
            if key == "kept_eval_loss":
                base = comparison.base_eval_loss
            if base is not None:
                points.insert(0, ["base", base])
            if points:
                tracker.bar_chart(f"grid/{key}", ["variant", key], points, x="variant", y=key,
                                  title=f"{key} per early-stopping arm vs base")


def _read_all(paths: list[Path]) -> dict[str, dict]:
    """Run id -> content of each file that exists (a run's result.json or eval/eval.json)."""
    found = {}
    for path in paths:
        if path.exists():
            run_dir = path.parent if path.name != EVAL_FILE else path.parent.parent
            found[run_dir.name] = read_json(path)
    return found


def export_slurm_distributed_env() -> bool:
    """Export RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT when inside a multi-task Slurm job.

    Under `accelerate launch` or `torchrun` the launcher exports them itself. Under Slurm, submitit
    starts one process per task; `TorchDistributedEnvironment` turns Slurm's variables into the same
    env:// variables, so the Trainer (through Accelerate) forms the process group."""
    if "RANK" in os.environ or int(os.environ.get("SLURM_NTASKS", "1")) <= 1 or "SUBMITIT_FOLDER" not in os.environ:
        return False
    from submitit.helpers import TorchDistributedEnvironment

    TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
    return True
