"""End-to-end fine-tunes of a tiny GPT-2 on real TinyStories text, with the real Trainer."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from conftest import tiny_overrides
from storytune.cluster.worker import run_finetune
from storytune.config import load_run_config
from storytune.paths import RunDir, run_dir_for
from storytune.train.finetune import finetune
from storytune.train.model import load_model


def overfit_config(stories_dir: Path, cache: Path, out: Path, extra: dict | None = None):
    """20 training stories and a high learning rate: validation loss turns up within ~60 steps."""
    return load_run_config(None, tiny_overrides(stories_dir, cache, out, {
        "data.max_stories": 70, "data.validation_stories": 30, "data.test_stories": 20,
        "train.learning_rate": 1e-2, "train.max_steps": 200, "train.eval_steps": 10,
        "train.lr_scheduler": "constant", "train.max_eval_blocks": 24, **(extra or {})}))


def test_early_stopping_stops_and_none_runs_full_budget(stories_dir: Path, data_cache: Path, tmp_path: Path) -> None:
    stopped = run_finetune(overfit_config(stories_dir, data_cache, tmp_path, {"early_stopping.patience": 2}))
    assert stopped["stopped_early"] and stopped["stop_step"] < 200
    # Patience counts evaluations: the run ends `patience` evaluations after its best one.
    assert stopped["stop_step"] == stopped["best_step"] + 2 * 10
    assert stopped["patience_counter_at_stop"] == 2
    assert stopped["kept_step"] == stopped["best_step"]
    assert stopped["kept_eval_loss"] == pytest.approx(stopped["best_eval_loss"], abs=1e-5)
    assert len(stopped["eval_history"]) == stopped["stop_step"] // 10

    none_config = overfit_config(stories_dir, data_cache, tmp_path, {"train.max_steps": 80})
    full = run_finetune(none_config)
    assert not full["stopped_early"] and full["stop_step"] == 80 and full["kept_step"] == 80
    assert full["patience_counter_at_stop"] is None
    # The `none` arm keeps its LAST weights even when an earlier evaluation was better.
    last_eval = full["eval_history"][-1]["eval_loss"]
    assert full["kept_eval_loss"] == pytest.approx(last_eval, abs=1e-5)
    assert full["best_eval_loss"] < last_eval, "the overfitting set-up should make the last eval worse than the best"
    assert full["train_tokens"] == 80 * 4 * 64
    # Generalization is measured on the held-out test stories, with a story-level interval.
    test = full["test_loss"]
    assert test["n_stories"] == 20 and test["ci_low"] < test["mean"] < test["ci_high"]
    stories = full["test_story_losses"]
    assert len(stories["loss_sum"]) == 20 and min(stories["tokens"]) > 0
    assert math.isclose(sum(stories["loss_sum"]) / sum(stories["tokens"]), test["mean"], rel_tol=1e-9)
    # Every evaluation also scores a fixed train subset in eval mode: the generalization gap is a curve.
    assert all({"step", "tokens", "eval_loss", "train_loss"} <= set(p) for p in full["eval_history"])
    assert full["eval_history"][-1]["train_loss"] < full["eval_history"][-1]["eval_loss"], "overfit: train < validation"

    run_dir = Path(full["run_dir"])
    saved = json.loads((run_dir / "result.json").read_text())
    assert saved["stop_step"] == 80 and (run_dir / "config.yaml").exists()
    assert not (run_dir / "checkpoints").exists(), "intermediate checkpoints are removed after success"
    assert load_model(str(run_dir / "model")).config.n_embd == 32


class CrashAfterSave:
    """Simulates a job killed right after the checkpoint at `step` is written (a preemption)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def __getattr__(self, name: str):  # TrainerCallback's other hooks: do nothing
        return lambda *args, **kwargs: None

    def on_save(self, args, state, control, **kwargs) -> None:
        if state.global_step >= self.step:
            raise KeyboardInterrupt(f"simulated preemption at step {state.global_step}")


def test_resume_mid_patience_matches_uninterrupted_run(stories_dir: Path, data_cache: Path, tmp_path: Path) -> None:
    """Preempted one evaluation after its best, a resumed run keeps its patience counter
    (transformers #28544) and ends exactly like a run never interrupted."""
    extra = {"early_stopping.patience": 3}
    straight = run_finetune(overfit_config(stories_dir, data_cache, tmp_path / "a", extra))
    best, stop = straight["best_step"], straight["stop_step"]
    assert stop == best + 30 < 200

    config = overfit_config(stories_dir, data_cache, tmp_path / "b", extra)
    run_dir = run_dir_for(config)
    with pytest.raises(KeyboardInterrupt):
        run_finetune(config, extra_callbacks=[CrashAfterSave(step=best + 10)])
    assert not run_dir.is_complete(), "an interrupted run must not look finished"
    state = json.loads((run_dir.checkpoints / f"checkpoint-{best + 10}" / "trainer_state.json").read_text())
    saved = state["stateful_callbacks"]["StoppingCallback"]["attributes"]
    assert saved["early_stopping_patience_counter"] == 1, "patience must be saved with the checkpoint"

    resumed = run_finetune(config)
    assert resumed["resumed_from_step"] == best + 10
    assert (resumed["stop_step"], resumed["best_step"]) == (stop, best)
    assert resumed["kept_eval_loss"] == pytest.approx(straight["kept_eval_loss"], abs=1e-4)
    assert resumed["test_loss"]["mean"] == pytest.approx(straight["test_loss"]["mean"], abs=1e-4)
    assert [h["step"] for h in resumed["eval_history"]] == [h["step"] for h in straight["eval_history"]]
    assert [h["eval_loss"] for h in resumed["eval_history"]] == \
        pytest.approx([h["eval_loss"] for h in straight["eval_history"]], abs=1e-4)


def test_completed_run_is_not_rerun(stories_dir: Path, data_cache: Path, tmp_path: Path) -> None:
    config = load_run_config(None, tiny_overrides(stories_dir, data_cache, tmp_path, {"train.max_steps": 10}))
    first = run_finetune(config)
    again = run_finetune(config)
    assert again == json.loads(json.dumps(first))
    assert RunDir(Path(first["run_dir"])).is_complete()


def test_threshold_counts_small_improvements_as_none(stories_dir: Path, data_cache: Path, tmp_path: Path) -> None:
    """With a huge threshold no improvement counts: the run stops `patience` evaluations after the first."""
    config = load_run_config(None, tiny_overrides(stories_dir, data_cache, tmp_path, {
        "train.max_steps": 100, "early_stopping.patience": 1, "early_stopping.threshold": 100.0}))
    result, _ = finetune(config, run_dir_for(config).create())
    assert result.stop_step == 20 and result.stopped_early


def test_resumed_at_its_stopping_checkpoint_does_not_train_further(stories_dir: Path, data_cache: Path,
                                                                   tmp_path: Path) -> None:
    """Killed after the stopping evaluation's checkpoint but before result.json: the resumed job
    finishes from that checkpoint (transformers #10290 would reset should_training_stop and train on)."""
    extra = {"early_stopping.patience": 2}
    straight = run_finetune(overfit_config(stories_dir, data_cache, tmp_path / "a", extra))
    config = overfit_config(stories_dir, data_cache, tmp_path / "b", extra)
    with pytest.raises(KeyboardInterrupt):
        run_finetune(config, extra_callbacks=[CrashAfterSave(step=straight["stop_step"])])
    resumed = run_finetune(config)
    assert resumed["resumed_from_step"] == straight["stop_step"]
    assert (resumed["stop_step"], resumed["best_step"], resumed["kept_step"]) == \
        (straight["stop_step"], straight["best_step"], straight["kept_step"])
    assert resumed["test_loss"]["mean"] == pytest.approx(straight["test_loss"]["mean"], abs=1e-4)
