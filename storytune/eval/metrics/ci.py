"""Confidence intervals: a mean over samples (scipy's bootstrap) and a corpus-level metric (half-sampling)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

from storytune.eval.metrics.ngrams import _check_texts
from storytune.interval import Interval

# --------------------------------------------------------------------------------------------------
# Confidence intervals


Aggregate = Interval
"""The project's one interval type (`storytune.interval.Interval`): mean, ci_low, ci_high, n."""


def _check_ci_args(confidence: float, n_resamples: int) -> None:
    if not (0.0 < float(confidence) < 1.0):
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    if isinstance(n_resamples, bool) or not isinstance(n_resamples, (int, np.integer)) or n_resamples < 1:
        raise ValueError(f"n_resamples must be an integer >= 1, got {n_resamples!r}")


def bootstrap_ci(
    values: Sequence[float], confidence: float = 0.95, n_resamples: int = 1000, seed: int = 0
) -> tuple[float, float, float]:
    """Mean and percentile-bootstrap CI of the mean: ``(mean, low, high)`` (``scipy.stats.bootstrap``).

    Raises ``ValueError`` on an empty input or on NaN/inf values (use :func:`aggregate` to drop NaNs).
    A single value (or all-equal values) has a zero-width interval.
    """
    from scipy.stats import bootstrap

    _check_ci_args(confidence, n_resamples)
    arr = np.asarray(values, dtype=np.float64).ravel()
    if arr.size == 0:
        raise ValueError("values is empty: cannot compute a confidence interval")
    if not np.all(np.isfinite(arr)):
        raise ValueError("values contain NaN or inf; drop them first (aggregate() drops NaNs and reports n)")
    mean = float(arr.mean())
    if np.all(arr == arr[0]):  # scipy's bootstrap is degenerate here; the interval is the value
        return mean, mean, mean
    result = bootstrap((arr,), np.mean, confidence_level=confidence, n_resamples=n_resamples,
                       method="percentile", vectorized=True, random_state=np.random.default_rng(seed))
    return mean, float(result.confidence_interval.low), float(result.confidence_interval.high)


def aggregate(
    values: Sequence[float], confidence: float = 0.95, n_resamples: int = 1000, seed: int = 0
) -> Aggregate:
    """:func:`bootstrap_ci` as an :class:`Aggregate`, after dropping NaN values (``n`` counts the kept ones).

    An empty input raises ``ValueError``; an input that is all NaN gives ``Aggregate(nan, nan, nan, 0)``.
    """
    arr = np.asarray(values, dtype=np.float64).ravel()
    if arr.size == 0:
        raise ValueError("values is empty: cannot aggregate")
    arr = arr[~np.isnan(arr)]
    if arr.size == 0:
        return Aggregate(math.nan, math.nan, math.nan, 0)
    mean, low, high = bootstrap_ci(arr, confidence=confidence, n_resamples=n_resamples, seed=seed)
    return Aggregate(mean, low, high, int(arr.size))


def bootstrap_corpus_metric(
    texts: list[str],
    fn: Callable[[list[str]], float],
    confidence: float = 0.95,
    n_resamples: int = 1000,
    seed: int = 0,
) -> Aggregate:
    """Point estimate ``fn(texts)`` with a half-sampling CI over texts, for corpus-level metrics.

    Each resample is ``m // 2`` distinct texts drawn without replacement; the interval is
    ``fn(texts) + quantiles(theta_b - mean(theta_b)) * c`` with ``c = sqrt(h / (m - h))`` (= 1 for
    even m). Without replacement, a half-sample mean has exactly the variance of the full-sample
    mean (finite-population correction), and centering removes the shift that corpus-size-dependent
    metrics (distinct-n falls and self-BLEU rises with corpus size) would otherwise put into the
    interval. Hand-written because no library has it; the classical with-replacement bootstrap is
    biased for n-gram metrics: a resample repeats ~37% of texts, and a duplicated text adds only
    repeated n-grams (distinct-n drops) and is a perfect reference for its copy (self-BLEU jumps),
    so its interval can miss the estimate (a test shows it). NaN results of ``fn`` on a resample
    are dropped. ``n`` of the result = number of texts.
    """
    texts = _check_texts(texts)
    _check_ci_args(confidence, n_resamples)
    m = len(texts)
    h = m // 2
    if h < 1:
        raise ValueError(f"half-sampling needs at least 2 texts, got {m}")
    point = float(fn(texts))
    rng = np.random.default_rng(seed)
    thetas = np.asarray([float(fn([texts[i] for i in rng.choice(m, size=h, replace=False)]))
                         for _ in range(n_resamples)])
    thetas = thetas[~np.isnan(thetas)]
    if thetas.size == 0 or math.isnan(point):
        return Aggregate(point, math.nan, math.nan, m)
    alpha = (1.0 - confidence) / 2.0
    q_low, q_high = np.quantile((thetas - thetas.mean()) * math.sqrt(h / (m - h)), [alpha, 1.0 - alpha])
    return Aggregate(point, point + float(q_low), point + float(q_high), m)
