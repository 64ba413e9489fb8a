"""`launch/submit.py` against the REAL local Slurm cluster (slurm/local_cluster.sh): job arrays,
dependencies, base evaluation, aggregation, status, and an idempotent second submission."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO, slurm_job_state

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

TIMEOUT_S = 900


def submit(grid: Path, *args: str, env_extra: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled", **(env_extra or {})}
    return subprocess.run([sys.executable, "launch/submit.py", "--grid", str(grid), "--executor", "slurm", *args],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)


def wait_for(path: Path, timeout_s: float = TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        if time.monotonic() > deadline:
            for name in ("tiny-finetune", "tiny-evaluate", "tiny-base", "tiny-aggregate"):
                subprocess.run(["scancel", "--name", name], check=False)
            pytest.fail(f"{path} did not appear within {timeout_s} s")
        time.sleep(2)


def wait_until_finished(job_id: str, timeout_s: float = 120) -> None:
    """summary.json appears before the aggregation job has left Slurm's queue."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        state = slurm_job_state(job_id)
        if state and state not in ("PENDING", "RUNNING", "COMPLETING"):
            return
        time.sleep(1)
    pytest.fail(f"job {job_id} still queued or running after {timeout_s} s")


def status(root: Path) -> str:
    return subprocess.run([sys.executable, "launch/status.py", str(root)], cwd=REPO, capture_output=True,
                          text=True, timeout=120).stdout


def test_tiny_grid_end_to_end_on_slurm(slurm_cluster, stories_dir: Path, tmp_path: Path) -> None:
    grid = REPO / "configs" / "grids" / "tiny.yaml"
    env = {"STORYTUNE_DATA_DIR": str(stories_dir), "STORYTUNE_CACHE": str(tmp_path / "cache")}
    overrides = [f"output_dir={tmp_path}", "base.generation.num_prompts=4", "base.generation.max_new_tokens=12"]
    first = submit(grid, *overrides, env_extra=env)
    assert first.returncode == 0, first.stdout + first.stderr
    root = tmp_path / "tiny"
    record = json.loads((root / "submissions.json").read_text())
    finetune_ids = {v["job_id"] for k, v in record.items() if k.startswith("finetune/")}
    assert len(finetune_ids) == 4 and len({i.split("_")[0] for i in finetune_ids}) == 1, "one array"

    wait_for(root / "report" / "summary.json")
    summary = json.loads((root / "report" / "summary.json").read_text())
    assert summary["cells"]["failed"] == []
    assert [a["variant"] for a in summary["arms"]] == ["none", "patience1-thr0.05"]
    assert all(a["n_seeds"] == 2 for a in summary["arms"])
    assert (root / "report" / "report.html").exists()
    base_key = json.loads((root / "plan.json").read_text())["base_model"]["eval_key"]
    assert (root / "base" / f"eval-{base_key}" / "eval.json").exists()
    assert len(list(root.glob("*/eval/eval.json"))) == 4  # every cell (the base model's is under base/)
    assert "done" in status(root)
    wait_until_finished(record["aggregate"]["job_id"])

    again = submit(grid, *overrides, env_extra=env)
    assert again.returncode == 0, again.stderr
    lines = [line for line in again.stdout.splitlines() if line.startswith(("finetune/", "evaluate/"))]
    assert lines and all("skipped (done)" in line for line in lines), again.stdout
    resubmitted = json.loads((root / "submissions.json").read_text())
    assert {k for k in resubmitted if resubmitted[k] != record.get(k)} == {"aggregate"}


def test_failed_cell_is_reported_and_others_kept(slurm_cluster, stories_dir: Path, tmp_path: Path) -> None:
    grid = REPO / "configs" / "grids" / "tiny.yaml"
    env = {"STORYTUNE_DATA_DIR": str(stories_dir), "STORYTUNE_CACHE": str(tmp_path / "cache")}
    # 5,000 validation stories pass config checks but exceed the 4,426 stories on disk: a run-time failure.
    overrides = [f"output_dir={tmp_path}", "evaluate=false", "axes.train.seed=[1]",
                 "axes.data.validation_stories=[30, 5000]", "base.data.max_stories=null"]
    result = submit(grid, *overrides, env_extra=env)
    assert result.returncode == 0, result.stdout + result.stderr
    root = tmp_path / "tiny"
    wait_for(root / "report" / "summary.json")
    summary = json.loads((root / "report" / "summary.json").read_text())
    assert len(summary["cells"]["failed"]) == 2  # both arms' 5000-story cells
    assert sum(a["n_seeds"] for a in summary["arms"]) == 2
    assert any("2 of 4 cells have no result" in w for w in summary["warnings"])
    text = status(root)
    assert "failed" in text and "only" in text, text  # the failed job's log tail names the problem


def test_partition_slurm_rejects_is_one_clear_error(slurm_cluster, tmp_path: Path) -> None:
    result = submit(REPO / "configs" / "grids" / "tiny.yaml", f"output_dir={tmp_path}", "resources.partition=nosuch")
    assert result.returncode == 1
    assert "error: submission failed" in result.stderr and "partition" in result.stderr.lower(), result.stderr
    assert "Traceback" not in result.stderr
