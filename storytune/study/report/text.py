"""The markdown report and summary.csv."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable
from typing import Any

from storytune.study.report.fmt import _get, _num, arms, has_results, metric_keys
from storytune.study.report.page import _is_numeric_cell
from storytune.study.report.tables import (
    comparison_rows,
    difference_rows,
    metric_rows,
    set_metric_rows,
    study_facts,
)

# --------------------------------------------------------------------------------------------------
# Markdown and CSV


def _md_cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
    align = ["---"] + ["---:" if all(_is_numeric_cell(r[i]) for r in rows) else "---"
                       for i in range(1, len(header))]
    return (["| " + " | ".join(_md_cell(h) for h in header) + " |", "| " + " | ".join(align) + " |"]
            + ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows])


def render_markdown(summary: dict) -> str:
    """Warnings first, then findings and the same tables as the HTML, for a terminal or a pull request."""
    lines = [f"# Early-stopping study: {summary.get('grid') or '?'}", ""]
    lines += [f"- {label}: {value}" for label, value in study_facts(summary)] + [""]
    for warning in [w for w in summary.get("warnings") or [] if w]:
        lines += [f"> **Warning:** {warning}", ""]  # one quote each: adjacent quote lines would merge
    if not has_results(summary):
        lines += ["**No finished cells: there is nothing to compare yet.**", ""]
    lines += ["## Findings", ""] + ([f"- {f}" for f in summary.get("findings") or [] if f] or ["No findings."])
    if has_results(summary):
        header, rows, _ = comparison_rows(summary)
        lines += ["", "## Comparison", "", *markdown_table(header, rows)]
        keys = metric_keys(summary)
        if keys:
            lines += ["", "### Generation metrics (mean [95% CI])", "", *markdown_table(*metric_rows(summary, keys))]
            d_header, d_rows, _ = difference_rows(summary, keys)
            lines += ["", "### Differences in generation metrics", "", *markdown_table(d_header, d_rows)]
        s_header, s_rows = set_metric_rows(summary)
        if s_rows:
            lines += ["", "### Set-level metrics (value [95% set-level interval])", "",
                      *markdown_table(s_header, s_rows)]
    intervals = _get(summary, "provenance", "intervals")
    if intervals:
        lines += ["", "Intervals: " + str(intervals)]
    return "\n".join(lines) + "\n"


def _csv_stat(prefix: str, stat: Any, key: str = "mean") -> dict[str, Any]:
    return {prefix: _num(_get(stat, key)), f"{prefix}_ci_low": _num(_get(stat, "ci_low")),
            f"{prefix}_ci_high": _num(_get(stat, "ci_high"))}


def csv_rows(summary: dict) -> list[dict[str, Any]]:
    """One row per arm plus a base row: raw numbers (not rounded), empty when null."""
    keys = metric_keys(summary)
    rows = []
    base = summary.get("base")
    if isinstance(base, dict) and (base.get("test_loss") or base.get("metrics")):
        row: dict[str, Any] = {"arm": "base", "train_tokens": 0}
        row |= _csv_stat("test_loss", base.get("test_loss"))
        for key in keys:
            row |= _csv_stat(key, _get(base, "metrics", key))
        rows.append(row)
    for arm in arms(summary):
        row = {"arm": arm.get("variant"), "n_seeds": arm.get("n_seeds"), "stop_step": _num(arm.get("stop_step")),
               "best_step": _num(arm.get("best_step")), "kept_step": _num(arm.get("kept_step")),
               "stopped_early": _num(arm.get("stopped_early")), "train_tokens": _num(arm.get("train_tokens")),
               "compute_saved": _num(arm.get("compute_saved")),
               "selection_eval_loss": _num(arm.get("selection_eval_loss"))}
        row |= _csv_stat("test_loss", arm.get("test_loss"))
        for versus in ("vs_none", "vs_base"):
            diff = _get(arm, versus, "test_loss")
            row |= _csv_stat(f"test_loss_{versus}", diff, "diff")
            row[f"test_loss_{versus}_p"] = _num(_get(diff, "p_value"))
            row[f"test_loss_{versus}_p_holm"] = _num(_get(diff, "p_holm"))
        for key in keys:
            row |= _csv_stat(key, _get(arm, "metrics", key))
        rows.append(row)
    return rows


def render_csv(summary: dict) -> str:
    rows = csv_rows(summary)
    columns = _union_keys(rows) or ["arm"]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, restval="", lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: ("" if v is None else v) for k, v in row.items()} for row in rows)
    return buffer.getvalue()


def _union_keys(rows: Iterable[dict]) -> list[str]:
    columns: dict[str, None] = {}
    for row in rows:
        columns |= dict.fromkeys(row)
    return list(columns)


# --------------------------------------------------------------------------------------------------
# Files
