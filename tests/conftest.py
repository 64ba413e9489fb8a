"""Shared fixtures. Tests run offline on CPU: the hub is never contacted (HF_HUB_OFFLINE=1)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("STORYTUNE_TEST_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def stories_dir() -> Path:
    """Real TinyStories text (read-only). Tests that need it skip when it is absent."""
    if not (SHARED_DATA / "tinystories-train.txt").exists():
        pytest.skip(f"TinyStories files not found in {SHARED_DATA} (set STORYTUNE_TEST_DATA)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def data_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One processed-data cache for the whole session (tokenizing is the slow part)."""
    return tmp_path_factory.mktemp("data-cache")


def tiny_overrides(stories_dir: Path, cache: Path, out: Path, extra: dict[str, object] | None = None) -> list[str]:
    """A run small enough for a CPU test: 1 layer, d=32, 64-token blocks, a few hundred stories."""
    base = {
        "model.name": "tiny", "model.tiny.n_layer": 1, "model.tiny.n_embd": 32, "model.tiny.n_head": 2,
        "model.tiny.n_positions": 64,
        "data.files": f"[{stories_dir}]", "data.max_stories": 300, "data.validation_stories": 30,
        "data.test_stories": 20, "data.block_size": 64, "data.cache_dir": str(cache),
        "train.batch_size": 4, "train.max_steps": 30, "train.eval_steps": 10, "train.logging_steps": 10,
        "train.warmup_steps": 0, "train.max_eval_blocks": 24, "output.dir": str(out), "wandb.mode": "disabled",
    }
    base.update(extra or {})
    return [f"{k}={v}" for k, v in base.items()]


def slurm_job_state(job_id: str) -> str:
    """The job's state in sacct's accounting, first word only ("CANCELLED by 0" -> "CANCELLED");
    "" while sacct does not know the job yet (it lags 1-3 s behind sbatch here)."""
    out = subprocess.run(["sacct", "-n", "-X", "-P", "-j", job_id, "-o", "State"], capture_output=True, text=True)
    return out.stdout.split()[0] if out.stdout.split() else ""


CLUSTER_SCRIPT = REPO / "slurm" / "local_cluster.sh"


def _skip_reason() -> str | None:
    if shutil.which("sbatch") is None:
        return "sbatch not on PATH (Slurm not installed); run `bash slurm/local_cluster.sh start`"
    try:
        status = subprocess.run(
            ["bash", str(CLUSTER_SCRIPT), "status"],
            capture_output=True,
            check=False,
            text=True,
            timeout=60,
        )
    except subprocess.TimeoutExpired:
        return "`slurm/local_cluster.sh status` timed out"
    if status.returncode != 0:
        tail = " | ".join((status.stdout + status.stderr).strip().splitlines()[-8:])
        return f"local Slurm cluster not healthy (`slurm/local_cluster.sh status` exited {status.returncode}): {tail}"
    return None


@pytest.fixture(scope="session")
def slurm_cluster() -> None:
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)


