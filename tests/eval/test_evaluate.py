"""The evaluation job end to end: a tiny base model and a tiny fine-tuned one, on real stories.

The fine-tune and both evaluations run once per module (~30 s on 2 CPU cores); everything is
written under pytest's temporary folders (the shared stories are only read).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, tiny_overrides
from storytune.cluster.worker import run_finetune
from storytune.config import load_run_config
from storytune.eval.evaluate import (
    CORPUS_METRICS,
    Evaluation,
    LoadedLM,
    Samples,
    Scorer,
    Timer,
    corpus_aggregates,
    evaluate_model,
    finite_or_none,
    format_summary,
    run_evaluate,
    scatter,
    score,
)
from storytune.eval.generate import Prompt, read_generations
from storytune.eval.metrics import SentenceEncoder
from storytune.paths import EVAL_FILE, GENERATIONS_FILE
from storytune.train.model import load_model, load_tokenizer, resolve_base_model

NUM_PROMPTS = 8
METRICS = {*CORPUS_METRICS, "fluency_perplexity", "coherence", "new_tokens", "test_perplexity"}
TOP_KEYS = {"kind", "model", "metrics", "mauve", "ci", "scorer", "encoder", "counts", "settings", "versions",
            "timings_s", "files", "finished_at"}



def tiny_config(stories: Path, cache: Path, out: Path, *extra: str):
    """conftest's tiny run (1 layer, d=32, 64 positions), 20 steps, 8 prompts of 16 new tokens."""
    overrides = tiny_overrides(stories, cache, out, {
        "train.max_steps": 20, "train.max_eval_blocks": 8, "generation.num_prompts": NUM_PROMPTS,
        "generation.max_new_tokens": 16, "eval.scorer": "base", "eval.bootstrap_resamples": 100})
    return load_run_config(None, [*overrides, *extra])


def load_job():
    """`storytune evaluate` (what `jobs/evaluate.py` runs), called in-process."""
    from types import SimpleNamespace

    from storytune import cli

    return SimpleNamespace(main=lambda argv: cli.main(["evaluate", *argv]))


@pytest.fixture(scope="module")
def run(tmp_path_factory, stories_dir, data_cache):
    """A finished tiny fine-tune, then the job evaluates its model and its base model."""
    tmp = tmp_path_factory.mktemp("evaluate")
    config = tiny_config(stories_dir, data_cache, tmp)
    result = run_finetune(config)
    run_dir = Path(result["run_dir"])
    job = load_job()
    assert job.main(["--run-dir", str(run_dir)]) == 0
    assert job.main(["--run-dir", str(run_dir), "--base"]) == 0
    return {"config": config, "run_dir": run_dir, "job": job, "tmp": tmp, "stories": stories_dir, "cache": data_cache,
            "tuned": run_dir / "eval", "base": tmp / "base" / "eval"}


@pytest.mark.parametrize("which", ["tuned", "base"])
def test_eval_json_has_every_metric_with_finite_values(run, which):
    out = run[which]
    result = json.loads((out / EVAL_FILE).read_text())
    assert set(result) >= TOP_KEYS
    assert set(result["metrics"]) == METRICS
    for name, agg in result["metrics"].items():
        assert math.isfinite(agg["mean"]), name
        if name != "test_perplexity":
            assert agg["ci_low"] <= agg["mean"] + 1e-9 and agg["mean"] <= agg["ci_high"] + 1e-9, name
    assert result["counts"]["samples"] == NUM_PROMPTS
    assert result["counts"]["n_scored"] + result["counts"]["n_empty"] == NUM_PROMPTS
    assert result["scorer"]["name"] == resolve_base_model(run["config"].model, run["config"].output.dir)
    assert "base" in result["scorer"]["reason"]
    assert result["encoder"]["name"] and result["mauve"]["reason"]
    assert set(result["versions"]) >= {"torch", "transformers", "storytune"}
    assert result["settings"]["generation"]["num_prompts"] == NUM_PROMPTS
    assert (out / EVAL_FILE).stat().st_mtime_ns >= (out / GENERATIONS_FILE).stat().st_mtime_ns


@pytest.mark.parametrize("which", ["tuned", "base"])
def test_generations_jsonl_has_one_line_per_prompt(run, which):
    lines = read_generations(run[which] / GENERATIONS_FILE)
    assert len(lines) == NUM_PROMPTS
    assert [line["index"] for line in lines] == list(range(NUM_PROMPTS))
    for line in lines:
        assert set(line) >= {"prompt", "continuation", "reference", "model", "decoding", "index", "metrics"}
        assert line["decoding"]["seed"] == run["config"].generation.seed
        assert line["continuation"] == line["raw_continuation"].strip()
        assert line["new_tokens"] <= run["config"].generation.max_new_tokens


def test_every_model_gets_the_same_prompts(run):
    tuned = read_generations(run["tuned"] / GENERATIONS_FILE)
    base = read_generations(run["base"] / GENERATIONS_FILE)
    assert [(t["prompt"], t["reference"]) for t in tuned] == [(b["prompt"], b["reference"]) for b in base]
    assert {t["model"] for t in tuned} == {run["run_dir"].name} and {b["model"] for b in base} == {"base"}


def test_finished_evaluation_is_skipped(run, caplog):
    path = run["tuned"] / EVAL_FILE
    before = path.stat().st_mtime_ns
    result = run_evaluate(run["config"], str(run["run_dir"] / "model"), run["tuned"], "again")
    assert result["model"]["label"] == run["run_dir"].name and path.stat().st_mtime_ns == before
    assert format_summary(result).startswith(f"[eval {run['run_dir'].name}]")


def test_unloadable_scorer_falls_back_to_base_and_says_why(run):
    config = tiny_config(run["stories"], run["cache"], run["tmp"], "eval.scorer=/nonexistent/scorer",
                         "generation.num_prompts=3", "generation.max_new_tokens=4", "eval.bootstrap_resamples=10")
    result = evaluate_model(config, str(run["run_dir"] / "model"), run["tmp"] / "fallback", "tuned")
    assert result["scorer"]["name"] == resolve_base_model(config.model, config.output.dir)
    assert "cannot be loaded" in result["scorer"]["reason"] and "/nonexistent/scorer" in result["scorer"]["reason"]
    assert result["counts"]["samples"] == 3


# --------------------------------------------------------------------------------------------------
# The job's errors


def test_missing_checkpoint_is_a_one_line_error(run, tmp_path, capsys):
    (tmp_path / "config.yaml").write_text((run["run_dir"] / "config.yaml").read_text())
    assert run["job"].main(["--run-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: no fine-tuned model at") and "\n" not in err


def test_job_as_a_subprocess_exits_2_without_traceback(run, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
    result = subprocess.run([sys.executable, "jobs/evaluate.py", "--run-dir", str(tmp_path / "missing")],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().startswith("error: invalid config") and "config file not found" in result.stderr


@pytest.mark.parametrize("argv, message", [
    (["--run-dir", "/nonexistent/run"], "config file not found"),
    (["generation.top_p=3"], "generation.top_p"),
    (["--model", "/nonexistent/model"], "--model needs --out"),
])
def test_bad_arguments_are_one_line_errors(run, capsys, argv, message):
    if argv[0] != "--run-dir":
        argv = ["--run-dir", str(run["run_dir"]), *argv]
    assert run["job"].main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err


def test_missing_model_path_is_a_one_line_error(run, tmp_path, capsys):
    argv = ["--run-dir", str(run["run_dir"]), "--model", "/nonexistent/model", "--out", str(tmp_path)]
    assert run["job"].main(argv) == 2
    assert "cannot load model '/nonexistent/model'" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------------
# Empty continuations and the pure helpers


def test_empty_continuations_are_excluded_and_counted(run):
    config = run["config"]
    base = resolve_base_model(config.model, config.output.dir)
    lm = LoadedLM(load_model(base), load_tokenizer(base), base)
    calls = []

    def encode(texts):
        calls.append(list(texts))
        return np.random.default_rng(len(texts)).normal(size=(len(texts), 8))

    prompts = [Prompt(f"Prompt {i} here.", f"Reference {i}.", i) for i in range(4)]
    samples = Samples(prompts, [" The cat sat on the mat.", " \n", " A dog ran to the park and ran home.", ""],
                      [7, 1, 10, 0])
    evaluation = Evaluation(samples)
    score(evaluation, lm, Scorer(lm, "base", base, "test"), SentenceEncoder(encode, "stub"),
          ["A story. It ends."], config, "cpu", Timer())
    assert samples.kept == [0, 2] and samples.n_empty == 2
    assert len(calls) == 1  # one encoder call for every embedding
    for name in ("fluency_perplexity", "coherence", "self_bleu", "distinct_2"):
        values = evaluation.per_sample[name]
        assert math.isnan(values[1]) and math.isnan(values[3]) and math.isfinite(values[0]), name
    assert evaluation.aggregates["coherence"].n == 2 and evaluation.aggregates["distinct_1"].n == 2


def test_scatter_and_finite_or_none():
    assert [None if math.isnan(v) else v for v in scatter([1.0, 2.0], [0, 2], 4)] == [1.0, None, 2.0, None]
    assert finite_or_none({"a": [math.nan, 1.0], "b": math.inf, "c": "x"}) == {"a": [None, 1.0], "b": None, "c": "x"}


def test_corpus_metrics_need_two_texts():
    aggs = corpus_aggregates(["only one text here"], 10)
    assert set(aggs) == set(CORPUS_METRICS) and all(math.isnan(a.mean) and a.n == 1 for a in aggs.values())
