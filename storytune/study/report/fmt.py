"""Number formatting and lookups in summary.json shared by every part of the report."""

from __future__ import annotations

import math
from typing import Any

from matplotlib import colormaps
from matplotlib.colors import to_hex

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


def test_p(diff: Stat | None) -> Any:
    """The p-value a finding is decided on: Holm-adjusted when the summary has it, else the raw one."""
    holm = _get(diff, "p_holm")
    return holm if _num(holm) is not None else _get(diff, "p_value")


def scorer_perplexity(stat: Stat | None) -> Stat | None:
    """A mean per-token NLL interval shown as scorer perplexity: exp of the mean and of each bound."""
    if not isinstance(stat, dict):
        return stat
    return {**stat, **{k: math.exp(v) for k in ("mean", "ci_low", "ci_high") if (v := _num(stat.get(k))) is not None}}


def verdict(diff: Stat | None, higher_is_better: bool | None) -> str:
    """'better' / 'worse' when a difference is a finding (its interval excludes zero and its Holm-adjusted
    p < 0.05, the findings' rule), '' otherwise."""
    low, high = _num(_get(diff, "ci_low")), _num(_get(diff, "ci_high"))
    p = _num(test_p(diff))
    if low is None or high is None or higher_is_better is None or low <= 0 <= high or (p is not None and p >= 0.05):
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
