"""Replay is exact: a grid that trains only `none` per seed and derives the other arms gives the
same stop steps, best steps and kept losses as training every arm (real Trainer, tiny GPT-2)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from storytune.cluster.launch import submit_grid
from storytune.paths import GridDir
from storytune.study.grid import expand_grid
from storytune.study.plan import make_plan

ARMS = [{"patience": None}, {"patience": 1}, {"patience": 2, "threshold": 0.02}, {"patience": 3}]


def grid_raw(stories_dir: Path, cache: Path, out: Path, replay: bool) -> dict:
    return {
        "name": "replay" if replay else "trained", "output_dir": str(out), "evaluate": False, "replay": replay,
        "base": {
            "model": {"name": "tiny", "tiny": {"n_layer": 1, "n_embd": 32, "n_head": 2, "n_positions": 64}},
            "data": {"files": [str(stories_dir)], "max_stories": 70, "validation_stories": 30, "test_stories": 20,
                     "block_size": 64, "cache_dir": str(cache)},
            "train": {"batch_size": 4, "max_steps": 120, "eval_steps": 10, "logging_steps": 10, "warmup_steps": 0,
                      "learning_rate": 1e-2, "max_eval_blocks": 24},
            "wandb": {"mode": "disabled"},
        },
        "axes": {"early_stopping": ARMS, "train.seed": [1, 2]},
    }


def results(root: Path) -> dict[str, dict]:
    manifest = json.loads(GridDir(root).plan.read_text())
    return {c["run_id"]: json.loads(GridDir(root).run(c["run_id"]).result.read_text()) for c in manifest["cells"]}


def test_replay_plan_trains_one_run_per_seed(stories_dir: Path, data_cache: Path, tmp_path: Path) -> None:
    plan = make_plan(expand_grid(grid_raw(stories_dir, data_cache, tmp_path, replay=True)))
    assert len(plan.finetunes) == 2 and all(len(job.replays) == 3 for job in plan.finetunes)
    assert all(not job.config.early_stopping.enabled for job in plan.finetunes)


def test_replay_without_a_none_arm_is_refused(stories_dir: Path, data_cache: Path, tmp_path: Path) -> None:
    from storytune.config import ConfigError

    raw = grid_raw(stories_dir, data_cache, tmp_path, replay=True)
    raw["axes"]["early_stopping"] = ARMS[1:]
    with pytest.raises(ConfigError, match="no `none` arm"):
        expand_grid(raw)


def assert_same_outcome(derived: dict, real: dict, label: str, tolerance: float) -> None:
    """Two result.json of one cell agree: the same stop, best and kept steps, kept validation and test loss."""
    assert (derived["stop_step"], derived["best_step"], derived["kept_step"]) == \
        (real["stop_step"], real["best_step"], real["kept_step"]), label
    assert derived["kept_eval_loss"] == pytest.approx(real["kept_eval_loss"], abs=tolerance), label
    assert derived["test_loss"]["mean"] == pytest.approx(real["test_loss"]["mean"], abs=tolerance), label


@pytest.mark.slow
def test_replayed_arms_equal_trained_arms(stories_dir: Path, data_cache: Path, tmp_path: Path) -> None:
    for replay in (False, True):
        grid = expand_grid(grid_raw(stories_dir, data_cache, tmp_path, replay))
        assert submit_grid(grid, executor_name="debug") == 0
    trained, replayed = results(tmp_path / "trained"), results(tmp_path / "replay")
    assert trained.keys() == replayed.keys()  # same cells, same run ids
    stopped = 0
    for run_id, real in trained.items():
        derived = replayed[run_id]
        assert_same_outcome(derived, real, run_id, tolerance=1e-5)
        assert derived["train_tokens"] == real["train_tokens"]
        assert (derived["replayed_from"] is None) == (real["variant"] == "none")
        stopped += real["stopped_early"]
    assert stopped >= 4, "the set-up must make most stopping arms stop early, or the test proves little"


@pytest.mark.slow
def test_replay_from_weights_only_snapshots_equals_replay_from_full_checkpoints(stories_dir: Path, data_cache: Path,
                                                                                tmp_path: Path) -> None:
    """`train.resume_every: 4`: most evaluations save weights only, and replay derives every arm from them
    exactly as from full checkpoints (PruneCheckpoints keeps what an arm needs plus the newest full one)."""
    by_setting = {}
    for every in (1, 4):
        raw = grid_raw(stories_dir, data_cache, tmp_path / str(every), replay=True)
        raw["base"]["train"]["resume_every"] = every
        raw["axes"]["train.seed"] = [1]
        grid = expand_grid(raw)
        assert submit_grid(grid, executor_name="debug") == 0
        by_setting[every] = {r["variant"]: r for r in results(tmp_path / str(every) / raw["name"]).values()}
    full, snapshots = by_setting[1], by_setting[4]
    assert full.keys() == snapshots.keys() and len(full) == len(ARMS)
    for variant, real in full.items():
        assert_same_outcome(snapshots[variant], real, variant, tolerance=1e-6)
    assert len({r["kept_step"] for r in full.values()}) >= 2  # arms keep different checkpoints
