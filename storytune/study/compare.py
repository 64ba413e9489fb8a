"""Pure: what a grid's cells produced -> `summary.json`, the study's answer with its evidence.

Input is plain data (each cell's `result.json`, `eval.json` and `generations.jsonl` records, the
base model's evaluation); output is one dict (`docs/summary.md` describes every key). Reading and
writing files is the caller's job (`storytune.cluster.worker.run_aggregate`).

What it compares, and how (the statistics are `storytune.study.stats`):
- generalization: the TEST loss of each arm's kept weights (never the validation loss that chose
  them), per story, paired across arms by story and across arms' seeds by seed;
- each arm against `none` (same seeds) and against the base model, for the test loss and every
  per-sample generation metric (paired by prompt: every model continues the same prompts with the
  same decoding seeds);
- cost: training tokens against `none`.
Findings are sentences generated from these numbers that claim only what the intervals support.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from storytune.study import stats
from storytune.study.independence import independence_warnings

NONE = "none"
TEST_LOSS = "test_loss"
SAMPLES_SHOWN = 6
# Generation metrics, per sample in generations.jsonl: key -> (label, higher is better?, unit).
GENERATION_METRICS: dict[str, tuple[str, bool | None, str]] = {
    "fluency_perplexity": ("fluency perplexity (scorer)", False, ""),
    "coherence": ("coherence (cosine)", True, ""),
    "distinct_2": ("distinct-2 (per text)", True, ""),
    "rep_2": ("rep-2 (per text)", False, "%"),
    "self_bleu": ("self-BLEU-4", False, ""),
    "new_tokens": ("continuation length", None, "tokens"),
}
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
    """Per-story test-loss values whose mean is the token-weighted test loss (`train.heldout`)."""
    losses = result.get(key) or {}
    if not losses.get("loss_sum"):
        return None
    loss_sum, tokens = np.asarray(losses["loss_sum"], float), np.asarray(losses["tokens"], float)
    return loss_sum / tokens.mean()


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
    return {"mean": result.mean, "ci_low": _finite(result.ci_low), "ci_high": _finite(result.ci_high), "n": result.n}


def difference(x: np.ndarray | None, y: np.ndarray | None) -> dict[str, Any] | None:
    """Paired difference x - y; a 1-D y (the seedless base model) is broadcast over x's seeds."""
    if x is None or y is None:
        return None
    y = np.atleast_2d(y)
    if x.shape[1] != y.shape[1] or x.shape[1] == 0:
        return None
    d = stats.paired_difference(x, y)
    if math.isnan(d.diff):
        return None
    return {"diff": d.diff, "ci_low": _finite(d.ci_low), "ci_high": _finite(d.ci_high),
            "p_value": _finite(d.p_value), "n_units": d.n_units, "n_seeds": d.n_seeds}


def metric_pair(arm: list[dict[int, float]] | None, ref: list[dict[int, float]] | None,
                matched_seeds: bool) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Arm and reference matrices on the prompts both evaluated (seeds matched for `none`)."""
    if not arm or not ref:
        return None, None
    keys = sorted(set.intersection(*(set(r) for r in [*arm, *ref])))
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
        TEST_LOSS: _test_interval(losses), "metrics": {}, "vs_none": {}, "vs_base": {}, "curves": curves(done),
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


def _test_interval(losses: np.ndarray | None) -> dict[str, Any] | None:
    found = interval(losses)
    if found is None:
        return None
    return {"mean": found["mean"], "ci_low": found["ci_low"], "ci_high": found["ci_high"], "n_stories": found["n"]}


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


def overfitting_finding(none: dict[str, Any] | None) -> tuple[str | None, str | None]:
    """(finding, warning) about whether the unstopped arm overfits (its validation curve turns up)."""
    if not none or not none["curves"]:
        return None, "There is no finished `none` arm: nothing shows whether training without stopping overfits."
    rises, minima = [], []
    for curve in none["curves"]:
        losses = [(p["step"], p["eval_loss"]) for p in curve["history"] if p.get("eval_loss") is not None]
        if not losses:
            continue
        step, low = min(losses, key=lambda p: p[1])
        minima.append(step)
        rises.append(losses[-1][1] - low)
    if not rises:
        return None, None
    rise, at = sum(rises) / len(rises), sum(minima) / len(minima)
    if min(rises) > 0 and at < (none["stop_step"] or 0):
        return (f"Without stopping, validation loss reached its minimum at step {at:,.0f} on average and ended "
                f"{rise:.3f} nats above it (every seed rose): the `none` arm overfits, so early stopping has "
                "something to prevent."), None
    return None, (f"The `none` arm did not clearly overfit (validation loss rose {rise:.3f} nats after its minimum "
                  "on average): early stopping can only look like less training in this grid.")


def arm_findings(arm: dict[str, Any], max_steps: int, metric_info: dict[str, dict[str, Any]]) -> list[str]:
    if arm["variant"] == NONE or not arm["n_seeds"]:
        return []
    out = []
    head = (f"`{arm['variant']}` stopped at step {arm['stop_step']:,.0f} of {max_steps:,} on average "
            f"({arm['stopped_early']:.0%} of seeds stopped early)")
    if arm["compute_saved"] is not None:
        head += f", saving {arm['compute_saved']:.0%} of training tokens"
    diff = arm["vs_none"].get(TEST_LOSS)
    out.append(head + ("; its test loss is " + _describe(diff, "nats", "`none`") if diff else "") + ".")
    told_apart = [f"{metric_info[k]['label']} {_describe(d, metric_info[k]['unit'], '`none`')}"
                  for k, d in arm["vs_none"].items() if k != TEST_LOSS and d and _excludes_zero(d)]
    if told_apart:
        out.append(f"`{arm['variant']}` vs `none` on generation: " + "; ".join(told_apart) + ".")
    elif any(k != TEST_LOSS and d for k, d in arm["vs_none"].items()):
        out.append(f"`{arm['variant']}` vs `none` on generation: no metric differs detectably.")
    return out


def base_finding(arms: Sequence[dict[str, Any]], base: BaseData) -> str | None:
    trained = [a for a in arms if a["vs_base"].get(TEST_LOSS)]
    if not trained:
        return None
    best = min(trained, key=lambda a: a[TEST_LOSS]["mean"])
    floor = " (a random-weight base: a sanity floor, not a comparison)" if base.is_random else ""
    return (f"Against the base model{floor}, `{best['variant']}` (lowest test loss) is "
            + _describe(best["vs_base"][TEST_LOSS], "nats", "the base model") + ".")


def _excludes_zero(d: dict[str, Any]) -> bool:
    """The same rule as `stats.PairedDifference.significant`: interval off zero and p < 0.05."""
    if d["ci_low"] is None or d["ci_high"] is None or d["p_value"] is None:
        return False
    return (d["ci_low"] > 0 or d["ci_high"] < 0) and d["p_value"] < 0.05


def _describe(d: dict[str, Any], unit: str, what: str) -> str:
    nan = float("nan")
    diff = stats.PairedDifference(d["diff"], _or(d["ci_low"], nan), _or(d["ci_high"], nan),
                                  _or(d["p_value"], nan), d["n_units"], d["n_seeds"])
    return stats.describe(diff, unit, what)


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
    none = next((a for a in arms if a["variant"] == NONE), None)
    overfit, overfit_warning = overfitting_finding(none) if done else (None, None)
    if overfit_warning:
        warnings.append(overfit_warning)
    findings = [f for f in [overfit] if f]
    for arm in arms:
        findings += arm_findings(arm, budget.get("max_steps") or 0, metric_info)
    if (finding := base_finding(arms, base)) is not None:
        findings.append(finding)
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
        "replay": replay, "metric_info": metric_info, "arms": arms,
        "base": {TEST_LOSS: _test_interval(base_losses[None, :] if base_losses is not None else None),
                 "metrics": {k: interval(matrix([sample_values(base.generations, k)])) for k in metric_keys}
                 if base.generations and not refused else {}},
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
