"""What every job runs on its worker: the one place where a job touches the world (files, console, W&B).

`storytune.cli` (the `jobs/*.py` commands) and the executors (Slurm, local, debug) call these.
Every side effect happens on the main process only (`storytune.process.is_main_process`).
A multi-task Slurm job first turns Slurm's variables into torch.distributed's (`export_slurm_distributed_env`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from storytune.config import RunConfig
from storytune.errors import first_line
from storytune.eval.generate import read_generations
from storytune.paths import (
    GridDir,
    RunDir,
    eval_file,
    failure_file,
    generations_file,
    read_json,
    run_dir_for,
    stopped_file,
    write_config,
    write_json_atomic,
    write_text_atomic,
)
from storytune.process import git_commit, is_main_process, library_versions, setup_logging
from storytune.stop import StopRequested, exit_code, signal_name, stop_on_signals
from storytune.storage import disk_full_as_error
from storytune.study.plan import Job, Plan

log = logging.getLogger("storytune")


def run_finetune(config: RunConfig, extra_callbacks: Sequence[object] = (), force: bool = False,
                 replays: Sequence[RunConfig] = ()) -> dict:
    """Fine-tune one arm into its run directory; returns result.json's content.

    A run directory that already holds result.json is done: its result is returned unless `force`.
    An interrupted run resumes from its last checkpoint, and continues the same W&B run.
    `replays`: configs of the arms derived from this (`none`) run by replay; each gets its own
    run directory and result.json, marked `replayed_from`.
    """
    from storytune.train.finetune import last_checkpoint

    run_dir = run_dir_for(config)
    pending = [c for c in replays if force or not run_dir_for(c).is_complete()]
    if run_dir.is_complete() and not force and not pending:
        log.info("%s is complete; skipping (force=True reruns it)", run_dir.path)
        return read_json(run_dir.result)
    if run_dir.is_complete() and pending and not force:  # its checkpoints are gone: train again
        log.info("%s is complete but replayed arms are missing: training it again", run_dir.path)
    if is_main_process():
        run_dir.create()
        run_dir.result.unlink(missing_ok=True)
        write_config(run_dir.config, config)
    # A full disk (checkpoint, kept model, result) ends in one line naming the folder and the resume point.
    with disk_full_as_error(run_dir.path, run_dir.checkpoints, last_checkpoint):
        return _run_finetune(config, run_dir, extra_callbacks, replays)


def _run_finetune(config: RunConfig, run_dir: RunDir, extra_callbacks: Sequence[object],
                  replays: Sequence[RunConfig]) -> dict:
    from storytune.tracking import Tracker, finetune_summary, trainer_callback
    from storytune.train.finetune import finetune, last_checkpoint, remove_checkpoints

    main = is_main_process()
    tags = [config.early_stopping.variant, f"seed{config.train.seed}"]
    fresh_start = last_checkpoint(run_dir.checkpoints) is None  # else: continue the same W&B run
    with Tracker.start(config, run_dir.path, "finetune", name=run_dir.path.name, tags=tags,
                       restart=fresh_start) as tracker:
        callbacks = [trainer_callback(tracker), *extra_callbacks]
        if replays:
            from storytune.train.replay import PruneCheckpoints

            callbacks.append(PruneCheckpoints(list(replays), config.train.max_steps))
        result, prepared = finetune(config, run_dir, extra_callbacks=callbacks, keep_all_checkpoints=bool(replays))
        derived = _replay(result, run_dir, prepared, replays) if replays else []
        if replays:
            from storytune.train.finetune import end_process_group

            end_process_group()  # finetune() left the group up for the replay's scoring
        payload = _finetune_payload(run_dir, result)
        if main:
            for arm_dir, arm_result in derived:
                write_json_atomic(arm_dir.result, _finetune_payload(arm_dir, arm_result))
                print(format_result_line(arm_result.to_dict()), flush=True)
            write_json_atomic(run_dir.result, payload)
            tracker.summary(finetune_summary(payload))
            tracker.log_artifact_dir(run_dir.model, name=f"model-{run_dir.path.name}", type="model")
            if not config.output.keep_checkpoints:
                remove_checkpoints(run_dir)
            log.info("wrote %s", run_dir.result)
            print(format_result_line(payload), flush=True)
    return payload


def _finetune_payload(run_dir: RunDir, result: Any) -> dict:
    return {"kind": "finetune", "run_dir": str(run_dir.path), **result.to_dict()}


def _replay(source: Any, source_dir: RunDir, prepared: Any, replays: Sequence[RunConfig]) -> list[tuple[RunDir, Any]]:
    """Derive every replayed arm from the finished source run (main process writes their folders)."""
    from storytune.train.replay import replay_arms

    arms = [(c, run_dir_for(c)) for c in replays]
    if is_main_process():
        for config, arm_dir in arms:
            arm_dir.create()
            write_config(arm_dir.config, config)
    results = replay_arms(source, source_dir.path.name, source_dir.checkpoints, prepared, arms)
    return [(arm_dir, result) for (_, arm_dir), result in zip(arms, results)]


def format_result_line(result: dict) -> str:
    step = result["stop_step"]
    stop = f"stopped early at step {step}" if result["stopped_early"] else f"ran all {step} steps"
    how = f" (replayed from {result['replayed_from']})" if result.get("replayed_from") else ""
    test = result["test_loss"]
    return (f"[{result['variant']} seed {result['seed']}] {stop}{how}; best validation loss "
            f"{result['best_eval_loss']:.4f} at step {result['best_step']}; kept step {result['kept_step']}; "
            f"test loss {test['mean']:.4f} [{_num(test['ci_low'])}, {_num(test['ci_high'])}]; "
            f"{result['tokens_per_s']:.0f} tokens/s")


def _num(value: float | None) -> str:
    return "–" if value is None else f"{value:.4f}"


def run_job(job: Job) -> dict:
    """Run one job of a plan (what every executor calls on its worker).

    A job that raises (a NaN loss included: `NonFiniteLossCheck`; a spent requeue budget: submitit's
    UncompletedJobError) leaves `failure.json` (`failure_record`, at `job.failure`) and re-raises, so
    the executor reports it failed and the other cells go on; a later success removes the record."""
    export_slurm_distributed_env()
    setup_logging()
    if is_main_process():
        clear_stop_record(job)  # running again: no longer stopped
    try:
        with stop_on_signals():  # SIGTERM (Ctrl-C on a local grid, scancel): end cleanly, keep the checkpoints
            payload = _run_job(job)
    except StopRequested as stop:  # not a failure: no failure.json; a rerun resumes
        note = rerun_note(job)
        log.warning("%s %s; %s", job.name, stop, note)
        if is_main_process():
            write_stop_record(job, stop, note)
        raise SystemExit(exit_code(stop.signum)) from None
    except Exception as err:  # not KeyboardInterrupt/SystemExit: a preempted or requeued job has not failed
        if is_main_process():
            write_failure(job.failure, job, err)
            if job.kind == "finetune":  # the arms replay derives from it failed with it: each cell says why
                for arm in job.replays:
                    write_failure(run_dir_for(arm).failure, job, err)
        raise
    if is_main_process():
        job.failure.unlink(missing_ok=True)
        if job.kind == "finetune":
            for arm in job.replays:
                run_dir_for(arm).failure.unlink(missing_ok=True)
    return payload


def rerun_note(job: Job) -> str:
    """What a rerun of a stopped job does: a fine-tune resumes from its newest complete checkpoint."""
    if job.kind != "finetune":
        return "a rerun starts it again"
    from storytune.train.finetune import last_checkpoint

    checkpoint = last_checkpoint(job.run_dir.checkpoints)
    return (f"a rerun resumes from {Path(checkpoint).name}, the last complete checkpoint" if checkpoint
            else "no checkpoint was complete yet: a rerun starts it again")


def write_stop_record(job: Job, stop: StopRequested, note: str) -> None:
    """stopped.json beside the job's failure record: `storytune status` shows the job stopped (not
    "not submitted") and what a rerun does."""
    from datetime import UTC, datetime

    try:
        write_json_atomic(stopped_file(job.failure), {
            "job": job.name, "kind": job.kind, "signal": signal_name(stop.signum), "rerun": note,
            "time": datetime.now(UTC).isoformat(timespec="seconds")})
    except OSError as err:  # a full disk may be why it stopped: the log line above still says it
        log.error("could not write %s: %s", stopped_file(job.failure), err)


def clear_stop_record(job: Job) -> None:
    """Remove this job's stop record (a fine-tune and its cell's evaluation share the folder: only its own)."""
    path = stopped_file(job.failure)
    try:
        if read_json(path).get("job") == job.name:
            path.unlink(missing_ok=True)
    except (OSError, ValueError, AttributeError):  # none (the usual case), or unreadable
        pass


FAILURE_TRACEBACK_LINES = 20
"""Lines of the traceback's end kept in failure.json: the raising frames and the exception."""


def failure_record(job: Job, err: BaseException, attempt: int) -> dict:
    """failure.json's content: which job, why in one line, and the traceback's tail."""
    import traceback
    from datetime import UTC, datetime

    lines = "".join(traceback.format_exception(err)).rstrip().splitlines()
    return {"job": job.name, "kind": job.kind, "reason": first_line(err), "exception": type(err).__name__,
            "traceback": lines[-FAILURE_TRACEBACK_LINES:],
            "time": datetime.now(UTC).isoformat(timespec="seconds"), "attempt": attempt}


def write_failure(path: Path, job: Job, err: Exception) -> None:
    """Write failure.json atomically; `attempt` counts failures in a row (1 + the previous record's)."""
    try:
        attempt = int(read_json(path).get("attempt", 0)) + 1
    except (OSError, ValueError, AttributeError):  # none yet (or unreadable): this is the first
        attempt = 1
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, failure_record(job, err, attempt))
    except (OSError, ValueError) as write_error:  # never hide the job's own error behind this one
        log.error("could not write %s: %s", path, write_error)
        return
    log.error("%s failed: %s (recorded in %s)", job.name, first_line(err), path)


def _run_job(job: Job) -> dict:
    if job.kind == "finetune":
        return run_finetune(job.config, replays=job.replays)
    if job.kind == "evaluate":
        return run_cell_evaluations(job)
    if job.kind == "evaluate_base":
        from storytune.train.model import resolve_base_model

        base = resolve_base_model(job.config.model, job.config.output.dir)
        return run_evaluate_job(job.config, base, GridDir(Path(job.grid_root)).base_eval(str(job.key)), "base",
                                ["base"])
    return run_aggregate(Path(job.grid_root), job.config)


class EvaluationsFailed(RuntimeError):
    """Some of an evaluation job's cells could not be evaluated (each cell's failure.json says why)."""


def run_cell_evaluations(job: Job) -> dict:
    """Evaluate every cell of one training (its own and, with replay, the arms derived from it):
    each distinct kept checkpoint once; a cell keeping the same weights as one already evaluated
    gets a copy of its evaluation (`copied_from` in eval.json). A cell whose evaluation fails gets
    its own failure.json and the others go on; the job then fails naming them. Returns the job's
    own cell's eval.json."""
    configs = [job.config, *job.replays]
    evaluated: dict[tuple[str, int], RunDir] = {}
    payloads: dict[str, dict] = {}
    failed: list[tuple[str, Exception]] = []
    for config in configs:
        run_dir = run_dir_for(config)
        try:
            payloads[run_dir.path.name] = _evaluate_cell(config, run_dir, evaluated)
        except Exception as err:
            if len(configs) == 1:
                raise
            failed.append((run_dir.path.name, err))
            if is_main_process():
                write_failure(run_dir.failure, job, err)
        else:
            if is_main_process() and run_dir.path.name != job.run_id:
                run_dir.failure.unlink(missing_ok=True)
    if failed:
        names = ", ".join(f"{run_id} ({first_line(err)})" for run_id, err in failed)
        raise EvaluationsFailed(f"{len(failed)} of {len(configs)} evaluations failed: {names}")
    return payloads[str(job.run_id)]


def weights_id(result: dict) -> tuple[str, int]:
    """Cells with the same weights: the run that trained them and the step they were kept at."""
    return result.get("replayed_from") or Path(result["run_dir"]).name, int(result["kept_step"])


def _evaluate_cell(config: RunConfig, run_dir: RunDir, evaluated: dict[tuple[str, int], RunDir]) -> dict:
    """One cell's evaluation: done already, copied from a cell with the same weights, or run.
    `evaluated` maps the weights evaluated so far (`weights_id`) to the cell that has them."""
    if not is_main_process():  # evaluation runs on the main process only (run_evaluate returns {})
        return {}
    if not run_dir.is_complete() and not run_dir.eval_result.exists():
        # Its training failed or never ran (its failure.json says why).
        raise FileNotFoundError(f"no {run_dir.result.name} in {run_dir.path}: its training has not finished; "
                                "submit the grid again to rerun it")
    weights = weights_id(read_json(run_dir.result)) if run_dir.is_complete() else None
    if run_dir.eval_result.exists():
        payload = read_json(run_dir.eval_result)
    elif weights in evaluated:
        payload = copy_evaluation(evaluated[weights], run_dir)
    else:
        tags = [config.early_stopping.variant, f"seed{config.train.seed}"]
        payload = run_evaluate_job(config, str(run_dir.model), run_dir.eval_dir, run_dir.path.name, tags)
    if weights is not None and not payload.get("copied_from"):
        evaluated.setdefault(weights, run_dir)
    return payload


def copy_evaluation(source: RunDir, target: RunDir) -> dict:
    """`target` keeps the same weights as `source` (same training, same kept step): the same
    prompts, seeds and weights give the same generations and scores, so its evaluation is a copy,
    marked `copied_from`. Returns the copy's eval.json."""
    payload = read_json(source.eval_result)
    payload = {**payload, "model": {**payload.get("model", {}), "label": target.path.name, "path": str(target.model)},
               "copied_from": source.path.name}
    write_text_atomic(generations_file(target.eval_dir), generations_file(source.eval_dir).read_text())
    write_json_atomic(target.eval_result, payload)  # last: marks the evaluation complete
    log.info("%s keeps the same weights as %s: its evaluation is copied", target.path.name, source.path.name)
    return payload


def run_evaluate_job(config: RunConfig, model_path: str, out_dir: Path, label: str | None,
                     tags: Sequence[str] = (), force: bool = False) -> dict:
    """Evaluate one model (a fine-tuned cell or the base) into `out_dir`, mirrored to W&B."""
    from storytune.eval.evaluate import run_evaluate
    from storytune.tracking import Tracker

    label = label or model_path
    with disk_full_as_error(out_dir), \
            Tracker.start(config, out_dir, "evaluate", name=f"{label}-eval", tags=list(tags)) as tracker:
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
    """Compare every cell of the grid at `root`; write `report/` (summary.json last) and print the
    findings; with `config` (the aggregation job), mirror the report to W&B."""
    from storytune.study.compare import summarize
    from storytune.study.report import write_report

    grid = GridDir(root)
    manifest = read_json(grid.plan)
    cells = [_cell_data(grid, cell) for cell in manifest["cells"]]
    summary = summarize(cells, _context(grid, manifest, cells))
    with disk_full_as_error(grid.report):
        html = write_report(summary, grid.report)
        write_json_atomic(grid.summary, summary)  # last: marks the aggregation complete
    lines = [f"\nstorytune grid `{summary['grid']}`: {summary['cells']['finished']} of "
             f"{summary['cells']['expected']} cells finished", *(f"warning: {w}" for w in summary["warnings"]),
             f"report: {html}", *(f"- {f}" for f in summary["findings"])]
    print("\n".join(lines), flush=True)
    if config is not None:
        _report_to_wandb(config, grid, summary)
    return summary


def _cell_data(grid: GridDir, cell: dict) -> Any:
    from storytune.study.compare import CellData

    run = grid.run(cell["run_id"])
    generations = generations_file(run.eval_dir)
    return CellData(run_id=cell["run_id"], variant=cell["variant"], seed=cell["seed"],
                    result=_read_if_exists(run.result), eval=_read_if_exists(run.eval_result),
                    generations=read_generations(generations) if generations.exists() else None,
                    failure=_read_if_exists(run.failure))


def _context(grid: GridDir, manifest: dict, cells: list) -> Any:
    from datetime import UTC, datetime

    from storytune.study.compare import BaseData, Context

    base = manifest.get("base_model") or {}
    name = next((c.result["base_model"] for c in cells if c.result), base.get("name", "?"))
    if not base.get("random"):  # a preset's converted folder is named by its preset and weights, not its cache path
        from storytune.train.pretrained import describe_model
        name = describe_model(name)
    # Keyed by what it depends on (plan.json `base_model.eval_key`); a plan written before keys: `base/eval`.
    base_eval_dir = grid.base_eval(base["eval_key"]) if base.get("eval_key") else grid.base / "eval"
    base_generations = generations_file(base_eval_dir)
    return Context(
        grid=manifest["grid"], created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        replay=bool(manifest.get("replay")),
        base=BaseData(name=name, is_random=bool(base.get("random")),
                      eval=_read_if_exists(eval_file(base_eval_dir)),
                      generations=read_generations(base_generations) if base_generations.exists() else None,
                      failure=_read_if_exists(failure_file(base_eval_dir))),
        provenance={"config_hash": base.get("config_hash"), "git_commit": git_commit(),
                    "versions": library_versions()})


def _read_if_exists(path: Path) -> dict | None:
    return read_json(path) if path.exists() else None


def _report_to_wandb(config: RunConfig, grid: GridDir, summary: dict) -> None:
    """The aggregation run: the comparison table, the findings and the report's plots as images."""
    from storytune.tracking import Tracker

    with Tracker.start(config, grid.report, "aggregate", name=f"{summary['grid']}-aggregate",
                       tags=["aggregate"]) as tracker:
        if not tracker:
            return
        header = ["variant", "seeds", "stop step", "compute saved", "test loss", "ci low", "ci high",
                  "vs none diff", "vs none p", "vs none Holm p"]
        rows = []
        for arm in summary["arms"]:
            test, vs = arm["test_loss"] or {}, arm["vs_none"].get("test_loss") or {}
            rows.append([arm["variant"], arm["n_seeds"], arm["stop_step"], arm["compute_saved"], test.get("mean"),
                         test.get("ci_low"), test.get("ci_high"), vs.get("diff"), vs.get("p_value"),
                         vs.get("p_holm")])
        tracker.table("report/arms", header, rows)
        tracker.table("report/findings", ["finding"], [[f] for f in summary["findings"]])
        tracker.images({f"report/{path.stem}": path for path in sorted((grid.report / "plots").glob("*.png"))})


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
