"""Confidence intervals: a mean over samples (scipy's bootstrap) and a corpus-level metric (half-sampling)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from storytune.eval.metrics.ngrams import _check_texts

# --------------------------------------------------------------------------------------------------
# Confidence intervals


@dataclass(frozen=True)
class Aggregate:
    """A point estimate with a confidence interval and the number of values (or texts) behind it."""

    mean: float
    ci_low: float
    ci_high: float
    n: int

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


def _check_ci_args(confidence: float, n_resamples: int) -> None:
    if not (0.0 < float(confidence) < 1.0):
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    if isinstance(n_resamples, bool) or not isinstance(n_resamples, (int, np.integer)) or n_resamples < 1:
        raise ValueError(f"n_resamples must be an integer >= 1, got {n_resamples!r}")


def bootstrap_ci(
    values: Sequence[float], confidence: float = 0.95, n_resamples: int = 1000, seed: int = 0
) -> tuple[float, float, float]:
    """Mean and percentile-bootstrap CI of the mean: ``(mean, low, high)``.

    Resamples the values with replacement ``n_resamples`` times (``numpy.random.default_rng(seed)``)
    and takes the ``(1 - confidence)/2`` and ``(1 + confidence)/2`` quantiles of the resampled means.
    Raises ``ValueError`` on an empty input or on NaN/inf values (use :func:`aggregate` to drop NaNs).
    """
    _check_ci_args(confidence, n_resamples)
    arr = np.asarray(values, dtype=np.float64).ravel()
    if arr.size == 0:
        raise ValueError("values is empty: cannot compute a confidence interval")
    if not np.all(np.isfinite(arr)):
        raise ValueError("values contain NaN or inf; drop them first (aggregate() drops NaNs and reports n)")
    mean = float(arr.mean())
    rng = np.random.default_rng(seed)
    m = arr.size
    chunk = max(1, min(n_resamples, 2_000_000 // m))
    means = np.empty(n_resamples, dtype=np.float64)
    for start in range(0, n_resamples, chunk):
        stop = min(start + chunk, n_resamples)
        idx = rng.integers(0, m, size=(stop - start, m))
        means[start:stop] = arr[idx].mean(axis=1)
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(means, [alpha, 1.0 - alpha])
    return mean, float(low), float(high)


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
    *,
    method: str = "half",
) -> Aggregate:
    """Point estimate ``fn(texts)`` with a resampling CI over texts, for corpus-level metrics.

    ``method="half"`` (default): half-sampling. Each resample is ``m // 2`` distinct texts drawn
    without replacement; the interval is ``fn(texts) + quantiles(theta_b - mean(theta_b)) * c`` with
    ``c = sqrt(h / (m - h))`` (= 1 for even m). Without replacement, a half-sample mean has exactly
    the variance of the full-sample mean (finite-population correction), and centering removes the
    shift that corpus-size-dependent metrics (distinct-n falls and self-BLEU rises with corpus size)
    would otherwise put into the interval. The classical bootstrap (``method="bootstrap"``, with
    replacement, percentile interval) is available but biased for n-gram metrics: a resample
    repeats ~37% of texts, and a duplicated text adds only repeated n-grams (distinct-n drops) and
    is a perfect reference for its copy (self-BLEU jumps), so its interval can miss the estimate.
    NaN results of ``fn`` on a resample are dropped. ``n`` of the result = number of texts.
    """
    texts = _check_texts(texts)
    _check_ci_args(confidence, n_resamples)
    m = len(texts)
    point = float(fn(texts))
    rng = np.random.default_rng(seed)
    alpha = (1.0 - confidence) / 2.0
    thetas = []
    if method == "half":
        h = m // 2
        if h < 1:
            raise ValueError(f"half-sampling needs at least 2 texts, got {m}")
        for _ in range(n_resamples):
            idx = rng.choice(m, size=h, replace=False)
            thetas.append(float(fn([texts[i] for i in idx])))
        arr = np.asarray(thetas)
        arr = arr[~np.isnan(arr)]
        if arr.size == 0 or math.isnan(point):
            return Aggregate(point, math.nan, math.nan, m)
        dev = (arr - arr.mean()) * math.sqrt(h / (m - h))
        q_low, q_high = np.quantile(dev, [alpha, 1.0 - alpha])
        return Aggregate(point, point + float(q_low), point + float(q_high), m)
    if method == "bootstrap":
        for _ in range(n_resamples):
            idx = rng.integers(0, m, size=m)
            thetas.append(float(fn([texts[i] for i in idx])))
        arr = np.asarray(thetas)
        arr = arr[~np.isnan(arr)]
        if arr.size == 0:
            return Aggregate(point, math.nan, math.nan, m)
        low, high = np.quantile(arr, [alpha, 1.0 - alpha])
        return Aggregate(point, float(low), float(high), m)
    raise ValueError(f"method must be 'half' or 'bootstrap', got {method!r}")
