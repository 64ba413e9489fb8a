"""Pure: what a grid's cells produced -> `summary.json`, the study's answer with its evidence.

Input is plain data (each cell's `result.json`, `eval.json` and `generations.jsonl` records, the
base model's evaluation); output is one dict (`docs/summary.md` describes every key). Reading and
writing files is the caller's job (`storytune.cluster.worker.run_aggregate`).

What it compares, and how (the statistics are `storytune.study.stats`):
- generalization: the TEST loss of each arm's kept weights (never the validation loss that chose
  them), per story, paired across arms by story and across arms' seeds by seed;
- each arm against `none` (same seeds) and EVERY arm against the base model, for the test loss and
  every per-prompt generation metric (paired by prompt: every model continues the same prompts with
  the same decoding seeds); all these tests are one Holm family (`stats.holm`);
- set-level metrics (self-BLEU, MAUVE) only with set-level intervals (no per-prompt test: a text's
  self-BLEU depends on every other text, so prompts are not independent units for it);
- cost: training tokens against `none`.
Arms whose kept checkpoints are identical in every seed are one finding that names them all and one
test in the family. Findings are sentences generated from these numbers that claim only what the
intervals and Holm-adjusted p-values support, at the claim level the seeds allow (`stats.MIN_SEEDS`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from storytune.interval import ratio_interval
from storytune.study import stats
from storytune.study.independence import independence_warnings

NONE = "none"
TEST_LOSS = "test_loss"
SAMPLES_SHOWN = 6
# Generation metrics, per sample in generations.jsonl: key -> (label, higher is better?, unit).
# Per-prompt (paired) metrics only: each value depends on its own text alone.
GENERATION_METRICS: dict[str, tuple[str, bool | None, str]] = {
    "fluency_nll": ("scorer NLL per token (length-matched; scorer perplexity = exp)", False, "nats/token"),
    "coherence": ("coherence (cosine)", True, ""),
    "distinct_2": ("distinct-2 (per text)", True, ""),
    "rep_2": ("rep-2 (per text)", False, "%"),
    "new_tokens": ("continuation length", None, "tokens"),
}
# Set-level metrics (one value per model's set of continuations), from eval.json: key -> (label, higher is better?).
SET_METRICS: dict[str, tuple[str, bool | None]] = {"self_bleu": ("self-BLEU-4 (set)", False),
                                                    "mauve": ("MAUVE (set)", True)}
FLUENCY = "fluency_nll"
LENGTH_MATCHED = re.compile(r"^(?P<base>[a-z_0-9]+?)_len(?P<tokens>\d+)$")
"""Length-matched variants (`coherence_len16`): the metric on continuations cut to a common length."""
LOSS_INFO = {TEST_LOSS: {"label": "test loss", "higher_is_better": False, "unit": "nats/token"}}


@dataclass(frozen=True)
class CellData:
    """One cell of the grid and whatever it produced (None where its job has not written it)."""

    run_id: str
    variant: str
    seed: int
    result: dict[str, Any] | None = None
    eval: dict[str, Any] | None = None
    generations: list[dict[str, Any]] | None = None
    failure: dict[str, Any] | None = None
    """Its `failure.json` (why its last job failed: {job, kind, reason, ...}), None when none failed."""


@dataclass(frozen=True)
class BaseData:
    """The base model: its evaluation (generation) and whether it is a random initialisation."""

    name: str
    is_random: bool
    eval: dict[str, Any] | None = None
    generations: list[dict[str, Any]] | None = None
    failure: dict[str, Any] | None = None
    """Its evaluation's failure.json, when that job failed."""


@dataclass
class Context:
    """Everything `summarize` needs besides the cells."""

    grid: str
    created_at: str
    replay: bool
    base: BaseData
    provenance: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------------
# Matrices: model x unit values that pair every model on the same stories / prompts


def story_losses(result: dict[str, Any], key: str = "test_story_losses") -> np.ndarray | None:
    """Per-story test-loss values whose mean is the token-weighted test loss (`train.heldout`): the units of
    the paired test-loss comparisons (every model has the same stories and token counts)."""
    losses = result.get(key) or {}
    if not losses.get("loss_sum"):
        return None
    loss_sum, tokens = np.asarray(losses["loss_sum"], float), np.asarray(losses["tokens"], float)
    return loss_sum / tokens.mean()


def test_loss_interval(results: Sequence[dict[str, Any]], seeds: Sequence[int],
                       key: str = "test_story_losses") -> dict[str, Any] | None:
    """Test loss = total nats / total tokens with the ratio bootstrap (`interval.ratio_interval`, stories
    resampled with their token counts). One seed: the same call with the same seed as `result.json`'s
    interval, so the numbers are equal."""
    stories = [r.get(key) or {} for r in results]
    stories = [s for s in stories if s.get("loss_sum")]
    if not stories:
        return None
    width = min(len(s["loss_sum"]) for s in stories)
    loss = np.array([s["loss_sum"][:width] for s in stories], dtype=float)
    tokens = np.array([s["tokens"][:width] for s in stories], dtype=float)
    found = ratio_interval(loss, tokens, seed=int(seeds[0]) if len(stories) == 1 and seeds else 0)
    return {"mean": found.mean, "ci_low": _finite(found.ci_low), "ci_high": _finite(found.ci_high),
            "n_stories": found.n}


def sample_values(generations: Sequence[dict[str, Any]], metric: str) -> dict[int, float]:
    """Prompt (story index) -> this sample's value of `metric` (NaN where undefined)."""
    values = {}
    for record in generations:
        value = record.get("new_tokens") if metric == "new_tokens" else (record.get("metrics") or {}).get(metric)
        values[int(record["story_index"])] = math.nan if value is None else float(value)
    return values


def matrix(rows: Sequence[dict[int, float] | np.ndarray | None]) -> np.ndarray | None:
    """Stack per-seed rows into [seeds, units]; dict rows are aligned on their common keys."""
    present = [r for r in rows if r is not None]
    if not present:
        return None
    if isinstance(present[0], np.ndarray):
        width = min(len(r) for r in present)
        return np.vstack([r[:width] for r in present])
    keys = sorted(set.intersection(*(set(r) for r in present)))
    return np.array([[r[k] for k in keys] for r in present], dtype=float) if keys else None


def aligned(a: dict[int, float] | None, keys: Sequence[int]) -> np.ndarray | None:
    return None if a is None else np.array([a.get(k, math.nan) for k in keys], dtype=float)


# --------------------------------------------------------------------------------------------------
# Per arm


def arm_losses(cells: Sequence[CellData]) -> np.ndarray | None:
    return matrix([story_losses(c.result) if c.result else None for c in cells])


def arm_metric(cells: Sequence[CellData], metric: str) -> list[dict[int, float]] | None:
    rows = [sample_values(c.generations, metric) for c in cells if c.generations]
    return rows or None


def interval(values: np.ndarray | None) -> dict[str, Any] | None:
    if values is None or not np.isfinite(values).any():
        return None
    result = stats.mean_ci(values)
    if math.isnan(result.mean):
        return None
    return {"mean": result.mean, "ci_low": _finite(result.ci_low), "ci_high": _finite(result.ci_high), "n": result.n,
            "claim": stats.claim_for(len(values))}


def difference(x: np.ndarray | None, y: np.ndarray | None) -> dict[str, Any] | None:
    """Paired difference x - y (`stats.paired_difference`); a 1-D y (the seedless base model) is broadcast.

    Keys: diff, ci_low, ci_high, p_value, df, claim, n_units, n_seeds, n_excluded; `p_holm` and
    `significant` are added once the study's family has been corrected (`correct`)."""
    if x is None or y is None:
        return None
    y = np.atleast_2d(y)
    if x.shape[1] != y.shape[1] or x.shape[1] == 0:
        return None
    d = stats.paired_difference(x, y)
    if math.isnan(d.diff):
        return None
    return {"diff": d.diff, "ci_low": _finite(d.ci_low), "ci_high": _finite(d.ci_high),
            "p_value": _finite(d.p_value), "df": _finite(d.df), "claim": d.claim, "n_units": d.n_units,
            "n_seeds": d.n_seeds, "n_excluded": d.n_excluded, "p_holm": None, "significant": False}


def metric_pair(arm: list[dict[int, float]] | None, ref: list[dict[int, float]] | None,
                matched_seeds: bool) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Arm and reference matrices on the prompts every model evaluated (seeds matched for `none`); a prompt
    undefined (NaN) in any of them is left out by `stats.paired_difference` for all and counted."""
    if not arm or not ref:
        return None, None
    keys = sorted(set.intersection(*(set(r) for r in [*arm, *ref])))
    if not keys:
        return None, None
    x = np.array([aligned(r, keys) for r in arm])
    y = np.array([aligned(r, keys) for r in ref])
    if matched_seeds and len(x) != len(y):
        return None, None
    return x, y


def _finite(value: float) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


def curves(cells: Sequence[CellData]) -> list[dict[str, Any]]:
    return [{"seed": c.seed, "run_id": c.run_id, "replayed": bool(c.result.get("replayed_from")),
             "history": c.result.get("eval_history", []), "stop_step": c.result["stop_step"],
             "best_step": c.result["best_step"], "kept_step": c.result["kept_step"]}
            for c in cells if c.result]


def _mean(values: Sequence[float | None]) -> float | None:
    present = [float(v) for v in values if v is not None]
    return sum(present) / len(present) if present else None


def arm_summary(variant: str, cells: Sequence[CellData], none_cells: Sequence[CellData] | None,
                base_losses: np.ndarray | None, base_generations: list[dict[str, Any]] | None,
                metric_keys: Sequence[str], none_tokens: float | None) -> dict[str, Any]:
    done = [c for c in cells if c.result]
    # Seeds matched with `none` (paired by seed as well as by unit); an arm's own seeds otherwise.
    none_by_seed = {c.seed: c for c in none_cells or [] if c.result}
    paired = [c for c in done if c.seed in none_by_seed]
    tokens = _mean([c.result["train_tokens"] for c in done])
    losses = arm_losses(done)
    summary: dict[str, Any] = {
        "variant": variant, "n_seeds": len(done), "seeds": [c.seed for c in done],
        "run_ids": [c.run_id for c in cells], "failed": [c.run_id for c in cells if not c.result],
        "stop_step": _mean([c.result["stop_step"] for c in done]),
        "best_step": _mean([c.result["best_step"] for c in done]),
        "kept_step": _mean([c.result["kept_step"] for c in done]),
        "stopped_early": _mean([float(c.result["stopped_early"]) for c in done]),
        "train_tokens": tokens,
        "compute_saved": None if not none_tokens or tokens is None else 1.0 - tokens / none_tokens,
        "selection_eval_loss": _mean([c.result["kept_eval_loss"] for c in done]),
        TEST_LOSS: test_loss_interval([c.result for c in done], [c.seed for c in done]),
        "metrics": {}, "set_metrics": set_metrics([c.eval for c in done if c.eval]),
        "vs_none": {}, "vs_base": {}, "same_checkpoints_as": [], "curves": curves(done),
    }
    if variant != NONE and paired:
        summary["vs_none"][TEST_LOSS] = difference(arm_losses(paired),
                                                   arm_losses([none_by_seed[c.seed] for c in paired]))
    summary["vs_base"][TEST_LOSS] = difference(losses, base_losses)
    for key in metric_keys:
        values = arm_metric(done, key)
        summary["metrics"][key] = interval(matrix(values) if values else None)
        if variant != NONE and paired:
            x, y = metric_pair(arm_metric(paired, key), arm_metric([none_by_seed[c.seed] for c in paired], key), True)
            summary["vs_none"][key] = difference(x, y)
        base_row = [sample_values(base_generations, key)] if base_generations else None
        summary["vs_base"][key] = difference(*metric_pair(values, base_row, False))
    return summary


def set_metrics(evals: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Set-level metrics of a model (one value per seed's set of continuations), with set-level intervals.

    One seed: the evaluation's own interval (half-sampling the set; MAUVE has none). Several seeds,
    fewer than `stats.MIN_SEEDS`: the mean of the seeds' values with the half-sampling standard errors
    combined (normal; these trained models only). `stats.MIN_SEEDS` or more: a t interval over the
    per-seed values (seeds as units: the training procedure). No per-prompt test is made on them."""
    out: dict[str, Any] = {}
    for key in SET_METRICS:
        found = [_set_value(e, key) for e in evals]
        found = [f for f in found if f is not None and f.get("mean") is not None]
        if found:
            out[key] = _set_interval(found)
    return out


def _set_value(payload: dict[str, Any], key: str) -> dict[str, Any] | None:
    if key == "mauve":
        value = (payload.get("mauve") or {}).get("value")
        return None if value is None else {"mean": float(value), "ci_low": None, "ci_high": None, "n": None}
    return (payload.get("metrics") or {}).get(key)


def _set_interval(found: Sequence[dict[str, Any]]) -> dict[str, Any]:
    values = np.array([f["mean"] for f in found], dtype=float)
    mean, n_seeds = float(values.mean()), len(values)
    per_seed = [float(v) for v in values]
    if n_seeds >= stats.MIN_SEEDS:
        found_ci = stats.mean_ci(values[:, None].T)  # seeds as units
        return {"mean": mean, "ci_low": _finite(found_ci.ci_low), "ci_high": _finite(found_ci.ci_high),
                "per_seed": per_seed, "claim": stats.PROCEDURE, "method": "t over per-seed set values"}
    if any(f.get("ci_low") is None or f.get("ci_high") is None for f in found):
        return {"mean": mean, "ci_low": None, "ci_high": None, "per_seed": per_seed, "claim": stats.CONDITIONAL,
                "method": "no set-level interval computed"}
    if n_seeds == 1:
        return {"mean": mean, "ci_low": found[0]["ci_low"], "ci_high": found[0]["ci_high"], "per_seed": per_seed,
                "claim": stats.CONDITIONAL, "method": "half-sampling the set (eval.json)"}
    z = 1.959963984540054  # the 97.5% normal quantile: each interval's half-width / z is its standard error
    se = math.sqrt(sum(((f["ci_high"] - f["ci_low"]) / (2 * z)) ** 2 for f in found)) / n_seeds
    return {"mean": mean, "ci_low": mean - z * se, "ci_high": mean + z * se, "per_seed": per_seed,
            "claim": stats.CONDITIONAL, "method": "half-sampling the set per seed, standard errors combined"}


# --------------------------------------------------------------------------------------------------
# Warnings and findings


def scorer_warnings(cells: Sequence[CellData], base: BaseData) -> tuple[list[str], bool]:
    """Refuse to average generation metrics across different scorers or encoders (True = refused)."""
    warnings = []
    evals = {c.run_id: c.eval for c in cells if c.eval}
    if base.eval:
        evals["base"] = base.eval
    for what in ("scorer", "encoder"):
        used: dict[str, list[str]] = {}
        for run_id, payload in evals.items():
            used.setdefault(str((payload.get(what) or {}).get("used")), []).append(run_id)
        if len(used) > 1:
            listing = "; ".join(f"{name}: {', '.join(ids)}" for name, ids in used.items())
            warnings.append(f"Mixed {what}s across cells ({listing}): generation metrics are NOT compared, "
                            f"because values from different {what}s are not on one scale. Re-evaluate the cells "
                            f"with one {what}.")
    return warnings, bool(warnings)


def overfitting_finding(none: dict[str, Any] | None, groups: Sequence[list[dict[str, Any]]],
                        n_tests: int) -> tuple[str | None, str | None]:
    """(finding, warning): does training to the end overfit? Claimed from the TEST loss, under the findings'
    rule: an arm that keeps an earlier checkpoint than `none` in every seed has a lower test loss after
    Holm correction. The validation curve's rise after its minimum is only described: the minimum of a
    noisy curve lies below its end by selection, so the rise has no interval and proves nothing alone."""
    if not none or not none["curves"]:
        return None, "There is no finished `none` arm: nothing shows whether training without stopping overfits."
    rises, minima = [], []
    for curve in none["curves"]:
        losses = [(p["step"], p["eval_loss"]) for p in curve["history"] if p.get("eval_loss") is not None]
        if losses:
            step, low = min(losses, key=lambda p: p[1])
            minima.append(step)
            rises.append(losses[-1][1] - low)
    described = ""
    if rises:
        described = (f"`none`'s validation loss reached its minimum at step {sum(minima) / len(minima):,.0f} on "
                     f"average and ended {sum(rises) / len(rises):.3f} nats above it (descriptive: a curve's "
                     "minimum is below its end by selection)")
    none_kept = {c["seed"]: c["kept_step"] for c in none["curves"]}
    evidence = []
    for group in groups:
        arm = group[0]
        earlier = arm["curves"] and all(c["seed"] in none_kept and c["kept_step"] < none_kept[c["seed"]]
                                        for c in arm["curves"])
        diff = arm["vs_none"].get(TEST_LOSS)
        if earlier and diff and diff["significant"] and diff["diff"] < 0:
            kept = _mean([c["kept_step"] for c in arm["curves"]])
            evidence.append(f"{_names(group)} keep{'s' if len(group) == 1 else ''} an earlier checkpoint "
                            f"(step {kept:,.0f} on average) and {'its' if len(group) == 1 else 'their'} test loss "
                            f"is {_describe(diff, 'nats', '`none`', n_tests, 'stories')}")
    if evidence:
        return ("Training to the end overfits (the `none` arm overfits): " + "; ".join(evidence)
                + (f"; {described}" if described else "") + "."), None
    return None, ("Whether the `none` arm overfits is not established: no arm that keeps an earlier checkpoint has a "
                  "test loss distinguishable from `none`'s after Holm correction"
                  + (f"; {described}" if described else "") + ".")


def _names(group: Sequence[dict[str, Any]]) -> str:
    names = [f"`{a['variant']}`" for a in group]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def _generation_clause(arm: dict[str, Any], versus: str, what: str, metric_info: dict[str, dict[str, Any]],
                       n_tests: int) -> str | None:
    """The generation metrics that differ after Holm correction, or that none does; None when none was compared."""
    compared = {k: d for k, d in arm[versus].items() if k != TEST_LOSS and d}
    if not compared:
        return None
    found = []
    for key, d in compared.items():
        if not d["significant"]:
            continue
        info = metric_info[key]
        text = f"{info['label']} {_describe(d, info['unit'], what, n_tests, 'prompts')}"
        if key == FLUENCY:
            text += (" (mean per-token NLL of length-matched continuations under the scorer; higher means the scorer "
                     "finds them less likely, a proxy for less fluent text)")
        found.append(text)
    if found:
        return "; ".join(found)
    return f"no generation metric differs from {what} after Holm correction ({len(compared)} compared)"


def group_findings(group: Sequence[dict[str, Any]], max_steps: int, metric_info: dict[str, dict[str, Any]],
                   n_tests: int) -> list[str]:
    """The findings of arms that kept identical checkpoints (one arm, or several named together) vs `none`."""
    arm = group[0]
    if not arm["n_seeds"]:
        return []
    variants = [a["variant"] for a in group]
    if NONE in variants:
        others = [a for a in group if a["variant"] != NONE]
        if not others:
            return []
        return [f"{_names(others)} kept the same checkpoint as `none` in every seed (identical weights): "
                f"{'it is' if len(others) == 1 else 'they are'} the `none` model, so nothing separates them."]
    stops = ", ".join(f"{a['stop_step']:,.0f}" for a in group)
    saved = ", ".join(f"{a['compute_saved']:.0%}" for a in group if a["compute_saved"] is not None)
    if len(group) == 1:
        head = (f"`{arm['variant']}` stopped at step {stops} of {max_steps:,} on average "
                f"({arm['stopped_early']:.0%} of seeds stopped early)" + (f", saving {saved} of training tokens"
                                                                         if saved else ""))
    else:
        head = (f"{_names(group)} kept the same checkpoint in every seed (identical weights, so one finding for "
                f"all {len(group)}); they stopped at steps {stops} of {max_steps:,} on average"
                + (f", saving {saved} of training tokens" if saved else ""))
    diff = arm["vs_none"].get(TEST_LOSS)
    out = [head + (f"; test loss: {_describe(diff, 'nats', '`none`', n_tests, 'stories')}" if diff else "") + "."]
    generation = _generation_clause(arm, "vs_none", "`none`", metric_info, n_tests)
    if generation:
        out.append(f"{_names(group)} vs `none` on generation: {generation}.")
    return out


def base_findings(groups: Sequence[list[dict[str, Any]]], base: BaseData, metric_info: dict[str, dict[str, Any]],
                  n_tests: int) -> list[str]:
    """Every arm (group) against the base model, under the same correction: no best-arm pick."""
    floor = " (a random-weight base: a sanity floor, not a comparison)" if base.is_random else ""
    out = []
    for group in groups:
        arm = group[0]
        parts = []
        if (diff := arm["vs_base"].get(TEST_LOSS)) is not None:
            parts.append(f"test loss {_describe(diff, 'nats', 'the base model', n_tests, 'stories')}")
        if (generation := _generation_clause(arm, "vs_base", "the base model", metric_info, n_tests)) is not None:
            parts.append(f"generation: {generation}")
        if parts:
            out.append(f"Against the base model{floor}, {_names(group)}: " + "; ".join(parts) + ".")
    return out


def checkpoint_groups(arms: Sequence[dict[str, Any]], by_arm: dict[str, list[CellData]]) -> list[list[dict[str, Any]]]:
    """Arms whose kept checkpoints are identical in every seed, grouped (first-seen order); others alone.

    Identical = the same finished seeds, and per seed the same kept step and the same per-story test-loss
    sums (identical weights score identically; different weights practically never do)."""
    groups: dict[Any, list[dict[str, Any]]] = {}
    for arm in arms:
        done = sorted((c for c in by_arm[arm["variant"]] if c.result), key=lambda c: c.seed)
        sums = [tuple((c.result.get("test_story_losses") or {}).get("loss_sum") or ()) for c in done]
        if done and all(sums):
            key: Any = tuple((c.seed, c.result["kept_step"], s) for c, s in zip(done, sums))
        else:
            key = ("alone", arm["variant"])
        groups.setdefault(key, []).append(arm)
    for group in groups.values():
        for arm in group:
            arm["same_checkpoints_as"] = [a["variant"] for a in group if a is not arm]
    return list(groups.values())


def correct(groups: Sequence[list[dict[str, Any]]]) -> dict[str, Any]:
    """Holm over every test of the study (arm groups x metrics x references): sets `p_holm` and `significant`
    on each difference (the same for every arm of a group) and returns the family's description."""
    family: list[tuple[str, str]] = []
    tested: list[tuple[list[dict[str, Any]], str, str]] = []
    for group in groups:
        rep = group[0]
        for versus in ("vs_none", "vs_base"):
            if versus == "vs_none" and any(a["variant"] == NONE for a in group):
                continue  # identical to `none`: not a test
            for key, d in rep[versus].items():
                if d and d.get("p_value") is not None:
                    tested.append((group, versus, key))
                    family.append((versus, key))
    adjusted = stats.holm([group[0][versus][key]["p_value"] for group, versus, key in tested])
    claims = set()
    for (group, versus, key), p in zip(tested, adjusted):
        for arm in group:
            d = arm[versus].get(key)
            if d:
                d["p_holm"] = float(p)
                d["significant"] = bool(p < stats.ALPHA and d["ci_low"] is not None
                                        and (d["ci_low"] > 0 or d["ci_high"] < 0))
                claims.add(d["claim"])
    return {"correction": "holm", "alpha": stats.ALPHA, "family_size": len(tested), "min_seeds": stats.MIN_SEEDS,
            "claims": sorted(claims),
            "why_holm": "family-wise error rate: the chance of any false directional finding <= alpha, valid under "
                        "any dependence between the tests (they share stories, prompts, seeds and models)"}


def _describe(d: dict[str, Any], unit: str, what: str, n_tests: int, units: str) -> str:
    nan = float("nan")
    diff = stats.PairedDifference(d["diff"], _or(d["ci_low"], nan), _or(d["ci_high"], nan), _or(d["p_value"], nan),
                                  d["n_units"], d["n_seeds"], df=_or(d.get("df"), nan),
                                  claim=d.get("claim", stats.CONDITIONAL), n_excluded=d.get("n_excluded", 0),
                                  p_holm=d.get("p_holm"))
    return stats.describe(diff, unit, what, n_tests, units)


def _or(value: float | None, default: float) -> float:
    return default if value is None else value


# --------------------------------------------------------------------------------------------------
# The summary


def summarize(cells: Sequence[CellData], context: Context) -> dict[str, Any]:
    """`summary.json` for these cells (grid order; arms in first-seen order, `none` first)."""
    by_arm: dict[str, list[CellData]] = {}
    for cell in sorted(cells, key=lambda c: c.variant != NONE):
        by_arm.setdefault(cell.variant, []).append(cell)
    done = [c for c in cells if c.result]
    base = context.base
    warnings = []
    if base.is_random:
        warnings.append("The base model is a random initialisation (model.name: tiny): every comparison with it is "
                        "a sanity floor, not a comparison with a pretrained model.")
    mixed, refused = scorer_warnings(done, base)
    warnings += mixed
    warnings += independence_warnings([base.eval, *(c.eval for c in done)])
    metric_keys = [] if refused else [k for k in [*GENERATION_METRICS, *length_matched_keys(done)]
                                      if has_metric(done, k)]
    base_losses = _base_losses(done)
    none_cells = by_arm.get(NONE)
    none_tokens = _mean([c.result["train_tokens"] for c in none_cells or [] if c.result])
    arms = [arm_summary(v, cs, none_cells, base_losses, None if refused else base.generations, metric_keys,
                        none_tokens) for v, cs in by_arm.items()]
    metric_info = {**LOSS_INFO, **{k: metric_description(k) for k in metric_keys}}
    failed = [c.run_id for c in cells if not c.result]
    missing_evals = [c.run_id for c in done if c.eval is None] if any(c.eval for c in done) or base.eval else []
    if failed:
        reasons = "".join(f" — {c.run_id}: {c.failure.get('reason', '?')}" for c in cells
                          if not c.result and c.failure)
        warnings.append(f"{len(failed)} of {len(cells)} cells have no result (failed or not run): "
                        f"{', '.join(failed)}.{reasons}")
    if missing_evals:
        reasons = "".join(f" — {c.run_id}: {c.failure.get('reason', '?')}" for c in done
                          if c.eval is None and c.failure)
        warnings.append(f"{len(missing_evals)} finished cells have no evaluation: {', '.join(missing_evals)}.{reasons}")
    if base.eval is None and base.failure:
        warnings.append(f"The base model's evaluation failed: {base.failure.get('reason', '?')}. No comparison "
                        "with the base model is possible.")
    if not done:
        warnings.append("No cell has finished: there is nothing to compare yet.")
    budget = _budget(done)
    groups = checkpoint_groups(arms, by_arm)
    tests = correct(groups)
    n_tests = tests["family_size"]
    seeds_done = [a["n_seeds"] for a in arms if a["n_seeds"]]
    if seeds_done and min(seeds_done) < stats.MIN_SEEDS:
        warnings.append(f"Fewer than {stats.MIN_SEEDS} finished seeds in some arm (fewest: {min(seeds_done)}): its "
                        "findings hold for these trained models only (stories/prompts as units), not for the "
                        f"training procedure; run at least {stats.MIN_SEEDS} seeds for that claim.")
    none = next((a for a in arms if a["variant"] == NONE), None)
    overfit, overfit_warning = overfitting_finding(none, groups, n_tests) if done else (None, None)
    if overfit_warning:
        warnings.append(overfit_warning)
    findings = [f for f in [overfit] if f]
    for group in groups:
        findings += group_findings(group, budget.get("max_steps") or 0, metric_info, n_tests)
    findings += base_findings(groups, base, metric_info, n_tests)
    replay = _replay_saving(cells, context.replay)
    if replay:
        findings.append(f"Replay trained {replay['trainings']} runs instead of {replay['trainings_without_replay']} "
                        f"({replay['train_tokens']:,.0f} training tokens instead of "
                        f"{replay['train_tokens_without_replay']:,.0f}).")
    return {
        "grid": context.grid, "created_at": context.created_at, "study_mode": "replay" if context.replay else "train",
        "models": {"base": base.name, "base_is_random": base.is_random,
                   "scorer": _used(done, base, "scorer"), "encoder": _used(done, base, "encoder")},
        "seeds": sorted({c.seed for c in cells}), "budget": budget,
        "warnings": warnings, "findings": findings,
        "cells": {"expected": len(cells), "finished": len(done), "failed": failed, "missing_evals": missing_evals},
        "replay": replay, "metric_info": metric_info, "set_metric_info": set_metric_info(), "tests": tests,
        "arms": arms,
        "base": {TEST_LOSS: _base_test_loss(done),
                 "metrics": {k: interval(matrix([sample_values(base.generations, k)])) for k in metric_keys}
                 if base.generations and not refused else {},
                 "set_metrics": set_metrics([base.eval]) if base.eval and not refused else {}},
        "samples": samples(by_arm, base),
        "provenance": {**context.provenance, "intervals": stats.METHOD_TEXT},
    }


def length_matched_keys(cells: Sequence[CellData]) -> list[str]:
    """`<metric>_len<L>` keys the evaluations wrote for the metrics compared here, in their order."""
    found = {key for c in cells if c.generations for r in c.generations for key in (r.get("metrics") or {})
             if (m := LENGTH_MATCHED.match(key)) and m["base"] in GENERATION_METRICS}
    return sorted(found, key=lambda k: list(GENERATION_METRICS).index(LENGTH_MATCHED.match(k)["base"]))


def metric_description(key: str) -> dict[str, Any]:
    """Label, direction and unit of a compared metric (a length-matched one says its length)."""
    matched = LENGTH_MATCHED.match(key)
    label, higher, unit = GENERATION_METRICS[matched["base"] if matched else key]
    if matched:
        label = f"{label}, first {matched['tokens']} tokens"
    return {"label": label, "higher_is_better": higher, "unit": unit}


def has_metric(cells: Sequence[CellData], metric: str) -> bool:
    """Some cell has a defined per-sample value of `metric`."""
    return any(not math.isnan(v) for c in cells if c.generations for v in sample_values(c.generations, metric).values())


def set_metric_info() -> dict[str, dict[str, Any]]:
    return {k: {"label": label, "higher_is_better": higher, "unit": ""} for k, (label, higher) in SET_METRICS.items()}


def _base_test_loss(done: Sequence[CellData]) -> dict[str, Any] | None:
    """The base model's test loss as its first fine-tune measured it (the same numbers as its result.json)."""
    for cell in done:
        if (cell.result.get("base_test_story_losses") or {}).get("loss_sum"):
            return test_loss_interval([cell.result], [cell.seed], "base_test_story_losses")
    return None


def _base_losses(done: Sequence[CellData]) -> np.ndarray | None:
    """The base model's per-story test losses (measured by every fresh fine-tune before its first step)."""
    for cell in done:
        values = story_losses(cell.result, "base_test_story_losses")
        if values is not None:
            return values
    return None


def _budget(done: Sequence[CellData]) -> dict[str, Any]:
    if not done:
        return {}
    first = done[0].result
    history = first.get("eval_history") or []
    eval_steps = history[0]["step"] if history else None
    return {"max_steps": first["max_steps"], "eval_steps": eval_steps, "tokens_per_step": first["tokens_per_step"]}


def _used(done: Sequence[CellData], base: BaseData, what: str) -> str | None:
    names = {str((c.eval.get(what) or {}).get("used")) for c in done if c.eval}
    if base.eval:
        names.add(str((base.eval.get(what) or {}).get("used")))
    return ", ".join(sorted(names)) if names else None


def _replay_saving(cells: Sequence[CellData], replay: bool) -> dict[str, Any] | None:
    done = [c for c in cells if c.result]
    if not replay or not done:
        return None
    trained = [c for c in done if not c.result.get("replayed_from")]
    return {"trainings": len(trained), "trainings_without_replay": len(done),
            "train_tokens": sum(c.result["train_tokens"] for c in trained),
            "train_tokens_without_replay": sum(c.result["train_tokens"] for c in done)}


def samples(by_arm: dict[str, list[CellData]], base: BaseData, count: int = SAMPLES_SHOWN) -> list[dict[str, Any]]:
    """The same prompts continued by the base model and by each arm's first finished seed."""
    sources = {"base": base.generations} if base.generations else {}
    for variant, cells in by_arm.items():
        first = next((c for c in cells if c.generations), None)
        if first:
            sources[variant] = first.generations
    if not sources:
        return []
    by_story = {name: {int(r["story_index"]): r for r in records} for name, records in sources.items()}
    shared = sorted(set.intersection(*(set(v) for v in by_story.values())))[:count]
    out = []
    for story in shared:
        any_record = next(iter(by_story.values()))[story]
        out.append({"prompt": any_record["prompt"], "reference": any_record["reference"],
                    "continuations": {name: records[story]["continuation"] for name, records in by_story.items()}})
    return out
