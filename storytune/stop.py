"""Stopping on request: a job that gets SIGTERM ends cleanly, never in the middle of a checkpoint save.

Who sends it: the local executor when the user presses Ctrl-C (or sends SIGTERM) to `submit.py`,
`scancel` and `scontrol requeue` on Slurm. submitit's own handler only logs SIGTERM ("Bypassing
signal"), so without this a job went on until SIGKILL, which may land inside a save.

`stop_on_signals()` (around every job: `cluster.worker.run_job`) makes SIGTERM raise `StopRequested` where the
job is, unless it is inside `deferred()` (`guard_checkpoint_saves` wraps the Trainer's checkpoint
save in it): then it is raised as soon as the save is complete. No checkpoint is written on the way
out, so the newest complete checkpoint stays what it was, and a rerun resumes from it.
`StopRequested` is a BaseException (like KeyboardInterrupt): no `except Exception` swallows it, and
it is not a failure (no failure.json).
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

log = logging.getLogger(__name__)


class StopRequested(BaseException):  # noqa: N818 -- named like KeyboardInterrupt: a request, not an error
    """The job was asked to stop (SIGTERM); it ends without writing anything that looks finished."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        super().__init__(f"stopped on request ({signal_name(signum)})")


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def exit_code(signum: int) -> int:
    """The shell's convention for a process ended by `signum` (SIGINT: 130, SIGTERM: 143)."""
    return 128 + signum


class _State:
    requested: int | None = None
    """The signal that asked to stop (None: none yet)."""
    deferring = 0
    """How many `deferred()` blocks the job is in."""


def requested() -> int | None:
    return _State.requested


def _on_signal(signum: int, frame: Any) -> None:
    if _State.requested is not None:  # the local controller forwards SIGTERM too: one request is enough
        return
    _State.requested = signum
    if _State.deferring:
        log.warning("stop requested (%s): finishing the checkpoint being saved first", signal_name(signum))
        return
    raise StopRequested(signum)


@contextmanager
def handlers_installed(handler: Any, signals: Iterable[int]) -> Iterator[None]:
    """`handler` (a function, `signal.SIG_IGN`, ...) for `signals` inside; the previous handlers come back
    after. Main thread only (elsewhere Python cannot set handlers: a no-op). The one place storytune sets
    signal handlers: jobs (`stop_on_signals`) and the local executor (`cluster.executors.GracefulStop`)."""
    previous: dict[int, Any] = {}
    try:
        for signum in signals:
            previous[signum] = signal.signal(signum, handler)
    except ValueError:  # not the main thread
        pass
    try:
        yield
    finally:
        for signum, earlier in previous.items():
            signal.signal(signum, earlier)


@contextmanager
def stop_on_signals(signals: tuple[int, ...] = (signal.SIGTERM,)) -> Iterator[None]:
    """Inside, `signals` stop this job cleanly (`StopRequested`); the previous handlers come back after."""
    _State.requested = None
    with handlers_installed(_on_signal, signals):
        yield


@contextmanager
def deferred() -> Iterator[None]:
    """A stop requested inside this block is raised when it ends (the block runs to completion)."""
    _State.deferring += 1
    try:
        yield
    finally:
        _State.deferring -= 1
    if _State.requested is not None and not _State.deferring:
        raise StopRequested(_State.requested)


def guard_checkpoint_saves(trainer: Any) -> None:
    """Run `trainer`'s checkpoint saves (`Trainer._save_checkpoint`, transformers 5.x: weights, optimizer,
    scheduler, RNG, trainer_state.json, then rotation) inside `deferred()`, so a stop never cuts one short."""
    save = trainer._save_checkpoint

    def guarded_save(*args: Any, **kwargs: Any) -> Any:
        with deferred():
            return save(*args, **kwargs)

    trainer._save_checkpoint = guarded_save  # an instance attribute wins over the method
