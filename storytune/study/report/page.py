"""The self-contained HTML page (plots embedded as data URIs, inline CSS, no network)."""

from __future__ import annotations

import base64
import html
import re
from typing import Any

from storytune.study.report.fmt import BASE_COLOR, MISSING, arm_colors, fmt_count, has_results, metric_keys
from storytune.study.report.plots import PLOT_CAPTIONS
from storytune.study.report.tables import (
    comparison_rows,
    difference_rows,
    metric_rows,
    set_metric_rows,
    study_facts,
)

# --------------------------------------------------------------------------------------------------
# HTML


STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;color:#1f2328;
 background:#fff;margin:0;line-height:1.5}
main{max-width:1140px;margin:0 auto;padding:24px 20px 60px}
h1{font-size:1.7em;margin:0 0 4px}h2{font-size:1.3em;margin:36px 0 10px;border-bottom:1px solid #d0d7de;
 padding-bottom:4px}h3{font-size:1.05em;margin:20px 0 8px}
dl.meta{display:grid;grid-template-columns:max-content 1fr;gap:2px 16px;margin:12px 0}
dl.meta dt{font-weight:600;color:#57606a}dl.meta dd{margin:0}
.warnings{background:#fff8c5;border:1px solid #d4a72c;border-left:6px solid #bf8700;border-radius:6px;
 padding:10px 16px;margin:16px 0}
.warnings h2{border:0;margin:0 0 4px;font-size:1.1em;color:#7d4e00}
.warnings ul{margin:0;padding-left:20px}
.empty{background:#ffebe9;border:1px solid #ff8182;border-radius:6px;padding:12px 16px;margin:16px 0;font-weight:600}
ul.findings li{margin:4px 0}
code{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:.92em;background:#f6f8fa;
 padding:0 3px;border-radius:4px}
figure{margin:16px 0 28px}figure img{width:100%;height:auto;border:1px solid #eaeef2}
figcaption{font-size:.9em;color:#57606a}
.table-wrap{overflow-x:auto;margin:8px 0 20px}
table{border-collapse:collapse;font-size:.82em;width:100%}
th,td{padding:4px 6px;border-bottom:1px solid #eaeef2;white-space:nowrap}
th{background:#f6f8fa;text-align:left;white-space:normal;vertical-align:bottom}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}
tbody tr:nth-child(even){background:#f8fafc}
td.better{color:#116329;font-weight:600}td.worse{color:#a40e26;font-weight:600}
.swatch{display:inline-block;width:10px;height:10px;border-radius:2px;margin-right:6px;vertical-align:baseline}
.prompt{margin:18px 0}.prompt summary{cursor:pointer;font-weight:600}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(300px,1fr));gap:10px;margin-top:8px}
.card{border:1px solid #d0d7de;border-top:4px solid #8c959f;border-radius:6px;padding:8px 10px;font-size:.92em}
.card h4{margin:0 0 4px;font-size:.9em}.card p{margin:0;white-space:pre-wrap}
.note{color:#57606a;font-size:.9em}pre.intervals{white-space:pre-wrap;background:#f6f8fa;padding:10px;
 border-radius:6px;font-size:.88em}
"""


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _inline(text: Any) -> str:
    """Escaped text with `backticks` shown as code (escaping first, so nothing in the text becomes markup)."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", _esc(text))


def _is_numeric_cell(text: str) -> bool:
    return text == MISSING or bool(re.match(r"^[<+\-]?\s?[\d.,]", text))


def html_table(header: list[str], rows: list[list[str]], classes: list[list[str]] | None = None,
               table_id: str = "", colors: dict[str, str] | None = None) -> str:
    """A table with numbers right-aligned; the first column gets the arm's colour swatch."""
    numeric = [i > 0 and all(_is_numeric_cell(r[i]) for r in rows) for i in range(len(header))]
    head = "".join(f'<th class="{"num" if numeric[i] else ""}">{_esc(h)}</th>' for i, h in enumerate(header))
    body = []
    for r, row in enumerate(rows):
        cells = []
        for i, cell in enumerate(row):
            verdict_class = classes[r][i] if classes else ""
            cls = " ".join(c for c in ("num" if numeric[i] else "", verdict_class) if c)
            swatch = _swatch(cell, colors) if i == 0 or header[i] == "arm" else ""
            cells.append(f'<td class="{cls}">{swatch}{_esc(cell)}</td>')
        body.append("<tr>" + "".join(cells) + "</tr>")
    ident = f' id="{_esc(table_id)}"' if table_id else ""
    return (f'<div class="table-wrap"><table{ident}><thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table></div>')


def _swatch(name: str, colors: dict[str, str] | None) -> str:
    color = (colors or {}).get(name, BASE_COLOR if name == "base" else None)
    return f'<span class="swatch" style="background:{color}"></span>' if color else ""


def _header_html(summary: dict) -> str:
    items = study_facts(summary)
    rows = "".join(f"<dt>{_esc(k)}</dt><dd>{_inline(v)}</dd>" for k, v in items)
    title = f"Early-stopping study: {_esc(summary.get('grid') or '?')}"
    return f'<header><h1>{title}</h1><dl class="meta">{rows}</dl></header>'


def _warnings_html(summary: dict) -> str:
    warnings = [w for w in summary.get("warnings") or [] if w]
    if not warnings:
        return ""
    items = "".join(f"<li>{_inline(w)}</li>" for w in warnings)
    return (f'<section class="warnings" id="warnings" role="alert"><h2>⚠ Warnings ({len(warnings)})</h2>'
            f"<ul>{items}</ul></section>")


def _empty_html(summary: dict) -> str:
    cells = summary.get("cells") or {}
    failed = cells.get("failed") or []
    detail = f" Failed cells: {', '.join(str(f) for f in failed)}." if failed else ""
    return (f'<section class="empty" id="no-results">No finished cells: none of the '
            f"{_esc(fmt_count(cells.get('expected')))} expected cells produced a result, so there is nothing to "
            f"compare yet.{_esc(detail)}</section>")


def _findings_html(summary: dict) -> str:
    findings = [f for f in summary.get("findings") or [] if f]
    body = ('<ul class="findings">' + "".join(f"<li>{_inline(f)}</li>" for f in findings) + "</ul>"
            if findings else '<p class="note">No findings.</p>')
    return f'<section id="findings"><h2>Findings</h2>{body}</section>'


def _plots_html(plots: dict[str, bytes]) -> str:
    figures = []
    for name, png in plots.items():
        data = base64.b64encode(png).decode("ascii")
        caption = _inline(PLOT_CAPTIONS.get(name, name))
        figures.append(f'<figure><img src="data:image/png;base64,{data}" alt="{_esc(name)}">'
                       f"<figcaption>{caption}</figcaption></figure>")
    return '<section id="plots"><h2>Plots</h2>' + "".join(figures) + "</section>"


def _tables_html(summary: dict, colors: dict[str, str]) -> str:
    header, rows, classes = comparison_rows(summary)
    parts = ['<section id="comparison"><h2>Comparison</h2>',
             html_table(header, rows, classes, "comparison-table", colors),
             '<p class="note">Means over seeds; test loss (nats/token) and its differences (Δ: arm minus '
             "<code>none</code> or the base model) with 95% intervals. Compute saved: 1 − training tokens / "
             "training tokens of <code>none</code>. Kept val. loss: the validation loss at the kept step, what "
             "the stopping rule selected on, not a result. Holm p: the p-value Holm-adjusted over every test of "
             "the study. Green: a finding that it is better (interval off zero and Holm p &lt; 0.05); red: worse; "
             "plain: not distinguishable.</p>"]
    keys = metric_keys(summary)
    if keys:
        m_header, m_rows = metric_rows(summary, keys)
        d_header, d_rows, d_classes = difference_rows(summary, keys)
        parts += ["<h3>Generation metrics (mean [95% CI])</h3>", html_table(m_header, m_rows, None, "metrics-table",
                                                                           colors),
                  "<h3>Differences in generation metrics</h3>",
                  html_table(d_header, d_rows, d_classes, "differences-table", colors)]
    s_header, s_rows = set_metric_rows(summary)
    if s_rows:
        parts += ["<h3>Set-level metrics (value [95% set-level interval])</h3>",
                  html_table(s_header, s_rows, None, "set-metrics-table", colors),
                  '<p class="note">One value per set of continuations (a text\'s self-BLEU depends on all the '
                  "others), so no per-prompt test; intervals half-sample the set.</p>"]
    return "".join(parts) + "</section>"


def _samples_html(summary: dict, colors: dict[str, str]) -> str:
    samples = [s for s in summary.get("samples") or [] if isinstance(s, dict)]
    if not samples:
        return '<section id="samples"><h2>Samples</h2><p class="note">No samples.</p></section>'
    blocks = []
    for i, sample in enumerate(samples):
        cards = [_card("reference", sample.get("reference"), "#1f2328")]
        cards += [_card(name, text, colors.get(name, BASE_COLOR)) for name, text in _ordered_continuations(
            sample.get("continuations") or {}, list(colors))]
        # The first prompts open, the rest one click away: 20 prompts x 16 models is a long page.
        summary_line = f"Prompt {i + 1}: {_esc(sample.get('prompt') or '')}"
        blocks.append(f'<details class="prompt"{" open" if i < 3 else ""}><summary>{summary_line}</summary>'
                      f'<div class="cards">{"".join(cards)}</div></details>')
    return ('<section id="samples"><h2>Samples</h2><p class="note">The same prompts continued by the base model '
            "and by each arm (first seed), next to the reference continuation.</p>" + "".join(blocks) + "</section>")


def _ordered_continuations(continuations: dict, arm_order: list[str]) -> list[tuple[str, Any]]:
    """Base first, then arms in grid order, then anything else."""
    order = ["base", *arm_order]
    known = [(k, continuations[k]) for k in order if k in continuations]
    return known + [(k, v) for k, v in continuations.items() if k not in order]


def _card(title: str, text: Any, color: str) -> str:
    body = _esc(text) if text else f'<span class="note">{MISSING}</span>'
    return f'<div class="card" style="border-top-color:{color}"><h4>{_esc(title)}</h4><p>{body}</p></div>'


def _provenance_html(summary: dict) -> str:
    prov = summary.get("provenance") or {}
    budget = summary.get("budget") or {}
    cells = summary.get("cells") or {}
    items = [("Config hash", prov.get("config_hash")), ("Git commit", prov.get("git_commit")),
             ("Budget", f"{fmt_count(budget.get('max_steps'))} steps, evaluation every "
                        f"{fmt_count(budget.get('eval_steps'))} steps, {fmt_count(budget.get('tokens_per_step'))} "
                        "tokens per step"),
             ("Failed cells", ", ".join(map(str, cells.get("failed") or [])) or "none"),
             ("Cells without evaluation", ", ".join(map(str, cells.get("missing_evals") or [])) or "none")]
    replay = summary.get("replay")
    if isinstance(replay, dict):
        items.append(("Replay", f"{fmt_count(replay.get('trainings'))} trainings instead of "
                                f"{fmt_count(replay.get('trainings_without_replay'))}; "
                                f"{fmt_count(replay.get('train_tokens'))} training tokens instead of "
                                f"{fmt_count(replay.get('train_tokens_without_replay'))}"))
    rows = "".join(f"<dt>{_esc(k)}</dt><dd>{_esc(v if v not in (None, '') else MISSING)}</dd>" for k, v in items)
    versions = prov.get("versions") or {}
    version_table = html_table(["library", "version"], [[str(k), str(v)] for k, v in versions.items()]) \
        if versions else ""
    intervals = prov.get("intervals")
    intervals_html = f"<h3>How the intervals were computed</h3><pre class=\"intervals\">{_esc(intervals)}</pre>" \
        if intervals else ""
    return (f'<section id="provenance"><h2>Settings and provenance</h2><dl class="meta">{rows}</dl>'
            f"{version_table}{intervals_html}</section>")


def render_html(summary: dict, plots: dict[str, bytes]) -> str:
    """The whole self-contained page: header, warnings, findings, plots, tables, samples, provenance."""
    colors = arm_colors(summary)
    parts = [_header_html(summary), _warnings_html(summary)]
    if has_results(summary):
        parts += [_findings_html(summary), _plots_html(plots), _tables_html(summary, colors),
                  _samples_html(summary, colors)]
    else:
        parts += [_empty_html(summary), _findings_html(summary)]
    parts.append(_provenance_html(summary))
    title = f"storytune report: {summary.get('grid') or '?'}"
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{_esc(title)}</title><style>{STYLE}</style></head>"
            f"<body><main>{''.join(parts)}</main></body></html>\n")
