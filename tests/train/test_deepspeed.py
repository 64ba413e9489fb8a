"""DeepSpeed ZeRO through the Trainer, 2 processes on CPU (gloo), with the shipped configs: the base model's
losses, the kept weights (gathered on save) and a resumed run all match one process with the same global batch.

Cost: one single-process reference (shared by both stages) and one uninterrupted 2-process run per stage
(module fixtures) serve every test of that stage; each resume test adds one short resumed run (5 steps).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
from dist_helpers import BIN, dropout_free_tiny, eval_losses, overrides, result_of, run_job, single_result

from storytune.paths import RunDir

pytest.importorskip("deepspeed", reason="DeepSpeed not installed: pip install -e '.[deepspeed]'")
pytestmark = pytest.mark.slow

ZERO_TOLERANCE = 1e-3
"""nats. Same data, weights and optimiser (the Trainer's AdamW; the configs have no optimizer section), no
dropout, fp32: ZeRO only changes where gradients are summed (reduce-scatter in buckets instead of one
all-reduce), i.e. float32 rounding: 2e-6 measured after 15 steps, both stages. Ranks training on their own
gradients (the DDP bug fixed in `unprepare_after_eval`) moved the loss by ~0.1 nats."""

BASE_TOLERANCE = 1e-5
"""nats. The base model's losses: the same weights on the same blocks, no training, so only the order of
float32 sums differs (ZeRO-3 gathers partitioned parameters for the forward)."""

STOP_AT_THIRD_EVAL = {"train.eval_steps": 5, "train.max_steps": 20, "early_stopping.patience": 2,
                      "early_stopping.threshold": 5.0, "early_stopping.keep": "best",
                      "train.save_total_limit": 3, "output.keep_checkpoints": True}
"""Evaluations at steps 5, 10, 15. With a 5-nat threshold only the first counts as an improvement, so with
patience 2 every run stops at step 15 (counter 1 at step 10, 2 at 15); the loss still falls, so the best
checkpoint is the last (`test_zero3_restores_an_earlier_best_checkpoint` covers the swap). max_steps 20:
a resumed run that lost its patience counter (transformers #28544) would train on to step 20.
save_total_limit 3 keeps all three checkpoints (no rotation), so the finished run's folder holds every
file a run killed after an earlier save had."""

INTERRUPTED_AFTER = 10
"""The resume test's kill point: after the step-10 save, whose patience counter (1) must be restored."""

ZERO_CONFIGS = {"zero2": "slurm/deepspeed_zero2.json", "zero3": "slurm/deepspeed_zero3.json"}


@dataclass(frozen=True)
class Cell:
    """The run every job of this module trains: tiny dropout-free GPT-2, STOP_AT_THIRD_EVAL."""

    root: Path
    config: Path
    model: Path
    stories: Path
    cache: Path

    def args(self, name: str, extra: dict[str, object]) -> list[str]:
        return overrides(self.stories, self.cache, self.root / name, self.model, {**STOP_AT_THIRD_EVAL, **extra})


@dataclass(frozen=True)
class ZeroRun:
    command: list[str]
    args: list[str]
    result: dict
    """result.json of the uninterrupted run (read before the resume test rewrites the run directory)."""


@pytest.fixture(scope="module")
def cell(stories_dir: Path, data_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Cell:
    root = tmp_path_factory.mktemp("zero")
    config = root / "run.yaml"
    config.write_text("model: {name: tiny}\n")
    return Cell(root, config, dropout_free_tiny(root / "base"), stories_dir, data_cache)


@pytest.fixture(scope="module")
def single(cell: Cell) -> dict:
    return single_result(cell.config, cell.args("single", {"train.batch_size": 4}))


@pytest.fixture(scope="module", params=sorted(ZERO_CONFIGS))
def zero(request: pytest.FixtureRequest, cell: Cell) -> ZeroRun:
    """The uninterrupted 2-process run of one ZeRO stage (2 blocks per process: the same global batch)."""
    args = cell.args(request.param, {"train.batch_size": 2, "train.deepspeed": ZERO_CONFIGS[request.param]})
    command = [str(BIN / "torchrun"), "--nproc_per_node", "2", "jobs/finetune.py", "--config", str(cell.config),
               *args]
    run_job(command)
    return ZeroRun(command, args, result_of(args))


def test_zero_trains_the_same_model_as_one_process(zero: ZeroRun, single: dict) -> None:
    result = zero.result
    assert result["world_size"] == 2 and result["tokens_per_step"] == single["tokens_per_step"] == 4 * 64
    assert result["stopped_early"] and result["stop_step"] == single["stop_step"] == 15
    assert result["patience_counter_at_stop"] == 2
    assert result["kept_step"] == result["best_step"] == single["best_step"]
    # The best weights were restored (and gathered) before the kept-weights evaluation.
    assert result["kept_eval_loss"] == pytest.approx(result["best_eval_loss"], abs=1e-5)
    assert eval_losses(result) == pytest.approx(eval_losses(single), abs=ZERO_TOLERANCE)
    assert result["test_loss"]["mean"] == pytest.approx(single["test_loss"]["mean"], abs=ZERO_TOLERANCE)
    # The base model, scored inside train() once the engine exists (`BaseModelScore`), before any step.
    assert result["base_eval_loss"] == pytest.approx(single["base_eval_loss"], abs=BASE_TOLERANCE)
    assert result["base_test_loss"]["mean"] == pytest.approx(single["base_test_loss"]["mean"], abs=BASE_TOLERANCE)
    assert result["base_test_story_losses"]["tokens"] == single["base_test_story_losses"]["tokens"]
    assert result["base_test_story_losses"]["loss_sum"] == pytest.approx(
        single["base_test_story_losses"]["loss_sum"], rel=BASE_TOLERANCE)
    assert result["kept_eval_loss"] < result["base_eval_loss"] - 0.1  # the runs moved (0.29 nats): not untrained
    # Step-0 scoring is not an evaluation of the stopping rule: the curve starts at the first eval step.
    assert [point["step"] for point in result["eval_history"]] == [5, 10, 15]
    assert (Path(result["model_path"]) / "model.safetensors").exists()


def test_zero_resumes_from_the_newest_complete_checkpoint(zero: ZeroRun) -> None:
    """A run killed right after the step-10 save, restarted with the same command, ends as the uninterrupted one."""
    run_dir = RunDir(Path(zero.result["run_dir"]))
    left = interrupt_after(run_dir, INTERRUPTED_AFTER)
    assert left == ["checkpoint-5", "checkpoint-10"]  # what the killed job had: no rotation yet
    run_job(zero.command)
    resumed, straight = result_of(zero.args), zero.result
    assert resumed["resumed_from_step"] == INTERRUPTED_AFTER and straight["resumed_from_step"] is None
    assert_ends_the_same(resumed, straight)
    assert resumed["base_eval_loss"] == straight["base_eval_loss"]  # the first attempt's (base_scores.json)
    assert (run_dir.model / "model.safetensors").exists()


def test_zero_killed_after_its_stopping_checkpoint_ends_the_same(zero: ZeroRun) -> None:
    """Killed after the step-15 (stopping) save: without DeepSpeed `finish_from_checkpoint` loads it without
    training; under DeepSpeed there is no engine outside train(), so the job trains again from step 10."""
    run_dir = RunDir(Path(zero.result["run_dir"]))
    assert interrupt_after(run_dir, zero.result["stop_step"]) == ["checkpoint-5", "checkpoint-10", "checkpoint-15"]
    run_job(zero.command)
    resumed, straight = result_of(zero.args), zero.result
    assert resumed["resumed_from_step"] == 10
    assert_ends_the_same(resumed, straight)


def assert_ends_the_same(resumed: dict, straight: dict) -> None:
    """Same stop, best and kept step, patience counter, and losses (validation curve, kept, test)."""
    for key in ("stop_step", "stopped_early", "best_step", "kept_step", "patience_counter_at_stop"):
        assert resumed[key] == straight[key], key
    assert eval_losses(resumed) == pytest.approx(eval_losses(straight), abs=ZERO_TOLERANCE)
    assert resumed["test_loss"]["mean"] == pytest.approx(straight["test_loss"]["mean"], abs=ZERO_TOLERANCE)


def interrupt_after(run_dir: RunDir, step: int) -> list[str]:
    """Leave `run_dir` as a job killed right after its step-`step` checkpoint save would have: no result.json,
    no saved model, no checkpoint of a later step. Returns the checkpoint folders left, oldest first."""
    run_dir.result.unlink()
    shutil.rmtree(run_dir.model)
    for folder in run_dir.checkpoints.glob("checkpoint-*"):
        if int(folder.name.rsplit("-", 1)[1]) > step:
            shutil.rmtree(folder)
    return sorted((p.name for p in run_dir.checkpoints.iterdir()), key=lambda name: int(name.rsplit("-", 1)[1]))


OVERSHOOT = {"train.eval_steps": 5, "train.max_steps": 20, "train.learning_rate": 3.0e-2,
             "early_stopping.patience": 1, "early_stopping.threshold": 0.0, "early_stopping.keep": "best"}
"""A learning rate 60x the default makes Adam overshoot: validation loss 6.98 at step 5, 8.80 at step 10
(single process, this model and data), so patience 1 stops at step 10 with the best weights at step 5."""


def test_zero3_restores_an_earlier_best_checkpoint(cell: Cell) -> None:
    """`load_best_model_at_end` under ZeRO-3 (partitioned parameters, a known transformers/DeepSpeed trouble
    spot): the kept weights are step 5's, not the stopping step's, and they are gathered on save."""
    args = overrides(cell.stories, cell.cache, cell.root / "overshoot", cell.model,
                     {**OVERSHOOT, "train.batch_size": 2, "train.deepspeed": ZERO_CONFIGS["zero3"]})
    run_job([str(BIN / "torchrun"), "--nproc_per_node", "2", "jobs/finetune.py", "--config", str(cell.config), *args])
    result = result_of(args)
    losses = {point["step"]: point["eval_loss"] for point in result["eval_history"]}
    assert (result["stop_step"], result["best_step"], result["kept_step"]) == (10, 5, 5), losses
    assert losses[10] > losses[5] + 0.5  # the step-10 weights are far from the best ones
    assert result["kept_eval_loss"] == pytest.approx(losses[5], abs=1e-5)  # the step-5 weights came back
    assert (Path(result["model_path"]) / "model.safetensors").exists()  # gathered from the partitions on save
