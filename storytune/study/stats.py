"""Pure: paired statistics for comparing early-stopping arms on the same held-out units.

Design of a study: every arm is trained with seeds ``s = 1..S`` and every model (each arm x seed, and
the single base model) is scored on the SAME held-out units (test stories for losses; prompts with
identical decoding seeds for generation metrics). Per metric an arm is therefore a matrix ``X[S, N]``
(seed x unit) and its reference is ``Y[S, N]`` with matched seeds (arm vs ``none``) or ``Y[1, N]`` (the
base model, which has no seeds; broadcast over the arm's seeds). NaN means "undefined for this unit"
(e.g. an empty continuation) and is dropped pairwise.

Formulas (``d[s, j] = X[s, j] - Y[s or 0, j]``; D = the set of defined (non-NaN) entries of ``d``):

* point estimate: ``diff = sum_{(s, j) in D} d[s, j] / |D|`` (the mean over all seeds and units);
  :func:`mean_ci` uses the same mean on ``X`` itself.
* interval, ``S > 1``: two-stage (cluster) percentile bootstrap. Each of ``B`` resamples draws ``S``
  seeds with replacement and, independently, ``N`` units with replacement, and takes the mean of the
  defined entries of the ``d[seeds][:, units]`` sub-matrix; the interval is the ``(1 - c)/2`` and
  ``(1 + c)/2`` quantiles of the ``B`` means. Seeds and units are both random effects (a new study would
  draw new seeds AND new stories), so both are resampled. For crossed factors this "pigeonhole"
  bootstrap (Owen 2007) counts the seed x unit noise twice and is, if anything, slightly conservative.
* interval, ``S == 1``: ``scipy.stats.bootstrap`` (percentile method) over units of the per-unit values.
  Percentile on both paths so an interval's type never depends on how many seeds an arm has (and
  BCa's jackknife would cost ``O(N^2)`` memory on thousands of stories).
* p-value (:func:`paired_difference` only): two-sided paired sign-flip permutation test on the
  per-unit differences averaged over seeds, ``dbar_j = mean_{s: d[s, j] defined} d[s, j]``, statistic
  ``mean_j dbar_j``, via ``scipy.stats.permutation_test(..., permutation_type="samples")`` with one
  sample (which flips signs). Exact (all ``2^N`` sign patterns) when ``2^N <= n_permutations``, else
  ``n_permutations`` random flips and ``p = (k + 1) / (n_permutations + 1)``. This tests "no difference
  on these units for these trained models": seeds enter only through ``dbar_j``; the interval is the
  statistic that also carries seed-to-seed variation, and :func:`describe` decides from it.

Small inputs never raise: units (and seeds) where every entry is NaN are dropped; with no unit left
everything is NaN; with one unit left the point estimate is given and the interval and p-value are
NaN (a single unit has no spread); :func:`describe` says which. Shapes that do not pair up, ``inf``
values and bad arguments raise ``ValueError``. Every result is deterministic given ``seed``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import scipy.stats
from numpy.typing import ArrayLike, NDArray

METHOD_TEXT: str = (
    "Every model (each early-stopping arm x training seed, and the base model) is scored on the same "
    "held-out units (test stories for losses; prompts with identical decoding seeds for generation metrics). "
    "A value is the mean over all seeds and units, NaN (undefined) entries dropped. Its confidence interval "
    "is a percentile bootstrap: with several seeds a two-stage (cluster) bootstrap that resamples seeds with "
    "replacement and, independently, units with replacement (both are random effects); with one seed "
    "scipy.stats.bootstrap (percentile method) over units. A difference from a reference is computed per "
    "seed and unit, d[s, j] = arm[s, j] - reference[s, j] (matched seeds for the `none` arm; the seedless "
    "base model is broadcast over seeds), and gets the same bootstrap interval. Its p-value is a two-sided "
    "paired sign-flip permutation test (scipy.stats.permutation_test, permutation_type='samples') on the "
    "per-unit differences averaged over seeds, exact up to 12 units and otherwise from seeded random sign "
    "flips. A difference is stated with a direction only when its interval excludes zero and its p-value "
    "is below 0.05 (they can disagree at the margin). All resampling is seeded, so results are reproducible."
)

DEFAULT_PERMUTATIONS = 5000
"""Random sign flips for the p-value; p >= 1/5001 ~ 0.0002, below the 'p < 0.001' reporting floor."""

# Bootstrap means per chunk are computed from (chunk x N) count matrices; this caps such a matrix at
# ~2M float64 entries (16 MB) so that thousands of units do not blow up memory.
_MAX_CHUNK_ENTRIES = 2_000_000


@dataclass(frozen=True)
class Interval:
    """A mean with its bootstrap confidence interval; ``n`` = number of units behind it."""

    mean: float
    ci_low: float
    ci_high: float
    n: int

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


@dataclass(frozen=True)
class PairedDifference:
    """Arm minus reference on the same units: mean difference, its CI and a permutation p-value.

    ``n_units``/``n_seeds`` count the units and seeds that had at least one defined difference;
    ``confidence`` is the interval's level (so that a report can print "95% CI").
    """

    diff: float
    ci_low: float
    ci_high: float
    p_value: float
    n_units: int
    n_seeds: int
    confidence: float = 0.95

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)

    @property
    def excludes_zero(self) -> bool:
        """True when the whole interval lies on one side of zero (False for a NaN interval)."""
        return bool(self.ci_low > 0.0 or self.ci_high < 0.0)

    @property
    def significant(self) -> bool:
        """A direction may be stated: the interval excludes zero AND the permutation test agrees
        (p below 1 - confidence). The two can disagree at the margin (a percentile interval that
        just misses zero with p = 0.07, seen on near-degenerate per-text metrics): then say nothing."""
        return self.excludes_zero and self.p_value < 1.0 - self.confidence


# --------------------------------------------------------------------------------------------------
# Input checks


def _check_args(confidence: float, n_resamples: int) -> None:
    if not (0.0 < float(confidence) < 1.0):
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    if isinstance(n_resamples, bool) or not isinstance(n_resamples, (int, np.integer)) or n_resamples < 1:
        raise ValueError(f"n_resamples must be an integer >= 1, got {n_resamples!r}")


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


def _drop_undefined(values: NDArray[np.float64]) -> NDArray[np.float64]:
    """Remove units (columns) and seeds (rows) whose entries are all NaN."""
    defined = ~np.isnan(values)
    return values[defined.any(axis=1)][:, defined.any(axis=0)]


# --------------------------------------------------------------------------------------------------
# Resampling


def _two_stage_bootstrap_means(values: NDArray[np.float64], n_resamples: int, rng: np.random.Generator) -> NDArray:
    """Means of ``n_resamples`` two-stage bootstrap resamples of a (seeds x units) matrix.

    scipy.stats.bootstrap resamples observations of one level only (no clustered/hierarchical
    resampling), so the two stages are written here. Resample b picks seed indices I_b (S draws) and
    unit indices J_b (N draws) independently; the mean of the defined entries of values[I_b][:, J_b] is
    ``(c_b^T V u_b) / (c_b^T M u_b)`` with c_b, u_b the draw counts per seed / unit, V the values with
    NaN set to 0 and M the 0/1 mask of defined entries. That avoids materialising B x S x N arrays:
    the cost is O(B * S * N) multiply-adds. A resample with no defined entry gives NaN.
    """
    n_seeds, n_units = values.shape
    defined = ~np.isnan(values)
    filled = np.where(defined, values, 0.0)
    mask = defined.astype(np.float64)
    means = np.empty(n_resamples, dtype=np.float64)
    chunk = max(1, min(n_resamples, _MAX_CHUNK_ENTRIES // max(n_units, n_seeds)))
    for start in range(0, n_resamples, chunk):
        size = min(chunk, n_resamples - start)
        seed_counts = _draw_counts(rng, size, n_seeds)
        unit_counts = _draw_counts(rng, size, n_units)
        sums = ((seed_counts @ filled) * unit_counts).sum(axis=1)
        counts = ((seed_counts @ mask) * unit_counts).sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            means[start : start + size] = np.where(counts > 0, sums / counts, np.nan)
    return means


def _draw_counts(rng: np.random.Generator, size: int, n: int) -> NDArray[np.float64]:
    """(size x n) matrix: how often each of n items is drawn in each of `size` draws of n with replacement."""
    idx = rng.integers(0, n, size=(size, n)) + n * np.arange(size)[:, None]
    return np.bincount(idx.ravel(), minlength=size * n).reshape(size, n).astype(np.float64)


def _percentile_ci(
    values: NDArray[np.float64], confidence: float, n_resamples: int, seed: int
) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean of a (seeds x units) matrix with >= 2 units (see module doc)."""
    rng = np.random.default_rng(seed)
    if values.shape[0] == 1:
        units = values[0][~np.isnan(values[0])]
        if np.ptp(units) == 0.0:  # every resample has the same mean; scipy would warn and return NaN
            return float(units[0]), float(units[0])
        res = scipy.stats.bootstrap(
            (units,), np.mean, n_resamples=n_resamples, confidence_level=confidence, method="percentile",
            vectorized=True, batch=max(1, _MAX_CHUNK_ENTRIES // units.size), **_rng_kwarg(rng),
        )
        return float(res.confidence_interval.low), float(res.confidence_interval.high)
    means = _two_stage_bootstrap_means(values, n_resamples, rng)
    means = means[~np.isnan(means)]
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(means, [alpha, 1.0 - alpha])
    return float(low), float(high)


def _rng_kwarg(rng: np.random.Generator) -> dict[str, Any]:
    """scipy >= 1.15 takes ``rng=``; older versions (pyproject allows >= 1.11) only ``random_state=``."""
    return {"rng": rng} if _SCIPY_HAS_RNG else {"random_state": rng}


_SCIPY_HAS_RNG = tuple(int(p) for p in scipy.__version__.split(".")[:2]) >= (1, 15)


def _sign_flip_p_value(unit_diffs: NDArray[np.float64], n_permutations: int, seed: int) -> float:
    """Two-sided sign-flip permutation p-value of mean(unit_diffs) (scipy; exact for small N)."""
    if np.all(unit_diffs == 0.0):  # every sign pattern gives 0: nothing is more extreme than nothing
        return 1.0
    res = scipy.stats.permutation_test(
        (unit_diffs,), _mean_statistic, permutation_type="samples", vectorized=True,
        n_resamples=n_permutations, alternative="two-sided",
        batch=max(1, _MAX_CHUNK_ENTRIES // unit_diffs.size), **_rng_kwarg(np.random.default_rng(seed)),
    )
    return float(res.pvalue)


def _mean_statistic(x: NDArray[np.float64], axis: int = -1) -> NDArray[np.float64]:
    return np.mean(x, axis=axis)


# --------------------------------------------------------------------------------------------------
# Public API


def mean_ci(X: ArrayLike, confidence: float = 0.95, n_resamples: int = 2000, seed: int = 0) -> Interval:
    """Mean of ``X`` ([S, N] seeds x units, or [N]) over all defined entries, with a bootstrap CI.

    ``mean = sum of defined X[s, j] / number of defined entries``. The CI is a two-stage percentile
    bootstrap (seeds, then units, with replacement) when S > 1 and ``scipy.stats.bootstrap``
    (percentile) over units when S == 1; see the module docstring. ``n`` = units with a defined
    value. No unit gives ``Interval(nan, nan, nan, 0)``; one unit gives its mean with a NaN interval.
    """
    _check_args(confidence, n_resamples)
    values = _drop_undefined(_as_matrix(X, "X"))
    n_units = values.shape[1]
    if n_units == 0:
        return Interval(math.nan, math.nan, math.nan, 0)
    mean = float(np.nanmean(values))
    if n_units < 2:
        return Interval(mean, math.nan, math.nan, n_units)
    low, high = _percentile_ci(values, confidence, n_resamples, seed)
    return Interval(mean, low, high, n_units)


def paired_difference(
    X: ArrayLike,
    Y: ArrayLike,
    confidence: float = 0.95,
    n_resamples: int = 2000,
    seed: int = 0,
    n_permutations: int = DEFAULT_PERMUTATIONS,
) -> PairedDifference:
    """Arm ``X`` minus reference ``Y`` on the same units: mean difference, bootstrap CI, permutation p.

    ``X`` is [S, N] (or [N] = one seed); ``Y`` is [S, N] with seeds matched row by row, or [1, N] / [N]
    (the seedless base model, broadcast over X's seeds). ``d[s, j] = X[s, j] - Y[s or 0, j]``;
    ``diff = mean of the defined d``; the CI is the two-stage bootstrap of that mean (S > 1) or
    ``scipy.stats.bootstrap`` over units (S == 1); ``p_value`` is the two-sided sign-flip permutation
    test on ``dbar_j`` (d averaged over seeds), ``n_permutations`` seeded random flips (exact for
    N <= 12). Formulas and caveats: module docstring. Units (and seeds) whose d is NaN everywhere are
    dropped; 0 units left -> all NaN; 1 unit -> diff only, NaN CI and p. Raises ``ValueError`` when the
    shapes do not pair up (different N, or Y with neither 1 nor S rows) or a value is inf.
    """
    _check_args(confidence, n_resamples)
    _check_args(confidence, n_permutations)
    x = _as_matrix(X, "X")
    y = _as_matrix(Y, "Y")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"X and Y must score the same units: X has {x.shape[1]}, Y has {y.shape[1]}")
    if y.shape[0] not in (1, x.shape[0]):
        raise ValueError(
            f"Y must have 1 row (base model, broadcast) or as many seeds as X ({x.shape[0]}), got {y.shape[0]}"
        )
    d = _drop_undefined(x - y)
    n_seeds, n_units = d.shape
    if n_units == 0:
        return PairedDifference(math.nan, math.nan, math.nan, math.nan, 0, 0, confidence)
    diff = float(np.nanmean(d))
    if n_units < 2:
        return PairedDifference(diff, math.nan, math.nan, math.nan, n_units, n_seeds, confidence)
    low, high = _percentile_ci(d, confidence, n_resamples, seed)
    p_value = _sign_flip_p_value(np.nanmean(d, axis=0), n_permutations, seed)
    return PairedDifference(diff, low, high, p_value, n_units, n_seeds, confidence)


def format_p(p: float) -> str:
    """``p < 0.001`` when tiny, 3 decimals below 0.01, else 2 decimals; ``p n/a`` for NaN."""
    if math.isnan(p):
        return "p n/a"
    if p < 0.001:
        return "p < 0.001"
    if p < 0.01:
        return f"p = {p:.3f}"
    return f"p = {p:.2f}"


def _decimals(diff: PairedDifference) -> int:
    """Decimals that show the CI width (high - low) to two significant digits, so the printed precision
    matches what the data can tell (3 significant digits of diff when there is no width), clamped to 0..8."""
    width = diff.ci_high - diff.ci_low
    scale = width if math.isfinite(width) and width > 0 else abs(diff.diff) / 10.0
    if not math.isfinite(scale) or scale <= 0:
        return 3
    return int(min(8, max(0, 1 - math.floor(math.log10(scale)))))


def describe(diff: PairedDifference, unit: str, what: str) -> str:
    """One sentence that claims only what the interval supports.

    ``unit`` is the metric's unit ("nats", "" for unitless); ``what`` names the reference as it should
    read (e.g. "`none`" or "the base model"). When the CI excludes zero: "0.012 nats higher than `none`
    [95% CI 0.004, 0.020], p = 0.01" (for "lower" the interval is of the magnitude, i.e. of -diff). When
    it contains zero, no direction: "no difference from `none` can be told apart (+0.003 nats [95% CI
    -0.004, 0.010], p = 0.41)". Too few units for an interval is said so.
    """
    u = f" {unit}" if unit else ""
    level = f"{round(diff.confidence * 100, 1):g}% CI"
    dec = _decimals(diff)
    if diff.n_units == 0 or math.isnan(diff.diff):
        return f"no comparison with {what}: no unit where both are defined"
    if math.isnan(diff.ci_low) or math.isnan(diff.ci_high):
        return (f"no difference from {what} can be told apart: too few units for an interval "
                f"(n = {diff.n_units}; {diff.diff:+.{dec}f}{u})")
    p = format_p(diff.p_value)
    low, high = diff.ci_low, diff.ci_high
    if not diff.significant:
        return (f"no difference from {what} can be told apart "
                f"({diff.diff:+.{dec}f}{u} [{level} {low:.{dec}f}, {high:.{dec}f}], {p})")
    if low > 0.0:  # decide the direction from the interval, not from the point estimate
        return f"{diff.diff:.{dec}f}{u} higher than {what} [{level} {low:.{dec}f}, {high:.{dec}f}], {p}"
    if high < 0.0:
        return f"{-diff.diff:.{dec}f}{u} lower than {what} [{level} {-high:.{dec}f}, {-low:.{dec}f}], {p}"
    return (f"no difference from {what} can be told apart "
            f"({diff.diff:+.{dec}f}{u} [{level} {low:.{dec}f}, {high:.{dec}f}], {p})")
