"""Generalization, measured on the held-out test stories (never on the validation blocks that chose the stop).

The test stories are packed exactly like the validation split (`data.pack_scored_blocks`), so the
test loss is the validation loss's definition — mean next-token cross-entropy in nats per token
over packed blocks — but every scored token also knows its story. That gives per-story loss sums,
a story-level bootstrap interval, and per-story values that pair every model on the same stories.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from storytune.interval import CONFIDENCE, RESAMPLES, ratio_interval

if TYPE_CHECKING:
    from datasets import Dataset
    from transformers import Trainer


@dataclass(frozen=True)
class StoryLosses:
    """Summed next-token loss (nats) and scored tokens of each test story, in test-split order."""

    loss_sum: list[float]
    tokens: list[int]

    def to_dict(self) -> dict[str, list]:
        return {"loss_sum": self.loss_sum, "tokens": self.tokens}


def score_stories(trainer: Trainer, blocks: Dataset, n_stories: int) -> StoryLosses:
    """Per-story next-token loss of the trainer's current (kept) weights on the packed test blocks.

    Every process scores all blocks (a few hundred at most), so no gathering is needed and ZeRO-3,
    whose forward needs every rank, works too. Same autocast as the Trainer's own evaluation."""
    import torch

    model = trainer.model_wrapped if trainer.is_deepspeed_enabled else trainer.model
    device = trainer.args.device
    loss_sum = torch.zeros(n_stories, dtype=torch.float64)
    tokens = torch.zeros(n_stories, dtype=torch.int64)
    batch = trainer.args.per_device_eval_batch_size
    model.eval()
    with torch.no_grad(), trainer.autocast_smart_context_manager():
        for start in range(0, len(blocks), batch):
            rows = blocks[start : start + batch]
            ids = torch.tensor(rows["input_ids"], dtype=torch.long, device=device)
            owner = torch.tensor(rows["story_ids"], dtype=torch.long)[:, 1:]  # the story of each predicted token
            logits = model(input_ids=ids).logits[:, :-1].float()
            nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none").cpu()
            scored = owner >= 0
            loss_sum.index_add_(0, owner[scored], nll[scored].double())
            tokens.index_add_(0, owner[scored], torch.ones_like(owner[scored]))
    return StoryLosses(loss_sum=loss_sum.tolist(), tokens=tokens.tolist())


def test_loss_interval(losses: StoryLosses, confidence: float = CONFIDENCE, n_resamples: int = RESAMPLES,
                       seed: int = 0) -> dict[str, Any]:
    """Test loss (total nats / total tokens) with a story-level percentile-bootstrap CI.

    Stories are resampled with their token counts (`storytune.interval.ratio_interval`, the function
    the study summary uses too), so the interval is for the same token-weighted mean the point estimate is."""
    found = ratio_interval(losses.loss_sum, losses.tokens, confidence=confidence, n_resamples=n_resamples, seed=seed)
    finite = math.isfinite(found.ci_low) and math.isfinite(found.ci_high)
    return {"mean": found.mean, "ci_low": found.ci_low if finite else None,
            "ci_high": found.ci_high if finite else None, "n_stories": found.n}


def per_story_values(losses: StoryLosses) -> np.ndarray:
    """Per-story values whose plain mean is the token-weighted test loss: loss_sum_j / mean tokens.

    Every model is scored on the same stories with the same tokenizer, so the token counts are
    identical across models and these values pair models story by story."""
    loss_sum, tokens = np.asarray(losses.loss_sum), np.asarray(losses.tokens, dtype=np.float64)
    return loss_sum / tokens.mean()
