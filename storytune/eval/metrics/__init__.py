"""Metrics for generated stories: diversity, self-BLEU, fluency, coherence, MAUVE, and confidence intervals.

Pure functions over lists of strings, except the model-based ones, which are handed a model or an encoder.
Only numpy, scipy and the standard library are imported at module level; torch, transformers and
sentence-transformers are imported inside the functions that need them.
Formulas, sources and the rules for bad input: ``docs/metrics.md``.
"""

from storytune.eval.metrics.ci import Aggregate, aggregate, bootstrap_ci, bootstrap_corpus_metric
from storytune.eval.metrics.coherence import SentenceEncoder, coherence_scores, load_sentence_encoder
from storytune.eval.metrics.lm import conditional_nlls, conditional_perplexities, corpus_perplexity
from storytune.eval.metrics.mauve import mauve_score, mauve_unavailable_reason
from storytune.eval.metrics.ngrams import distinct_n, diversity, rep_n
from storytune.eval.metrics.self_bleu import self_bleu, self_bleu_scores

__all__ = [
    "Aggregate",
    "SentenceEncoder",
    "aggregate",
    "bootstrap_ci",
    "bootstrap_corpus_metric",
    "coherence_scores",
    "conditional_nlls",
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
