"""The dry run's checkpoint-bytes estimate: parameter counts and the folder count at the peak."""

from __future__ import annotations

import subprocess
import sys

from conftest import REPO
from storytune.config import load_run_config
from storytune.train.checkpoint_bytes import checkpoint_peak, gpt2_parameters, model_parameters


def test_gpt2_parameter_count_matches_the_model() -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(n_layer=2, n_embd=64, n_head=4, n_positions=32, vocab_size=500)
    stored = sum(p.numel() for p in GPT2LMHeadModel(config).parameters())  # the tied head counts once
    assert gpt2_parameters(2, 64, 32, vocab=500) == stored
    assert gpt2_parameters(12, 768, 1024) == 124_439_808  # GPT-2 small as the hub reports it


def test_weights_only_snapshots_cut_the_estimated_peak() -> None:
    def peak(**train: int):
        config = load_run_config(data={"model": {"name": "gpt2"}, "wandb": {"mode": "disabled"},
                                       "train": {"max_steps": 1500, "eval_steps": 50, **train}})
        assert model_parameters(config) == 124_439_808
        return checkpoint_peak(config, replayed_arms=4)

    every, fifth = peak(), peak(resume_every=5)
    assert (every.full, every.weights_only) == (7, 0)  # newest, best, 4 stopped arms, the one being written
    assert (fifth.full, fifth.weights_only) == (2, 6)  # + the newest full one
    assert every.bytes == 7 * 12 * 124_439_808
    assert fifth.bytes < 0.6 * every.bytes


def test_dry_run_prints_the_peak_per_training_job() -> None:
    out = subprocess.run([sys.executable, "launch/submit.py", "--grid", "configs/grids/early_stopping.yaml",
                          "--dry-run", "--executor", "slurm"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    line = next(x for x in out.stdout.splitlines() if x.startswith("checkpoints: peak"))
    assert "2 full + 6 weights-only" in line and "124.4M parameters" in line and "resume_every=5" in line
