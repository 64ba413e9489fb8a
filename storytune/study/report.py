"""Pure rendering: a grid's `report/summary.json` dict -> `report.html`, `report.md`, `summary.csv`, plots.

Everything here reads the summary dict ALONE (no run directories), so a report can be re-rendered
anywhere from one JSON file. Any number may be null and any section may be missing: a grid with failed
cells, no generation metrics, no base model or no finished cell still gets a report, never a traceback.

Numbers with an interval are printed to the precision the interval supports: the decimals show two
significant digits of the interval's width ("5.41 [5.30, 5.52]", "+0.012 [0.004, 0.020]").
"""

from __future__ import annotations

import base64
import csv
import html
import io
import math
import re
from collections.abc import Iterable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import to_hex
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import EngFormatter

# File names inside `<grid>/report/` live in paths.py with every other name.
from storytune.paths import REPORT_CSV as CSV_FILE
from storytune.paths import REPORT_HTML as HTML_FILE
from storytune.paths import REPORT_MARKDOWN as MARKDOWN_FILE
from storytune.paths import REPORT_PLOTS as PLOTS_DIR
from storytune.paths import write_text_atomic

MISSING = "–"  # en dash: a null number
BASE_COLOR = "#444444"
NONE_ARM = "none"
ZOOM_SKIP = 0.15  # loss panels' y range ignores this fraction of training at the start
FIG_WIDTH_IN = 11.0  # matches the page's ~1100 px column at 100 dpi
DPI = 110

Stat = dict[str, Any]

# --------------------------------------------------------------------------------------------------
# Small lookups and number formatting


def _get(data: Any, *keys: str) -> Any:
    """Nested dict lookup that returns None for a missing key or a non-dict on the way."""
    for key in keys:
        if not isinstance(data, dict):
            return None
        data = data.get(key)
    return data


def _num(value: Any) -> float | None:
    """A finite float, or None for null, NaN, inf and non-numbers."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _magnitude(value: float) -> int:
    """floor(log10|value|), robust to float error (10.85 - 10.75 is 0.0999..., still magnitude -1)."""
    return math.floor(math.log10(abs(value)) + 1e-9)


def _decimals_for_width(width: float) -> int:
    """Decimals that show two significant digits of an interval's width (0 to 4)."""
    return min(4, max(0, 1 - _magnitude(width)))


def _decimals_for_value(value: float) -> int:
    """Decimals that show three significant digits of a number without an interval (0 to 4)."""
    if value == 0:
        return 0
    return min(4, max(0, 2 - _magnitude(value)))


def fmt_value(value: Any, decimals: int | None = None, sign: bool = False) -> str:
    """One number; `–` when null."""
    number = _num(value)
    if number is None:
        return MISSING
    places = _decimals_for_value(number) if decimals is None else decimals
    return format(number, f"{'+' if sign else ''}.{places}f")


def _interval_decimals(low: Any, high: Any, value: Any) -> int | None:
    low, high = _num(low), _num(high)
    if low is not None and high is not None and high > low:
        return _decimals_for_width(high - low)
    number = _num(value)
    return None if number is None else _decimals_for_value(number)


def fmt_ci(stat: Stat | None, key: str = "mean", sign: bool = False) -> str:
    """`mean [low, high]` (or `diff [low, high]` with key="diff"); the mean alone without an interval."""
    if not isinstance(stat, dict) or _num(stat.get(key)) is None:
        return MISSING
    low, high = _num(stat.get("ci_low")), _num(stat.get("ci_high"))
    places = _interval_decimals(low, high, stat[key])
    text = fmt_value(stat[key], places, sign=sign)
    if low is None or high is None:
        return text
    return f"{text} [{fmt_value(low, places)}, {fmt_value(high, places)}]"


def fmt_p(value: Any) -> str:
    """A p-value with two significant digits, `< 0.001` below that."""
    number = _num(value)
    if number is None:
        return MISSING
    return "< 0.001" if number < 0.001 else f"{number:.2g}"


def fmt_count(value: Any) -> str:
    return MISSING if _num(value) is None else f"{_num(value):,.0f}"


def fmt_percent(value: Any) -> str:
    return MISSING if _num(value) is None else f"{_num(value):.0%}"


def verdict(diff: Stat | None, higher_is_better: bool | None) -> str:
    """'better' / 'worse' when the interval of a difference excludes zero, '' when it cannot be told."""
    low, high = _num(_get(diff, "ci_low")), _num(_get(diff, "ci_high"))
    if low is None or high is None or higher_is_better is None or low <= 0 <= high:
        return ""
    return "better" if (low > 0) == bool(higher_is_better) else "worse"


# --------------------------------------------------------------------------------------------------
# What the summary holds


def arms(summary: dict) -> list[dict]:
    return [a for a in summary.get("arms") or [] if isinstance(a, dict)]


def has_results(summary: dict) -> bool:
    """At least one finished cell: an arm with a seed done."""
    if _num(_get(summary, "cells", "finished")) == 0:
        return False
    return any((_num(a.get("n_seeds")) or 0) > 0 for a in arms(summary))


def metric_keys(summary: dict) -> list[str]:
    """Generation metrics with a value for some arm or the base, in metric_info order (test loss excluded)."""
    present: set[str] = set()
    for holder in [*arms(summary), summary.get("base") or {}]:
        present |= {k for k, v in (holder.get("metrics") or {}).items() if _num(_get(v, "mean")) is not None}
    info = summary.get("metric_info") or {}
    ordered = [k for k in info if k in present] + sorted(present - set(info))
    return [k for k in ordered if k != "test_loss"]


def metric_label(summary: dict, key: str) -> str:
    return str(_get(summary, "metric_info", key, "label") or key)


def metric_unit(summary: dict, key: str) -> str:
    return str(_get(summary, "metric_info", key, "unit") or "")


def higher_is_better(summary: dict, key: str) -> bool | None:
    value = _get(summary, "metric_info", key, "higher_is_better")
    if value is None and key == "test_loss":
        return False
    return None if value is None else bool(value)


def arm_colors(summary: dict) -> dict[str, str]:
    """One colour per arm from its position in the grid: tab10 up to 10 arms, tab20 beyond (cycled)."""
    names = [str(a.get("variant")) for a in arms(summary)]
    cmap = colormaps["tab10" if len(names) <= 10 else "tab20"]
    return {name: to_hex(cmap(i % cmap.N)) for i, name in enumerate(names)}


# --------------------------------------------------------------------------------------------------
# Plots (matplotlib Figure objects, no pyplot state)


def _new_figure(height_in: float) -> Figure:
    """A page-wide figure on its own Agg canvas: no pyplot, no global backend, nothing kept alive after use."""
    fig = Figure(figsize=(FIG_WIDTH_IN, height_in), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _figure(n_panels: int, ncols: int, panel_height_in: float, **subplot_kw: Any) -> tuple[Figure, list[Axes]]:
    """A grid of panels (ncols wide); unused cells of the last row are hidden."""
    ncols = max(1, min(ncols, n_panels))
    nrows = math.ceil(n_panels / ncols)
    fig = _new_figure(1.2 + panel_height_in * nrows)
    grid = fig.subplots(nrows, ncols, squeeze=False, **subplot_kw)
    axes = list(grid.flat)
    for extra in axes[n_panels:]:
        extra.set_visible(False)
    return fig, axes[:n_panels]


def _legend_below(fig: Figure, handles: list[Any], ncol: int = 5) -> None:
    """Legend under the axes (never on the data, never per-point labels): readable with 15 arms."""
    if handles:
        fig.legend(handles=handles, loc="outside lower center", ncol=max(1, min(ncol, len(handles))),
                   frameon=False, fontsize=9)


def _arm_handles(summary: dict, colors: dict[str, str], marker: str = "o") -> list[Line2D]:
    return [Line2D([], [], color=colors[name], marker=marker, linewidth=2, label=name) for name in colors]


def _series(curve: dict, key: str) -> tuple[list[float], list[float]]:
    """(tokens, values) of one seed's history for eval_loss / train_loss / gap, nulls skipped."""
    xs, ys = [], []
    for point in curve.get("history") or []:
        tokens = _num(point.get("tokens"))
        value = _point_value(point, key)
        if tokens is not None and value is not None:
            xs.append(tokens)
            ys.append(value)
    return xs, ys


def _point_value(point: dict, key: str) -> float | None:
    if key == "gap":
        eval_loss, train_loss = _num(point.get("eval_loss")), _num(point.get("train_loss"))
        return None if eval_loss is None or train_loss is None else eval_loss - train_loss
    return _num(point.get(key))


def mean_series(curves: Sequence[dict], key: str) -> tuple[list[float], list[float]]:
    """Mean over seeds at the token counts every seed reached: a mean over fewer seeds would jump."""
    per_seed = [dict(zip(*_series(c, key))) for c in curves]
    per_seed = [s for s in per_seed if s]
    if not per_seed:
        return [], []
    shared = sorted(set.intersection(*(set(s) for s in per_seed)))
    return shared, [sum(s[t] for s in per_seed) / len(per_seed) for t in shared]


def _point_at_step(curve: dict, step: Any, key: str, tokens_per_step: float | None) -> tuple[float, float] | None:
    """(tokens, value) of the last evaluation at or before `step`; None when the curve has none."""
    step = _num(step)
    if step is None:
        return None
    best = None
    for point in curve.get("history") or []:
        point_step, value = _num(point.get("step")), _point_value(point, key)
        if point_step is None or value is None or point_step > step:
            continue
        tokens = _num(point.get("tokens"))
        if tokens is None and tokens_per_step is not None:
            tokens = point_step * tokens_per_step
        if tokens is not None and (best is None or point_step >= best[0]):
            best = (point_step, tokens, value)
    return None if best is None else (best[1], best[2])


def _mark_stops(ax: Axes, arm: dict, color: str, key: str, tokens_per_step: float | None) -> None:
    """Each seed's stop (x) and kept (o) point on its `key` curve."""
    for curve in arm.get("curves") or []:
        for field, marker in (("stop_step", "x"), ("kept_step", "o")):
            point = _point_at_step(curve, curve.get(field), key, tokens_per_step)
            if point is not None:
                ax.plot(*point, marker=marker, color=color, markersize=6, markerfacecolor="none"
                        if marker == "o" else color, markeredgewidth=1.5, linestyle="none", zorder=4)


def _none_minimum(summary: dict) -> tuple[list[float], list[float], tuple[float, float] | None]:
    """The `none` arm's mean validation curve and its minimum (tokens, nats), for reference in every panel."""
    none = next((a for a in arms(summary) if a.get("variant") == NONE_ARM), None)
    xs, ys = mean_series((none or {}).get("curves") or [], "eval_loss")
    if not ys:
        return xs, ys, None
    i = min(range(len(ys)), key=ys.__getitem__)
    return xs, ys, (xs[i], ys[i])


def plot_loss_curves(summary: dict, colors: dict[str, str]) -> Figure:
    """One panel per arm: validation (solid) and train (dashed) loss against training tokens."""
    arm_list = arms(summary)
    fig, axes = _figure(len(arm_list), 5, 2.1, sharex=True, sharey=True)
    tokens_per_step = _num(_get(summary, "budget", "tokens_per_step"))
    none_x, none_y, none_min = _none_minimum(summary)
    for ax, arm in zip(axes, arm_list):
        name, color = str(arm.get("variant")), colors[str(arm.get("variant"))]
        curves = arm.get("curves") or []
        if name != NONE_ARM and none_y:
            ax.plot(none_x, none_y, color="#bbbbbb", linewidth=1, zorder=1)
        for key, style in (("eval_loss", "-"), ("train_loss", "--")):
            for curve in curves:
                ax.plot(*_series(curve, key), color=color, linestyle=style, linewidth=0.7, alpha=0.45)
            ax.plot(*mean_series(curves, key), color=color, linestyle=style, linewidth=2.2)
        _mark_stops(ax, arm, color, "eval_loss", tokens_per_step)
        if none_min is not None:
            ax.plot(*none_min, marker="*", color="black", markersize=11, linestyle="none", zorder=5)
        if not curves:
            ax.text(0.5, 0.5, "no curves", transform=ax.transAxes, ha="center", va="center", color="gray")
        ax.set_title(name, fontsize=9)
        ax.spines["top"].set(color=color, linewidth=4)  # pale tab20 colours are unreadable as title text
        _style_axes(ax)
    if axes:
        _zoom_on_later_training(axes[0], arm_list)
    fig.supxlabel("training tokens", fontsize=10)
    fig.supylabel("loss (nats/token)", fontsize=10)
    fig.suptitle("Validation and train loss per arm (thin: seeds, bold: mean over seeds)", fontsize=11)
    _legend_below(fig, _curve_style_handles(none_min is not None))
    return fig


def _zoom_on_later_training(ax: Axes, arm_list: list[dict]) -> None:
    """Shared y range that leaves out the first ZOOM_SKIP of training tokens.

    From a random or distant start the first evaluations are nats above the rest, which would flatten
    the part that matters for stopping (the minimum and the rise after it) into a few pixels.
    """
    points = [(x, y) for arm in arm_list for curve in arm.get("curves") or [] for key in ("eval_loss", "train_loss")
              for x, y in zip(*_series(curve, key))]
    if not points:
        return
    start = ZOOM_SKIP * max(x for x, _ in points)
    later = [y for x, y in points if x >= start] or [y for _, y in points]
    low, high = min(later), max(later)
    pad = 0.08 * max(high - low, 1e-3)
    ax.set_ylim(low - pad, high + pad)


def _curve_style_handles(with_none_min: bool) -> list[Line2D]:
    handles = [Line2D([], [], color="black", linestyle="-", linewidth=2, label="validation loss"),
               Line2D([], [], color="black", linestyle="--", linewidth=2, label="train loss"),
               Line2D([], [], color="black", marker="x", linestyle="none", label="stop (per seed)"),
               Line2D([], [], color="black", marker="o", markerfacecolor="none", linestyle="none",
                      label="kept weights (per seed)")]
    if with_none_min:
        handles += [Line2D([], [], color="#bbbbbb", linewidth=1, label="`none` validation (mean)"),
                    Line2D([], [], color="black", marker="*", markersize=11, linestyle="none",
                           label="`none` validation minimum")]
    return handles


def _style_axes(ax: Axes) -> None:
    ax.xaxis.set_major_formatter(EngFormatter(sep=""))
    ax.tick_params(labelsize=8)
    ax.grid(True, alpha=0.3)


def _error_bar(ax: Axes, x: float, stat: Stat | None, color: str) -> bool:
    """A mean with its interval at x; False when there is no mean."""
    mean = _num(_get(stat, "mean"))
    if mean is None:
        return False
    low, high = _num(_get(stat, "ci_low")), _num(_get(stat, "ci_high"))
    yerr = None if low is None or high is None else [[max(mean - low, 0.0)], [max(high - mean, 0.0)]]
    ax.errorbar([x], [mean], yerr=yerr, fmt="o", color=color, capsize=4, markersize=6, elinewidth=1.5)
    return True


def _reference_line(ax: Axes, value: float | None, label: str) -> bool:
    """The base model as a dashed line; a note instead when it is far outside the arms' range.

    A random-weight base sits ~5 nats above fine-tuned arms: drawing it would squash the differences
    between arms into one pixel, so it is then written in the corner rather than drawn.
    """
    if value is None:
        return False
    low, high = ax.get_ylim()
    span = max(high - low, 1e-12)
    if low - 2 * span <= value <= high + 2 * span:
        ax.axhline(value, color=BASE_COLOR, linestyle="--", linewidth=1.2, zorder=0)
        return True
    where = "above" if value > high else "below"
    ax.text(0.98, 0.97 if where == "above" else 0.03, f"{label}: {fmt_value(value)} ({where} range)",
            transform=ax.transAxes, ha="right", va="top" if where == "above" else "bottom",
            fontsize=8, color=BASE_COLOR)
    return False


def dodge(xs: list[float], step: float = 0.006) -> list[float]:
    """Spread x values that (nearly) coincide by `step` of the x range, so tied arms' error bars stay apart.

    Arms that stop at the same step use the same tokens; without this their intervals draw on top of
    each other. The shift is at most a few percent of the axis, far below any difference worth reading.
    """
    if not xs:
        return []
    span = (max(xs) - min(xs)) or max(abs(max(xs)), 1.0)
    tolerance = step * span
    groups: list[list[int]] = []
    for i in sorted(range(len(xs)), key=xs.__getitem__):
        if groups and xs[i] - xs[groups[-1][0]] <= tolerance:
            groups[-1].append(i)
        else:
            groups.append([i])
    out = list(xs)
    for group in groups:
        for rank, i in enumerate(group):
            out[i] = xs[i] + (rank - (len(group) - 1) / 2) * tolerance
    return out


def plot_tradeoff(summary: dict, colors: dict[str, str]) -> Figure:
    """Test loss against training tokens per arm, with intervals: what each arm gives up for what it saves."""
    fig = _new_figure(4.6)
    ax = fig.add_subplot()
    handles = []
    arm_list = [a for a in arms(summary) if _num(a.get("train_tokens")) is not None]
    positions = dodge([_num(a.get("train_tokens")) or 0.0 for a in arm_list])
    for arm, tokens in zip(arm_list, positions):
        name = str(arm.get("variant"))
        if _error_bar(ax, tokens, arm.get("test_loss"), colors[name]):
            handles.append(Line2D([], [], color=colors[name], marker="o", linestyle="none", label=name))
    if _reference_line(ax, _num(_get(summary, "base", "test_loss", "mean")), "base model"):
        handles.append(Line2D([], [], color=BASE_COLOR, linestyle="--", label="base model"))
    if not ax.has_data():
        ax.text(0.5, 0.5, "no test loss", transform=ax.transAxes, ha="center", va="center", color="gray")
    ax.set_xlabel("training compute (training tokens)")
    ax.set_ylabel("test loss (nats/token)")
    ax.set_title("Test loss against training compute (mean and 95% CI over test stories)", fontsize=11)
    _style_axes(ax)
    _legend_below(fig, handles, ncol=6)
    return fig


def plot_metrics(summary: dict, colors: dict[str, str], keys: list[str]) -> Figure:
    """One panel per generation metric: each arm's mean and interval, the base model as a reference."""
    fig, axes = _figure(len(keys), 4, 2.3)
    arm_list = arms(summary)
    drawn_base = False
    for ax, key in zip(axes, keys):
        for i, arm in enumerate(arm_list):
            _error_bar(ax, i, _get(arm, "metrics", key), colors[str(arm.get("variant"))])
        ax.set_xlim(-0.7, max(len(arm_list), 1) - 0.3)
        drawn_base |= _reference_line(ax, _num(_get(summary, "base", "metrics", key, "mean")), "base")
        better = higher_is_better(summary, key)
        arrow = "" if better is None else (" (↑ better)" if better else " (↓ better)")
        ax.set_title(metric_label(summary, key) + arrow, fontsize=9)
        if metric_unit(summary, key):
            ax.set_ylabel(metric_unit(summary, key), fontsize=8)
        ax.set_xticks([])  # arms are told apart by colour and the legend, not crowded tick labels
        ax.tick_params(labelsize=8)
        ax.grid(True, axis="y", alpha=0.3)
    fig.suptitle("Generation metrics per arm (mean and 95% CI; dashed: base model)", fontsize=11)
    handles = _arm_handles(summary, colors)
    if drawn_base:
        handles.append(Line2D([], [], color=BASE_COLOR, linestyle="--", label="base model"))
    _legend_below(fig, handles, ncol=6)
    return fig


def plot_gap(summary: dict, colors: dict[str, str]) -> Figure:
    """Validation minus train loss over training: a rising gap is the model starting to memorise."""
    fig = _new_figure(4.6)
    ax = fig.add_subplot()
    tokens_per_step = _num(_get(summary, "budget", "tokens_per_step"))
    # In a replay study every arm is a prefix of `none`: draw the longest first so shorter ones stay visible.
    for arm in sorted(arms(summary), key=lambda a: -(_num(a.get("train_tokens")) or 0.0)):
        color, curves = colors[str(arm.get("variant"))], arm.get("curves") or []
        for curve in curves:
            ax.plot(*_series(curve, "gap"), color=color, linewidth=0.6, alpha=0.35)
        ax.plot(*mean_series(curves, "gap"), color=color, linewidth=2)
        _mark_stops(ax, arm, color, "gap", tokens_per_step)
    if not ax.has_data():
        ax.text(0.5, 0.5, "no curves", transform=ax.transAxes, ha="center", va="center", color="gray")
    ax.axhline(0, color=BASE_COLOR, linewidth=0.8)
    ax.set_xlabel("training tokens")
    ax.set_ylabel("validation − train loss (nats/token)")
    ax.set_title("Generalization gap over training (thin: seeds, bold: mean; x: stop, o: kept)", fontsize=11)
    _style_axes(ax)
    _legend_below(fig, _arm_handles(summary, colors, marker=""), ncol=6)
    return fig


def _png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    # No Software/date metadata: the same summary gives byte-identical images.
    fig.savefig(buffer, format="png", metadata={"Software": None})
    return buffer.getvalue()


def plot_files(summary: dict) -> dict[str, bytes]:
    """PNG bytes of every plot the summary supports, by file name, in reading order ({} without results)."""
    if not has_results(summary):
        return {}
    colors = arm_colors(summary)
    figures = {"loss_curves.png": plot_loss_curves(summary, colors),
               "tradeoff.png": plot_tradeoff(summary, colors)}
    keys = metric_keys(summary)
    if keys:
        figures["metrics.png"] = plot_metrics(summary, colors, keys)
    figures["generalization_gap.png"] = plot_gap(summary, colors)
    return {name: _png(fig) for name, fig in figures.items()}


PLOT_CAPTIONS = {
    "loss_curves.png": "Validation (solid) and train (dashed) loss against training tokens, one panel per arm. "
                       "x: where each seed stopped; o: the step whose weights it kept; ★: the minimum of the "
                       "`none` arm's mean validation loss (grey, repeated in every panel). The y axis is zoomed "
                       f"on training after the first {ZOOM_SKIP:.0%} of tokens, where the stopping decisions are.",
    "tradeoff.png": "Test loss against the training tokens each arm used (mean over seeds), with 95% intervals. "
                    "Lower and further left is better; dashed: the base model before fine-tuning.",
    "metrics.png": "Generation metrics per arm with 95% intervals; dashed: the base model.",
    "generalization_gap.png": "Validation minus train loss over training; a rising gap means the model fits "
                              "its training stories better than unseen ones.",
}


# --------------------------------------------------------------------------------------------------
# Tables: one set of rows shared by HTML and markdown


def comparison_rows(summary: dict) -> tuple[list[str], list[list[str]], list[list[str]]]:
    """Header, rows and per-cell CSS classes ('' / 'better' / 'worse') of the main comparison, base first."""
    header = ["arm", "seeds", "stop step", "kept step", "stopped early", "train tokens", "compute saved",
              "kept val. loss", "test loss", "Δ vs none", "p", "Δ vs base", "p"]
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
                     fmt_ci(vs_none, "diff", sign=True), fmt_p(_get(vs_none, "p_value")),
                     fmt_ci(vs_base, "diff", sign=True), fmt_p(_get(vs_base, "p_value"))])
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
    header = ["arm"] + [metric_label(summary, k) for k in keys]
    rows = []
    if _get(summary, "base", "metrics"):
        rows.append(["base"] + [fmt_ci(_get(summary, "base", "metrics", k)) for k in keys])
    rows += [[str(a.get("variant"))] + [fmt_ci(_get(a, "metrics", k)) for k in keys] for a in arms(summary)]
    return header, rows


def difference_rows(summary: dict, keys: list[str]) -> tuple[list[str], list[list[str]], list[list[str]]]:
    """Long table: one row per (metric, arm) with the differences vs `none` and vs base, CI and p."""
    header = ["metric", "arm", "mean", "Δ vs none", "p", "Δ vs base", "p"]
    rows, classes = [], []
    for key in keys:
        better = higher_is_better(summary, key)
        for arm in arms(summary):
            vs_none, vs_base = _get(arm, "vs_none", key), _get(arm, "vs_base", key)
            rows.append([metric_label(summary, key), str(arm.get("variant")), fmt_ci(_get(arm, "metrics", key)),
                         fmt_ci(vs_none, "diff", sign=True), fmt_p(_get(vs_none, "p_value")),
                         fmt_ci(vs_base, "diff", sign=True), fmt_p(_get(vs_base, "p_value"))])
            classes.append(["", "", "", verdict(vs_none, better), "", verdict(vs_base, better), ""])
    return header, rows, classes


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


def _date(created_at: Any) -> str:
    try:
        return datetime.fromisoformat(str(created_at)).strftime("%Y-%m-%d %H:%M %Z").strip()
    except ValueError:
        return str(created_at) if created_at else MISSING


def _header_html(summary: dict) -> str:
    models = summary.get("models") or {}
    base = str(models.get("base") or MISSING) + (" (random initialisation)" if models.get("base_is_random") else "")
    cells = summary.get("cells") or {}
    mode = summary.get("study_mode") or MISSING
    mode_note = {"replay": " — stopping arms replayed from each seed's `none` run",
                 "train": " — every arm trained separately"}.get(str(mode), "")
    items = [("Grid", summary.get("grid") or MISSING), ("Date", _date(summary.get("created_at"))),
             ("Study mode", f"{mode}{mode_note}"), ("Base model", base),
             ("Fluency scorer", models.get("scorer") or MISSING),
             ("Coherence encoder", models.get("encoder") or MISSING),
             ("Seeds", ", ".join(str(s) for s in summary.get("seeds") or []) or MISSING),
             ("Cells", f"{fmt_count(cells.get('finished'))} of {fmt_count(cells.get('expected'))} finished")]
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
             "the stopping rule selected on, not a result. Green: the interval shows it better; red: worse; "
             "plain: no difference can be told apart.</p>"]
    keys = metric_keys(summary)
    if keys:
        m_header, m_rows = metric_rows(summary, keys)
        d_header, d_rows, d_classes = difference_rows(summary, keys)
        parts += ["<h3>Generation metrics (mean [95% CI])</h3>", html_table(m_header, m_rows, None, "metrics-table",
                                                                           colors),
                  "<h3>Differences in generation metrics</h3>",
                  html_table(d_header, d_rows, d_classes, "differences-table", colors)]
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


def write_report(summary: dict, out_dir: Path) -> Path:
    """Write report.html, report.md, summary.csv and plots/*.png into out_dir; return report.html's path.

    report.html is written last (atomically), so its presence means the rest is there too.
    """
    out_dir = Path(out_dir)
    plots_dir = out_dir / PLOTS_DIR
    plots_dir.mkdir(parents=True, exist_ok=True)
    plots = plot_files(summary)
    for stale in plots_dir.glob("*.png"):
        if stale.name not in plots:  # e.g. metrics.png after evaluation was switched off
            stale.unlink()
    for name, png in plots.items():
        (plots_dir / name).write_bytes(png)
    write_text_atomic(out_dir / MARKDOWN_FILE, render_markdown(summary))
    write_text_atomic(out_dir / CSV_FILE, render_csv(summary))
    html_path = out_dir / HTML_FILE
    write_text_atomic(html_path, render_html(summary, plots))
    return html_path
