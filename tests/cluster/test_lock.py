"""Two submissions of one grid at once: the second never plans or submits while the first holds
`<grid>/.submit.lock`. Deterministic: the test process holds the lock for the whole second run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO
from storytune.cluster.launch import LOCK_WAIT_S, GridLocked, grid_lock
from storytune.paths import GridDir

GRID = """\
name: locked
output_dir: {out}
base:
  model:
    name: tiny
    tiny: {{n_layer: 1, n_embd: 32, n_head: 2, n_positions: 64}}
  data: {{block_size: 64}}
  train: {{max_steps: 10, eval_steps: 5}}
  wandb: {{mode: disabled}}
axes:
  train.seed: [1, 2]
"""


def test_second_holder_waits_then_fails_naming_the_first(tmp_path: Path) -> None:
    grid_dir = GridDir(tmp_path)
    with grid_lock(grid_dir, wait_s=0):
        # flock conflicts between two open files even in one process: this stands in for a second process.
        with pytest.raises(GridLocked, match=rf"another submission of this grid is running \(pid {os.getpid()}\)"):
            with grid_lock(grid_dir, wait_s=0.3):
                pytest.fail("the lock was taken twice")
    with grid_lock(grid_dir, wait_s=0):  # released on exit: the next submission gets it at once
        assert grid_dir.lock.read_text().strip() == str(os.getpid())


def test_concurrent_submit_is_refused_with_one_message(stories_dir: Path, tmp_path: Path) -> None:
    grid = tmp_path / "locked.yaml"
    grid.write_text(GRID.format(out=tmp_path / "runs"))
    grid_dir = GridDir(tmp_path / "runs" / "locked")
    grid_dir.path.mkdir(parents=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled", "STORYTUNE_DATA_DIR": str(stories_dir),
           "STORYTUNE_CACHE": str(tmp_path / "cache")}
    with grid_lock(grid_dir, wait_s=0):  # the "first submission", held until the second has given up
        second = subprocess.run([sys.executable, "launch/submit.py", "--grid", str(grid), "--executor", "debug"],
                                cwd=REPO, env=env, capture_output=True, text=True, timeout=120 + LOCK_WAIT_S)
    assert second.returncode == 2, second.stdout[-2000:] + second.stderr[-2000:]
    errors = second.stderr.strip().splitlines()
    assert errors[-1].startswith(f"error: another submission of this grid is running (pid {os.getpid()})")
    assert "Traceback" not in second.stderr
    assert "cells, executor" not in second.stdout, "the second submission must not even plan"
    assert not grid_dir.plan.exists() and not any(grid_dir.path.glob("*-seed*")), "nothing submitted"
