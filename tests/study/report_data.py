"""Synthetic `summary.json` dicts for the report tests (shared by test_report.py and test_report_browser.py).

`known_summary()` has hand-picked numbers whose formatted text the tests spell out; `wide_summary()` has the
issue's worst case for readability (15 arms x 3 seeds) with plain made-up curves.
"""

from __future__ import annotations

import copy
import math
from typing import Any

TOKENS_PER_STEP = 512


def history(steps: list[int], offset: float = 0.0) -> list[dict[str, Any]]:
    """Validation falls then rises after step 140; train keeps falling (nats/token)."""
    return [{"step": s, "tokens": s * TOKENS_PER_STEP, "eval_loss": 5.4 + 0.00002 * (s - 140) ** 2 + offset,
             "train_loss": 5.45 - 0.002 * s + offset} for s in steps]


def curve(seed: int, steps: list[int], stop: int, best: int, kept: int, offset: float = 0.0) -> dict[str, Any]:
    return {"seed": seed, "run_id": f"run-seed{seed}", "replayed": False, "history": history(steps, offset),
            "stop_step": stop, "best_step": best, "kept_step": kept}


def stat(mean: float | None, low: float | None, high: float | None) -> dict[str, Any]:
    return {"mean": mean, "ci_low": low, "ci_high": high}


def diff(value: float, low: float, high: float, p: float | None) -> dict[str, Any]:
    return {"diff": value, "ci_low": low, "ci_high": high, "p_value": p}


_KNOWN: dict[str, Any] = {
    "grid": "demo",
    "created_at": "2026-11-27T14:30:00+00:00",
    "study_mode": "replay",
    "models": {"base": "sshleifer/tiny-gpt2", "base_is_random": True, "scorer": "gpt2-scorer",
               "encoder": "all-MiniLM-L6-v2"},
    "seeds": [1, 2],
    "budget": {"max_steps": 300, "eval_steps": 20, "tokens_per_step": TOKENS_PER_STEP},
    "warnings": ["The base model is a random initialisation: differences vs base say little.",
                 "1 cell failed: patience3-seed2-cafe0001"],
    "findings": ["`patience2` stopped at step 180 of 300 on average, saving 40% of training tokens; test loss: "
                 "0.012 nats lower than `none` [95% CI 0.004, 0.020], p < 0.001, Holm-adjusted p = 0.002 over 4 tests "
                 "(for these trained models only: 2 seeds, 40 stories; a claim about the training procedure needs "
                 ">= 3 seeds).",
                 "patience3: not distinguishable from `none`."],
    "cells": {"expected": 6, "finished": 5, "failed": ["patience3-seed2-cafe0001"], "missing_evals": []},
    "replay": {"trainings": 2, "trainings_without_replay": 6, "train_tokens": 307200,
               "train_tokens_without_replay": 700000},
    "metric_info": {"distinct_2": {"label": "distinct-2", "higher_is_better": True, "unit": ""},
                    "fluency_perplexity": {"label": "fluency perplexity", "higher_is_better": False, "unit": ""},
                    "test_loss": {"label": "test loss", "higher_is_better": False, "unit": "nats/token"}},
    "arms": [
        {"variant": "none", "n_seeds": 2, "seeds": [1, 2], "run_ids": ["none-seed1", "none-seed2"],
         "stop_step": 300.0, "best_step": 140.0, "kept_step": 300.0, "stopped_early": 0.0,
         "train_tokens": 153600.0, "compute_saved": 0.0, "selection_eval_loss": 5.912,
         "test_loss": stat(5.41, 5.30, 5.52) | {"n_stories": 40},
         "metrics": {"distinct_2": stat(0.8123, 0.8, 0.825), "fluency_perplexity": stat(23.4, 22.1, 24.9)},
         "vs_none": {},
         "vs_base": {"test_loss": diff(-5.39, -5.45, -5.33, 0.002),
                     "distinct_2": diff(0.05, 0.03, 0.07, 0.004)},
         "curves": [curve(1, list(range(20, 301, 20)), 300, 140, 300),
                    curve(2, list(range(20, 301, 20)), 300, 140, 300, offset=0.02)]},
        {"variant": "patience2", "n_seeds": 2, "seeds": [1, 2], "run_ids": ["patience2-seed1", "patience2-seed2"],
         "stop_step": 180.0, "best_step": 140.0, "kept_step": 140.0, "stopped_early": 1.0,
         "train_tokens": 92160.0, "compute_saved": 0.4, "selection_eval_loss": 5.401,
         "test_loss": stat(5.398, 5.392, 5.404) | {"n_stories": 40},
         "metrics": {"distinct_2": stat(0.79, 0.78, 0.80), "fluency_perplexity": stat(24.0, 23.0, 25.0)},
         "vs_none": {"test_loss": diff(-0.012, -0.020, -0.004, 0.0002),
                     "distinct_2": diff(-0.022, -0.05, 0.006, 0.41)},
         "vs_base": {"test_loss": diff(-5.4, -5.5, -5.3, 0.001)},
         "curves": [curve(1, list(range(20, 181, 20)), 180, 140, 140),
                    curve(2, list(range(20, 161, 20)), 160, 140, 140, offset=0.02)]},
        {"variant": "patience3", "n_seeds": 1, "seeds": [1], "run_ids": ["patience3-seed1"],
         "stop_step": 200.0, "best_step": 140.0, "kept_step": 140.0, "stopped_early": 1.0,
         "train_tokens": 102400.0, "compute_saved": 0.3333, "selection_eval_loss": None,
         "test_loss": stat(5.5, None, None) | {"n_stories": 40},
         "metrics": {}, "vs_none": {"test_loss": diff(0.003, -0.004, 0.010, None)}, "vs_base": {},
         "curves": []},
    ],
    "base": {"test_loss": stat(10.8, 10.75, 10.85) | {"n_stories": 40},
             "metrics": {"distinct_2": stat(0.95, 0.94, 0.96), "fluency_perplexity": stat(900.0, 850.0, 950.0)}},
    "samples": [
        {"prompt": "Once upon a time, Tom & Lily", "reference": "they went to the park.",
         "continuations": {"none": "they played <b>ball</b>.", "base": "xq zz <script>alert(1)</script>",
                           "patience2": "they had fun together."}},
        {"prompt": "The cat sat", "reference": "on the mat.",
         "continuations": {"base": "mat mat mat", "none": "on a warm rug.", "patience2": None}},
    ],
    "provenance": {"config_hash": "ab12cd34", "git_commit": "0123abcd", "versions": {"torch": "2.13.0",
                   "transformers": "5.24"},
                   "intervals": "Test loss: bootstrap over stories. Differences: paired, sign-flip p."},
}


def known_summary() -> dict[str, Any]:
    """A fresh deep copy, so a test may change it."""
    return copy.deepcopy(_KNOWN)


def wide_summary(n_arms: int = 15, n_seeds: int = 3) -> dict[str, Any]:
    """`none` plus n_arms - 1 patience arms (long names), every arm with n_seeds curves and metrics."""
    summary = known_summary()
    summary["seeds"] = list(range(1, n_seeds + 1))
    steps = list(range(20, 301, 20))
    arm_list = []
    for i in range(n_arms):
        name = "none" if i == 0 else f"patience{i}-threshold0.0{i % 10}"
        stop = 300 if i == 0 else min(300, 140 + 20 * i)
        arm_list.append({
            "variant": name, "n_seeds": n_seeds, "seeds": summary["seeds"], "stop_step": float(stop),
            "best_step": 140.0, "kept_step": 300.0 if i == 0 else 140.0, "stopped_early": float(i > 0),
            "train_tokens": float(stop * TOKENS_PER_STEP), "compute_saved": 1 - stop / 300,
            "selection_eval_loss": 5.4, "test_loss": stat(5.4 + 0.001 * i, 5.3, 5.5 + 0.001 * i),
            "metrics": {"distinct_2": stat(0.8 + 0.002 * i, 0.79, 0.82 + 0.002 * i),
                        "fluency_perplexity": stat(23 + 0.1 * i, 22, 24 + 0.1 * i)},
            "vs_none": {}, "vs_base": {},
            "curves": [curve(s, [t for t in steps if t <= stop], stop, 140, 140, offset=0.01 * math.sin(s))
                       for s in summary["seeds"]],
        })
    summary["arms"] = arm_list
    summary["cells"] = {"expected": n_arms * n_seeds, "finished": n_arms * n_seeds, "failed": [],
                        "missing_evals": []}
    return summary
