"""The report's plots: matplotlib Figures (no pyplot state), PNG bytes, a consistent colour per arm."""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from typing import Any

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import EngFormatter

from storytune.study.report.fmt import (
    BASE_COLOR,
    DPI,
    FIG_WIDTH_IN,
    NONE_ARM,
    ZOOM_SKIP,
    Stat,
    _get,
    _num,
    arm_colors,
    arms,
    fmt_value,
    has_results,
    higher_is_better,
    metric_keys,
    metric_label,
    metric_unit,
)

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
