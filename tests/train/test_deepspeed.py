"""DeepSpeed ZeRO through the Trainer, 2 processes on CPU (gloo), with the shipped configs: the kept
weights (gathered on save) train to the same validation loss as one process with the same global batch."""

from __future__ import annotations

from pathlib import Path

import pytest
from dist_helpers import BIN, dropout_free_tiny, eval_losses, overrides, result_of, run_job, single_result

pytest.importorskip("deepspeed", reason="DeepSpeed not installed: pip install -e '.[deepspeed]'")
pytestmark = pytest.mark.slow

ZERO_TOLERANCE = 1e-3
"""nats. Same data, weights and optimiser (the Trainer's AdamW; the configs have no optimizer section), no
dropout, fp32: ZeRO only changes where gradients are summed (reduce-scatter in buckets instead of one
all-reduce), i.e. float32 rounding, measured ≤ 1e-5 after 20 steps. Ranks training on their own gradients
(the DDP bug fixed in `unprepare_after_eval`) moved the loss by ~0.1 nats."""

STOP_AT_SECOND_EVAL = {"early_stopping.patience": 1, "early_stopping.threshold": 5.0, "early_stopping.keep": "best",
                       "train.max_steps": 40}
"""Patience 1 with a 5-nat threshold: the evaluation at step 20 does not count as an improvement, so every
run stops there and loads its best checkpoint back (`load_best_model_at_end`, the ZeRO-3 trouble spot)."""


@pytest.mark.parametrize("zero_config", ["slurm/deepspeed_zero2.json", "slurm/deepspeed_zero3.json"])
def test_zero_trains_the_same_model_as_one_process(zero_config: str, stories_dir: Path, data_cache: Path,
                                                   tmp_path: Path) -> None:
    config = tmp_path / "run.yaml"
    config.write_text("model: {name: tiny}\n")
    model = dropout_free_tiny(tmp_path / "base")
    single = single_result(config, overrides(stories_dir, data_cache, tmp_path / "single", model,
                                             {"train.batch_size": 4, **STOP_AT_SECOND_EVAL}))
    zero_args = overrides(stories_dir, data_cache, tmp_path / "zero", model,
                          {"train.batch_size": 2, "train.deepspeed": zero_config, **STOP_AT_SECOND_EVAL})
    run_job([str(BIN / "torchrun"), "--nproc_per_node", "2", "jobs/finetune.py", "--config", str(config), *zero_args])
    zero = result_of(zero_args)
    assert zero["world_size"] == 2 and zero["tokens_per_step"] == single["tokens_per_step"] == 4 * 64
    assert zero["stopped_early"] and zero["stop_step"] == 20 and zero["patience_counter_at_stop"] == 1
    assert zero["kept_step"] == zero["best_step"] == single["best_step"]
    # The best weights were restored (and gathered) before the kept-weights evaluation.
    assert zero["kept_eval_loss"] == pytest.approx(zero["best_eval_loss"], abs=1e-5)
    assert eval_losses(zero) == pytest.approx(eval_losses(single), abs=ZERO_TOLERANCE)
    assert zero["test_loss"]["mean"] == pytest.approx(single["test_loss"]["mean"], abs=ZERO_TOLERANCE)
    assert zero["base_eval_loss"] is None  # not measured under DeepSpeed yet (the engine exists only in train())
    assert (Path(zero["model_path"]) / "model.safetensors").exists()
