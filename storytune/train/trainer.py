"""The Trainer storytune trains with: the HF Trainer plus two cost policies that change no result.

- Checkpoint bytes (`train.resume_every`): an evaluation saves a FULL checkpoint (weights, optimizer,
  scheduler, RNG: resumable) every `resume_every` evaluations, at the last or stopping evaluation, and
  when asked (`force_full_checkpoint`: Slurm's time-limit signal); the others save weights only
  (+ trainer_state.json and the `WEIGHTS_ONLY_MARKER`), which is all replay and `keep: best` need.
  AdamW's two moments make a full GPT-2 checkpoint ~3x its weights. With `resume_every: 1` (the
  default) every save is the Trainer's own, byte for byte.
- Evaluation cost (`train.train_subset_every`): the train subset is scored every k-th evaluation;
  validation, which decides the stop, at every one. The train-subset pass runs under a forked RNG
  (a DataLoader iterator draws its base seed from the global generator), so scoring it or skipping
  it leaves the training bit-identical.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

from transformers import Trainer, TrainerCallback

from storytune.paths import WEIGHTS_ONLY_MARKER, write_json_atomic

log = logging.getLogger(__name__)

TRAIN_SUBSET = "train"
"""Name of the train-subset evaluation set (`finetune.TRAIN_SUBSET` re-exports it)."""


class StoryTrainer(Trainer):
    """`Trainer` with the checkpoint and train-subset policies of this module's docstring."""

    def __init__(self, *args: Any, resume_every: int = 1, train_subset_every: int = 1, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.resume_every = resume_every
        self.train_subset_every = train_subset_every
        self.force_full_checkpoint = False
        """Set by `SaveOnTimeLimit`: the next save is full whatever its step."""

    # ---------------------------------------------------------------- checkpoints
    def full_checkpoint_due(self) -> bool:
        """Is the save at the current step a full one?"""
        if self.resume_every == 1 or self.is_deepspeed_enabled:  # DeepSpeed: its engine saves as it does
            return True
        step, args = self.state.global_step, self.args
        if self.force_full_checkpoint or self.control.should_training_stop or step >= self.state.max_steps:
            return True  # a stopped run finishes from its stop checkpoint without training again
        evaluation = step // max(1, int(args.eval_steps or 1))
        return step % int(args.eval_steps or 1) == 0 and evaluation % self.resume_every == 0

    def _save_checkpoint(self, model: Any, trial: Any) -> None:
        if self.resume_every == 1 or self.is_deepspeed_enabled:
            super()._save_checkpoint(model, trial)
            return
        full = self.full_checkpoint_due()
        folder = Path(self._get_output_dir(trial=trial)) / f"checkpoint-{self.state.global_step}"
        saved = self.args.save_only_model, self.args.save_total_limit
        self.args.save_only_model, self.args.save_total_limit = not full, None  # rotation: ours, below
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self.args.save_only_model, self.args.save_total_limit = saved
        if self.args.should_save:
            marker = folder / WEIGHTS_ONLY_MARKER
            if full:
                marker.unlink(missing_ok=True)  # a folder of an earlier attempt at the same step
            else:
                write_json_atomic(marker, {"step": self.state.global_step, "why": "train.resume_every"})
            rotate_keeping_full(folder.parent, self.args.save_total_limit, self.state.best_model_checkpoint)
        if full:
            self.force_full_checkpoint = False

    # ---------------------------------------------------------------- evaluation
    def evaluate(self, eval_dataset: Any = None, ignore_keys: list[str] | None = None,
                 metric_key_prefix: str = "eval") -> dict[str, float]:
        if not isinstance(eval_dataset, str) or eval_dataset != TRAIN_SUBSET:
            return super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)
        # The Trainer's per-name call for the train subset, at a periodic evaluation.
        if (self.state.global_step // max(1, int(self.args.eval_steps or 1))) % self.train_subset_every:
            return {}
        import torch

        devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
        with torch.random.fork_rng(devices=devices):
            return super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)


class SaveOnTimeLimit(TrainerCallback):
    """Slurm's time-limit signal (submitit's USR2, `--signal` seconds before the limit) during training:
    finish the step, save a FULL checkpoint, then hand the signal to submitit's handler (requeue + exit).

    Needed only when `train.resume_every` > 1 (else the last evaluation's checkpoint is already full),
    and only in a single process: ranks that saw the signal at different steps would disagree on the
    save, a collective hang. Outside `train()` the signal goes to submitit's handler at once."""

    def __init__(self, trainer: StoryTrainer, signum: int) -> None:
        self.trainer, self.signum = trainer, signum
        self.previous: Any = None
        self.pending: tuple[int, Any] | None = None
        self.training = False

    def install(self) -> bool:
        """Wrap the current handler of `signum`; False (nothing installed) when there is none to wrap."""
        import signal

        previous = signal.getsignal(self.signum)
        if not callable(previous):
            return False
        self.previous = previous
        signal.signal(self.signum, self._on_signal)
        return True

    def _on_signal(self, signum: int, frame: Any) -> None:
        if not self.training:
            self._hand_over(signum, frame)
            return
        log.warning("time-limit signal: saving a full checkpoint at the end of this step")
        self.pending = (signum, frame)

    def _hand_over(self, signum: int, frame: Any) -> None:
        import signal

        signal.signal(self.signum, self.previous)
        self.pending = None
        self.previous(signum, frame)

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.training = True

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.pending is not None:
            self.trainer.force_full_checkpoint = True
            control.should_save = True

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.pending is not None and not self.trainer.force_full_checkpoint:  # that save was full
            self._hand_over(*self.pending)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.training = False
        if self.pending is not None:
            self._hand_over(*self.pending)


def is_weights_only(folder: Path) -> bool:
    return (folder / WEIGHTS_ONLY_MARKER).exists()


def checkpoint_steps(output_dir: Path) -> list[tuple[int, Path]]:
    """(step, folder) of every `checkpoint-<step>` folder, oldest first."""
    found = [(int(p.name.rsplit("-", 1)[1]), p) for p in output_dir.glob("checkpoint-*")
             if p.is_dir() and p.name.rsplit("-", 1)[1].isdigit()]
    return sorted(found)


def newest_full_step(output_dir: Path) -> int | None:
    """Step of the newest checkpoint that is not weights-only (completeness is `last_checkpoint`'s job)."""
    full = [step for step, folder in checkpoint_steps(output_dir) if not is_weights_only(folder)]
    return full[-1] if full else None


def rotate_keeping_full(output_dir: Path, limit: int | None, best: str | None) -> None:
    """The Trainer's rotation (oldest first, at most `limit`, never the newest or the best), which also
    never deletes the newest FULL checkpoint: the only one a resume can start from."""
    if not limit:
        return
    folders = checkpoint_steps(output_dir)
    full = newest_full_step(output_dir)
    protected = {folders[-1][0]} if folders else set()
    if full is not None:
        protected.add(full)
    if best:
        protected.update(step for step, folder in folders if folder.resolve() == Path(best).resolve())
    remaining = len(folders)
    for step, folder in folders:
        if remaining <= max(limit, len(protected)):
            break
        if step not in protected:
            shutil.rmtree(folder, ignore_errors=True)
            remaining -= 1
