"""Benchmark: aggregate a grid (storytune.study.compare.summarize) and render its report (write_report).

The default is the issue's 15-cell grid: 5 arms x 3 seeds, 25 evaluations per run, 10 generation metrics
and 20 prompts of samples; the requirement is under 30 s on 2 CPU cores for both together. Timed twice:
`summarize` on 15 synthetic cells (200 test stories, 100 prompts with 8 per-prompt metrics each, the
statistics, Holm and the findings), then `write_report` on a synthetic summary.json (made up curves and
intervals with the shape of a real replay study), since only their sizes matter for timing.

    python benchmarks/bench_report.py                       # 5 arms x 3 seeds, prints the wall time
    python benchmarks/bench_report.py --arms 15 --out /tmp/r  # keep the report (e.g. for a screenshot)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from storytune.study.compare import BaseData, CellData, Context, summarize  # noqa: E402
from storytune.study.report import write_report  # noqa: E402

METRICS = {  # key -> (label, higher is better, unit, typical value, typical CI half-width)
    "distinct_1": ("distinct-1", True, "", 0.42, 0.01),
    "distinct_2": ("distinct-2", True, "", 0.78, 0.012),
    "distinct_3": ("distinct-3", True, "", 0.93, 0.008),
    "rep_2": ("rep-2", False, "", 0.21, 0.01),
    "rep_3": ("rep-3", False, "", 0.09, 0.008),
    "rep_4": ("rep-4", False, "", 0.05, 0.006),
    "diversity": ("diversity", True, "", 0.61, 0.02),
    "distinct_2_len16": ("distinct-2, first 16 tokens", True, "", 0.82, 0.02),
    "fluency_nll": ("scorer NLL per token (length-matched; scorer perplexity = exp)", False, "nats/token", 2.9, 0.05),
    "coherence": ("coherence", True, "cosine", 0.47, 0.015),
    "new_tokens": ("new tokens", None, "tokens", 96.0, 4.0),
}
TEST_LOSS = ("test loss", False, "nats/token", 5.41, 0.11)
WORDS = ("once upon a time there was a little girl named Lily she loved to play in the park with her dog "
         "one day they found a big red ball and were very happy the sun was shining").split()


def _loss(step: int, max_steps: int, seed: int) -> tuple[float, float]:
    """(validation, train) nats/token: fast initial drop, then slow over-fitting (validation rises late)."""
    t = step / max_steps
    wobble = 0.01 * math.sin(step * 0.7 + seed)
    eval_loss = 5.2 + 5.6 * math.exp(-step / (0.06 * max_steps)) + 0.35 * t**2 - 0.15 * t + wobble
    train_loss = eval_loss - 0.45 * t**1.5 + 0.02 * math.cos(step + seed)
    return eval_loss, train_loss


def _stat(rng: random.Random, mean: float, half: float) -> dict:
    low, high = mean - half * rng.uniform(0.8, 1.2), mean + half * rng.uniform(0.8, 1.2)
    return {"mean": mean, "ci_low": low, "ci_high": high}


def _diff(rng: random.Random, diff: float, half: float) -> dict:
    return {"diff": diff, "ci_low": diff - half, "ci_high": diff + half, "p_value": rng.uniform(0.0005, 0.6)}


def _text(rng: random.Random, n_words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n_words)).capitalize() + "."


def _curve(seed: int, max_steps: int, eval_steps: int, tokens_per_step: int, patience: int | None) -> dict:
    """One seed's history, cut where a patience rule on validation loss would stop (replay)."""
    history, best, best_step, bad = [], math.inf, 0, 0
    stop = max_steps
    for step in range(eval_steps, max_steps + 1, eval_steps):
        eval_loss, train_loss = _loss(step, max_steps, seed)
        history.append({"step": step, "tokens": step * tokens_per_step, "eval_loss": eval_loss,
                        "train_loss": train_loss})
        if eval_loss < best:
            best, best_step, bad = eval_loss, step, 0
        else:
            bad += 1
        if patience is not None and bad >= patience:
            stop = step
            break
    kept = stop if patience is None else best_step
    return {"seed": seed, "run_id": f"arm-seed{seed}", "replayed": patience is not None, "history": history,
            "stop_step": stop, "best_step": best_step, "kept_step": kept}


def synthetic_summary(n_arms: int = 5, n_seeds: int = 3, n_evals: int = 25, n_metrics: int = 10,
                      n_samples: int = 20, seed: int = 0) -> dict:
    """A summary.json-shaped dict of a replay study: `none` plus patience arms."""
    rng = random.Random(seed)
    eval_steps, tokens_per_step = 200, 4096
    max_steps = eval_steps * n_evals
    seeds = list(range(1, n_seeds + 1))
    keys = list(METRICS)[:n_metrics]
    names = ["none"] + [f"patience{p}-thr0.0{t}" for p in range(1, 20) for t in (0, 5)][: n_arms - 1]
    specs = {"test_loss": TEST_LOSS} | {k: METRICS[k] for k in keys}
    arm_list = []
    for i, name in enumerate(names):
        patience = None if name == "none" else 1 + (i - 1) // 2
        curves = [_curve(s, max_steps, eval_steps, tokens_per_step, patience) for s in seeds]
        mean_of = lambda field, cs=curves: sum(c[field] for c in cs) / len(cs)  # noqa: E731
        none_tokens = max_steps * tokens_per_step  # per run, mean over seeds (as in summary.json)
        train_tokens = mean_of("stop_step") * tokens_per_step
        shift = 0.0 if name == "none" else -0.01 * rng.uniform(-1, 2)
        arm_list.append({
            "variant": name, "n_seeds": n_seeds, "seeds": seeds, "run_ids": [f"{name}-seed{s}" for s in seeds],
            "stop_step": mean_of("stop_step"), "best_step": mean_of("best_step"), "kept_step": mean_of("kept_step"),
            "stopped_early": sum(c["stop_step"] < max_steps for c in curves) / n_seeds,
            "train_tokens": train_tokens, "compute_saved": 1 - train_tokens / none_tokens,
            "selection_eval_loss": 5.3 + shift,
            "test_loss": _stat(rng, 5.41 + shift, 0.11) | {"n_stories": 200},
            "metrics": {k: _stat(rng, METRICS[k][3] * rng.uniform(0.95, 1.05), METRICS[k][4]) for k in keys},
            "vs_none": {} if name == "none" else {k: _diff(rng, spec[4] * rng.uniform(-1.5, 1.5), spec[4] * 0.8)
                                                  for k, spec in specs.items()},
            "vs_base": {k: _diff(rng, -METRICS[k][4] * 4, METRICS[k][4]) for k in keys}
            | {"test_loss": _diff(rng, -5.4, 0.1)},
            "curves": curves,
        })
    continuations = lambda: {"base": _text(rng, 40)} | {n: _text(rng, 60) for n in names}  # noqa: E731
    return {
        "grid": "synthetic", "created_at": "2026-11-27T14:30:00+00:00", "study_mode": "replay",
        "models": {"base": "gpt2-tiny", "base_is_random": True,
                   "scorer": "gpt2-scorer", "encoder": "all-MiniLM-L6-v2"},
        "seeds": seeds,
        "budget": {"max_steps": max_steps, "eval_steps": eval_steps, "tokens_per_step": tokens_per_step},
        "warnings": ["The base model is a random initialisation: differences vs base say little.",
                     "Synthetic summary for the benchmark: the numbers are made up."],
        "findings": [f"`{names[-1]}` stopped early on every seed; the numbers here are synthetic.",
                     "`patience1-thr0.00` vs `none` on generation: no generation metric differs from `none` after "
                     "Holm correction (10 compared)."],
        "cells": {"expected": n_arms * n_seeds, "finished": n_arms * n_seeds, "failed": [], "missing_evals": []},
        "replay": {"trainings": n_seeds, "trainings_without_replay": n_arms * n_seeds,
                   "train_tokens": max_steps * tokens_per_step * n_seeds,
                   "train_tokens_without_replay": sum(a["train_tokens"] for a in arm_list) * n_seeds},
        "metric_info": {k: {"label": v[0], "higher_is_better": v[1], "unit": v[2]} for k, v in METRICS.items()
                        if k in keys} | {"test_loss": {"label": "test loss", "higher_is_better": False,
                                                      "unit": "nats/token"}},
        "arms": arm_list,
        "base": {"test_loss": _stat(rng, 10.8, 0.05) | {"n_stories": 200},
                 "metrics": {k: _stat(rng, METRICS[k][3] * 1.3, METRICS[k][4]) for k in keys}},
        "samples": [{"prompt": f"Once upon a time, prompt {i + 1}", "reference": _text(rng, 60),
                     "continuations": continuations()} for i in range(n_samples)],
        "provenance": {"config_hash": "ab12cd34", "git_commit": "0123456789abcdef", "versions":
                       {"python": platform.python_version(), "matplotlib": __import__("matplotlib").__version__},
                       "intervals": "Synthetic: intervals are made up for the benchmark."},
    }


def synthetic_cells(n_arms: int, n_seeds: int, n_evals: int, stories: int = 200, prompts: int = 100,
                    seed: int = 0) -> list[CellData]:
    """Finished cells with per-story test losses and per-prompt generation metrics (what summarize reads)."""
    rng = np.random.default_rng(seed)
    eval_steps, max_steps = 200, 200 * n_evals
    tokens = rng.integers(50, 400, stories)
    story = rng.normal(2.0, 0.3, stories)
    keys = ["fluency_nll", "coherence", "distinct_2", "rep_2", "coherence_len16", "distinct_2_len16", "rep_2_len16"]
    cells = []
    for arm in range(n_arms):
        variant = "none" if arm == 0 else f"patience{arm}"
        for s in range(1, n_seeds + 1):
            curve = _curve(s, max_steps, eval_steps, 4096, None if arm == 0 else arm)
            loss = (story + 0.01 * arm + rng.normal(0, 0.05, stories)) * tokens
            result = {"stop_step": curve["stop_step"], "best_step": curve["best_step"], "kept_step": curve["kept_step"],
                      "stopped_early": curve["stop_step"] < max_steps, "max_steps": max_steps,
                      "tokens_per_step": 4096, "train_tokens": curve["stop_step"] * 4096, "kept_eval_loss": 5.3,
                      "eval_history": curve["history"],
                      "test_story_losses": {"loss_sum": loss.tolist(), "tokens": tokens.tolist()},
                      "base_test_story_losses": {"loss_sum": (story * tokens * 5).tolist(), "tokens": tokens.tolist()}}
            generations = [{"story_index": j, "prompt": f"p{j}", "reference": "r", "continuation": "c",
                            "new_tokens": int(rng.integers(10, 64)),
                            "metrics": {k: float(rng.normal(1.0, 0.2)) for k in keys}} for j in range(prompts)]
            evaluation = {"scorer": {"used": "s"}, "encoder": {"used": "e"},
                          "metrics": {"self_bleu": {"mean": 0.3, "ci_low": 0.28, "ci_high": 0.32, "n": prompts}},
                          "mauve": {"value": None, "reason": "off"}}
            cells.append(CellData(f"{variant}-seed{s}", variant, s, result=result, eval=evaluation,
                                  generations=generations))
    return cells


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arms", type=int, default=5)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--evals", type=int, default=25, help="evaluations per run")
    parser.add_argument("--metrics", type=int, default=10, help=f"generation metrics (at most {len(METRICS)})")
    parser.add_argument("--samples", type=int, default=20, help="prompts in the samples section")
    parser.add_argument("--out", type=Path, help="keep the report here (default: a temporary folder)")
    args = parser.parse_args()
    cells = synthetic_cells(args.arms, args.seeds, args.evals)
    start = time.perf_counter()
    summarize(cells, Context("synthetic", "2026-11-27T14:30:00+00:00", True, BaseData("base", True)))
    aggregated = time.perf_counter() - start
    print(f"summarize: {len(cells)} cells, 200 stories, 100 prompts x 7 metrics: {aggregated:.2f} s wall")
    summary = json.loads(json.dumps(synthetic_summary(args.arms, args.seeds, args.evals, args.metrics, args.samples)))
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp)
        start = time.perf_counter()
        html_path = write_report(summary, out)
        elapsed = time.perf_counter() - start
        size_kb = html_path.stat().st_size / 1024
        print(f"cpus available: {len(os.sched_getaffinity(0))}, python {platform.python_version()}")
        print(f"{args.arms} arms x {args.seeds} seeds, {args.evals} evaluations, {args.metrics} metrics, "
              f"{args.samples} samples: write_report {elapsed:.2f} s wall, report.html {size_kb:,.0f} KiB; "
              f"aggregate + report {aggregated + elapsed:.2f} s")
        if args.out:
            print(html_path)


if __name__ == "__main__":
    main()
