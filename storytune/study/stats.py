"""Pure: the study's inference model, one model for every interval and p-value (docs/statistics.md).

Design: every arm is trained with seeds ``s = 1..S`` and every model (each arm x seed, and the single
base model) is scored on the SAME held-out units ``j = 1..N`` (test stories for losses; prompts with
identical decoding seeds for generation metrics). A metric of an arm is a matrix ``X[S, N]``; a
difference from a reference is ``d[s, j] = X[s, j] - Y[s or 0, j]`` (matched seeds for `none`; the
seedless base model broadcast over the arm's seeds).

Two claims, and which variation each covers:

* **procedure** (``S >= MIN_SEEDS``): "training with this early-stopping rule gives a different
  metric", i.e. over new seeds AND new stories/prompts. Crossed random effects
  ``d[s, j] = mu + a_s + b_j + e_sj`` (seed, unit, residual). With the two-way ANOVA mean squares
  ``MS_seed = N var(row means)``, ``MS_unit = S var(column means)`` and ``MS_res``, the standard error of
  the grand mean is ``SE^2 = (MS_seed' + MS_unit' - MS_res) / (S N)`` where ``MS' = max(MS, MS_res)``
  (a variance component is never negative); its expectation is ``sigma_seed^2/S + sigma_unit^2/N +
  sigma_res^2/(S N)``. Degrees of freedom: ``S - 1``, those of the seed mean square (the smallest in the
  model). Satterthwaite's df would be larger when story variance dominates, but with 3 seeds and seed
  SD = story SD it stated a direction in 8.8% of 500 null studies (its df estimate is itself noisy);
  ``t(S-1)`` stays at or below 5% (benchmarks/sim_statistics.py) at the price of power when seed
  variance is small.
* **conditional** (``S < MIN_SEEDS``): "these trained models differ on such stories/prompts". The
  per-unit differences averaged over seeds ``dbar_j`` and a paired t test over units, df = N-1. It
  says nothing about a new training run; the sentences say "for these trained models only".

Both give a t interval ``diff +- t_{df, 1-alpha/2} SE`` and a two-sided p-value from the SAME t
statistic ``diff / SE``, so the interval excludes zero exactly when ``p < alpha``. Units where any
compared model is undefined (NaN) are left out of the comparison for every seed (the count is reported
as ``n_excluded``): a unit dropped only for some seeds would change which units are compared.

Multiplicity: :func:`holm` (Holm 1979) over every test a study makes (arms x metrics x references). Holm
controls the family-wise error rate (the chance of ANY false directional finding) under any dependence
between the tests, which these have (the same stories, seeds and models enter many tests); Benjamini-
Hochberg controls the false discovery rate and needs positive dependence; a handful of findings is read
one by one, so FWER is the guarantee a reader assumes.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import scipy.stats
from numpy.typing import ArrayLike, NDArray

from storytune.interval import Interval

__all__ = ["ALPHA", "CONFIDENCE", "MIN_SEEDS", "METHOD_TEXT", "Interval", "PairedDifference", "claim_for",
           "crossed_mean", "describe", "format_p", "holm", "mean_ci", "paired_difference"]

ALPHA = 0.05
CONFIDENCE = 0.95
MIN_SEEDS = 3
"""Fewest finished seeds for a claim about the training procedure. With 2 seeds the seed variance has
one degree of freedom (t_{0.975, 1} = 12.7): an interval that wide says nothing, and a bootstrap over 2
seeds captures only half the seed variance (the null simulations in docs/statistics.md)."""
PROCEDURE = "procedure"
CONDITIONAL = "conditional"

METHOD_TEXT: str = (
    "Every model (each early-stopping arm x training seed, and the base model) is scored on the same held-out "
    "units (test stories for losses; prompts with identical decoding seeds for generation metrics). A difference "
    "from a reference is d[seed, unit] = arm - reference (matched seeds for `none`; the seedless base model "
    f"broadcast). With at least {MIN_SEEDS} finished seeds a finding is a claim about the training procedure: a "
    "crossed seed x unit random-effects model (two-way ANOVA variance components) gives the standard error of the "
    "mean difference, with t(seeds - 1) degrees of freedom; with fewer seeds only a claim about these trained "
    "models is made: a paired t test over units on the differences averaged over seeds. The 95% interval and the "
    "p-value come from the same t statistic, so they always agree. A unit undefined in any compared model is left "
    "out of that comparison for all of them (counted). All tests of a study (arms x metrics x references) are "
    "Holm-corrected (family-wise error rate 5%, valid under any dependence); a direction is stated only when the "
    "Holm-adjusted p-value is below 0.05. Arms with identical kept checkpoints count as one arm. Test-loss "
    "intervals of an arm: total nats / total tokens with stories resampled with their token counts (and seeds "
    "resampled, with several seeds). Set-level metrics (self-BLEU, MAUVE) get set-level intervals only "
    "(half-sampling the set), no per-prompt test. Fluency is the mean per-token negative log-likelihood of "
    "length-matched continuations under the scorer, shown as scorer perplexity = exp(mean NLL)."
)


@dataclass(frozen=True)
class PairedDifference:
    """Arm minus reference on the same units: mean difference, its t interval and the matching p-value.

    ``claim`` is ``"procedure"`` (seeds and units random) or ``"conditional"`` (these trained models,
    units random); ``df`` the t degrees of freedom; ``n_units``/``n_seeds`` what entered; ``n_excluded``
    units left out because a compared model was undefined there; ``p_holm`` the Holm-adjusted p-value
    once a family has been corrected (None before)."""

    diff: float
    ci_low: float
    ci_high: float
    p_value: float
    n_units: int
    n_seeds: int
    confidence: float = CONFIDENCE
    df: float = math.nan
    claim: str = CONDITIONAL
    n_excluded: int = 0
    p_holm: float | None = None

    def to_dict(self) -> dict[str, float | int | str | None]:
        return asdict(self)

    @property
    def excludes_zero(self) -> bool:
        """The interval lies on one side of zero (False for a NaN interval); the same as p < 1 - confidence."""
        return bool(self.ci_low > 0.0 or self.ci_high < 0.0)

    @property
    def significant(self) -> bool:
        """A direction may be stated: Holm-adjusted p (raw p before correction) below 1 - confidence.
        Holm-adjusted p >= raw p, so a significant difference always has an interval off zero."""
        p = self.p_value if self.p_holm is None else self.p_holm
        return bool(self.excludes_zero and p < 1.0 - self.confidence)


# --------------------------------------------------------------------------------------------------
# The crossed model


def _as_matrix(values: ArrayLike, name: str) -> NDArray[np.float64]:
    """``values`` as a float (seeds x units) matrix; a 1-D input is one seed."""
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2:
        raise ValueError(f"{name} must be 1-D [units] or 2-D [seeds, units], got shape {arr.shape}")
    if np.isinf(arr).any():
        raise ValueError(f"{name} contains inf; use a finite scale (e.g. loss in nats, not perplexity)")
    return arr


def _complete(values: NDArray[np.float64]) -> tuple[NDArray[np.float64], int]:
    """Drop seeds with no defined value, then every unit undefined for any remaining seed: (matrix, units dropped)."""
    defined = ~np.isnan(values)
    values = values[defined.any(axis=1)]
    if values.shape[0] == 0:
        return values[:, :0], int(defined.shape[1])
    keep = ~np.isnan(values).any(axis=0)
    return values[:, keep], int((~keep).sum())


def claim_for(n_seeds: int) -> str:
    return PROCEDURE if n_seeds >= MIN_SEEDS else CONDITIONAL


def crossed_mean(values: NDArray[np.float64]) -> tuple[float, float, float]:
    """(mean, SE, df) of a complete (seeds x units) matrix under crossed seed and unit random effects.

    One seed: the plain standard error over units, df = N-1. Several: the crossed model's SE with
    df = S-1 (formulas and why not Satterthwaite: module docstring)."""
    n_seeds, n_units = values.shape
    mean = float(values.mean())
    if n_units < 2:
        return mean, math.nan, math.nan
    if n_seeds == 1:
        return mean, float(values[0].std(ddof=1) / math.sqrt(n_units)), float(n_units - 1)
    rows, cols = values.mean(axis=1), values.mean(axis=0)
    ms_seed = n_units * float(np.var(rows, ddof=1))
    ms_unit = n_seeds * float(np.var(cols, ddof=1))
    resid = values - rows[:, None] - cols[None, :] + mean
    ms_res = float((resid**2).sum() / ((n_seeds - 1) * (n_units - 1)))
    ms_seed, ms_unit = max(ms_seed, ms_res), max(ms_unit, ms_res)  # variance components >= 0
    total = max(ms_seed + ms_unit - ms_res, 0.0)
    return mean, math.sqrt(total / (n_seeds * n_units)), float(n_seeds - 1)


def _t_interval(mean: float, se: float, df: float, confidence: float) -> tuple[float, float, float]:
    """(low, high, two-sided p of mean = 0) from one t statistic."""
    if not math.isfinite(se):
        return math.nan, math.nan, math.nan
    if se == 0.0:  # no spread at all: the value is exact
        return mean, mean, (1.0 if mean == 0.0 else 0.0)
    crit = float(scipy.stats.t.ppf(0.5 + confidence / 2.0, df))
    p = float(2.0 * scipy.stats.t.sf(abs(mean / se), df))
    return mean - crit * se, mean + crit * se, p


def _check_confidence(confidence: float) -> None:
    if not (0.0 < float(confidence) < 1.0):
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")


# --------------------------------------------------------------------------------------------------
# Public API


def mean_ci(X: ArrayLike, confidence: float = CONFIDENCE, min_seeds: int = MIN_SEEDS) -> Interval:
    """Mean of ``X`` ([S, N] or [N]) with a t interval from the same model a difference uses.

    Units undefined for any seed are dropped (``n`` = units kept). S >= ``min_seeds``: the crossed
    model's SE; fewer seeds: the SE over units of the seed-averaged values (these trained models only).
    No unit gives ``Interval(nan, nan, nan, 0)``; one unit its value with a NaN interval."""
    _check_confidence(confidence)
    values, _ = _complete(_as_matrix(X, "X"))
    if values.shape[1] == 0:
        return Interval(math.nan, math.nan, math.nan, 0)
    if values.shape[0] < min_seeds:
        values = values.mean(axis=0, keepdims=True)
    mean, se, df = crossed_mean(values)
    low, high, _ = _t_interval(mean, se, df, confidence)
    return Interval(mean, low, high, values.shape[1])


def paired_difference(X: ArrayLike, Y: ArrayLike, confidence: float = CONFIDENCE,
                      min_seeds: int = MIN_SEEDS) -> PairedDifference:
    """Arm ``X`` minus reference ``Y`` on the same units: mean difference, t interval and p from one model.

    ``X`` is [S, N] (or [N]); ``Y`` is [S, N] with seeds matched row by row, or [1, N] / [N] (broadcast).
    S >= ``min_seeds`` (seeds with a defined value): the procedure claim (crossed model, df = S-1);
    else the conditional claim (paired t over units of the seed-averaged differences, df = N-1). Units
    undefined in any compared model are dropped for all (``n_excluded``). 0 units left: all NaN; 1 unit:
    the difference with a NaN interval and p. Raises ``ValueError`` on shapes that do not pair up or inf."""
    _check_confidence(confidence)
    x, y = _as_matrix(X, "X"), _as_matrix(Y, "Y")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"X and Y must score the same units: X has {x.shape[1]}, Y has {y.shape[1]}")
    if y.shape[0] not in (1, x.shape[0]):
        raise ValueError(f"Y must have 1 row (base model, broadcast) or as many seeds as X ({x.shape[0]}), "
                         f"got {y.shape[0]}")
    undefined_ref = np.isnan(y).all(axis=0) if y.shape[0] > 1 else np.isnan(y[0])
    d, excluded = _complete(np.where(undefined_ref[None, :], math.nan, x - y))
    n_seeds, n_units = d.shape
    claim = claim_for(n_seeds)
    if n_units == 0:
        return PairedDifference(math.nan, math.nan, math.nan, math.nan, 0, n_seeds, confidence,
                                claim=claim, n_excluded=excluded)
    if claim == CONDITIONAL:
        d = d.mean(axis=0, keepdims=True)
    mean, se, df = crossed_mean(d)
    low, high, p = _t_interval(mean, se, df, confidence)
    return PairedDifference(mean, low, high, p, n_units, n_seeds, confidence, df, claim, excluded)


def holm(p_values: ArrayLike) -> NDArray[np.float64]:
    """Holm step-down adjusted p-values (NaN entries stay NaN and do not count as tests).

    Sorted ascending p_(1..m): adjusted p_(i) = max_{k <= i} min(1, (m - k + 1) p_(k)). Rejecting where the
    adjusted p < alpha keeps the chance of any false rejection <= alpha under any dependence."""
    p = np.asarray(p_values, dtype=np.float64)
    out = np.full(p.shape, math.nan)
    tested = np.flatnonzero(~np.isnan(p))
    m = tested.size
    if m == 0:
        return out
    order = tested[np.argsort(p[tested], kind="stable")]
    scaled = np.minimum(1.0, (m - np.arange(m)) * p[order])
    out[order] = np.maximum.accumulate(scaled)
    return out


def format_p(p: float | None) -> str:
    """``p < 0.001`` when tiny, 3 decimals below 0.01, else 2 decimals; ``p n/a`` for NaN/None."""
    if p is None or math.isnan(p):
        return "p n/a"
    if p < 0.001:
        return "p < 0.001"
    if p < 0.01:
        return f"p = {p:.3f}"
    return f"p = {p:.2f}"


def _decimals(diff: PairedDifference) -> int:
    """Decimals that show the CI width to two significant digits (3 significant digits of diff without one)."""
    width = diff.ci_high - diff.ci_low
    scale = width if math.isfinite(width) and width > 0 else abs(diff.diff) / 10.0
    if not math.isfinite(scale) or scale <= 0:
        return 3
    return int(min(8, max(0, 1 - math.floor(math.log10(scale)))))


def _evidence(diff: PairedDifference, unit: str, dec: int, signed: bool, n_tests: int) -> str:
    """'+0.20 nats [95% CI -0.40, 0.80], p = 0.41, Holm p = 1.0 over 24 tests; 3 seeds x 40 stories'."""
    u = f" {unit}" if unit else ""
    level = f"{round(diff.confidence * 100, 1):g}% CI"
    if signed or not diff.excludes_zero or diff.ci_low > 0:
        value, low, high = (f"{diff.diff:+.{dec}f}" if signed else f"{diff.diff:.{dec}f}"), diff.ci_low, diff.ci_high
    else:  # "lower by": the interval of the magnitude
        value, low, high = f"{-diff.diff:.{dec}f}", -diff.ci_high, -diff.ci_low
    text = f"{value}{u} [{level} {low:.{dec}f}, {high:.{dec}f}], {format_p(diff.p_value)}"
    if diff.p_holm is not None and n_tests > 1:
        text += f", Holm-adjusted {format_p(diff.p_holm)} over {n_tests} tests"
    return text


def describe(diff: PairedDifference, unit: str, what: str, n_tests: int = 1, units: str = "units") -> str:
    """A clause that claims only what the interval and (Holm-adjusted) p support, at the claim's level.

    Significant: "0.012 nats lower than `none` [95% CI 0.004, 0.020], p = 0.001, Holm-adjusted p = 0.02
    over 24 tests (over training seeds: 3 seeds x 40 stories)". Not significant: "not distinguishable
    from `none` (+0.003 nats [95% CI -0.004, 0.010], p = 0.41 ...)". A conditional claim ends "(for these
    trained models only: 2 seeds, N stories; a claim about the training procedure needs >= 3 seeds)"."""
    if diff.n_units == 0 or math.isnan(diff.diff):
        return f"not comparable with {what}: no {units[:-1] if units.endswith('s') else units} where both are defined"
    scope = _scope(diff, units)
    if math.isnan(diff.ci_low) or math.isnan(diff.ci_high):
        u = f" {unit}" if unit else ""
        return f"not distinguishable from {what}: too few {units} for an interval ({diff.diff:+.3g}{u}; {scope})"
    dec = _decimals(diff)
    if not diff.significant:
        return f"not distinguishable from {what} ({_evidence(diff, unit, dec, True, n_tests)}; {scope})"
    direction = "higher" if diff.ci_low > 0.0 else "lower"
    return f"{_lead(diff, unit, dec, direction, what, n_tests)} ({scope})"


def _lead(diff: PairedDifference, unit: str, dec: int, direction: str, what: str, n_tests: int) -> str:
    evidence = _evidence(diff, unit, dec, False, n_tests)
    value, _, rest = evidence.partition(" [")
    return f"{value} {direction} than {what} [{rest}"


def _scope(diff: PairedDifference, units: str) -> str:
    seeds = f"{diff.n_seeds} seed{'s' if diff.n_seeds != 1 else ''}"
    excluded = f", {diff.n_excluded} {units} left out (undefined in a compared model)" if diff.n_excluded else ""
    if diff.claim == PROCEDURE:
        return f"over training seeds: {seeds} x {diff.n_units} {units}{excluded}"
    return (f"for these trained models only: {seeds}, {diff.n_units} {units}{excluded}; a claim about the "
            f"training procedure needs >= {MIN_SEEDS} seeds")
