"""What the worker does with a replay grid's cells: a failed training's failure lands in each of its
cells, and an evaluation job evaluates each distinct kept checkpoint of its training once.

The real generation and scoring run in tests/cluster/test_replay_failure_slurm.py (real Slurm, real
models); here `run_evaluate_job` is replaced by a recorder so that which cells are evaluated, copied
or failed can be checked in a second."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from storytune.cluster import worker
from storytune.cluster.executors import LocalExecutor, Submitted
from storytune.cluster.worker import EvaluationsFailed, run_job, write_manifest
from storytune.paths import GridDir, generations_file, write_json_atomic
from storytune.study.grid import ResourcesConfig, expand_grid
from storytune.study.plan import make_plan


def replay_plan(tmp_path: Path, data_files: list[str] | None = None):
    return make_plan(expand_grid({
        "name": "r", "output_dir": str(tmp_path), "replay": True,
        "base": {"model": {"name": "tiny"}, "data": {"files": data_files or ["/x"]}, "wandb": {"mode": "disabled"},
                 "train": {"max_steps": 20, "eval_steps": 10}},
        "axes": {"train.seed": [1, 2], "early_stopping": [{"patience": None}, {"patience": 1}, {"patience": 3}]},
    }))


def test_a_failed_training_leaves_its_failure_in_each_of_its_cells(tmp_path: Path) -> None:
    plan = replay_plan(tmp_path, data_files=[str(tmp_path / "no-such-stories.txt")])
    job = plan.finetunes[0]
    with pytest.raises(Exception):  # noqa: B017 - the data error itself is not under test
        run_job(job)
    grid = GridDir(plan.root)
    records = [json.loads(grid.run(run_id).failure.read_text()) for run_id in job.cells]
    assert len(records) == 3 and {r["job"] for r in records} == {job.name}
    assert len({r["reason"] for r in records}) == 1 and "no-such-stories" in records[0]["reason"]
    assert not any(grid.run(run_id).failure.exists() for run_id in plan.finetunes[1].cells)


class RecordedEvaluations:
    """Stands in for `run_evaluate_job` (generation and scoring): writes what it would, records the call."""

    def __init__(self, failing: set[str] = frozenset()) -> None:
        self.calls: list[str] = []
        self.failing = failing

    def __call__(self, config, model_path, out_dir, label, tags=(), force=False):
        self.calls.append(label)
        if label in self.failing:
            raise RuntimeError(f"CUDA out of memory evaluating {label}")
        payload = {"kind": "evaluate", "model": {"label": label, "path": model_path},
                   "metrics": {"distinct_2": {"mean": 0.5 + len(self.calls) / 100}}}
        write_json_atomic(generations_file(out_dir).with_name("eval.json"), payload)
        generations_file(out_dir).write_text(json.dumps({"prompt": "p", "continuation": label}) + "\n")
        return payload


def finished_training(plan, kept: dict[str, int]) -> None:
    """result.json for each cell of the first training: the source keeps step 20, the arms `kept`."""
    job = plan.finetunes[0]
    for run_id in job.cells:
        run = GridDir(plan.root).run(run_id)
        write_json_atomic(run.result, {"run_dir": str(run.path), "kept_step": kept.get(run_id, 20),
                                       "replayed_from": None if run_id == job.run_id else job.run_id})


def test_cells_keeping_the_same_checkpoint_are_evaluated_once(tmp_path: Path, monkeypatch) -> None:
    plan = replay_plan(tmp_path)
    write_manifest(plan)
    source, patience1, patience3 = plan.evaluations[0].cells
    finished_training(plan, {patience1: 10, patience3: 20})  # patience3 keeps the source's last step
    evaluations = RecordedEvaluations()
    monkeypatch.setattr(worker, "run_evaluate_job", evaluations)
    run_job(plan.evaluations[0])
    assert evaluations.calls == [source, patience1]
    grid = GridDir(plan.root)
    copy = json.loads(grid.run(patience3).eval_result.read_text())
    original = json.loads(grid.run(source).eval_result.read_text())
    assert copy["copied_from"] == source and copy["metrics"] == original["metrics"]
    assert copy["model"]["label"] == patience3 and "copied_from" not in original
    copied, generated = (generations_file(grid.run(run_id).eval_dir).read_text() for run_id in (patience3, source))
    assert copied == generated
    assert "copied_from" not in json.loads(grid.run(patience1).eval_result.read_text())
    assert replay_plan(tmp_path).evaluations[0].done  # every cell of the training is evaluated


def test_a_failed_evaluation_stays_in_its_cell(tmp_path: Path, monkeypatch) -> None:
    plan = replay_plan(tmp_path)
    write_manifest(plan)
    source, patience1, patience3 = plan.evaluations[0].cells
    finished_training(plan, {patience1: 10, patience3: 20})
    monkeypatch.setattr(worker, "run_evaluate_job", RecordedEvaluations(failing={patience1}))
    with pytest.raises(EvaluationsFailed, match=f"1 of 3 evaluations failed: {patience1} \\(CUDA out of memory"):
        run_job(plan.evaluations[0])
    grid = GridDir(plan.root)
    assert json.loads(grid.run(patience1).failure.read_text())["reason"].startswith("CUDA out of memory")
    assert grid.run(source).eval_result.exists() and grid.run(patience3).eval_result.exists()
    assert not grid.run(patience1).eval_result.exists()


class ScriptedLocal(LocalExecutor):
    """The local executor's scheduling with each job's outcome scripted (its jobs themselves are
    real subprocesses elsewhere: tests/test_cli_local.py)."""

    def __init__(self, *args, failing: set[str], **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.failing = failing
        self.started: list[str] = []

    def _run_batch(self, jobs):
        self.started += [job.name for job in jobs]
        return [Submitted(job.name, job.kind, "failed" if job.name in self.failing else "done") for job in jobs]


def test_local_executor_skips_only_the_failed_trainings_evaluation(tmp_path: Path) -> None:
    plan = replay_plan(tmp_path)
    broken, healthy = plan.finetunes
    executor = ScriptedLocal(plan, ResourcesConfig(), ResourcesConfig(), failing={broken.name})
    outcome = {o.name: o for o in executor.submit()}
    assert outcome[f"evaluate/{broken.run_id}"].status == "failed"
    assert outcome[f"evaluate/{broken.run_id}"].error == f"{broken.name} failed"
    assert f"evaluate/{broken.run_id}" not in executor.started
    assert outcome[f"evaluate/{healthy.run_id}"].status == "done" and "aggregate" in executor.started



def test_a_cell_whose_training_did_not_finish_fails_its_evaluation_alone(tmp_path: Path, monkeypatch) -> None:
    plan = replay_plan(tmp_path)
    write_manifest(plan)
    source, patience1, patience3 = plan.evaluations[0].cells
    finished_training(plan, {patience1: 10})
    GridDir(plan.root).run(patience3).result.unlink()
    monkeypatch.setattr(worker, "run_evaluate_job", RecordedEvaluations())
    with pytest.raises(EvaluationsFailed, match=f"1 of 3 evaluations failed: {patience3} \\(no result.json in"):
        run_job(plan.evaluations[0])
    reason = json.loads(GridDir(plan.root).run(patience3).failure.read_text())["reason"]
    assert reason.endswith("its training has not finished; submit the grid again to rerun it")
    assert GridDir(plan.root).run(patience1).eval_result.exists()
