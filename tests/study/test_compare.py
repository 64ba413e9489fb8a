"""summary.json from synthetic cells with known answers (pure: no files, no models)."""

from __future__ import annotations

import numpy as np
import pytest

from storytune.study.compare import BaseData, CellData, Context, summarize

N_STORIES = 60


def result(variant: str, seed: int, shift: float, stop: int, rng: np.random.Generator, replayed: bool = False) -> dict:
    """A result.json whose per-story test losses are a common story effect + `shift` + small noise."""
    story_effect = np.linspace(3.0, 6.0, N_STORIES)  # large between-story variance, shared by every model
    loss = story_effect + shift + rng.normal(0, 0.01, N_STORIES)
    tokens = np.full(N_STORIES, 100)
    history = [{"step": s, "tokens": s * 512, "eval_loss": 5.0 - s / 100 + (s / 100) ** 2 / 4,
                "train_loss": 5 - s / 80} for s in range(20, stop + 1, 20)]
    base_loss = story_effect + 5.0
    return {"variant": variant, "seed": seed, "stop_step": stop, "best_step": min(stop, 200),
            "kept_step": min(stop, 200),
            "stopped_early": stop < 300, "max_steps": 300, "tokens_per_step": 512, "train_tokens": stop * 512,
            "kept_eval_loss": 4.0, "test_loss": {"mean": float(loss.mean())}, "eval_history": history,
            "test_story_losses": {"loss_sum": (loss * tokens).tolist(), "tokens": tokens.tolist()},
            "base_test_story_losses": {"loss_sum": (base_loss * tokens).tolist(), "tokens": tokens.tolist()},
            "replayed_from": "none-seed" if replayed else None, "base_model": "base-models/tiny-x"}


def cells(shift_p2: float, seeds=(1, 2, 3), fail: str | None = None) -> list[CellData]:
    rng = np.random.default_rng(0)
    out = []
    for seed in seeds:
        for variant, shift, stop in (("none", 0.0, 300), ("patience2", shift_p2, 160)):
            run_id = f"{variant}-seed{seed}"
            res = None if run_id == fail else result(variant, seed, shift, stop, rng, replayed=variant != "none")
            out.append(CellData(run_id, variant, seed, result=res))
    return out


def context(is_random: bool = True) -> Context:
    return Context(grid="g", created_at="2026-11-27T00:00:00+00:00", replay=True,
                   base=BaseData(name="base-models/tiny-x", is_random=is_random))


def arm(summary: dict, variant: str) -> dict:
    return next(a for a in summary["arms"] if a["variant"] == variant)


def test_a_real_difference_is_stated_with_its_interval() -> None:
    summary = summarize(cells(shift_p2=0.05), context())
    p2 = arm(summary, "patience2")
    diff = p2["vs_none"]["test_loss"]
    assert diff["diff"] == pytest.approx(0.05, abs=0.01) and diff["ci_low"] > 0 and diff["p_value"] < 0.01
    assert p2["compute_saved"] == pytest.approx(1 - 160 / 300)
    assert p2["stop_step"] == 160 and p2["n_seeds"] == 3
    finding = next(f for f in summary["findings"] if f.startswith("`patience2` stopped"))
    assert "stopped at step 160 of 300" in finding and "saving 47% of training tokens" in finding
    assert "higher than `none`" in finding and "95% CI" in finding
    # Test loss and its interval: the story effect is shared, so the interval is about the mean.
    test = p2["test_loss"]
    assert test["ci_low"] < test["mean"] < test["ci_high"] and test["n_stories"] == N_STORIES


def test_no_difference_is_never_claimed_as_one() -> None:
    summary = summarize(cells(shift_p2=0.0), context())
    diff = arm(summary, "patience2")["vs_none"]["test_loss"]
    assert diff["ci_low"] < 0 < diff["ci_high"]
    finding = next(f for f in summary["findings"] if f.startswith("`patience2` stopped"))
    assert "no difference from `none` can be told apart" in finding
    assert "higher than" not in finding and "lower than" not in finding


def test_random_base_and_failed_cells_are_warned_first() -> None:
    summary = summarize(cells(shift_p2=0.05, fail="patience2-seed2"), context(is_random=True))
    assert summary["warnings"][0].startswith("The base model is a random initialisation")
    assert any("patience2-seed2" in w for w in summary["warnings"])
    assert summary["cells"] == {"expected": 6, "finished": 5, "failed": ["patience2-seed2"], "missing_evals": []}
    assert arm(summary, "patience2")["n_seeds"] == 2
    assert summary["replay"] == {"trainings": 3, "trainings_without_replay": 5, "train_tokens": 3 * 300 * 512,
                                 "train_tokens_without_replay": 3 * 300 * 512 + 2 * 160 * 512}
    assert any("sanity floor" in f for f in summary["findings"])


def test_overfitting_is_detected_from_the_none_curve() -> None:
    summary = summarize(cells(shift_p2=0.0), context())
    assert any("the `none` arm overfits" in f for f in summary["findings"])


def test_mixed_scorers_are_refused() -> None:
    data = cells(shift_p2=0.0, seeds=(1,))
    gen = [{"story_index": i, "prompt": "p", "reference": "r", "continuation": "c", "new_tokens": 10,
            "metrics": {"fluency_perplexity": 5.0 + i}} for i in range(4)]
    data = [CellData(c.run_id, c.variant, c.seed, c.result, eval={"scorer": {"used": f"scorer-{c.variant}"}},
                     generations=gen) for c in data]
    summary = summarize(data, context())
    assert any(w.startswith("Mixed scorers") and "scorer-none: none-seed1" in w for w in summary["warnings"])
    assert "fluency_perplexity" not in summary["metric_info"]
    assert arm(summary, "none")["metrics"] == {}


def test_generation_metrics_are_paired_by_prompt() -> None:
    data = cells(shift_p2=0.0, seeds=(1, 2))
    def gen(offset: float) -> list[dict]:
        return [{"story_index": i, "prompt": f"p{i}", "reference": "r", "continuation": f"c{i}", "new_tokens": 20,
                 "metrics": {"coherence": 0.1 * (i % 7) + offset}} for i in range(30)]
    data = [CellData(c.run_id, c.variant, c.seed, c.result, eval={"scorer": {"used": "s"}, "encoder": {"used": "e"}},
                     generations=gen(0.05 if c.variant == "patience2" else 0.0)) for c in data]
    summary = summarize(data, context())
    diff = arm(summary, "patience2")["vs_none"]["coherence"]
    assert diff["diff"] == pytest.approx(0.05) and diff["ci_low"] == pytest.approx(0.05)
    assert summary["samples"][0]["continuations"].keys() == {"none", "patience2"}


def test_no_finished_cell_gives_a_message_not_a_traceback() -> None:
    data = [CellData("none-seed1", "none", 1), CellData("patience2-seed1", "patience2", 1)]
    summary = summarize(data, context())
    assert "No cell has finished" in " ".join(summary["warnings"])
    assert summary["findings"] == [] and summary["cells"]["finished"] == 0


def test_a_failed_base_evaluation_is_warned_with_its_reason() -> None:
    import dataclasses

    ctx = context(is_random=False)
    ctx.base = dataclasses.replace(ctx.base, failure={"reason": "gpt2 is not in the Hugging Face cache"})
    summary = summarize(cells(0.0), ctx)
    assert ("The base model's evaluation failed: gpt2 is not in the Hugging Face cache. No comparison with the "
            "base model is possible.") in summary["warnings"]
