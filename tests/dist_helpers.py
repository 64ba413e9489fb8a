"""Helpers for the multi-process tests (accelerate, DeepSpeed, multi-task Slurm): one job, its result.json.

Equivalence tests compare a distributed run with a single-process run of the same global batch. They
use a tiny GPT-2 WITHOUT dropout: with dropout, each process draws its own masks, so the two runs differ
by sampling noise (≈ 0.002 nats after 30 steps here) that would hide a real bug of the same size.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import REPO, tiny_overrides

BIN = Path(sys.executable).parent
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled", "TOKENIZERS_PARALLELISM": "false"}


def dropout_free_tiny(folder: Path) -> Path:
    """The shape `tiny_overrides` uses (1 layer, d=32, 64 positions), dropout 0, GPT-2 tokenizer; saved once."""
    if (folder / "config.json").exists():
        return folder
    from storytune.config import TinyModelConfig
    from storytune.train.model import build_tiny_model, shipped_gpt2_tokenizer

    model = build_tiny_model(TinyModelConfig(n_layer=1, n_embd=32, n_head=2, n_positions=64))
    model.config.update({"resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0})
    model.save_pretrained(folder)
    shipped_gpt2_tokenizer().save_pretrained(folder)
    return folder


def overrides(stories: Path, cache: Path, out: Path, model: Path, extra: dict[str, object]) -> list[str]:
    return tiny_overrides(stories, cache, out, {"model.name": str(model), "train.max_steps": 20, **extra})


def run_job(command: list[str], timeout_s: int = 900, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run one job from the repository root; fail with its stderr tail."""
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=timeout_s, env=env or ENV)
    assert result.returncode == 0, f"{command[:6]} exited {result.returncode}:\n{result.stderr[-4000:]}"
    return result


def single_result(config: Path, args: list[str]) -> dict:
    """The single-process reference run (`python jobs/finetune.py`)."""
    run_job([sys.executable, "jobs/finetune.py", "--config", str(config), *args])
    return result_of(args)


def result_of(args: list[str]) -> dict:
    out = Path(next(a.split("=", 1)[1] for a in args if a.startswith("output.dir=")))
    (saved,) = out.glob("*/result.json")
    return json.loads(saved.read_text())


def eval_losses(result: dict) -> list[float]:
    """Validation loss at every evaluation, then the kept weights' (the equivalence criterion)."""
    return [point["eval_loss"] for point in result["eval_history"]] + [result["kept_eval_loss"]]
