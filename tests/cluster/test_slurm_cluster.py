"""Checks against the real single-node Slurm cluster started by slurm/local_cluster.sh.

They skip (with the reason) when Slurm is not installed or the cluster is not healthy;
start it with `bash slurm/local_cluster.sh start`.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from conftest import slurm_job_state

pytestmark = pytest.mark.slurm

REPO_ROOT = Path(__file__).resolve().parents[2]

# Generous: a trivial job takes ~1-2 s here, sacct lags 1-3 s behind.
JOB_TIMEOUT_S = 120


def _wait_for_sacct_state(job_id: str, wanted: str, timeout_s: float = JOB_TIMEOUT_S) -> str:
    """Poll sacct until the job reaches `wanted` or a different final state."""
    finished = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL"}
    deadline = time.monotonic() + timeout_s
    state = ""
    while time.monotonic() < deadline:
        state = slurm_job_state(job_id)
        if state == wanted or state in finished:
            return state
        time.sleep(0.5)
    return state


def _wait_done(job, timeout_s: float = JOB_TIMEOUT_S) -> None:
    """submitit's job.wait()/result() has no timeout; never let a broken cluster hang CI."""
    deadline = time.monotonic() + timeout_s
    while not job.done():
        if time.monotonic() > deadline:
            job.cancel(check=False)
            pytest.fail(f"submitit job {job.job_id} not done after {timeout_s}s (state {job.state})")
        time.sleep(0.5)


def _submitit_executor(folder: Path):
    submitit = pytest.importorskip("submitit")
    executor = submitit.AutoExecutor(folder=folder / "%j", cluster="slurm")
    executor.update_parameters(timeout_min=5, slurm_partition="debug", cpus_per_task=1)
    return executor


def test_sbatch_wrap_completes(slurm_cluster, tmp_path: Path) -> None:
    submitted = subprocess.run(
        ["sbatch", "--parsable", "--wrap", "true", "--output", str(tmp_path / "slurm-%j.out")],
        capture_output=True,
        text=True,
        check=True,
    )
    job_id = submitted.stdout.strip().split(";")[0]
    assert job_id.isdigit(), submitted.stdout
    assert _wait_for_sacct_state(job_id, "COMPLETED") == "COMPLETED"


def test_submitit_job_result(slurm_cluster, tmp_path: Path) -> None:
    # Defined inside the test so cloudpickle pickles it by value: the job's python cannot
    # import this test module by name.
    def add(a: int, b: int) -> int:
        return a + b

    job = _submitit_executor(tmp_path).submit(add, 2, 3)
    _wait_done(job)
    assert job.result() == 5
    # Accounting works: sacct (which submitit polls) reports the job as COMPLETED.
    assert _wait_for_sacct_state(str(job.job_id), "COMPLETED") == "COMPLETED"


def test_submitit_map_array(slurm_cluster, tmp_path: Path) -> None:
    def square(x: int) -> int:
        return x * x

    executor = _submitit_executor(tmp_path)
    executor.update_parameters(slurm_array_parallelism=3)
    jobs = executor.map_array(square, [1, 2, 3])
    assert len(jobs) == 3
    for job in jobs:
        _wait_done(job)
    assert [job.result() for job in jobs] == [1, 4, 9]
    # All tasks belong to one array job: ids look like "<array id>_<task index>".
    array_ids = {str(job.job_id).split("_")[0] for job in jobs}
    assert len(array_ids) == 1, [job.job_id for job in jobs]
