"""Is the fluency scorer independent of the base model?

Fluency is a perplexity under the scorer. A scorer that IS the base model (`eval.scorer: base`, or the
same preset/folder), or a model of its family (same training data and tokenizer lineage: SmolLM2
scoring a SmolLM2 base, GPT-2-large scoring GPT-2), rates outputs close to the base's as more fluent,
so fine-tuned models look worse than they are. eval.json records the check under
`scorer.independence`; the summary warns when a grid's scorer is not independent
(`storytune.study.independence`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from storytune.train.pretrained import model_family


def _same_weights(a: str, b: str) -> bool:
    if Path(a).exists() and Path(b).exists():
        return Path(a).resolve() == Path(b).resolve()
    return a.strip().lower() == b.strip().lower()


def scorer_independence(base_model: str, base_is_random: bool, scorer_path: str,
                        scorer_requested: str) -> dict[str, Any]:
    """eval.json's `scorer.independence`: {base_model, base_family, scorer_family, same_weights,
    same_family, independent}. A random base has no family to favour (its weights saw no text)."""
    same_weights = scorer_requested == "base" or _same_weights(scorer_path, base_model)
    base_family, scorer_family = model_family(base_model), model_family(scorer_path)
    same_family = not base_is_random and (same_weights or base_family == scorer_family)
    return {"base_model": base_model, "base_family": None if base_is_random else base_family,
            "scorer_family": scorer_family, "same_weights": same_weights and not base_is_random,
            "same_family": same_family, "independent": not same_family}
