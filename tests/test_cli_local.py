"""`launch/submit.py` on this machine: the debug executor (in-process) and resubmission."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import REPO


def submit(*args: str, env_extra: dict[str, str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled", **env_extra}
    return subprocess.run([sys.executable, "launch/submit.py", "--grid", "configs/grids/tiny.yaml", *args],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def test_debug_executor_runs_plan_in_process_and_skips_done_cells(stories_dir: Path, tmp_path: Path) -> None:
    env = {"STORYTUNE_DATA_DIR": str(stories_dir), "STORYTUNE_CACHE": str(tmp_path / "cache")}
    args = ["--executor", "debug", f"output_dir={tmp_path}", "evaluate=false", "axes.train.seed=[1]",
            "base.train.max_steps=10", "base.train.eval_steps=5"]
    first = submit(*args, env_extra=env)
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-2000:]
    assert "grid 'tiny': 2 cells, executor debug" in first.stdout
    assert "storytune grid `tiny`: 2 of 2 cells finished" in first.stdout  # the aggregation's findings
    assert f"report: {tmp_path / 'tiny' / 'report' / 'report.html'}" in first.stdout
    summary = json.loads((tmp_path / "tiny" / "report" / "summary.json").read_text())
    assert summary["cells"]["failed"] == [] and len(summary["arms"]) == 2

    again = submit(*args, env_extra=env)
    assert again.returncode == 0
    finetunes = [line for line in again.stdout.splitlines() if line.startswith("finetune/")]
    assert len(finetunes) == 2 and all("skipped (done)" in line for line in finetunes)


def test_dry_run_submits_nothing(tmp_path: Path) -> None:
    result = submit("--dry-run", f"output_dir={tmp_path}", env_extra={})
    assert result.returncode == 0, result.stderr
    assert "#SBATCH --array=0-3%2" in result.stdout
    assert not (tmp_path / "tiny" / "plan.json").exists()


def test_bad_grid_lists_every_problem_before_submitting(tmp_path: Path) -> None:
    result = submit("--executor", "local", f"output_dir={tmp_path}", "axes.early_stopping=[{patience: 0}]",
                    "axes.train.sed=[1]", "base.train.eval_steps=ten", env_extra={})
    assert result.returncode == 2
    assert "base.train.eval_steps: must be an integer, got 'ten'" in result.stderr
    assert "early_stopping.patience: must be a positive integer, got 0" in result.stderr
    assert "train.sed: unknown key" in result.stderr
    assert not (tmp_path / "tiny").exists()
