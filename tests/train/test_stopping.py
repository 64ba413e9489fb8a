"""The replay rule equals transformers' own EarlyStoppingCallback, evaluation by evaluation."""

from __future__ import annotations

import random

import pytest
from transformers import EarlyStoppingCallback, TrainerControl, TrainerState, TrainingArguments

from storytune.train.stopping import StoppingCallback, improves, replay


def live_stop(callback_cls, curve, patience, threshold, max_steps):
    """Drive a real callback the way the Trainer does: on_evaluate first, then the best-metric update."""
    args = TrainingArguments(output_dir="/tmp/unused", metric_for_best_model="validation_loss",
                             greater_is_better=False, eval_strategy="steps", report_to="none")
    state, control = TrainerState(), TrainerControl()
    callback = callback_cls(early_stopping_patience=patience, early_stopping_threshold=threshold)
    for step, loss in curve:
        state.global_step = step
        callback.on_evaluate(args, state, control, metrics={"eval_validation_loss": loss})
        if state.best_metric is None or loss < state.best_metric:  # Trainer._determine_best_metric
            state.best_metric, state.best_global_step = loss, step
        if control.should_training_stop:
            return step, state.best_global_step, callback.early_stopping_patience_counter
    return max_steps, state.best_global_step, callback.early_stopping_patience_counter


def random_curve(rng: random.Random, n: int) -> list[tuple[int, float]]:
    """A U-shaped validation curve with noise and exact repeats (ties)."""
    bottom = rng.randrange(1, n)
    curve = []
    for i in range(n):
        loss = round(5.0 + 0.02 * (i - bottom) ** 2 / n + rng.gauss(0, 0.03), 2)
        curve.append(((i + 1) * 10, loss))
    return curve


@pytest.mark.parametrize("callback_cls", [EarlyStoppingCallback, StoppingCallback])
def test_replay_equals_the_callback_on_random_curves(callback_cls) -> None:
    rng = random.Random(0)
    for _ in range(300):
        curve = random_curve(rng, rng.randrange(2, 30))
        patience, threshold = rng.choice([1, 2, 3, 5]), rng.choice([0.0, 0.0, 0.01, 0.05])
        max_steps = curve[-1][0]
        stop = replay(curve, patience, threshold, max_steps)
        assert (stop.stop_step, stop.best_step, stop.patience_counter) == \
            live_stop(callback_cls, curve, patience, threshold, max_steps), (curve, patience, threshold)


def test_threshold_ratchets_against_the_best_so_far() -> None:
    """Each evaluation improves by 0.04 < threshold 0.05: no improvement counts, although the loss
    falls by 0.12 in all; the best still moves, so the kept step is the last evaluation."""
    curve = [(10, 5.00), (20, 4.96), (30, 4.92), (40, 4.88)]
    stop = replay(curve, patience=3, threshold=0.05, max_steps=100)
    assert (stop.stop_step, stop.best_step, stop.stopped_early) == (40, 40, True)
    assert not improves(4.96, 5.00, 0.05) and improves(4.94, 5.00, 0.05)


def test_none_arm_runs_to_the_budget_and_keeps_its_minimum_as_best() -> None:
    stop = replay([(10, 3.0), (20, 2.0), (30, 2.5)], patience=None, threshold=0.0, max_steps=30)
    assert (stop.stop_step, stop.best_step, stop.stopped_early) == (30, 20, False)


def test_callback_ignores_evaluations_without_the_stopping_metric() -> None:
    args = TrainingArguments(output_dir="/tmp/unused", metric_for_best_model="validation_loss",
                             greater_is_better=False, eval_strategy="steps", report_to="none")
    callback = StoppingCallback(early_stopping_patience=1)
    state, control = TrainerState(best_metric=1.0), TrainerControl()
    callback.on_evaluate(args, state, control, metrics={"eval_train_loss": 9.0})
    assert callback.early_stopping_patience_counter == 0 and not control.should_training_stop
