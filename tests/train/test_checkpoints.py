"""Resume takes the newest COMPLETE checkpoint: a folder left by a job killed mid-save is skipped."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

import pytest
from test_finetune import CrashAfterSave

from conftest import tiny_overrides
from storytune.cluster.worker import run_finetune
from storytune.config import load_run_config
from storytune.paths import run_dir_for
from storytune.train.finetune import checkpoint_problem, last_checkpoint


def _complete_folder(root: Path, step: int, weights: str = "model.safetensors") -> Path:
    """A folder with the names a complete checkpoint has (contents need not load for the check)."""
    folder = root / f"checkpoint-{step}"
    folder.mkdir(parents=True)
    for name in (weights, "optimizer.pt", "scheduler.pt", "rng_state.pth"):
        (folder / name).write_bytes(b"x")
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    return folder


def test_newest_complete_checkpoint_wins_over_newer_incomplete_ones(tmp_path: Path,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    _complete_folder(tmp_path, 10)
    _complete_folder(tmp_path, 20, weights="pytorch_model.bin")
    (_complete_folder(tmp_path, 30) / "optimizer.pt").unlink()
    (_complete_folder(tmp_path, 40) / "trainer_state.json").write_text('{"global_st')  # killed mid-write
    (_complete_folder(tmp_path, 50) / "trainer_state.json").write_text(json.dumps({"global_step": 40}))
    (tmp_path / "checkpoint-60").mkdir()  # killed right after the folder was made
    (tmp_path / "checkpoint-70.tmp").mkdir()  # not a checkpoint name at all
    with caplog.at_level(logging.WARNING, logger="storytune.train.finetune"):
        assert last_checkpoint(tmp_path) == str(tmp_path / "checkpoint-20")
    skipped = [r.getMessage() for r in caplog.records]
    assert skipped == ["skipping incomplete checkpoint-60: missing model.safetensors",
                       "skipping incomplete checkpoint-50: trainer_state.json says global_step 40",
                       "skipping incomplete checkpoint-40: unreadable trainer_state.json (JSONDecodeError)",
                       "skipping incomplete checkpoint-30: missing optimizer.pt"]
    assert (tmp_path / "checkpoint-30").is_dir(), "incomplete folders are left for the Trainer's rotation"
    # Below a step (DeepSpeed's resume before a stopping checkpoint): the newest complete one under it.
    assert last_checkpoint(tmp_path, before_step=20) == str(tmp_path / "checkpoint-10")
    assert last_checkpoint(tmp_path, before_step=10) is None


def test_deepspeed_checkpoint_counts_with_its_global_step_folder(tmp_path: Path) -> None:
    """DeepSpeed keeps weights, optimizer and scheduler in `global_step<N>/` (no optimizer.pt)."""
    folder = tmp_path / "checkpoint-10"
    (folder / "global_step10").mkdir(parents=True)
    assert checkpoint_problem(folder) == "missing trainer_state.json"
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": 10}))
    assert checkpoint_problem(folder) is None
    assert last_checkpoint(tmp_path / "absent") is None


def _delete_optimizer(folder: Path) -> None:
    (folder / "optimizer.pt").unlink()


def _truncate_state(folder: Path) -> None:
    state = folder / "trainer_state.json"
    state.write_text(state.read_text()[:40])


@pytest.mark.parametrize("damage", [_delete_optimizer, _truncate_state], ids=["no-optimizer", "truncated-state"])
def test_resume_skips_a_damaged_newest_checkpoint(damage: Callable[[Path], None], stories_dir: Path,
                                                  data_cache: Path, tmp_path: Path) -> None:
    extra = {"train.max_steps": 20, "train.eval_steps": 10}
    straight = run_finetune(load_run_config(None, tiny_overrides(stories_dir, data_cache, tmp_path / "a", extra)))

    config = load_run_config(None, tiny_overrides(stories_dir, data_cache, tmp_path / "b", extra))
    with pytest.raises(KeyboardInterrupt):  # killed after the step-20 checkpoint: both checkpoints stay
        run_finetune(config, extra_callbacks=[CrashAfterSave(step=20)])
    checkpoints = run_dir_for(config).checkpoints
    assert last_checkpoint(checkpoints) == str(checkpoints / "checkpoint-20")
    damage(checkpoints / "checkpoint-20")  # as if the kill had landed inside the step-20 save

    resumed = run_finetune(config)
    assert resumed["resumed_from_step"] == 10
    assert resumed["stop_step"] == straight["stop_step"] == 20
    assert resumed["kept_eval_loss"] == pytest.approx(straight["kept_eval_loss"], abs=1e-4)
    assert resumed["base_eval_loss"] == pytest.approx(straight["base_eval_loss"], abs=1e-6)  # base_scores.json
