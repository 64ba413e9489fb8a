"""`accelerate launch --config_file configs/accelerate/ddp.yaml` on CPU: 2 real DDP processes that train
the same model as one process with the same global batch."""

from __future__ import annotations

from pathlib import Path

import pytest
from dist_helpers import BIN, dropout_free_tiny, eval_losses, overrides, result_of, run_job, single_result

from conftest import REPO

ACCELERATE_CONFIGS = sorted(REPO.glob("configs/accelerate/*.yaml"))


@pytest.mark.parametrize("path", ACCELERATE_CONFIGS, ids=lambda p: p.name)
def test_shipped_accelerate_configs_load_and_say_how_to_run(path: Path) -> None:
    """accelerate parses each file, and its header shows the `--config_file` command; DeepSpeed ones name a
    JSON that exists (paths are relative to the repository root, where the command is run)."""
    from accelerate.commands.config.config_args import load_config_from_file

    header = [line for line in path.read_text().splitlines()[:12] if line.startswith("#")]
    assert any(f"accelerate launch --config_file configs/accelerate/{path.name} jobs/finetune.py" in line
               for line in header)
    loaded = load_config_from_file(str(path))
    assert loaded.num_processes == 2 and loaded.num_machines == 1
    if loaded.distributed_type.value == "DEEPSPEED":
        assert (REPO / loaded.deepspeed_config["deepspeed_config_file"]).is_file()
    else:
        assert loaded.distributed_type.value == "MULTI_GPU"  # NOT `NO`: that runs one process on CPU


DDP_TOLERANCE = 1e-3
"""nats. Same data, same initial weights, no dropout: the only difference is the order in which gloo sums
the two halves of each gradient (float32 rounding, ~1e-7 relative), which 20 Adam steps leave at ≤ 1e-6
here. The bug this guards against (ranks not all-reducing gradients) moved the loss by 0.1 nats after 30
steps, and dropout noise by 0.002: 1e-3 separates both from rounding."""


@pytest.mark.slow
def test_ddp_config_runs_two_processes_and_matches_one(stories_dir: Path, data_cache: Path, tmp_path: Path) -> None:
    config = tmp_path / "run.yaml"
    config.write_text("model: {name: tiny}\n")
    model = dropout_free_tiny(tmp_path / "base")
    single = single_result(config, overrides(stories_dir, data_cache, tmp_path / "single", model,
                                             {"train.batch_size": 4}))
    ddp_args = overrides(stories_dir, data_cache, tmp_path / "ddp", model, {"train.batch_size": 2})
    launched = run_job([str(BIN / "accelerate"), "launch", "--config_file", "configs/accelerate/ddp.yaml",
                        "--main_process_port", "0", "jobs/finetune.py", "--config", str(config), *ddp_args])
    ddp = result_of(ddp_args)
    # `--cpu` would have run ONE process and still finished: the world size is the point of this test.
    assert ddp["world_size"] == 2 and single["world_size"] == 1
    assert ddp["tokens_per_step"] == single["tokens_per_step"] == 4 * 64
    assert launched.stdout.count("ran all 20 steps") == 1, "only the main process reports"
    assert ddp["base_eval_loss"] == pytest.approx(single["base_eval_loss"], abs=1e-5)
    assert eval_losses(ddp) == pytest.approx(eval_losses(single), abs=DDP_TOLERANCE)
    assert ddp["test_loss"]["mean"] == pytest.approx(single["test_loss"]["mean"], abs=DDP_TOLERANCE)
    # The runs moved: equal losses are not two untrained models.
    assert single["kept_eval_loss"] < single["base_eval_loss"] - 0.2
