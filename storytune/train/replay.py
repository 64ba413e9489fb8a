"""Replay: every early-stopping arm of a seed from that seed's one `none` run.

Arms that differ only in their early-stopping settings share seed, data order, dropout and learning
rate schedule (constant after warm-up, never tied to the stop), so each is an exact prefix of the
`none` run: its stop step and best step follow from the `none` run's validation curve by the same
rule the callback applies live (`stopping.replay`), and its kept weights are the `none` run's
checkpoint at its kept step. Only the distinct kept checkpoints are scored, and `PruneCheckpoints`
deletes, during training, every checkpoint no arm can still keep.

Training compute and wall time of a replayed arm are the source run's, prorated by steps (it is
the part of the source run the arm would have trained).
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass, replace
from pathlib import Path

from storytune.config import RunConfig
from storytune.paths import RunDir
from storytune.train.finetune import (
    STOP_METRIC,
    FinetuneResult,
    Prepared,
    keeps_best,
    load_weights,
    validation_loss,
)
from storytune.train.heldout import score_stories, test_loss_interval
from storytune.train.stopping import StopPoint, replay
from storytune.train.trainer import newest_full_step

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Scored:
    """One kept checkpoint, scored once however many arms keep it."""

    kept_eval_loss: float
    test_loss: dict
    test_story_losses: dict
    model_dir: Path


def stop_point(source: FinetuneResult, arm: RunConfig) -> StopPoint:
    curve = [(int(p["step"]), float(p["eval_loss"])) for p in source.eval_history]
    stopping = arm.early_stopping
    return replay(curve, stopping.patience, stopping.threshold, source.max_steps)


def replay_arms(source: FinetuneResult, source_id: str, checkpoints: Path, prepared: Prepared,
                arms: list[tuple[RunConfig, RunDir]]) -> list[FinetuneResult]:
    """The result of every arm in `arms`, derived from the finished `none` run `source`.

    Leaves each arm's kept weights in its run directory's `model/`; the caller writes result.json."""
    scored: dict[int, Scored] = {}
    results = []
    for config, run_dir in arms:
        stop = stop_point(source, config)
        kept_step = stop.best_step if keeps_best(config.early_stopping) else stop.stop_step
        if kept_step not in scored:
            scored[kept_step] = score_checkpoint(prepared, checkpoints / f"checkpoint-{kept_step}", run_dir.model,
                                                 config.train.seed)
        else:
            copy_model(scored[kept_step].model_dir, run_dir.model)
        results.append(derived_result(source, source_id, config, stop, kept_step, scored[kept_step], run_dir))
        log.info("replayed %s: stop %d, best %d, kept %d", config.early_stopping.variant, stop.stop_step,
                 stop.best_step, kept_step)
    return results


def score_checkpoint(prepared: Prepared, checkpoint: Path, model_dir: Path, seed: int) -> Scored:
    trainer = prepared.trainer
    load_weights(trainer.model, checkpoint)
    stories = score_stories(trainer, prepared.test_blocks, prepared.summary.stories["test"])
    kept_eval_loss = validation_loss(trainer)
    trainer.save_model(str(model_dir))
    return Scored(kept_eval_loss, test_loss_interval(stories, seed=seed), stories.to_dict(), model_dir)


def copy_model(source: Path, target: Path) -> None:
    tmp = target.with_name(f".{target.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(source, tmp)
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)


def derived_result(source: FinetuneResult, source_id: str, config: RunConfig, stop: StopPoint, kept_step: int,
                   scored: Scored, run_dir: RunDir) -> FinetuneResult:
    share = stop.stop_step / source.stop_step
    history = [p for p in source.eval_history if p["step"] <= stop.stop_step]
    return replace(
        source,
        variant=config.early_stopping.variant,
        stop_step=stop.stop_step,
        stopped_early=stop.stopped_early,
        best_step=stop.best_step,
        best_eval_loss=min(p["eval_loss"] for p in history),
        kept_step=kept_step,
        kept_eval_loss=scored.kept_eval_loss,
        test_loss=scored.test_loss,
        test_story_losses=scored.test_story_losses,
        patience_counter_at_stop=stop.patience_counter,
        train_tokens=stop.stop_step * source.tokens_per_step,
        total_flos=source.total_flos * share,
        wall_time_s=source.wall_time_s * share,
        model_path=str(run_dir.model),
        eval_history=history,
        replayed_from=source_id,
    )


class PruneCheckpoints:
    """Keeps only the checkpoints replay can still need, as training goes (a `TrainerCallback`).

    After each save: the newest checkpoint and the newest FULL one (to resume from; they differ when
    `train.resume_every` > 1 makes some saves weights-only), the best so far (the kept weights of
    any arm that stops later), and the kept checkpoint of every arm that has already stopped.
    Without this, a replay run keeps a checkpoint per evaluation (weights and optimizer state)."""

    def __init__(self, arms: list[RunConfig], max_steps: int) -> None:
        self.arms = arms
        self.max_steps = max_steps

    def __getattr__(self, name: str):  # the TrainerCallback hooks it does not use
        if name.startswith("on_"):
            return lambda *args, **kwargs: None
        raise AttributeError(name)

    def needed(self, curve: list[tuple[int, float]]) -> set[int]:
        keep = {curve[-1][0], min(curve, key=lambda p: p[1])[0]}
        for arm in self.arms:
            stopping = arm.early_stopping
            stop = replay(curve, stopping.patience, stopping.threshold, self.max_steps)
            if stop.stop_step <= curve[-1][0]:  # this arm has already stopped
                keep.add(stop.best_step if keeps_best(stopping) else stop.stop_step)
        return keep

    def on_save(self, args, state, control, **kwargs) -> None:
        curve = [(int(e["step"]), float(e[f"eval_{STOP_METRIC}"])) for e in state.log_history
                 if f"eval_{STOP_METRIC}" in e]
        if not curve or not state.is_world_process_zero:
            return
        keep = self.needed(curve)
        if (full := newest_full_step(Path(args.output_dir))) is not None:
            keep.add(full)  # the newest FULL checkpoint: the only one a resume can start from
        for folder in Path(args.output_dir).glob("checkpoint-*"):
            if folder.name.rsplit("-", 1)[1].isdigit() and int(folder.name.rsplit("-", 1)[1]) not in keep:
                shutil.rmtree(folder, ignore_errors=True)
