"""Paired statistics on synthetic data with known answers (numpy rng, fixed seeds)."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
import scipy.stats

from storytune.study.stats import (
    METHOD_TEXT,
    Interval,
    PairedDifference,
    describe,
    format_p,
    mean_ci,
    paired_difference,
)


def paired_data(
    shift: float, seeds: int = 3, units: int = 200, unit_sd: float = 1.0, noise_sd: float = 0.1, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Reference Y and arm X = Y's unit effects + shift, both with seed x unit noise (matched seeds)."""
    rng = np.random.default_rng(seed)
    unit_effect = rng.normal(0.0, unit_sd, units)
    y = unit_effect + rng.normal(0.0, noise_sd, (seeds, units))
    x = unit_effect + shift + rng.normal(0.0, noise_sd, (seeds, units))
    return x, y


# --------------------------------------------------------------------------------------------------
# Known answers


def test_true_shift_is_detected_and_covered() -> None:
    x, y = paired_data(shift=0.5)
    result = paired_difference(x, y)
    assert result.ci_low > 0.0 and result.excludes_zero
    assert result.ci_low <= 0.5 <= result.ci_high
    assert result.diff == pytest.approx(float((x - y).mean()))
    assert result.p_value < 0.01
    assert (result.n_units, result.n_seeds) == (200, 3)


def test_zero_shift_gives_an_interval_around_zero_and_a_large_p() -> None:
    x, y = paired_data(shift=0.0, seed=3)
    result = paired_difference(x, y)
    assert result.ci_low <= 0.0 <= result.ci_high and not result.excludes_zero
    assert result.p_value > 0.05


def test_pairing_finds_a_small_shift_hidden_by_between_unit_variance() -> None:
    # Units differ a lot (sd 2) but the arm is uniformly 0.1 higher with little noise.
    x, y = paired_data(shift=0.1, units=100, unit_sd=2.0, noise_sd=0.05, seed=1)
    paired = paired_difference(x, y)
    assert paired.excludes_zero and paired.ci_low > 0.0
    # Unpaired, the same shift drowns: the two means' intervals overlap and Welch's t-test sees nothing.
    arm, ref = mean_ci(x), mean_ci(y)
    assert arm.ci_low < ref.ci_high and ref.ci_low < arm.ci_high
    assert scipy.stats.ttest_ind(x.mean(axis=0), y.mean(axis=0), equal_var=False).pvalue > 0.05


def test_seed_to_seed_variation_widens_the_interval() -> None:
    # Seeds disagree by a constant (-1, 0, +1) on every unit; units agree. Resampling units alone would
    # give an interval of width ~0.01; resampling seeds puts the seed spread into it.
    rng = np.random.default_rng(10)
    d = np.array([[-1.0], [0.0], [1.0]]) + rng.normal(0.0, 0.05, (3, 200))
    result = paired_difference(d, np.zeros(200))
    assert result.ci_low < -0.4 and result.ci_high > 0.4


def test_sign_flip_p_value_is_exact_for_few_units() -> None:
    # 5 positive per-unit differences: of 2^5 sign patterns only all-plus and all-minus are as extreme.
    d = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    assert paired_difference(d, np.zeros(5)).p_value == pytest.approx(2 / 32)
    # Identical models: nothing to test, p = 1 and a zero-width interval at 0.
    same = paired_difference(np.ones((2, 6)), np.ones((2, 6)))
    assert (same.diff, same.ci_low, same.ci_high, same.p_value) == (0.0, 0.0, 0.0, 1.0)


def test_mean_ci_covers_the_mean_and_counts_units() -> None:
    rng = np.random.default_rng(5)
    values = 3.0 + rng.normal(0.0, 1.0, (3, 400))
    interval = mean_ci(values)
    assert isinstance(interval, Interval) and interval.n == 400
    assert interval.mean == pytest.approx(values.mean())
    assert interval.ci_low < 3.0 < interval.ci_high
    assert interval.ci_high - interval.ci_low < 0.5
    assert set(interval.to_dict()) == {"mean", "ci_low", "ci_high", "n"}


# --------------------------------------------------------------------------------------------------
# Shapes, broadcasting, NaN


def test_base_row_is_broadcast_over_the_arm_seeds() -> None:
    x, y = paired_data(shift=0.2, seed=2)
    base = y[:1]
    broadcast = paired_difference(x, base)
    assert broadcast == paired_difference(x, np.repeat(base, 3, axis=0))
    assert broadcast == paired_difference(x, base[0])  # a 1-D reference is one row too
    assert broadcast.diff == pytest.approx(float(x.mean() - base.mean()))
    assert broadcast.n_seeds == 3


def test_nan_entries_are_dropped_pairwise() -> None:
    x, y = paired_data(shift=0.3, units=50, seed=4)
    x_nan = x.copy()
    x_nan[0, 7] = np.nan  # undefined for one seed only: the unit stays
    partial = paired_difference(x_nan, y)
    d = x_nan - y
    assert partial.n_units == 50
    assert partial.diff == pytest.approx(float(np.nanmean(d)))
    assert math.isfinite(partial.ci_low) and math.isfinite(partial.p_value)

    x_nan[:, 11] = np.nan  # undefined for every seed: the unit is dropped, as if never there
    y_nan = y.copy()
    y_nan[1, 20] = np.nan  # undefined in the reference: that pair is dropped too
    dropped = paired_difference(x_nan, y_nan)
    keep = np.ones(50, dtype=bool)
    keep[11] = False
    assert dropped == paired_difference(x_nan[:, keep], y_nan[:, keep])
    assert dropped.n_units == 49

    base_nan = y[:1].copy()
    base_nan[0, 3] = np.nan  # a NaN in the broadcast base row removes the unit for all seeds
    assert paired_difference(x, base_nan).n_units == 49


def test_small_inputs_do_not_raise() -> None:
    one_unit = paired_difference(np.array([[1.0, np.nan], [2.0, np.nan]]), np.zeros((1, 2)))
    assert one_unit.n_units == 1 and one_unit.diff == pytest.approx(1.5)
    assert math.isnan(one_unit.ci_low) and math.isnan(one_unit.ci_high) and math.isnan(one_unit.p_value)
    assert not one_unit.excludes_zero

    nothing = paired_difference(np.full((2, 3), np.nan), np.zeros(3))
    assert nothing.n_units == 0 and math.isnan(nothing.diff)
    empty = mean_ci(np.full(4, np.nan))
    assert empty.n == 0 and math.isnan(empty.mean) and math.isnan(empty.ci_low)
    assert mean_ci([2.0]).mean == 2.0 and math.isnan(mean_ci([2.0]).ci_low)


@pytest.mark.parametrize(
    ("x_shape", "y_shape"),
    [((3, 10), (3, 11)), ((3, 10), (2, 10)), ((1, 10), (3, 10)), ((2, 3, 10), (1, 10))],
)
def test_shapes_that_do_not_pair_raise(x_shape: tuple[int, ...], y_shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError):
        paired_difference(np.zeros(x_shape), np.zeros(y_shape))


def test_bad_values_and_arguments_raise() -> None:
    with pytest.raises(ValueError, match="inf"):
        paired_difference([1.0, np.inf], [0.0, 0.0])
    with pytest.raises(ValueError, match="confidence"):
        mean_ci([1.0, 2.0], confidence=1.0)
    with pytest.raises(ValueError, match="n_resamples"):
        paired_difference([1.0, 2.0], [0.0, 0.0], n_resamples=0)


# --------------------------------------------------------------------------------------------------
# Which method runs


def test_one_seed_uses_scipy_bootstrap_and_several_seeds_do_not(monkeypatch: pytest.MonkeyPatch) -> None:
    # A spy around the real scipy function (nothing is faked): records the calls and passes through.
    calls: list[dict] = []
    real = scipy.stats.bootstrap

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(scipy.stats, "bootstrap", spy)
    x, y = paired_data(shift=0.2, seeds=1, units=60, seed=6)
    one_seed = paired_difference(x, y, n_resamples=999, seed=7)
    assert len(calls) == 1 and calls[0]["method"] == "percentile"
    # Same numbers as calling scipy directly on the per-unit differences with the same seed.
    direct = real((x[0] - y[0],), np.mean, n_resamples=999, method="percentile", rng=np.random.default_rng(7))
    assert one_seed.ci_low == pytest.approx(direct.confidence_interval.low)
    assert one_seed.ci_high == pytest.approx(direct.confidence_interval.high)

    calls.clear()
    paired_difference(*paired_data(shift=0.2, seeds=3, units=60, seed=6))
    assert calls == []


# --------------------------------------------------------------------------------------------------
# Determinism, speed, coverage


def test_same_seed_same_result_and_the_seed_matters() -> None:
    x, y = paired_data(shift=0.05, seed=8)
    assert paired_difference(x, y, seed=11) == paired_difference(x, y, seed=11)
    assert mean_ci(x, seed=11) == mean_ci(x, seed=11)
    assert paired_difference(x, y, seed=11).ci_low != paired_difference(x, y, seed=12).ci_low


def test_three_by_five_hundred_is_fast() -> None:
    x, y = paired_data(shift=0.1, seeds=3, units=500, seed=9)
    paired_difference(x, y)  # warm up imports and caches
    start = time.perf_counter()
    paired_difference(x, y, n_resamples=2000)
    mean_ci(x, n_resamples=2000)
    elapsed = time.perf_counter() - start
    assert elapsed < 1.0, f"3 x 500 with 2000 resamples took {elapsed:.2f} s"


@pytest.mark.parametrize("seeds", [1, 3])
def test_interval_covers_a_zero_shift_about_95_percent_of_the_time(seeds: int) -> None:
    # Differences with a unit effect, a per-seed training effect and seed x unit noise; true mean 0.
    covered = 0
    for i in range(200):
        rng = np.random.default_rng(100 + i)
        d = rng.normal(0.0, 1.0, 40) + rng.normal(0.0, 0.05, (seeds, 1)) + rng.normal(0.0, 0.5, (seeds, 40))
        result = paired_difference(d, np.zeros(40), n_resamples=500, n_permutations=100, seed=i)
        covered += result.ci_low <= 0.0 <= result.ci_high
    assert 0.90 <= covered / 200 <= 0.99


# --------------------------------------------------------------------------------------------------
# Wording


def test_describe_states_a_direction_only_when_the_interval_excludes_zero() -> None:
    higher = PairedDifference(0.012, 0.004, 0.020, 0.01, 500, 3)
    assert describe(higher, "nats", "`none`") == "0.012 nats higher than `none` [95% CI 0.004, 0.020], p = 0.01"
    lower = PairedDifference(-0.012, -0.020, -0.004, 0.0002, 500, 3)
    assert describe(lower, "nats", "`none`") == "0.012 nats lower than `none` [95% CI 0.004, 0.020], p < 0.001"
    unclear = PairedDifference(0.003, -0.004, 0.010, 0.41, 500, 3)
    assert describe(unclear, "nats", "`none`") == (
        "no difference from `none` can be told apart (+0.003 nats [95% CI -0.004, 0.010], p = 0.41)"
    )
    # Real results on zero-shift data, and the degenerate cases: never a direction without an interval.
    cases = [paired_difference(*paired_data(shift=0.0, units=30, seed=s), n_resamples=300) for s in range(20)]
    cases += [PairedDifference(0.5, math.nan, math.nan, math.nan, 1, 3), PairedDifference(*[math.nan] * 4, 0, 0)]
    for case in cases:
        text = describe(case, "", "the base model")
        if not case.excludes_zero:
            assert "higher" not in text and "lower" not in text, text
        else:
            assert ("higher" in text) == (case.ci_low > 0), text


def test_p_value_formatting_and_method_text() -> None:
    assert [format_p(p) for p in (0.0004, 0.004, 0.41, math.nan)] == ["p < 0.001", "p = 0.004", "p = 0.41", "p n/a"]
    for phrase in ("two-stage", "scipy.stats.bootstrap", "permutation_test", "sign-flip", "seeded"):
        assert phrase in METHOD_TEXT
    d = PairedDifference(0.1, 0.0, 0.2, 0.5, 10, 2).to_dict()
    assert {"diff", "ci_low", "ci_high", "p_value", "n_units", "n_seeds"} <= set(d)
