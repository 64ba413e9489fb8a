"""Test-only pause points: hold a job at an exact place so a test can interrupt it there.

Interrupting a running job at "some point" is a race; these make it deterministic. Off unless the
job's environment sets `STORYTUNE_TEST_PAUSE` (the Slurm requeue tests do), e.g.
`STORYTUNE_TEST_PAUSE=after-save:10,evaluate:base`. Points:

- `in-save:<step>`: inside the step's checkpoint save, after the weights, optimizer and scheduler
  and before the RNG state and `trainer_state.json` (the completeness marker): a kill here leaves
  an incomplete checkpoint.
- `after-save:<step>`: right after the step's checkpoint is complete.
- `evaluate:<label>`: in the evaluation of `<label>` (a run id, or `base`), after generating and
  before scoring or writing anything.

A pause writes `<folder>/test-paused-<point>` (which tells the test the job is there) and sleeps
`PAUSE_S`; it happens once per folder, so a requeued job that reaches the same point runs through.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

from storytune.process import is_main_process

log = logging.getLogger(__name__)

ENV = "STORYTUNE_TEST_PAUSE"
PAUSE_S = 600.0
"""Seconds a pause lasts: longer than any test waits, shorter than the tests' Slurm time limits."""


def requested(point: str) -> bool:
    """Is `point` (e.g. `after-save:10`) among the pauses the environment asks for?"""
    return point in {p.strip() for p in os.environ.get(ENV, "").split(",") if p.strip()}


def marker(folder: Path, point: str) -> Path:
    return Path(folder) / f"test-paused-{point.replace(':', '-')}"


def pause_if_requested(point: str, folder: Path) -> None:
    """Sleep here once per `folder` when the environment asks for `point` (main process only)."""
    if not requested(point) or not is_main_process():
        return
    flag = marker(folder, point)
    if flag.exists():
        return
    flag.parent.mkdir(parents=True, exist_ok=True)
    flag.touch()
    log.warning("test pause at %s (%s) for up to %.0f s", point, folder, PAUSE_S)
    time.sleep(PAUSE_S)


def install_save_pauses(trainer: Any, run_folder: Path) -> None:
    """Add the `in-save`/`after-save` points to `trainer`'s checkpoint saves (no-op unless requested).

    `Trainer._save_checkpoint` (transformers 5.x) calls `_save_rng_state` after the weights,
    optimizer and scheduler, and writes trainer_state.json after it; `on_save` runs once the
    checkpoint is complete."""
    if not os.environ.get(ENV):
        return
    from transformers import TrainerCallback

    save_rng_state = trainer._save_rng_state

    def paused_save_rng_state(output_dir: str) -> None:
        pause_if_requested(f"in-save:{trainer.state.global_step}", run_folder)
        save_rng_state(output_dir)

    class AfterSave(TrainerCallback):
        def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            pause_if_requested(f"after-save:{state.global_step}", run_folder)

    trainer._save_rng_state = paused_save_rng_state  # an instance attribute wins over the method
    trainer.add_callback(AfterSave())
