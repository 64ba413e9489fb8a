"""Pure: results of a grid's jobs -> one comparison of every early-stopping arm with the base model.

Input is plain data (the contents of `result.json` / `eval.json` files and the list of expected
cells); output is a `Comparison` of rows. Rendering (markdown, CSV) is also here since it is pure
string work; reading and writing files is the caller's job.
"""

from __future__ import annotations

import csv
import io
import math
import statistics
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

# Generation metrics shown in the comparison: eval.json key -> (column title, higher is better?)
EVAL_METRICS: dict[str, tuple[str, bool]] = {
    "diversity": ("diversity", True),
    "self_bleu": ("self-BLEU-4", False),
    "distinct_2": ("distinct-2", True),
    "fluency_perplexity": ("fluency ppl", False),
    "coherence": ("coherence", True),
    "test_perplexity": ("test ppl", False),
}


@dataclass(frozen=True)
class ExpectedCell:
    run_id: str
    variant: str
    seed: int


@dataclass
class VariantRow:
    """One early-stopping arm, over its seeds."""

    variant: str
    seeds_done: int
    seeds_failed: list[str]
    stop_step: float | None
    stopped_early: float | None
    """Fraction of seeds that stopped before the budget."""
    best_eval_loss: float | None
    kept_eval_loss: float | None
    kept_eval_loss_std: float | None
    train_tokens: float | None
    compute_saved: float | None
    """1 - train tokens / train tokens of the `none` arm (None without a `none` arm)."""
    wall_time_s: float | None
    metrics: dict[str, float | None] = field(default_factory=dict)
    """Mean of each generation metric over seeds."""
    metric_deltas: dict[str, float | None] = field(default_factory=dict)
    """Metric minus the base model's."""


@dataclass
class Comparison:
    rows: list[VariantRow]
    base_eval_loss: float | None
    base_metrics: dict[str, float | None]
    failed: list[str]
    """Run ids of cells with no result."""
    missing_evals: list[str]


def _mean(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return statistics.fmean(present) if present else None


def _std(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.stdev(present) if len(present) > 1 else None


def metric_value(eval_result: dict[str, Any] | None, key: str) -> float | None:
    """The mean of a metric in eval.json (`metrics.<key>.mean` or a plain number)."""
    if not eval_result:
        return None
    value = (eval_result.get("metrics") or {}).get(key)
    if isinstance(value, dict):
        value = value.get("mean")
    return float(value) if isinstance(value, (int, float)) else None


def compare(expected: list[ExpectedCell], results: dict[str, dict[str, Any]],
            evals: dict[str, dict[str, Any]], base_eval: dict[str, Any] | None) -> Comparison:
    """Group cells by variant (in first-seen order) and compare each with the base model."""
    variants: dict[str, list[ExpectedCell]] = {}
    for cell in expected:
        variants.setdefault(cell.variant, []).append(cell)
    base_losses = [r["base_eval_loss"] for r in results.values() if r.get("base_eval_loss") is not None]
    base_metrics = {key: metric_value(base_eval, key) for key in EVAL_METRICS}
    none_tokens = _mean(results[c.run_id]["train_tokens_seen"] for c in variants.get("none", []) if c.run_id in results)
    rows = [_variant_row(name, cells, results, evals, base_metrics, none_tokens) for name, cells in variants.items()]
    return Comparison(
        rows=rows, base_eval_loss=_mean(base_losses), base_metrics=base_metrics,
        failed=[c.run_id for c in expected if c.run_id not in results],
        missing_evals=[c.run_id for c in expected if c.run_id in results and c.run_id not in evals] if evals else [],
    )


def _variant_row(name: str, cells: list[ExpectedCell], results: dict[str, dict[str, Any]],
                 evals: dict[str, dict[str, Any]], base_metrics: dict[str, float | None],
                 none_tokens: float | None) -> VariantRow:
    done = [results[c.run_id] for c in cells if c.run_id in results]
    tokens = _mean(r["train_tokens_seen"] for r in done)
    metrics = {key: _mean(metric_value(evals.get(c.run_id), key) for c in cells) for key in EVAL_METRICS}
    return VariantRow(
        variant=name,
        seeds_done=len(done),
        seeds_failed=[c.run_id for c in cells if c.run_id not in results],
        stop_step=_mean(r["stop_step"] for r in done),
        stopped_early=_mean(float(r["stopped_early"]) for r in done),
        best_eval_loss=_mean(r["best_eval_loss"] for r in done),
        kept_eval_loss=_mean(r["final_eval_loss"] for r in done),
        kept_eval_loss_std=_std([r["final_eval_loss"] for r in done]),
        train_tokens=tokens,
        compute_saved=None if not none_tokens or tokens is None else 1.0 - tokens / none_tokens,
        wall_time_s=_mean(r["wall_time_s"] for r in done),
        metrics=metrics,
        metric_deltas={k: None if v is None or base_metrics.get(k) is None else v - base_metrics[k]
                       for k, v in metrics.items()},
    )


# --------------------------------------------------------------------------------------------------
# Rendering


def _fmt(value: float | None, spec: str = ".4f") -> str:
    return "–" if value is None else format(value, spec)


def table_rows(comparison: Comparison) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the comparison, base model first (shared by markdown, CSV and W&B)."""
    metric_keys = [k for k in EVAL_METRICS if comparison.base_metrics.get(k) is not None
                   or any(r.metrics.get(k) is not None for r in comparison.rows)]
    header = ["variant", "seeds", "stop step", "stopped early", "best eval loss", "kept eval loss",
              "train tokens", "compute saved", "wall s"] + [EVAL_METRICS[k][0] for k in metric_keys]
    rows = [["base", "–", "0", "–", "–", _fmt(comparison.base_eval_loss), "0", "–", "–"]
            + [_fmt(comparison.base_metrics.get(k)) for k in metric_keys]]
    for r in comparison.rows:
        seeds = f"{r.seeds_done}" + (f" ({len(r.seeds_failed)} failed)" if r.seeds_failed else "")
        kept = _fmt(r.kept_eval_loss) + (f" ± {r.kept_eval_loss_std:.4f}" if r.kept_eval_loss_std else "")
        rows.append([r.variant, seeds, _fmt(r.stop_step, ".0f"), _fmt(r.stopped_early, ".0%"),
                     _fmt(r.best_eval_loss), kept, _fmt(r.train_tokens, ",.0f"), _fmt(r.compute_saved, ".0%"),
                     _fmt(r.wall_time_s, ".0f")]
                    + [_fmt(r.metrics.get(k)) + _delta(r.metric_deltas.get(k)) for k in metric_keys])
    return header, rows


def _delta(value: float | None) -> str:
    return "" if value is None else f" ({value:+.3f})"


def to_markdown(comparison: Comparison, title: str) -> str:
    header, rows = table_rows(comparison)
    lines = [f"# {title}", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    lines += ["", "Kept eval loss: validation loss of the weights each arm keeps (best for early-stopped "
              "arms, last for `none`), mean ± std over seeds. Compute saved: fewer training tokens than "
              "the `none` arm. Metric deltas in brackets are against the base model."]
    if comparison.failed:
        lines += ["", f"**Failed cells (no result.json):** {', '.join(comparison.failed)}"]
    if comparison.missing_evals:
        lines += ["", f"**Cells without eval.json:** {', '.join(comparison.missing_evals)}"]
    return "\n".join(lines) + "\n"


def to_csv(comparison: Comparison) -> str:
    header, rows = table_rows(comparison)
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()


def to_console(comparison: Comparison) -> str:
    """Fixed-width table for the terminal."""
    header, rows = table_rows(comparison)
    widths = [max(len(str(x)) for x in column) for column in zip(header, *rows)]
    line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths))  # noqa: E731
    out = [line(header), line("-" * w for w in widths), *(line(r) for r in rows)]
    if comparison.failed:
        out.append(f"failed cells: {', '.join(comparison.failed)}")
    return "\n".join(out)
