"""On the real local Slurm cluster, with replay, a failed training takes only its own cells with it.

Two trainings (learning rates 1e-3 and 1e30), each with two arms (`none`, `patience3`) derived by
replay. The 1e30 run diverges (the loss is NaN within the first steps, which `NonFiniteLossCheck` turns into an
error: docs/errors.md); its evaluation, tied to it alone by `aftercorr`, never runs. The healthy
training's evaluation job runs, evaluating each distinct kept checkpoint once, and the aggregation
(`afterany`) compares the healthy arms and lists the two diverged cells as failed."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO, slurm_job_state

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

GRID = """\
name: replayfail
output_dir: {out}
replay: true
base:
  model:
    name: tiny
    tiny: {{n_layer: 1, n_embd: 32, n_head: 2, n_positions: 64}}
  data: {{max_stories: 300, validation_stories: 30, test_stories: 20, block_size: 64}}
  train: {{max_steps: 20, batch_size: 4, warmup_steps: 0, eval_steps: 5, logging_steps: 5, seed: 1}}
  generation: {{num_prompts: 4, max_new_tokens: 12, batch_size: 4}}
  eval: {{bootstrap_resamples: 100}}
  wandb: {{mode: disabled}}
axes:
  train.learning_rate: [1.0e-3, 1.0e+30]
  early_stopping:
    - {{patience: null}}
    - {{patience: 3}}
resources: {{time_min: 20, cpus_per_task: 1, array_parallelism: 2}}
"""

TIMEOUT_S = 1500  # generous: the 2-core CI machine may be running other Slurm tests at the same time


def test_a_diverged_training_fails_only_its_own_cells(slurm_cluster, stories_dir: Path, tmp_path: Path) -> None:
    grid = tmp_path / "replayfail.yaml"
    grid.write_text(GRID.format(out=tmp_path / "runs"))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled", "STORYTUNE_DATA_DIR": str(stories_dir),
           "STORYTUNE_CACHE": str(tmp_path / "cache")}
    submitted = subprocess.run([sys.executable, "launch/submit.py", "--grid", str(grid), "--executor", "slurm"],
                               cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert submitted.returncode == 0, submitted.stdout[-3000:] + submitted.stderr[-3000:]
    root = tmp_path / "runs" / "replayfail"
    plan = json.loads((root / "plan.json").read_text())
    record = json.loads((root / "submissions.json").read_text())
    evaluations = [job for job in plan["jobs"] if job["kind"] == "evaluate"]
    assert len(evaluations) == 2 and all(len(job["cells"]) == 2 for job in evaluations), "one per training"
    ids = {job["name"]: record[job["name"]]["job_id"] for job in evaluations}
    assert len({job_id.split("_")[0] for job_id in ids.values()}) == 1, "the evaluations are one array"

    summary_path = root / "report" / "summary.json"
    deadline = time.monotonic() + TIMEOUT_S
    while not summary_path.exists():
        if time.monotonic() > deadline:
            subprocess.run(["scancel", *(entry["job_id"] for entry in record.values())], check=False)
            pytest.fail(f"{summary_path} did not appear within {TIMEOUT_S} s")
        time.sleep(2)
    summary = json.loads(summary_path.read_text())

    cells = {cell["run_id"]: cell for cell in plan["cells"]}
    diverged = sorted(run_id for run_id in cells if cells[run_id]["assignment"]["train.learning_rate"] > 1)
    healthy = sorted(set(cells) - set(diverged))
    assert len(diverged) == len(healthy) == 2, cells

    # The diverged training's cells: each says why, none has a result or an evaluation.
    for run_id in diverged:
        failure = json.loads((root / run_id / "failure.json").read_text())
        assert failure["kind"] == "finetune" and failure["exception"] == "NonFiniteLoss", failure
        assert re.match(r"loss is nan at step \d+: the run diverged", failure["reason"]), failure
        assert not (root / run_id / "result.json").exists() and not (root / run_id / "eval" / "eval.json").exists()
    # The healthy training's cells: trained (one by replay) and evaluated.
    evals = {run_id: json.loads((root / run_id / "eval" / "eval.json").read_text()) for run_id in healthy}
    results = {run_id: json.loads((root / run_id / "result.json").read_text()) for run_id in healthy}
    assert not any((root / run_id / "failure.json").exists() for run_id in healthy)
    # Each distinct kept checkpoint was evaluated once: a cell keeping the same step as another has a copy.
    kept = {run_id: results[run_id]["kept_step"] for run_id in healthy}
    copies = {run_id: e.get("copied_from") for run_id, e in evals.items()}
    if len(set(kept.values())) == 1:
        (copy,) = [run_id for run_id, source in copies.items() if source]
        assert copies[copy] in healthy and copies[copies[copy]] is None
        assert evals[copy]["metrics"] == evals[copies[copy]]["metrics"]
    else:
        assert not any(copies.values()), (kept, copies)

    healthy_eval = ids[cells[healthy[0]]["evaluated_by"]]
    diverged_eval = ids[cells[diverged[0]]["evaluated_by"]]
    assert healthy_eval != diverged_eval
    assert _final_state(healthy_eval) == "COMPLETED"
    assert _final_state(diverged_eval) != "COMPLETED"  # its dependency can never be met: cancelled, not run

    assert sorted(summary["cells"]["failed"]) == diverged and summary["cells"]["finished"] == 2
    arms = {arm["variant"]: arm for arm in summary["arms"]}
    assert set(arms) == {"none", "patience3"}
    assert all(arm["n_seeds"] == 1 and arm["test_loss"] for arm in arms.values()), arms
    assert any("2 of 4 cells have no result" in warning for warning in summary["warnings"]), summary["warnings"]

    status = subprocess.run([sys.executable, "launch/status.py", str(root)], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=120).stdout
    assert "reason: loss is nan at step" in status, status


def _final_state(job_id: str, timeout_s: float = 120) -> str:
    """sacct's state once the job has left the queue (sacct lags a few seconds behind)."""
    deadline = time.monotonic() + timeout_s
    state = ""
    while time.monotonic() < deadline:
        state = slurm_job_state(job_id)
        if state and state not in ("PENDING", "RUNNING", "COMPLETING", "REQUEUED"):
            return state
        time.sleep(2)
    return state
