"""Exact nucleus sampling (storytune.eval.sampling): the same nucleus as transformers' TopPLogitsWarper,
exact inverse-CDF draws, and a decoding loop whose rows do not depend on each other."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import chisquare
from transformers import GPT2Config, GPT2LMHeadModel
from transformers.generation.logits_process import (
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from storytune.eval import sampling
from storytune.eval.sampling import (
    next_token_probs,
    row_uniforms,
    sample_inverse_cdf,
    sample_tokens,
    top_p_filter,
    top_p_mask,
)

VOCAB = 50257  # GPT-2's: the shape the bucket select is tuned for
EOS = 0


def warper(logits: torch.Tensor, top_p: float, min_tokens_to_keep: int = 1) -> torch.Tensor:
    return TopPLogitsWarper(top_p, min_tokens_to_keep=min_tokens_to_keep)(None, logits.clone())


@pytest.fixture
def fallback_rows(monkeypatch):
    """Counts the rows handed to the warper, so a test can show the bucket select decided the rest."""
    seen = []
    real = sampling._warper_drop

    def counting(logits, top_p, min_tokens_to_keep):
        seen.append(logits.shape[0])
        return real(logits, top_p, min_tokens_to_keep)

    monkeypatch.setattr(sampling, "_warper_drop", counting)
    return seen


def random_rows(n: int, scale: float, generator: torch.Generator) -> torch.Tensor:
    return torch.randn(n, VOCAB, generator=generator) * scale


# --------------------------------------------------------------------------------------------------
# The nucleus


@pytest.mark.parametrize("top_p", [0.1, 0.5, 0.9, 0.95, 0.99])
def test_top_p_filter_equals_transformers_warper_on_random_rows(top_p, fallback_rows):
    """Flat (random-weight model: logit std ~0.16) to peaked (std 10) rows: identical tensors."""
    g = torch.Generator().manual_seed(int(top_p * 100))
    logits = torch.cat([random_rows(16, scale, g) for scale in (0.05, 0.16, 1.0, 3.0, 10.0)])
    assert torch.equal(top_p_filter(logits, top_p), warper(logits, top_p))
    # The bucket select, not the fallback, decided most rows (the fallback IS the warper).
    assert sum(fallback_rows) <= len(logits) // 5


def test_top_p_filter_equals_warper_with_ties_peaks_and_flat_rows(fallback_rows):
    g = torch.Generator().manual_seed(1)
    peaked = random_rows(8, 1.0, g)
    peaked[:, 123] = 25.0  # one token holds nearly all the mass
    two_peaks = random_rows(8, 1.0, g)
    two_peaks[:, [5, 9]] = 12.0  # a tie at the top
    rows = {
        "integer logits (many ties)": (random_rows(16, 3.0, g)).round(),
        "one-decimal logits (ties at every cut)": (random_rows(16, 0.5, g)).round(decimals=1),
        "all equal": torch.zeros(2, VOCAB),
        "peaked": peaked,
        "tied peak": two_peaks,
    }
    for top_p in (0.3, 0.9, 0.95):
        for name, logits in rows.items():
            assert torch.equal(top_p_filter(logits, top_p), warper(logits, top_p)), (name, top_p)
    assert sum(fallback_rows) > 0  # ties at the cut are left to the warper


def test_cut_on_an_exact_boundary_matches_warper():
    """Probabilities 1/2, 1/4, 1/8, 1/8 (+ zero-mass tokens): the masses hit 1 - top_p exactly."""
    logits = torch.full((4, VOCAB), -float("inf"))
    logits[:, :4] = torch.tensor([0.5, 0.25, 0.125, 0.125]).log()
    for top_p in (0.5, 0.75, 0.875, 1.0):
        assert torch.equal(top_p_filter(logits, top_p), warper(logits, top_p)), top_p


def test_rows_whose_cut_float_rounding_decides_are_left_to_warper():
    """top_p chosen so that 1 - top_p equals one of the warper's own float32 cumulative masses: the
    decision is then down to rounding. The default margin hands these rows to the warper (equal);
    without it, the bucket select's float64 masses decide some of them differently."""
    g = torch.Generator().manual_seed(6)
    logits = random_rows(16, 0.16, g)
    differs_without_margin = 0
    for row in logits.split(1):
        masses = row.sort().values.softmax(-1).cumsum(-1)[0]
        top_p = 1 - masses[int((masses <= 0.05).sum())].item()
        expected = warper(row, top_p) != -float("inf")
        assert torch.equal(top_p_mask(row, top_p), expected)
        differs_without_margin += not torch.equal(top_p_mask(row, top_p, margin=0.0), expected)
    assert differs_without_margin > 0


def test_min_tokens_to_keep_and_minus_inf_logits_match_warper():
    g = torch.Generator().manual_seed(2)
    logits = random_rows(16, 2.0, g)
    logits[:, 0] = 30.0  # nucleus of one token: min_tokens_to_keep decides
    topk = TopKLogitsWarper(top_k=50)(None, random_rows(16, 2.0, g))  # -inf everywhere but 50 tokens
    for rows in (logits, topk):
        for keep in (1, 3):
            assert torch.equal(top_p_filter(rows, 0.9, keep), warper(rows, 0.9, keep))


def test_mask_keeps_the_smallest_set_reaching_top_p():
    """The rule itself, from exact probabilities: sorted descending, keep until the mass reaches top_p."""
    g = torch.Generator().manual_seed(3)
    logits = random_rows(8, 2.0, g)
    for top_p in (0.5, 0.9):
        keep = top_p_mask(logits, top_p)
        probs = logits.double().softmax(-1)
        for row in range(len(logits)):
            ordered = probs[row].sort(descending=True).values
            n = int(torch.searchsorted(ordered.cumsum(0), torch.tensor(top_p, dtype=torch.float64))) + 1
            assert keep[row].sum() == n
            assert probs[row][keep[row]].sum() >= top_p > probs[row][keep[row]].sum() - probs[row][keep[row]].min()


def test_next_token_probs_is_generate_warper_chain():
    """Temperature, top-k, then top-p, as generate orders them: the same support and probabilities."""
    g = torch.Generator().manual_seed(4)
    logits = random_rows(8, 3.0, g)
    expected = TopPLogitsWarper(0.9)(None, TopKLogitsWarper(200)(None, TemperatureLogitsWarper(0.7)(None, logits)))
    expected = expected.softmax(-1).double()
    probs = next_token_probs(logits, temperature=0.7, top_k=200, top_p=0.9)
    probs = probs / probs.sum(-1, keepdim=True)
    assert torch.equal(probs > 0, expected > 0)
    assert torch.allclose(probs, expected, rtol=1e-5, atol=1e-12)


# --------------------------------------------------------------------------------------------------
# Drawing


def test_inverse_cdf_draws_follow_the_given_probabilities():
    """Chi-square goodness of fit on 50,000 seeded draws (unnormalised probs with zero-mass tokens);
    the same test rejects a slightly different distribution, so it has the power to fail."""
    probs = torch.tensor([0.0, 5.0, 1.0, 0.0, 0.2, 2.5, 0.3, 7.0, 0.0, 1.0], dtype=torch.float64)
    n = 50_000
    uniforms = torch.rand(n, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    tokens = sample_inverse_cdf(probs.expand(n, -1), uniforms)
    counts = torch.bincount(tokens, minlength=len(probs)).numpy()
    support = probs.numpy() > 0
    assert counts[~support].sum() == 0
    expected = n * probs.numpy()[support] / probs.sum().item()
    assert chisquare(counts[support], expected).pvalue > 0.01
    wrong = probs.numpy()[support] * np.linspace(0.95, 1.05, support.sum())
    assert chisquare(counts[support], n * wrong / wrong.sum()).pvalue < 1e-6


def test_inverse_cdf_edges():
    probs = torch.tensor([[0.0, 1.0, 0.0, 3.0, 0.0]])
    def draw(u: float) -> int:
        return sample_inverse_cdf(probs, torch.tensor([u], dtype=torch.float64)).item()

    assert draw(0.0) == 1  # the first token with mass
    assert draw(0.25 - 1e-12) == 1
    assert draw(0.25) == 3
    assert draw(1 - 2**-53) == 3  # the largest uniform: never a trailing zero-mass token


def test_row_uniforms_depend_only_on_seed_and_row_seed():
    a = row_uniforms(7, [0, 1, 2], 5)
    assert a.shape == (3, 5) and a.dtype == torch.float64 and bool(((a >= 0) & (a < 1)).all())
    assert torch.equal(row_uniforms(7, [2], 5)[0], a[2])
    assert not torch.equal(row_uniforms(8, [2], 5)[0], a[2])
    assert len({tuple(row.tolist()) for row in a}) == 3
    assert torch.equal(row_uniforms(-1, [0], 3), row_uniforms(2**64 - 1, [0], 3))  # seeds mod 2**64


# --------------------------------------------------------------------------------------------------
# The decoding loop


def small_model(vocab: int = 64, eos_logit: float | None = None) -> GPT2LMHeadModel:
    """A random GPT-2 with a small vocabulary (the loop does not depend on the vocabulary size).

    `eos_logit`: the final layer norm's output is made nearly constant (weight 0.1, a unit bias v)
    and EOS's (tied) embedding is eos_logit * v, so EOS scores about `eos_logit` at every step and
    samples stop at different, random steps.
    """
    config = GPT2Config(n_layer=2, n_embd=32, n_head=2, n_positions=64, vocab_size=vocab, initializer_range=0.5,
                        bos_token_id=EOS, eos_token_id=EOS)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = GPT2LMHeadModel(config).eval()
        if eos_logit is not None:
            with torch.no_grad():
                v = torch.randn(32)
                v /= v.norm()
                model.transformer.ln_f.weight.fill_(0.1)
                model.transformer.ln_f.bias.copy_(v)
                model.transformer.wte.weight[EOS] = eos_logit * v
    return model


def left_padded(rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(map(len, rows))
    ids = torch.tensor([[EOS] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    return ids, mask


PROMPTS = [[5, 6, 7, 8, 9, 10], [11], [12, 13, 14], [15, 16, 17, 18]]


def test_greedy_equals_transformers_generate_on_a_left_padded_batch():
    model = small_model()
    ids, mask = left_padded(PROMPTS)
    for min_new in (0, 5):
        expected = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=12, do_sample=False,
                                  eos_token_id=EOS, pad_token_id=EOS, min_new_tokens=min_new or None)
        expected = expected[:, ids.shape[1]:]
        got = sample_tokens(model, ids, mask, max_new_tokens=12, eos_token_id=EOS, do_sample=False,
                            min_new_tokens=min_new)
        assert torch.equal(got[:, : expected.shape[1]], expected)
        assert bool((got[:, expected.shape[1]:] == EOS).all())


def test_first_token_is_drawn_from_the_warped_distribution():
    """4,000 rows of one prompt, one step each (different row seeds): chi-square against the
    probabilities transformers' warpers give the same logits."""
    model = small_model()
    prompt = torch.tensor([PROMPTS[0]])
    with torch.no_grad():
        logits = model(prompt).logits[:, -1].float()
    expected = TopPLogitsWarper(0.9)(None, TemperatureLogitsWarper(1.3)(None, logits)).softmax(-1)[0].double()
    n = 4000
    tokens = sample_tokens(model, prompt.expand(n, -1), torch.ones(n, prompt.shape[1], dtype=torch.long),
                           max_new_tokens=1, eos_token_id=EOS, temperature=1.3, top_p=0.9, seed=11)[:, 0]
    counts = torch.bincount(tokens, minlength=len(expected)).double()
    support = expected > 0
    assert 3 <= int(support.sum()) < len(expected)  # a real nucleus, not one token or everything
    assert counts[~support].sum() == 0
    expected = expected[support].numpy()
    assert chisquare(counts[support].numpy(), n * expected / expected.sum()).pvalue > 0.01


def test_rows_stop_at_their_own_eos_and_do_not_depend_on_the_batch():
    model = small_model(eos_logit=2.9)
    steps = []
    model.register_forward_hook(lambda *_: steps.append(1))
    ids, mask = left_padded(PROMPTS * 4)
    out = sample_tokens(model, ids, mask, max_new_tokens=40, eos_token_id=EOS, top_p=0.95, seed=3)
    ends = [row.tolist().index(EOS) if EOS in row.tolist() else None for row in out]
    assert None not in ends and len(set(ends)) > 3  # every row stopped, at different steps
    for row, end in zip(out, ends, strict=True):
        assert bool((row[end:] == EOS).all())
    assert len(steps) == max(ends) + 1 < 40  # the loop stops once every row has stopped
    for r in (0, 5, 13):  # a row alone, unpadded, with its row seed: the same tokens
        prompt = torch.tensor([PROMPTS[r % 4]])
        alone = sample_tokens(model, prompt, torch.ones_like(prompt), max_new_tokens=40, eos_token_id=EOS,
                              top_p=0.95, seed=3, row_seeds=[r])
        assert torch.equal(alone[0], out[r])


def test_min_new_tokens_suppresses_eos():
    model = small_model(eos_logit=12.0)  # EOS is nearly certain at every step
    ids, mask = left_padded(PROMPTS)
    out = sample_tokens(model, ids, mask, max_new_tokens=6, eos_token_id=EOS, top_p=0.95, min_new_tokens=4)
    assert bool((out[:, :4] != EOS).all()) and bool((out[:, 4] == EOS).all())
    assert bool((sample_tokens(model, ids, mask, max_new_tokens=1, eos_token_id=EOS) == EOS).all())


def test_row_seeds_must_match_the_batch():
    ids, mask = left_padded(PROMPTS)
    with pytest.raises(ValueError, match="row seeds"):
        sample_tokens(small_model(), ids, mask, max_new_tokens=2, eos_token_id=EOS, row_seeds=[0, 1])


def test_checking_for_eos_every_few_steps_gives_the_same_tokens():
    """On a GPU the all-rows-done check (a host sync) runs every GPU_EOS_CHECK_EVERY steps: the loop may
    run a few steps past the last EOS, and those only add EOS."""
    model = small_model(eos_logit=2.9)
    ids, mask = left_padded(PROMPTS * 4)
    every_step = sample_tokens(model, ids, mask, max_new_tokens=40, eos_token_id=EOS, top_p=0.95, seed=3)
    steps = []
    model.register_forward_hook(lambda *_: steps.append(1))
    every_8 = sample_tokens(model, ids, mask, max_new_tokens=40, eos_token_id=EOS, top_p=0.95, seed=3,
                            eos_check_every=8)
    assert torch.equal(every_8, every_step)
    last_end = max(row.tolist().index(EOS) for row in every_step)
    assert len(steps) % 8 == 0 and last_end < len(steps) < 40  # stopped at the first check after the last EOS
