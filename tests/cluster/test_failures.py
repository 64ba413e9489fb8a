"""On the real local Slurm cluster, a failing cell leaves failure.json, the grid goes on, the report
and `status` name the reason, and a second `submit` reruns only that cell. The failure is real: a
learning rate of 1e30 makes the loss NaN at step 2 (Adam moves every weight by ~lr), which
`NonFiniteLossCheck` turns into an error."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO

GRID = """\
name: failing
output_dir: {out}
base:
  model:
    name: tiny
    tiny: {{n_layer: 1, n_embd: 32, n_head: 2, n_positions: 64}}
  data: {{max_stories: 300, validation_stories: 30, test_stories: 20, block_size: 64}}
  train: {{max_steps: 10, batch_size: 4, warmup_steps: 0, eval_steps: 5, logging_steps: 2, seed: 1}}
  wandb: {{mode: disabled}}
axes:
  train.learning_rate: [5.0e-4, 1.0e+30]
"""


def submit(grid: Path, stories_dir: Path, cache: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled", "STORYTUNE_DATA_DIR": str(stories_dir),
           "STORYTUNE_CACHE": str(cache)}
    return subprocess.run([sys.executable, "launch/submit.py", "--grid", str(grid), "--executor", "slurm",
                           "evaluate=false"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)


def wait_for_new_summary(root: Path, older_than: float | None = None, timeout_s: float = 600) -> dict:
    """The aggregation job's summary.json (a newer one than `older_than`, when given)."""
    path = root / "report" / "summary.json"
    deadline = time.monotonic() + timeout_s
    while not (path.exists() and (older_than is None or path.stat().st_mtime > older_than)):
        if time.monotonic() > deadline:
            subprocess.run(["scancel", "--name", "failing-finetune", "--name", "failing-aggregate"], check=False)
            pytest.fail(f"{path} did not appear within {timeout_s} s")
        time.sleep(1)
    time.sleep(1)  # let the aggregation job leave the queue before the next submission looks at it
    return json.loads(path.read_text())


@pytest.mark.slurm
@pytest.mark.slow
def test_nan_cell_is_recorded_reported_and_alone_resubmitted(slurm_cluster, stories_dir: Path,
                                                             tmp_path: Path) -> None:
    """On the real local Slurm cluster: two cells in one array, one diverges."""
    grid = tmp_path / "failing.yaml"
    grid.write_text(GRID.format(out=tmp_path / "runs"))
    first = submit(grid, stories_dir, tmp_path / "cache")
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    root = tmp_path / "runs" / "failing"
    summary = wait_for_new_summary(root)
    runs = {cell["run_id"]: root / cell["run_id"] for cell in json.loads((root / "plan.json").read_text())["cells"]}
    done = [name for name, p in runs.items() if (p / "result.json").exists()]
    failed = [name for name, p in runs.items() if (p / "failure.json").exists()]
    assert len(done) == 1 and len(failed) == 1 and done != failed, runs

    record = json.loads((runs[failed[0]] / "failure.json").read_text())
    assert record["job"] == f"finetune/{failed[0]}" and record["kind"] == "finetune"
    assert record["exception"] == "NonFiniteLoss" and record["attempt"] == 1
    assert record["reason"].startswith("loss is nan at step 2: the run diverged")
    assert 0 < len(record["traceback"]) <= 20 and "NonFiniteLoss" in record["traceback"][-1]
    assert not (runs[done[0]] / "failure.json").exists()

    assert summary["cells"]["failed"] == failed
    assert f"1 of 2 cells have no result (failed or not run): {failed[0]}. — {failed[0]}: {record['reason']}" \
        in summary["warnings"]
    status = subprocess.run([sys.executable, "launch/status.py", str(root)], cwd=REPO, capture_output=True,
                            text=True, timeout=120).stdout
    assert f"reason: {record['reason']}" in status, status

    jobs = json.loads((root / "submissions.json").read_text())
    written = (root / "report" / "summary.json").stat().st_mtime
    again = submit(grid, stories_dir, tmp_path / "cache")
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    outcome = {line.split()[0]: line for line in again.stdout.splitlines() if line.startswith("finetune/")}
    assert "skipped (done)" in outcome[f"finetune/{done[0]}"]
    assert "submitted" in outcome[f"finetune/{failed[0]}"]
    resubmitted = json.loads((root / "submissions.json").read_text())
    assert resubmitted[f"finetune/{done[0]}"] == jobs[f"finetune/{done[0]}"]
    assert resubmitted[f"finetune/{failed[0]}"]["job_id"] != jobs[f"finetune/{failed[0]}"]["job_id"]
    wait_for_new_summary(root, older_than=written)
    assert json.loads((runs[failed[0]] / "failure.json").read_text())["attempt"] == 2


def test_every_job_kind_leaves_its_failure_record(tmp_path: Path) -> None:
    """The base evaluation and the aggregation record failures too, in their own folders."""
    from storytune.cluster.worker import run_job
    from storytune.paths import GridDir
    from storytune.study.grid import expand_grid
    from storytune.study.plan import make_plan

    plan = make_plan(expand_grid({"name": "g", "output_dir": str(tmp_path),
                                  "base": {"model": {"name": "tiny"}, "data": {"files": [str(tmp_path / "none")]}}}))
    # No plan.json was written, so the aggregation cannot read the grid.
    with pytest.raises(FileNotFoundError):
        run_job(plan.aggregation)
    record = json.loads(plan.aggregation.failure.read_text())
    assert plan.aggregation.failure == GridDir(plan.root).report / "failure.json"
    assert record["kind"] == "aggregate" and "plan.json" in record["reason"]
    assert plan.base_evaluation.failure == GridDir(plan.root).base_eval(plan.base_evaluation.key) / "failure.json"
