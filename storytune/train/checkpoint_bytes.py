"""Estimated peak bytes of one training job's `checkpoints/` folder, for the dry run.

A GPT-2 checkpoint is fp32 weights (4 bytes a parameter, tied embeddings stored once) and, when full,
AdamW's two moments (8 bytes a parameter) plus scheduler/RNG/trainer state (kilobytes): a full
checkpoint is ~3x a weights-only one (`train.resume_every`). The count of folders at the peak is an
upper bound: the Trainer writes the new checkpoint before rotation (or replay's pruning) deletes old ones.
DeepSpeed's sharded optimizer state is not modelled (same order of bytes, other files).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from storytune.config import RunConfig

WEIGHT_BYTES = 4
"""fp32 safetensors, per parameter."""
ADAMW_BYTES = 8
"""exp_avg + exp_avg_sq, fp32, per parameter."""

GPT2_SHAPES = {"gpt2": (12, 768, 1024), "gpt2-medium": (24, 1024, 1024), "gpt2-large": (36, 1280, 1024),
               "gpt2-xl": (48, 1600, 1024), "distilgpt2": (6, 768, 1024)}
"""(n_layer, n_embd, n_positions) of the hub's GPT-2 family, for a dry run without the model on disk."""
GPT2_VOCAB = 50257


def gpt2_parameters(n_layer: int, n_embd: int, n_positions: int, vocab: int = GPT2_VOCAB) -> int:
    """Stored parameters of a GPT-2 LM: embeddings (the head is tied), 12d^2 + 13d per block, final norm."""
    return vocab * n_embd + n_positions * n_embd + n_layer * (12 * n_embd ** 2 + 13 * n_embd) + 2 * n_embd


def model_parameters(config: RunConfig) -> int | None:
    """Parameters of the run's model, from its shape (tiny), a local config.json, or the GPT-2 table."""
    model = config.model
    if model.name == "tiny":
        t = model.tiny
        return gpt2_parameters(t.n_layer, t.n_embd, t.n_positions)
    local = Path(model.name) / "config.json"
    if local.is_file():
        c = json.loads(local.read_text())
        if c.get("model_type") == "gpt2":
            return gpt2_parameters(c["n_layer"], c["n_embd"], c["n_positions"], c.get("vocab_size", GPT2_VOCAB))
        return None
    shape = GPT2_SHAPES.get(model.name.split("/")[-1].lower())
    return gpt2_parameters(*shape) if shape else None


@dataclass(frozen=True)
class CheckpointPeak:
    full: int
    """Full checkpoints on disk at the peak."""
    weights_only: int
    parameters: int

    @property
    def bytes(self) -> int:
        return self.parameters * (self.full * (WEIGHT_BYTES + ADAMW_BYTES) + self.weights_only * WEIGHT_BYTES)


def checkpoint_peak(config: RunConfig, replayed_arms: int) -> CheckpointPeak | None:
    """The most checkpoint folders one training job holds at once, by kind (None: model size unknown).

    Kept: the newest, the best (both the Trainer's rotation and replay's pruning keep them), the newest
    full one (`resume_every` > 1), one per replayed arm that has stopped (replay), at least
    `save_total_limit` (no replay); plus the one being written. Never more than one per evaluation."""
    parameters = model_parameters(config)
    if parameters is None:
        return None
    train = config.train
    evaluations = train.max_steps // train.eval_steps
    if replayed_arms:
        held = 2 + replayed_arms + (train.resume_every > 1)
    else:
        held = max(train.save_total_limit, 2 + (train.resume_every > 1))
    folders = min(evaluations, held + 1)
    if train.resume_every == 1:
        return CheckpointPeak(full=folders, weights_only=0, parameters=parameters)
    full = min(folders, 2, -(-evaluations // train.resume_every) + 1)  # the newest full + one being written
    return CheckpointPeak(full=full, weights_only=folders - full, parameters=parameters)


def describe_peak(config: RunConfig, replayed_arms: int) -> str:
    """One line for the dry run."""
    peak = checkpoint_peak(config, replayed_arms)
    if peak is None:
        return f"checkpoints: peak bytes unknown (parameter count of {config.model.name!r} unknown offline)"
    return (f"checkpoints: peak ~{peak.bytes / 1e9:.2f} GB per training job ({peak.full} full + "
            f"{peak.weights_only} weights-only, {peak.parameters / 1e6:.1f}M parameters; "
            f"train.resume_every={config.train.resume_every})")
