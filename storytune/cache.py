"""Derived-data caches (the processed data, the tiny base model, converted models): read if usable,
else (re)built once, however many jobs of a grid ask at the same time.

    value = load_or_build(folder, build=write_into, load=read_from, check=problem_or_none, what="data cache")

- `check(folder)`: a cheap look (marker files present?) -> None when the folder looks complete, else
  a reason. A folder that fails it, or whose `load` raises, is damaged (a crashed node, a full shared
  filesystem): one warning naming the folder and the reason, then it is rebuilt.
- `build(tmp)`: write the whole cache into the empty folder `tmp` (a sibling of `folder`); it is
  renamed to `folder` only when complete (`paths.save_dir_atomically`), so a half-built cache never
  looks complete.
- `load(folder)`: read it and return what the caller wants; any exception means "damaged".

Concurrent builders (jobs of a grid sharing STORYTUNE_CACHE) serialise on `<folder>.lock`, a
`filelock.FileLock` (fcntl on POSIX, released by the kernel when a holder dies): the first builds,
the others wait, see the finished folder, and load it. Readers of an intact cache take no lock.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from storytune.errors import first_line
from storytune.paths import save_dir_atomically

log = logging.getLogger(__name__)

T = TypeVar("T")

LOCK_TIMEOUT_S = 3600.0
"""Seconds a job waits for another job's build (tokenizing the full dataset takes minutes, not hours)."""


class CacheError(RuntimeError):
    """A freshly built cache could not be read back (a bug in its build or load, not damage)."""


def lock_path(folder: Path) -> Path:
    """`<parent>/.<name>.lock`: beside the folder (same filesystem), hidden, never inside it."""
    return folder.with_name(f".{folder.name}.lock")


def _try_load(folder: Path, load: Callable[[Path], T],
              check: Callable[[Path], str | None] | None) -> tuple[T | None, str | None]:
    """(value, None) when the folder is there and readable; (None, reason) when it is damaged;
    (None, None) when it does not exist."""
    if not folder.exists():
        return None, None
    try:
        problem = check(folder) if check else None
        if problem:
            return None, problem
        return load(folder), None
    except Exception as err:  # noqa: BLE001 -- whatever the reader raises, the cache cannot be used
        return None, f"{type(err).__name__}: {first_line(err)}"


def load_or_build(folder: Path, build: Callable[[Path], None], load: Callable[[Path], T],
                  check: Callable[[Path], str | None] | None = None, what: str = "cache",
                  lock_timeout_s: float = LOCK_TIMEOUT_S) -> T:
    """`load(folder)` when the cache is usable, else build it (once across processes) and load it."""
    from filelock import FileLock

    folder = Path(folder)
    value, problem = _try_load(folder, load, check)
    if problem is None and folder.exists():
        return value  # type: ignore[return-value]
    folder.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(lock_path(folder)), timeout=lock_timeout_s):
        value, problem = _try_load(folder, load, check)  # another process may have (re)built it meanwhile
        if problem is None and folder.exists():
            return value  # type: ignore[return-value]
        if problem is not None:
            log.warning("%s %s cannot be read (%s): rebuilding it", what, folder, problem)
            _discard(folder)
        save_dir_atomically(folder, lambda tmp: _build_into(tmp, build))
    value, problem = _try_load(folder, load, check)
    if problem is not None:
        raise CacheError(f"the {what} just built at {folder} cannot be read back: {problem}")
    return value  # type: ignore[return-value]


def _build_into(tmp: Path, build: Callable[[Path], None]) -> None:
    tmp.mkdir(parents=True)
    build(tmp)


def _discard(folder: Path) -> None:
    """Move a damaged folder out of the way (one rename, so no reader sees it half-deleted), then delete it."""
    trash = folder.with_name(f".{folder.name}.damaged-{os.getpid()}")
    shutil.rmtree(trash, ignore_errors=True)
    folder.rename(trash)
    shutil.rmtree(trash, ignore_errors=True)
