"""Diversity of a set of texts: distinct-n, rep-n and SimCTG's diversity, plus the shared input checks.

Bad-input rules, shared by every text metric in `storytune.eval.metrics`:

* an empty list of texts raises ``ValueError``; a bare ``str`` instead of a list raises ``TypeError``;
* a text shorter than ``n`` tokens contributes no n-grams;
* when the whole corpus has no n-gram at all, the n-gram ratios (``distinct_n``, ``rep_n``,
  ``diversity``) return ``math.nan`` (undefined), never 0 (which would read as a real score).

Formulas and sources: ``docs/metrics.md``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

Tokenizer = Callable[[str], Sequence[str]]

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
