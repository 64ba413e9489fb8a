"""summary.json from synthetic cells with known answers (pure: no files, no models)."""

from __future__ import annotations

import math

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
    assert "not distinguishable from `none`" in finding and "over training seeds: 3 seeds x 60 stories" in finding
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


def test_overfitting_is_claimed_from_the_test_loss_not_from_the_validation_curve() -> None:
    """`none`'s validation curve rises after its minimum in both fixtures; only a lower test loss of an arm
    that keeps an earlier checkpoint (after Holm) makes it a finding."""
    summary = summarize(cells(shift_p2=-0.05), context())
    finding = next(f for f in summary["findings"] if "the `none` arm overfits" in f)
    assert "`patience2` keeps an earlier checkpoint (step 160 on average)" in finding and "lower than `none`" in finding
    assert "Holm-adjusted" in finding and "descriptive" in finding
    flat = summarize(cells(shift_p2=0.0), context())
    assert not any("overfits" in f for f in flat["findings"])
    assert any(w.startswith("Whether the `none` arm overfits is not established") for w in flat["warnings"])


def test_mixed_scorers_are_refused() -> None:
    data = cells(shift_p2=0.0, seeds=(1,))
    gen = [{"story_index": i, "prompt": "p", "reference": "r", "continuation": "c", "new_tokens": 10,
            "metrics": {"fluency_nll": 5.0 + i}} for i in range(4)]
    data = [CellData(c.run_id, c.variant, c.seed, c.result, eval={"scorer": {"used": f"scorer-{c.variant}"}},
                     generations=gen) for c in data]
    summary = summarize(data, context())
    assert any(w.startswith("Mixed scorers") and "scorer-none: none-seed1" in w for w in summary["warnings"])
    assert "fluency_nll" not in summary["metric_info"]
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


# --------------------------------------------------------------------------------------------------
# Issue 18: claims, multiplicity, identical checkpoints, set-level metrics, fluency


def gen_records(values: dict[str, list[float | None]], n: int = 30) -> list[dict]:
    return [{"story_index": i, "prompt": f"p{i}", "reference": "r", "continuation": f"c{i}", "new_tokens": 20,
             "metrics": {k: v[i] for k, v in values.items()}} for i in range(n)]


def with_generations(data: list[CellData], by_variant: dict[str, dict[str, list]], evals: dict | None = None,
                     ) -> list[CellData]:
    return [CellData(c.run_id, c.variant, c.seed, c.result,
                     eval={"scorer": {"used": "s"}, "encoder": {"used": "e"}, **(evals or {}).get(c.variant, {})},
                     generations=gen_records(by_variant[c.variant])) for c in data]


def three_arms_one_checkpoint(seeds=(1, 2, 3)) -> list[CellData]:
    """`none` plus three stopping arms that stop at different steps but keep the same checkpoint (step 100)."""
    rng = np.random.default_rng(0)
    out = []
    for seed in seeds:
        none = result("none", seed, 0.0, 300, rng)
        kept = result("p", seed, -0.2, 300, rng)
        out.append(CellData(f"none-seed{seed}", "none", seed, result=none | {"kept_step": 300, "best_step": 100}))
        for variant, stop in (("patience1", 120), ("patience3", 160), ("patience2-thr0.05", 140)):
            res = kept | {"stop_step": stop, "best_step": 100, "kept_step": 100, "train_tokens": stop * 512,
                          "stopped_early": True, "replayed_from": f"none-seed{seed}"}
            out.append(CellData(f"{variant}-seed{seed}", variant, seed, result=res))
    return out


def test_three_arms_that_keep_one_checkpoint_give_one_finding_that_names_them_all() -> None:
    summary = summarize(three_arms_one_checkpoint(), context())
    named = [f for f in summary["findings"] if "`patience1`, `patience3` and `patience2-thr0.05`" in f]
    versus_none = [f for f in named if "kept the same checkpoint in every seed" in f]
    assert len(versus_none) == 1 and "one finding for all 3" in versus_none[0]
    assert "stopped at steps 120, 160, 140 of 300" in versus_none[0] and "lower than `none`" in versus_none[0]
    assert not any(f.startswith(("`patience1` stopped", "`patience3` stopped")) for f in summary["findings"])
    assert arm(summary, "patience3")["same_checkpoints_as"] == ["patience1", "patience2-thr0.05"]
    # One test per group and reference: (none vs base) + (group vs none) + (group vs base)
    assert summary["tests"]["family_size"] == 3 and summary["tests"]["correction"] == "holm"
    assert sum("Against the base model" in f for f in summary["findings"]) == 2  # `none` and the group


def test_every_arm_is_compared_with_the_base_model_under_the_same_correction() -> None:
    summary = summarize(cells(shift_p2=0.05), context(is_random=False))
    against = [f for f in summary["findings"] if f.startswith("Against the base model")]
    assert [f.split(":")[0] for f in against] == ["Against the base model, `none`",
                                                  "Against the base model, `patience2`"]
    assert all(f"over {summary['tests']['family_size']} tests" in f for f in against)
    assert "lowest test loss" not in " ".join(summary["findings"])


def test_below_three_seeds_findings_are_conditional_and_say_so() -> None:
    summary = summarize(cells(shift_p2=0.05, seeds=(1, 2)), context())
    finding = next(f for f in summary["findings"] if f.startswith("`patience2` stopped"))
    assert "for these trained models only: 2 seeds, 60 stories" in finding
    assert arm(summary, "patience2")["vs_none"]["test_loss"]["claim"] == "conditional"
    assert any("Fewer than 3 finished seeds" in w for w in summary["warnings"])


def test_one_seed_test_loss_interval_equals_result_json() -> None:
    from storytune.train.heldout import StoryLosses, test_loss_interval

    data = cells(shift_p2=0.0, seeds=(7,))
    summary = summarize(data, context())
    none = data[0].result["test_story_losses"]
    expected = test_loss_interval(StoryLosses(**none), seed=7)
    assert arm(summary, "none")["test_loss"] == expected
    base = data[0].result["base_test_story_losses"]
    assert summary["base"]["test_loss"] == test_loss_interval(StoryLosses(**base), seed=7)


def test_a_prompt_undefined_in_any_model_is_left_out_for_all_and_counted() -> None:
    coherence = [0.1 * (i % 7) for i in range(30)]
    holes = list(coherence)
    holes[3] = None
    data = with_generations(cells(shift_p2=0.0, seeds=(1, 2, 3)),
                            {"none": {"coherence": coherence}, "patience2": {"coherence": holes}})
    diff = arm(summarize(data, context()), "patience2")["vs_none"]["coherence"]
    assert diff["n_units"] == 29 and diff["n_excluded"] == 1


def test_self_bleu_gets_a_set_level_interval_and_no_per_prompt_test() -> None:
    per_text = [0.1 * (i % 5) for i in range(30)]
    evals = {v: {"metrics": {"self_bleu": {"mean": m, "ci_low": m - 0.02, "ci_high": m + 0.02, "n": 30}},
                 "mauve": {"value": 0.9, "reason": None}} for v, m in (("none", 0.30), ("patience2", 0.40))}
    data = with_generations(cells(shift_p2=0.0, seeds=(1, 2)),
                            {v: {"self_bleu": per_text, "coherence": per_text} for v in ("none", "patience2")}, evals)
    summary = summarize(data, context())
    p2 = arm(summary, "patience2")
    assert "self_bleu" not in p2["vs_none"] and "self_bleu" not in p2["metrics"] and "coherence" in p2["vs_none"]
    found = p2["set_metrics"]["self_bleu"]
    half = 1.959963984540054 * math.sqrt(2 * (0.02 / 1.959963984540054) ** 2) / 2
    assert found["mean"] == pytest.approx(0.40) and found["ci_high"] - found["mean"] == pytest.approx(half)
    assert found["claim"] == "conditional" and p2["set_metrics"]["mauve"]["ci_low"] is None
    assert summary["set_metric_info"]["self_bleu"]["higher_is_better"] is False


def test_fluency_is_the_mean_nll_and_its_finding_says_what_it_measures() -> None:
    rng = np.random.default_rng(1)
    base = rng.normal(3.0, 0.3, 30).tolist()
    data = with_generations(cells(shift_p2=0.0), {"none": {"fluency_nll": base},
                                                  "patience2": {"fluency_nll": [v + 0.4 for v in base]}})
    summary = summarize(data, context())
    assert arm(summary, "patience2")["metrics"]["fluency_nll"]["mean"] == pytest.approx(np.mean(base) + 0.4)
    assert summary["metric_info"]["fluency_nll"]["unit"] == "nats/token"
    finding = next(f for f in summary["findings"] if f.startswith("`patience2` vs `none` on generation"))
    assert "scorer NLL per token" in finding and "higher than `none`" in finding
    assert "higher means the scorer finds them less likely" in finding and "444" not in finding


@pytest.mark.parametrize("build", ["real", "null", "two seeds", "one checkpoint", "failed"])
def test_no_finding_is_garbled(build: str) -> None:
    data = {"real": lambda: cells(0.05), "null": lambda: cells(0.0), "two seeds": lambda: cells(0.05, seeds=(1, 2)),
            "one checkpoint": three_arms_one_checkpoint, "failed": lambda: cells(0.05, fail="patience2-seed2")}[build]()
    summary = summarize(data, context())
    for text in summary["findings"] + summary["warnings"]:
        assert "can be told apart" not in text and "is no difference" not in text and "  " not in text, text
        assert text.count("(") == text.count(")") and text.count("[") == text.count("]"), text
        assert text.endswith("."), text
