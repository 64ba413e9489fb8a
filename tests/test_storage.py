"""A disk that fills up while a fine-tune saves: one line naming the folder, its free space and the
resume point, failure.json, `status` shows the reason; after freeing space the rerun resumes from
the last complete checkpoint. On a real small filesystem: a size-limited tmpfs this test mounts
(root only; skipped otherwise), sized from the tiny model's own weights so that checkpoint-10 fits
and checkpoint-20 does not."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from storytune.cluster.status import format_status, grid_status
from storytune.cluster.worker import run_job, write_manifest
from storytune.paths import GridDir, read_json
from storytune.storage import DiskFull, disk_full_message, is_disk_full
from storytune.study.grid import expand_grid
from storytune.study.plan import make_plan
from storytune.train.finetune import checkpoint_problem
from storytune.train.model import resolve_base_model


def mount_tmpfs(folder: Path, size_bytes: int, remount: bool = False) -> None:
    options = f"{'remount,' if remount else ''}size={size_bytes}"
    subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], check=True, capture_output=True)


@pytest.fixture
def small_disk(tmp_path: Path):
    """An empty tmpfs mounted at tmp_path/small (unmounted after the test)."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small tmpfs needs root")
    folder = tmp_path / "small"
    folder.mkdir()
    try:
        mount_tmpfs(folder, 256 * 2**20)
    except subprocess.CalledProcessError as err:
        pytest.skip(f"cannot mount a tmpfs here: {err.stderr.decode().strip()}")
    yield folder
    subprocess.run(["umount", "-l", str(folder)], check=False)


@pytest.mark.slow
def test_full_disk_at_the_second_checkpoint_is_one_line_and_the_rerun_resumes(
        small_disk: Path, stories_dir: Path, data_cache: Path) -> None:
    grid = expand_grid({
        "name": "full", "output_dir": str(small_disk), "evaluate": False,
        "base": {"model": {"name": "tiny", "tiny": {"n_layer": 1, "n_embd": 32, "n_head": 2, "n_positions": 64}},
                 "data": {"files": [str(stories_dir)], "max_stories": 300, "validation_stories": 30,
                          "test_stories": 20, "block_size": 64, "cache_dir": str(data_cache)},
                 "train": {"max_steps": 30, "batch_size": 4, "warmup_steps": 0, "eval_steps": 10,
                           "logging_steps": 10, "max_eval_blocks": 24},
                 "wandb": {"mode": "disabled"}}})
    plan = make_plan(grid)
    write_manifest(plan)
    (job,) = plan.finetunes
    weights = Path(resolve_base_model(job.config.model, job.config.output.dir)) / "model.safetensors"
    # A checkpoint is the weights, Adam's two moments of the same size, and small files (< 1 MiB).
    checkpoint_bytes = 3 * weights.stat().st_size + 2**20
    used = shutil.disk_usage(small_disk).used
    mount_tmpfs(small_disk, used + int(1.5 * checkpoint_bytes), remount=True)  # room for one checkpoint

    with pytest.raises(DiskFull) as raised:
        run_job(job)
    message = str(raised.value)
    assert message.startswith(f"no space left on the device (or quota exceeded) while saving to {job.run_dir.path} (")
    assert message.endswith(" free): free space or set output_dir=... to a larger filesystem, then rerun: a rerun "
                            "resumes from the last complete checkpoint (checkpoint-10)"), message
    assert "\n" not in message
    # The half-written checkpoint-20 is gone (never resumable); its space let failure.json be written.
    assert sorted(p.name for p in job.run_dir.checkpoints.iterdir()) == ["checkpoint-10"]
    assert checkpoint_problem(job.run_dir.checkpoints / "checkpoint-10") is None
    record = read_json(job.failure)
    assert record["reason"] == message and record["exception"] == "DiskFull"
    statuses = format_status(grid_status(GridDir(plan.root).path, state_of=lambda ids: {}))
    assert f"reason: {message}" in statuses, statuses

    mount_tmpfs(small_disk, 512 * 2**20, remount=True)  # the user frees space
    result = run_job(job)
    assert result["resumed_from_step"] == 10 and result["stop_step"] == 30
    assert not job.failure.exists()


def test_the_ways_libraries_say_disk_full(tmp_path: Path) -> None:
    assert is_disk_full(OSError(errno.ENOSPC, "No space left on device"), tmp_path)
    assert is_disk_full(OSError(errno.EDQUOT, "Disk quota exceeded"), tmp_path)
    safetensors = RuntimeError("Error while serializing: I/O error: No space left on device (os error 28)")
    assert is_disk_full(safetensors, tmp_path)
    wrapped = RuntimeError("saving failed")
    wrapped.__cause__ = OSError(errno.ENOSPC, "No space left on device")
    assert is_disk_full(wrapped, tmp_path)
    # torch's own words say only "file write failed": a full disk only when the disk is (nearly) full.
    assert not is_disk_full(RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed"),
                            tmp_path)
    assert not is_disk_full(OSError(errno.EACCES, "Permission denied"), tmp_path)
    from storytune.storage import disk_full_as_error

    with pytest.raises(DiskFull, match=f"while saving to {tmp_path / 'cache'} "):  # the folder the error names
        with disk_full_as_error(tmp_path / "run"):
            raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "cache" / "data.arrow"))
    assert disk_full_message(tmp_path, 1536, None).endswith(
        "(1.5 KiB free): free space or set output_dir=... to a larger filesystem, then rerun: a rerun starts this "
        "job again (no complete checkpoint yet)")


def test_the_cli_reports_a_full_disk_in_one_line(tmp_path: Path) -> None:
    """`DiskFull` is an `OutputError`: the commands print it as one `error:` line (exit 2)."""
    from storytune.cli import guarded

    def main() -> int:
        raise DiskFull(disk_full_message(tmp_path, 0, str(tmp_path / "checkpoint-10")))

    assert guarded(main) == 2
    assert json.dumps(str(DiskFull("x")))  # plain text, fit for failure.json
