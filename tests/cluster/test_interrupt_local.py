"""Ctrl-C and SIGTERM on a real local grid (`launch/submit.py --executor local`), with real signals.

The submit process runs in its own session, as in a terminal; SIGINT goes to its whole process group,
as a terminal's Ctrl-C does. storytune's test-only pause points (`storytune/faults.py`) hold the
first fine-tune at an exact place:

- `after-save:10` (checkpoint-10 complete): one SIGINT stops the grid cleanly (exit 130), names what
  finished, what was stopped and what never started, and prints the command that resumes; that
  command resumes the stopped fine-tune from checkpoint-10 and finishes the grid.
- `in-save:10` (inside the checkpoint save): SIGTERM to the submit process asks to stop, but the job
  finishes its save first; a second interrupt (SIGINT) kills everything at once.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from conftest import REPO
from storytune.cluster.status import grid_status
from storytune.faults import marker
from storytune.paths import GridDir
from storytune.train.finetune import checkpoint_problem

pytestmark = pytest.mark.slow

TIMEOUT_S = 600
"""Seconds to wait for any step: a few seconds of work each, on a CI machine shared with other jobs."""


def write_grid(folder: Path, name: str) -> Path:
    """Two fine-tunes (one arm, two seeds) of 20 steps, checkpoints at 10 and 20; no evaluations."""
    grid = folder / f"{name}.yaml"
    grid.write_text(json.dumps({  # JSON is YAML
        "name": name, "output_dir": str(folder / "runs"), "evaluate": False,
        "base": {
            "model": {"name": "tiny", "tiny": {"n_layer": 1, "n_embd": 32, "n_head": 2, "n_positions": 64}},
            "data": {"max_stories": 300, "validation_stories": 30, "test_stories": 20, "block_size": 64},
            "train": {"max_steps": 20, "batch_size": 4, "warmup_steps": 0, "eval_steps": 10, "logging_steps": 10,
                      "max_eval_blocks": 24},
            "wandb": {"mode": "disabled"},
        },
        "axes": {"train.seed": [1, 2]},
        "resources": {"time_min": 20, "cpus_per_task": 1},
    }))
    return grid


def environment(stories_dir: Path, cache: Path, pause: str | None) -> dict[str, str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "STORYTUNE_DATA_DIR": str(stories_dir), "STORYTUNE_CACHE": str(cache),
           "TOKENIZERS_PARALLELISM": "false"}
    env.pop("STORYTUNE_TEST_PAUSE", None)
    if pause:
        env["STORYTUNE_TEST_PAUSE"] = pause
    return env


def start_submit(grid: Path, env: dict[str, str], output: Path) -> subprocess.Popen:
    """`python launch/submit.py --grid GRID --executor local` as a terminal starts it (own process group)."""
    with open(output, "w") as out:
        return subprocess.Popen([sys.executable, "launch/submit.py", "--grid", str(grid), "--executor", "local"],
                                cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def run_ids(root: Path) -> list[str]:
    return [cell["run_id"] for cell in json.loads(GridDir(root).plan.read_text())["cells"]]


def wait_until(condition, what: str, process: subprocess.Popen, output: Path, timeout_s: float = TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if process.poll() is not None or time.monotonic() > deadline:
            kill_session(process)
            pytest.fail(f"{what}: not reached (submit exited {process.poll()}):\n{output.read_text()[-4000:]}")
        time.sleep(0.5)


def session_processes(process: subprocess.Popen) -> list[psutil.Process]:
    """Every process still alive in the submit process's session (it, its jobs, their helpers)."""
    alive = []
    for candidate in psutil.process_iter():
        try:
            if os.getsid(candidate.pid) == process.pid and candidate.status() != psutil.STATUS_ZOMBIE:
                alive.append(candidate)
        except (ProcessLookupError, psutil.Error):
            continue
    return alive


def kill_session(process: subprocess.Popen) -> None:
    for leftover in session_processes(process):
        leftover.kill()


def job_logs(root: Path) -> str:
    return "\n".join(p.read_text(errors="replace") for p in sorted(GridDir(root).logs.rglob("*_log.*")))


def test_ctrl_c_stops_cleanly_and_the_printed_command_resumes_from_the_checkpoint(
        stories_dir: Path, tmp_path: Path) -> None:
    grid, output = write_grid(tmp_path, "ctrlc"), tmp_path / "submit.out"
    root = tmp_path / "runs" / "ctrlc"
    process = start_submit(grid, environment(stories_dir, tmp_path / "cache", "after-save:10"), output)
    wait_until(lambda: GridDir(root).plan.exists(), "plan.json written", process, output)
    first, second = run_ids(root)
    run = GridDir(root).run(first)
    wait_until(lambda: marker(run.path, "after-save:10").exists(), "first fine-tune at its step-10 checkpoint",
               process, output)

    os.killpg(process.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
    try:
        code = process.wait(timeout=TIMEOUT_S)
    finally:
        kill_session(process)
    text = output.read_text()
    assert code == 130, text[-4000:]
    assert session_processes(process) == [], "every job process has ended"
    assert "SIGINT: stopping the grid: no new job starts; 1 running job(s) asked to stop (SIGTERM)" in text
    assert f"\nstopped on request (SIGINT).\n  finished: none\n" \
           f"  stopped (their complete checkpoints are kept): finetune/{first}\n" \
           f"  never started: finetune/{second}, aggregate\n" in text, text[-3000:]
    assert f"finetune/{first} stopped on request (SIGTERM); a rerun resumes from checkpoint-10, the last " \
           "complete checkpoint" in job_logs(root)
    # The stop wrote nothing into the checkpoints: checkpoint-10 is complete and the newest.
    assert sorted(p.name for p in run.checkpoints.iterdir()) == ["checkpoint-10"]
    assert checkpoint_problem(run.checkpoints / "checkpoint-10") is None
    assert not run.result.exists() and not run.failure.exists()  # stopped, not failed
    assert not GridDir(root).run(second).path.exists()
    states = {s.name: s for s in grid_status(root, state_of=lambda ids: {})}  # what `status` shows
    assert states[f"finetune/{first}"].state == "stopped (SIGTERM)"
    assert states[f"finetune/{first}"].reason == "a rerun resumes from checkpoint-10, the last complete checkpoint"
    assert states[f"finetune/{second}"].state == "not submitted"

    (resume_line,) = [line for line in text.splitlines() if line.startswith("resume with: ")]
    command = shlex.split(resume_line.removeprefix("resume with: "))
    assert command[:2] == ["python", "launch/submit.py"], command
    resumed = subprocess.run([sys.executable, *command[1:]], cwd=REPO, env=environment(stories_dir, tmp_path / "cache",
                             None), capture_output=True, text=True, timeout=TIMEOUT_S)
    assert resumed.returncode == 0, resumed.stdout[-4000:] + resumed.stderr[-4000:]
    assert f"Resuming from {run.checkpoints / 'checkpoint-10'} (step 10)" in resumed.stdout, resumed.stdout[-4000:]
    result = json.loads(run.result.read_text())
    assert result["resumed_from_step"] == 10 and result["stop_step"] == 20
    assert grid_status(root, state_of=lambda ids: {})[0].state == "done"  # the rerun cleared the stop record
    assert json.loads(GridDir(root).run(second).result.read_text())["resumed_from_step"] is None
    assert GridDir(root).summary.exists()


def test_sigterm_waits_for_the_save_and_a_second_interrupt_ends_at_once(stories_dir: Path, tmp_path: Path) -> None:
    grid, output = write_grid(tmp_path, "term"), tmp_path / "submit.out"
    root = tmp_path / "runs" / "term"
    process = start_submit(grid, environment(stories_dir, tmp_path / "cache", "in-save:10"), output)
    wait_until(lambda: GridDir(root).plan.exists(), "plan.json written", process, output)
    run = GridDir(root).run(run_ids(root)[0])
    wait_until(lambda: marker(run.path, "in-save:10").exists(), "first fine-tune inside its step-10 save",
               process, output)

    process.send_signal(signal.SIGTERM)  # `kill PID`: to the submit process alone
    wait_until(lambda: "finishing the checkpoint being saved first" in job_logs(root),
               "the job defers the stop until its save is complete", process, output)
    assert "SIGTERM: stopping the grid" in output.read_text()
    assert process.poll() is None, "the job is still inside its save (held there for the test)"

    os.killpg(process.pid, signal.SIGINT)  # the user gives up waiting
    try:
        code = process.wait(timeout=120)
    finally:
        kill_session(process)
    text = output.read_text()
    assert code == 143, text[-4000:]  # the first signal's code
    assert "SIGINT again: killing 1 running job(s) now" in text and "stopped at once; resume with: python " \
        "launch/submit.py" in text, text[-3000:]
    assert session_processes(process) == []
