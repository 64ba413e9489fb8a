"""The report's tables: one set of rows shared by the HTML page and the markdown."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from storytune.study.report.fmt import (
    MISSING,
    _get,
    arms,
    fmt_ci,
    fmt_count,
    fmt_p,
    fmt_percent,
    fmt_value,
    higher_is_better,
    metric_label,
    scorer_perplexity,
    test_p,
    verdict,
)

FLUENCY = "fluency_nll"  # shown as scorer perplexity = exp(mean NLL) in the metric table

# --------------------------------------------------------------------------------------------------
# The study's facts (the HTML header, the markdown's opening list)


def study_facts(summary: dict) -> list[tuple[str, str]]:
    """What was compared, as (label, value): which base, scorer and encoder, which seeds, how many cells."""
    models = summary.get("models") or {}
    base = str(models.get("base") or MISSING) + (" (random initialisation)" if models.get("base_is_random") else "")
    cells = summary.get("cells") or {}
    mode = summary.get("study_mode") or MISSING
    mode_note = {"replay": " — stopping arms replayed from each seed's `none` run",
                 "train": " — every arm trained separately"}.get(str(mode), "")
    return [("Grid", str(summary.get("grid") or MISSING)), ("Date", _date(summary.get("created_at"))),
            ("Study mode", f"{mode}{mode_note}"), ("Base model", base),
            ("Fluency scorer", str(models.get("scorer") or MISSING)),
            ("Coherence encoder", str(models.get("encoder") or MISSING)),
            ("Seeds", ", ".join(str(s) for s in summary.get("seeds") or []) or MISSING),
            ("Cells", f"{fmt_count(cells.get('finished'))} of {fmt_count(cells.get('expected'))} finished")]


def _date(created_at: Any) -> str:
    try:
        return datetime.fromisoformat(str(created_at)).strftime("%Y-%m-%d %H:%M %Z").strip()
    except ValueError:
        return str(created_at) if created_at else MISSING


# --------------------------------------------------------------------------------------------------
# Tables: one set of rows shared by HTML and markdown


def comparison_rows(summary: dict) -> tuple[list[str], list[list[str]], list[list[str]]]:
    """Header, rows and per-cell CSS classes ('' / 'better' / 'worse') of the main comparison, base first."""
    header = ["arm", "seeds", "stop step", "kept step", "stopped early", "train tokens", "compute saved",
              "kept val. loss", "test loss", "Δ vs none", "Holm p", "Δ vs base", "Holm p"]
    base_loss = _get(summary, "base", "test_loss")
    rows: list[list[str]] = []
    classes: list[list[str]] = []
    if base_loss or _get(summary, "base", "metrics"):
        # The base model is not fine-tuned: no steps, zero training tokens.
        rows.append(["base", MISSING, MISSING, MISSING, MISSING, "0", MISSING, MISSING, fmt_ci(base_loss),
                     MISSING, MISSING, MISSING, MISSING])
        classes.append([""] * len(header))
    for arm in arms(summary):
        vs_none, vs_base = _get(arm, "vs_none", "test_loss"), _get(arm, "vs_base", "test_loss")
        rows.append([str(arm.get("variant")), _seeds_text(arm, summary.get("seeds") or []),
                     fmt_count(arm.get("stop_step")), fmt_count(arm.get("kept_step")),
                     fmt_percent(arm.get("stopped_early")),
                     fmt_count(arm.get("train_tokens")), fmt_percent(arm.get("compute_saved")),
                     fmt_value(arm.get("selection_eval_loss")), fmt_ci(arm.get("test_loss")),
                     fmt_ci(vs_none, "diff", sign=True), fmt_p(test_p(vs_none)),
                     fmt_ci(vs_base, "diff", sign=True), fmt_p(test_p(vs_base))])
        cls = [""] * len(header)
        cls[9], cls[11] = verdict(vs_none, False), verdict(vs_base, False)
        classes.append(cls)
    return header, rows, classes


def _seeds_text(arm: dict, grid_seeds: list) -> str:
    """Seed count; which seeds only when the arm lacks some of the grid's (failed or missing cells)."""
    seeds = arm.get("seeds") or []
    count = fmt_count(arm.get("n_seeds"))
    return f"{count} ({', '.join(str(s) for s in seeds)})" if seeds and set(seeds) != set(grid_seeds) else count


def metric_rows(summary: dict, keys: list[str]) -> tuple[list[str], list[list[str]]]:
    """Wide table: one row per arm (base first), one column per metric, `mean [CI]`."""
    header = ["arm"] + ["scorer perplexity (exp mean NLL)" if k == FLUENCY else metric_label(summary, k) for k in keys]

    def shown(stat: dict | None, key: str) -> str:
        return fmt_ci(scorer_perplexity(stat) if key == FLUENCY else stat)

    rows = []
    if _get(summary, "base", "metrics"):
        rows.append(["base"] + [shown(_get(summary, "base", "metrics", k), k) for k in keys])
    rows += [[str(a.get("variant"))] + [shown(_get(a, "metrics", k), k) for k in keys] for a in arms(summary)]
    return header, rows


def set_metric_rows(summary: dict) -> tuple[list[str], list[list[str]]]:
    """Set-level metrics (self-BLEU, MAUVE): one value per model's set of continuations, set-level intervals."""
    info = summary.get("set_metric_info") or {}
    holders = [("base", _get(summary, "base", "set_metrics") or {})]
    holders += [(str(a.get("variant")), a.get("set_metrics") or {}) for a in arms(summary)]
    keys = [k for k in info if any(h.get(k) for _, h in holders)]
    if not keys:
        return [], []
    header = ["arm"] + [str(_get(info, k, "label") or k) for k in keys]
    return header, [[name] + [fmt_ci(h.get(k)) for k in keys] for name, h in holders if h]


def difference_rows(summary: dict, keys: list[str]) -> tuple[list[str], list[list[str]], list[list[str]]]:
    """Long table: one row per (metric, arm) with the differences vs `none` and vs base, CI and p."""
    header = ["metric", "arm", "mean", "Δ vs none", "Holm p", "Δ vs base", "Holm p"]
    rows, classes = [], []
    for key in keys:
        better = higher_is_better(summary, key)
        for arm in arms(summary):
            vs_none, vs_base = _get(arm, "vs_none", key), _get(arm, "vs_base", key)
            rows.append([metric_label(summary, key), str(arm.get("variant")), fmt_ci(_get(arm, "metrics", key)),
                         fmt_ci(vs_none, "diff", sign=True), fmt_p(test_p(vs_none)),
                         fmt_ci(vs_base, "diff", sign=True), fmt_p(test_p(vs_base))])
            classes.append(["", "", "", verdict(vs_none, better), "", verdict(vs_base, better), ""])
    return header, rows, classes
