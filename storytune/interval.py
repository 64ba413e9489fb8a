"""The project's one interval type, and the ratio bootstrap that the test loss uses everywhere.

`Interval` is what every estimate with a confidence interval is: an evaluation's per-sample mean
(`eval.metrics.ci.Aggregate` is this class), a study's arm mean (`study.stats.Interval` is this class).
`ratio_interval` is the test loss's interval (total nats / total tokens, stories resampled WITH their
token counts): `train.heldout` writes it to `result.json` and `study.compare` to `summary.json`, so for
one seed the two are the same numbers by construction.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from numpy.typing import ArrayLike

CONFIDENCE = 0.95
RESAMPLES = 2000


@dataclass(frozen=True)
class Interval:
    """A point estimate with its confidence interval and the number of units (values, texts, stories) behind it.

    NaN bounds mean "no interval" (too few units); `to_dict` keeps them as NaN (JSON writers map them to null)."""

    mean: float
    ci_low: float
    ci_high: float
    n: int

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


def ratio_interval(loss_sum: ArrayLike, tokens: ArrayLike, confidence: float = CONFIDENCE,
                   n_resamples: int = RESAMPLES, seed: int = 0) -> Interval:
    """sum(loss) / sum(tokens) with a percentile-bootstrap CI over units (stories).

    `loss_sum` and `tokens` are [N] (one model) or [S, N] (S seeds scored on the same N stories).
    One seed: `scipy.stats.bootstrap(paired=True)` resamples stories with their token counts, so the
    interval is for the same token-weighted ratio as the point estimate (dividing resampled loss sums
    by a fixed mean token count instead inflates it 2-7x on stories of varied length). Several seeds:
    each resample draws S seeds and, independently, N stories with replacement (a two-stage bootstrap;
    it carries about (S-1)/S of the seed-to-seed variance, so it is an arm's descriptive interval, and
    findings use `study.stats`'s crossed model instead). Fewer than 2 stories: NaN bounds.
    """
    from scipy.stats import bootstrap

    loss = np.atleast_2d(np.asarray(loss_sum, dtype=np.float64))
    count = np.atleast_2d(np.asarray(tokens, dtype=np.float64))
    if loss.shape != count.shape:
        raise ValueError(f"loss_sum and tokens must have one shape, got {loss.shape} and {count.shape}")
    n_seeds, n_units = loss.shape
    mean = float(loss.sum() / count.sum()) if n_units else math.nan
    if n_units < 2:
        return Interval(mean, math.nan, math.nan, n_units)
    rng = np.random.default_rng(seed)
    if n_seeds == 1:
        if np.ptp(loss[0] / np.maximum(count[0], 1.0)) == 0.0:  # every resample has the same ratio
            return Interval(mean, mean, mean, n_units)
        result = bootstrap((loss[0], count[0]), lambda s, t, axis=-1: s.sum(axis=axis) / t.sum(axis=axis),
                           paired=True, vectorized=True, confidence_level=confidence, n_resamples=n_resamples,
                           method="percentile", random_state=rng)
        return Interval(mean, float(result.confidence_interval.low), float(result.confidence_interval.high), n_units)
    seed_counts = _draw_counts(rng, n_resamples, n_seeds)
    unit_counts = _draw_counts(rng, n_resamples, n_units)
    ratios = ((seed_counts @ loss) * unit_counts).sum(axis=1) / ((seed_counts @ count) * unit_counts).sum(axis=1)
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(ratios, [alpha, 1.0 - alpha])
    return Interval(mean, float(low), float(high), n_units)


def _draw_counts(rng: np.random.Generator, size: int, n: int) -> np.ndarray:
    """(size x n): how often each of n items is drawn in each of `size` draws of n with replacement."""
    idx = rng.integers(0, n, size=(size, n)) + n * np.arange(size)[:, None]
    return np.bincount(idx.ravel(), minlength=size * n).reshape(size, n).astype(np.float64)
