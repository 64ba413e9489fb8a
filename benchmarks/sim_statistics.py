"""Null and power simulations of the study's finding rule, through the project's own statistics code.

Each simulated study is a matrix of per-story differences between an arm and `none`,
    d[s, j] = effect + seed_sd * a_s + story_sd * b_j + resid_sd * e_sj     (a, b, e standard normal)
with story_sd = 1 (the unit of `effect`), resid_sd = 0.5 and 40 stories, and is run through
`storytune.study.stats.paired_difference` (the function `summary.json` uses) and its `significant`
rule (a direction is stated). Below `stats.MIN_SEEDS` seeds that is the conditional claim ("for these
trained models only"), whose null is "these models do not differ", so seed variance counts as a real
difference there; the table marks the claim. The family-wise rate runs 30 null tests (3 arms x 10
metrics) per study through `stats.holm`.

    python benchmarks/sim_statistics.py              # 500 studies per setting (~1 min on 2 cores)
    python benchmarks/sim_statistics.py --studies 2000
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from storytune.study import stats  # noqa: E402

STORIES = 40
RESID_SD = 0.5


def study(rng: np.random.Generator, seeds: int, effect: float, seed_sd: float) -> stats.PairedDifference:
    d = (effect + seed_sd * rng.standard_normal((seeds, 1)) + rng.standard_normal((1, STORIES))
         + RESID_SD * rng.standard_normal((seeds, STORIES)))
    reference = rng.normal(5.0, 1.0, STORIES) + rng.normal(0.0, 0.3, (seeds, STORIES))
    return stats.paired_difference(reference + d, reference)


def rate(studies: int, seeds: int, effect: float, seed_sd: float, seed: int) -> tuple[float, str]:
    rng = np.random.default_rng(seed)
    results = [study(rng, seeds, effect, seed_sd) for _ in range(studies)]
    return float(np.mean([r.significant for r in results])), results[0].claim


def family_rate(studies: int, seeds: int, seed_sd: float, tests: int, seed: int) -> float:
    rng = np.random.default_rng(seed)
    hits = [np.nanmin(stats.holm([study(rng, seeds, 0.0, seed_sd).p_value for _ in range(tests)])) < stats.ALPHA
            for _ in range(studies)]
    return float(np.mean(hits))


def z_power_bound(seeds: int, seed_sd: float) -> float:
    """Power of a z test with KNOWN variances for effect 1: the ceiling for any seeds-as-units test."""
    from scipy.stats import norm

    se = math.sqrt(seed_sd**2 / seeds + 1.0 / STORIES + RESID_SD**2 / (seeds * STORIES))
    return float(norm.sf(norm.ppf(0.975) - 1.0 / se))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=500)
    args = parser.parse_args()
    n = args.studies
    started = time.perf_counter()
    print(f"{n} studies per setting, {STORIES} stories, story SD 1, residual SD {RESID_SD}; MIN_SEEDS = "
          f"{stats.MIN_SEEDS}")
    print("\nNull (effect 0): rate of a stated direction")
    print("| seeds | claim | seed SD 0 | 0.1 | 0.3 | 1.0 |\n|---:|---|---:|---:|---:|---:|")
    for seeds in (2, 3, 5, 10):
        cells = [rate(n, seeds, 0.0, sd, seed=seeds * 100 + i) for i, sd in enumerate((0.0, 0.1, 0.3, 1.0))]
        print(f"| {seeds} | {cells[0][1]} | " + " | ".join(f"{r:.1%}" for r, _ in cells) + " |")
    print("\nPower (effect 1 story-SD): rate of a stated direction; z bound = known-variance ceiling")
    print("| seeds | seed SD | power | z bound |\n|---:|---:|---:|---:|")
    for seeds, sd in ((3, 0.3), (5, 0.3), (5, 0.5), (5, 1.0), (10, 1.0), (20, 1.0)):
        found, _ = rate(n, seeds, 1.0, sd, seed=7000 + seeds * 10 + int(sd * 10))
        print(f"| {seeds} | {sd} | {found:.1%} | {z_power_bound(seeds, sd):.1%} |")
    print("\nFamily-wise rate, 30 null tests per study (3 arms x 10 metrics), Holm")
    print("| seeds | seed SD | any false finding |\n|---:|---:|---:|")
    for seeds, sd in ((3, 1.0), (5, 0.3)):
        print(f"| {seeds} | {sd} | {family_rate(max(100, n // 5), seeds, sd, 30, seed=9000 + seeds):.1%} |")
    print(f"\n{time.perf_counter() - started:.1f} s wall")


if __name__ == "__main__":
    main()
