"""A 2-task CPU cell on the REAL local Slurm cluster (slurm/local_cluster.sh): `storytune submit
--executor slurm` with `resources.tasks_per_node: 2` runs one Slurm job of two tasks that form a gloo
process group (submitit's TorchDistributedEnvironment, in storytune.cluster.worker), and trains the same
model as one process with the same global batch."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from dist_helpers import ENV, dropout_free_tiny, eval_losses, overrides, single_result

from conftest import REPO, slurm_job_state
from storytune.paths import GridDir

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

TIMEOUT_S = 900
"""Seconds to wait for the job: 20 tiny steps take well under a minute, but the CI's other Slurm jobs
may hold the node's 2 CPUs first."""

DDP_TOLERANCE = 1e-3
"""nats. Same data, same initial weights, no dropout: the two tasks differ from one process only in the
order gloo sums the halves of each gradient (float32 rounding, ~1e-7 relative), which 20 Adam steps
leave at <= 1e-6 here (tests/train/test_accelerate_launch.py measures the same). Tasks that did not
all-reduce (each training on its own half batch) moved the loss by 0.1 nats after 30 steps, and dropout
noise by 0.002: 1e-3 separates both from rounding."""


def nested(dotted: list[str]) -> dict:
    """`["a.b=1", ...]` (run-config overrides) -> {"a": {"b": 1}} for the grid's `base`; values are YAML,
    read as storytune reads overrides."""
    from storytune.config import parse_override, set_path

    tree: dict = {}
    for item in dotted:
        set_path(tree, *parse_override(item))
    return tree


def wait_for(path: Path, job_ids: list[str], timeout_s: float = TIMEOUT_S) -> None:
    """Poll for a file the last job writes; on timeout cancel the jobs so none outlives the test."""
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        if time.monotonic() > deadline:
            subprocess.run(["scancel", *job_ids], check=False)
            pytest.fail(f"{path} did not appear within {timeout_s} s (jobs {job_ids} cancelled)")
        time.sleep(2)


def log_tails(folder: Path) -> str:
    return "\n".join(f"== {path.name}\n{path.read_text()[-1500:]}" for path in sorted(folder.glob("*_log.*")))


def test_two_task_cpu_cell_matches_one_process(slurm_cluster, stories_dir: Path, data_cache: Path,
                                               tmp_path: Path) -> None:
    config = tmp_path / "run.yaml"
    config.write_text("model: {name: tiny}\n")
    model = dropout_free_tiny(tmp_path / "base")
    # The reference first: it also fills the data cache, which the two tasks then only read.
    single = single_result(config, overrides(stories_dir, data_cache, tmp_path / "single", model,
                                             {"train.batch_size": 4}))

    grid = tmp_path / "grid.yaml"
    base = nested(overrides(stories_dir, data_cache, tmp_path / "unused", model, {"train.batch_size": 2}))
    base.pop("output")  # the grid decides where cells go: <output_dir>/<name>/<run>
    grid.write_text(json.dumps({  # JSON is YAML
        "name": "twotask", "output_dir": str(tmp_path / "grid"), "evaluate": False, "base": base,
        "resources": {"tasks_per_node": 2, "cpus_per_task": 1, "time_min": 15},
        # The aggregation is one process: only the fine-tune is the multi-task job under test.
        "eval_resources": {"cpus_per_task": 1, "time_min": 15},
    }))
    submitted = subprocess.run([str(Path(sys.executable).parent / "storytune"), "submit", "--grid", str(grid),
                                "--executor", "slurm"], cwd=REPO, env=ENV, capture_output=True, text=True,
                               timeout=120)
    assert submitted.returncode == 0, submitted.stdout + submitted.stderr
    root = tmp_path / "grid" / "twotask"
    record = json.loads((root / "submissions.json").read_text())
    ((cell, entry),) = [(name, entry) for name, entry in record.items() if name.startswith("finetune/")]
    job_id = entry["job_id"]
    # The aggregation waits for the fine-tune (afterany): its summary means both jobs are over.
    wait_for(root / "report" / "summary.json", [job_id, record["aggregate"]["job_id"]])
    logs = root / "logs" / job_id
    saved = GridDir(root).run(cell.split("/", 1)[1]).result
    assert saved.exists(), f"the 2-task fine-tune wrote no result.json:\n{log_tails(logs)}"
    result = json.loads(saved.read_text())
    assert result["world_size"] == 2 and single["world_size"] == 1
    assert result["tokens_per_step"] == single["tokens_per_step"] == 4 * 64
    assert eval_losses(result) == pytest.approx(eval_losses(single), abs=DDP_TOLERANCE)
    assert result["test_loss"]["mean"] == pytest.approx(single["test_loss"]["mean"], abs=DDP_TOLERANCE)
    assert single["kept_eval_loss"] < single["base_eval_loss"] - 0.2  # the runs moved: not two untrained models

    # One log pair per task (%t in the srun line); submitit starts each stdout with the task's place in
    # the job, and only rank 0 reports the run.
    out = [(logs / f"{job_id}_{rank}_log.out").read_text() for rank in (0, 1)]
    for rank, text in enumerate(out):
        assert f"local_rank={rank}(2), node=0(1), global_rank={rank}(2))" in text, text[-2000:]
    assert "ran all 20 steps" in out[0] and "ran all 20 steps" not in out[1]
    summary = json.loads((root / "report" / "summary.json").read_text())
    assert summary["cells"]["failed"] == []


KILL_TO_END_S = 60
"""Seconds from killing one task to the job's end. With srun's --kill-on-bad-exit it took 30.7 s
here: srun sends the other task SIGTERM, which submitit ignores, then SIGKILL after Slurm's KillWait
(30 s). Without it the job was still running after 60 s: the surviving task (here held in a 600 s test
pause) would then wait in its next collective until train.ddp_timeout_s."""


def task_pids(job_id: str, global_rank: int) -> list[int]:
    """PIDs of one task of a running job (`scontrol listpids`: PID JOBID STEPID LOCALID GLOBALID)."""
    out = subprocess.run(["scontrol", "listpids", job_id], capture_output=True, text=True, check=True).stdout
    rows = [line.split() for line in out.splitlines()[1:]]
    return [int(row[0]) for row in rows if len(row) == 5 and row[2] != "batch" and row[4] == str(global_rank)]


def test_a_dead_task_ends_the_whole_job(slurm_cluster, stories_dir: Path, data_cache: Path, tmp_path: Path) -> None:
    import os
    import signal

    from storytune.faults import marker

    model = dropout_free_tiny(tmp_path / "base")
    base = nested(overrides(stories_dir, data_cache, tmp_path / "unused", model, {"train.batch_size": 2}))
    base.pop("output")
    grid = tmp_path / "grid.yaml"
    grid.write_text(json.dumps({
        "name": "deadtask", "output_dir": str(tmp_path / "grid"), "evaluate": False, "base": base,
        "resources": {"tasks_per_node": 2, "cpus_per_task": 1, "time_min": 15},
        "eval_resources": {"cpus_per_task": 1, "time_min": 15},
    }))
    # Rank 0 holds after its step-10 checkpoint (test-only pause); rank 1 goes on into the next
    # step's all-reduce and waits there: then rank 1 dies, as an out-of-memory kill would do it.
    env = {**ENV, "STORYTUNE_TEST_PAUSE": "after-save:10"}
    submitted = subprocess.run([sys.executable, "launch/submit.py", "--grid", str(grid), "--executor", "slurm"],
                               cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert submitted.returncode == 0, submitted.stdout + submitted.stderr
    root = tmp_path / "grid" / "deadtask"
    record = json.loads((root / "submissions.json").read_text())
    ((cell, entry),) = [(name, entry) for name, entry in record.items() if name.startswith("finetune/")]
    job_id = entry["job_id"]
    run = GridDir(root).run(cell.split("/", 1)[1])
    wait_for(marker(run.path, "after-save:10"), [job_id, record["aggregate"]["job_id"]])

    pids = task_pids(job_id, 1)
    assert pids, subprocess.run(["scontrol", "listpids", job_id], capture_output=True, text=True).stdout
    killed = time.monotonic()
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    while (state := slurm_job_state(job_id)) in ("", "RUNNING", "COMPLETING"):
        assert time.monotonic() - killed < KILL_TO_END_S, f"job {job_id} still {state} after {KILL_TO_END_S} s"
        time.sleep(1)
    print(f"\njob {job_id} ended {time.monotonic() - killed:.1f} s after task 1 was killed: {state}")
    assert state == "FAILED" and not run.result.exists()
    wait_for(root / "report" / "summary.json", [record["aggregate"]["job_id"]])
    summary = json.loads((root / "report" / "summary.json").read_text())
    assert summary["cells"]["failed"] == [run.path.name]

