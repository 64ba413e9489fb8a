"""A rank that fails fails the job, without a hang: under `torchrun --nproc_per_node 2` (plain DDP on CPU,
gloo), rank 1 raising mid-training makes the whole command exit non-zero within seconds, not after the
collective timeout (`train.ddp_timeout_s`) that rank 0 would wait out at its next all-reduce.

What ends it is torchrun's elastic agent: it sees a worker exit non-zero and terminates the others. This
test proves it with a real per-rank fault and no test hook in the code."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from dist_helpers import BIN, ENV

from conftest import REPO, tiny_overrides
from storytune.config import load_run_config
from storytune.paths import run_dir_for

pytestmark = pytest.mark.slow

DDP_TIMEOUT_S = 600
"""train.ddp_timeout_s of the job: how long a rank would wait for a dead peer at a collective."""

WAIT_S = DDP_TIMEOUT_S // 3
"""The test's own limit on the command: a hang until the collective timeout fails it, at a third of it."""

FAULT_TO_EXIT_S = 60
"""Seconds from rank 1's failure to the command's exit that the test accepts (measured here: ≈ 2 s)."""


def test_rank_1_raising_mid_training_fails_the_job_quickly(stories_dir: Path, data_cache: Path,
                                                           tmp_path: Path) -> None:
    config = tmp_path / "run.yaml"
    config.write_text("model: {name: tiny}\n")
    args = tiny_overrides(stories_dir, data_cache, tmp_path / "out",
                          {"train.batch_size": 2, "train.ddp_timeout_s": DDP_TIMEOUT_S})
    run_dir = run_dir_for(load_run_config(config, args))
    # The fault: every rank saves its own RNG state into each checkpoint (rank 0 writes everything else), so
    # `rng_state_1.pth` is the one file only rank 1 writes. A directory in its place makes that save raise on
    # rank 1 alone, at the step-10 checkpoint of 30 steps (as an unwritable file on one node would). The
    # half-made folder is skipped at start (`last_checkpoint`: no weights), so training starts normally.
    (run_dir.checkpoints / "checkpoint-10" / "rng_state_1.pth").mkdir(parents=True)

    command = [str(BIN / "torchrun"), "--nproc_per_node", "2", "jobs/finetune.py", "--config", str(config), *args]
    # A session of its own: on timeout the whole tree (torchrun and both ranks) is killed, not only torchrun.
    job = subprocess.Popen(command, cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           start_new_session=True)
    try:
        output, _ = job.communicate(timeout=WAIT_S)
    except subprocess.TimeoutExpired:
        os.killpg(job.pid, signal.SIGKILL)
        output, _ = job.communicate()
        pytest.fail(f"the job still ran after {WAIT_S} s: a rank hangs on its dead peer\n{output[-4000:]}")
    ended = time.time()

    assert job.returncode != 0, output[-4000:]
    rank_1_fault = [line for line in output.splitlines() if line.startswith("[rank1]:") and "Is a directory" in line]
    assert rank_1_fault, output[-4000:]  # torch.save's "open file failed with strerror: Is a directory"
    assert not run_dir.result.exists()
    weights = run_dir.checkpoints / "checkpoint-10" / "model.safetensors"
    assert weights.exists(), "rank 0 trained to step 10 and saved"
    # Rank 0 saved these weights just before the barrier after which rank 1 failed (a tiny model's optimizer
    # state in between): the job ended this long after the fault.
    after_fault_s = ended - weights.stat().st_mtime
    assert after_fault_s < FAULT_TO_EXIT_S, f"the job exited {after_fault_s:.0f} s after rank 1 failed"

