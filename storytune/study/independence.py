"""The summary's warning when the fluency scorer is not independent of the base model (see
`storytune.eval.independence`, which records the check in every eval.json as `scorer.independence`)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


def independence_warnings(evals: Iterable[dict[str, Any] | None]) -> list[str]:
    """One warning when any evaluation's scorer shares weights or family with the base; [] otherwise
    (also for eval.json files written before the check existed, which carry no record)."""
    checks = [(e.get("scorer") or {}) for e in evals if e]
    shared = [c for c in checks if (c.get("independence") or {}).get("same_family")]
    if not shared:
        return []
    scorer, check = shared[0], shared[0]["independence"]
    how = "IS the base model" if check.get("same_weights") else f"is of the base's family ({check.get('base_family')})"
    return [f"The fluency scorer ({scorer.get('used')}) {how}: it favours outputs close to the base, so fluency "
            "differences against the base are biased towards the base. Use an independent scorer (e.g. "
            "eval.scorer=gemma3-270m for a SmolLM2 base, eval.scorer=smollm2-135m for a Gemma or GPT-2 base)."]
