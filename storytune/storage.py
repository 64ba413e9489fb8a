"""A full disk or an exceeded quota while a job saves (checkpoint, kept model, results): one line.

Libraries report it in their own words: an `OSError` with errno ENOSPC/EDQUOT (json, shutil), a
safetensors `SafetensorError` ("I/O error: No space left on device (os error 28)"), torch's
`RuntimeError` ("PytorchStreamWriter failed writing file ...: file write failed"). `disk_full_as_error`
turns any of them into `DiskFull`, whose message names the folder, its free space, and what a rerun
does; the half-written checkpoint is removed (it can never be resumed from, and the space it holds
lets `failure.json` be written).
"""

from __future__ import annotations

import errno
import logging
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from storytune.paths import OutputError
from storytune.process import is_main_process

log = logging.getLogger(__name__)

_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT}
_FULL_TEXT = ("no space left on device", "disk quota exceeded", "storagefull", "quotaexceeded", "os error 28",
              "os error 122")
_WRITE_FAILED_TEXT = ("file write failed", "unexpected pos")
"""torch.save's words for a failed write; counted as a full disk only when the disk is (nearly) full."""
NEARLY_FULL_BYTES = 16 * 2**20
"""Below this much free space (16 MiB) a failed torch write is taken for a full disk."""


class DiskFull(OutputError):
    """The output folder's filesystem is full (or the quota is spent)."""


def _chain(err: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        yield err
        err = err.__cause__ or err.__context__  # type: ignore[assignment]


def free_bytes(folder: Path) -> int | None:
    """Free space of the filesystem holding `folder` (its nearest existing parent), or None."""
    path = Path(folder)
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None


def is_disk_full(err: BaseException, folder: Path) -> bool:
    """Is `err` (or what caused it) a write that failed for want of space under `folder`?"""
    for link in _chain(err):
        if isinstance(link, OSError) and link.errno in _FULL_ERRNOS:
            return True
        text = str(link).lower()
        if any(marker in text for marker in _FULL_TEXT):
            return True
        if any(marker in text for marker in _WRITE_FAILED_TEXT):
            free = free_bytes(folder)
            if free is not None and free < NEARLY_FULL_BYTES:
                return True
    return False


def human_bytes(n: int | None) -> str:
    if n is None:
        return "unknown"
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def disk_full_message(folder: Path, free: int | None, resume_point: str | None) -> str:
    resumes = (f"a rerun resumes from the last complete checkpoint ({Path(resume_point).name})" if resume_point
               else "a rerun starts this job again (no complete checkpoint yet)")
    return (f"no space left on the device (or quota exceeded) while saving to {folder} ({human_bytes(free)} free): "
            f"free space or set output_dir=... to a larger filesystem, then rerun: {resumes}")


@contextmanager
def disk_full_as_error(folder: Path, checkpoints: Path | None = None,
                       last_complete: Callable[[Path], str | None] | None = None) -> Iterator[None]:
    """Turn a full-disk error raised inside into `DiskFull` naming `folder`. For a fine-tune, pass
    its `checkpoints` folder and `last_complete` (`train.finetune.last_checkpoint`): the message names
    the checkpoint a rerun resumes from, and the checkpoint folders newer than it (the half-written
    one) are removed."""
    try:
        yield
    except DiskFull:
        raise
    except Exception as err:
        if not is_disk_full(err, folder):
            raise
        named = _written_folder(err)  # outside `folder`: e.g. the data cache, maybe on another filesystem
        where = named if named is not None and not named.is_relative_to(folder) else folder
        free = free_bytes(where)
        resume_point = _drop_half_written(checkpoints, last_complete) if checkpoints and last_complete else None
        raise DiskFull(disk_full_message(where, free, resume_point)) from err


def _written_folder(err: BaseException) -> Path | None:
    """The folder of the file whose write failed, when the error names it (an OSError's filename)."""
    for link in _chain(err):
        if isinstance(link, OSError) and link.filename:
            return Path(str(link.filename)).parent
    return None


def _drop_half_written(checkpoints: Path, last_complete: Callable[[Path], str | None]) -> str | None:
    """Remove checkpoint folders newer than the last complete one (main process); return that one."""
    last = last_complete(checkpoints)
    if not is_main_process() or not checkpoints.is_dir():
        return last
    newest = int(Path(last).name.rsplit("-", 1)[1]) if last else -1
    for folder in checkpoints.glob("checkpoint-*"):
        step = folder.name.rsplit("-", 1)[1]
        if folder.is_dir() and step.isdigit() and int(step) > newest:
            log.warning("removing the half-written %s (the disk filled up while saving it)", folder.name)
            shutil.rmtree(folder, ignore_errors=True)
    return last
