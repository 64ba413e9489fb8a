"""The early-stopping rule, in one place: used live by the Trainer callback and offline by replay.

transformers' `EarlyStoppingCallback` runs at every evaluation *before* the Trainer updates
`state.best_metric`, so an evaluation is compared with the best validation loss of the evaluations
before it. It counts as an improvement only when it is lower than that best by more than the
threshold (nats). The best moves on every lower loss, improvement or not: with a threshold, an arm
stops once the loss improves by less than the threshold per evaluation (the threshold ratchets
against the best so far, it is not a fixed target). After `patience` evaluations in a row without
an improvement, training stops at that evaluation's step.

`StoppingCallback` is `EarlyStoppingCallback` with its comparison replaced by `improves`, and
`replay` applies the same `improves` to a recorded validation curve, so the two cannot drift.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from transformers import EarlyStoppingCallback


def improves(loss: float, best_before: float | None, threshold: float) -> bool:
    """Does this evaluation reset the patience counter? (`best_before`: best loss of earlier evaluations)."""
    return best_before is None or (loss < best_before and abs(loss - best_before) > threshold)


class StoppingCallback(EarlyStoppingCallback):
    """`EarlyStoppingCallback` deciding with `improves` (identical to its own rule for a metric to
    minimise), and silent on evaluations that do not carry the stopping metric (the train-subset
    evaluation that gives the generalization gap)."""

    def check_metric_value(self, args: Any, state: Any, control: Any, metric_value: float) -> None:
        if improves(metric_value, state.best_metric, self.early_stopping_threshold or 0.0):
            self.early_stopping_patience_counter = 0
        else:
            self.early_stopping_patience_counter += 1

    def on_evaluate(self, args: Any, state: Any, control: Any, metrics: dict[str, float], **kwargs: Any) -> None:
        key = args.metric_for_best_model
        key = key if key.startswith("eval_") else f"eval_{key}"
        if key in metrics:
            super().on_evaluate(args, state, control, metrics, **kwargs)


@dataclass(frozen=True)
class StopPoint:
    """Where an arm ends on a validation curve."""

    stop_step: int
    """Last optimiser step trained."""
    best_step: int
    """Step of the lowest validation loss up to the stop (the first one, on ties, like the Trainer)."""
    stopped_early: bool
    patience_counter: int
    """Evaluations without improvement at the stop."""


def replay(curve: Sequence[tuple[int, float]], patience: int | None, threshold: float, max_steps: int) -> StopPoint:
    """Where an arm with this patience and threshold stops on `curve` ((step, validation loss) per
    evaluation, in order), trained with the same seed, data order and schedule as the curve's run.

    `patience=None` (no early stopping) runs to `max_steps`."""
    if not curve:
        raise ValueError("an empty validation curve has no stop point")
    best: float | None = None
    best_step, counter = curve[0][0], 0
    for step, loss in curve:
        counter = 0 if improves(loss, best, threshold) else counter + 1
        if best is None or loss < best:  # the Trainer's own update of best_metric (no threshold)
            best, best_step = loss, step
        if patience is not None and counter >= patience:
            return StopPoint(stop_step=step, best_step=best_step, stopped_early=step < max_steps,
                             patience_counter=counter)
    return StopPoint(stop_step=max_steps, best_step=best_step, stopped_early=False, patience_counter=counter)
