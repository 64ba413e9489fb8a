"""Exact top-p (nucleus) sampling that batches: a bucket select instead of a full sort, inverse-CDF draws.

Why: transformers' `TopPLogitsWarper` sorts all 50,257 logits of every row at every step and
`torch.multinomial` then draws from the full vocabulary; both cost a fixed ~2-3 ms per row per
step on a CPU, so batching cannot amortise them and with a small model they are most of the work.

**What is exact, and how it is checked** (tests/eval/test_sampling.py):

* `top_p_filter` returns *the same tensor* as `TopPLogitsWarper(top_p)(None, logits)`: the same kept
  tokens, bit for bit, hence the same renormalised distribution `softmax(filtered)`. The rule is
  transformers': with the tokens in ascending order, a token is removed when the probability mass
  of itself and every smaller token is `<= 1 - top_p` (in float32); i.e. the smallest set of most
  probable tokens whose mass is `>= top_p` is kept, and always at least `min_tokens_to_keep`.
  How it avoids the sort (on CPU): tokens are put into `bins` buckets by logit (O(V) per row),
  the bucket masses locate the one bucket where the cut falls, and only that bucket's few tokens
  (~30-60 of 50,257) are ordered. A row is handed to `TopPLogitsWarper` itself (the "fallback")
  whenever its result could depend on something the bucket select does not reproduce: a tie at
  the cut (the warper's unstable sort decides which tied token stays), a cumulative mass within
  `margin` (relative) of the threshold (float rounding decides), a cut bucket with more than
  `max_candidates` tokens, or fewer kept tokens than `min_tokens_to_keep`; about 2-6% of rows
  of random logits. The warper's cumulative masses carry the float32 rounding of its softmax:
  measured on CPU at most 8.6e-7 of the mass near the cut (5,120 rows of 50,257 logits, scales
  0.02-10), hence `margin` = 4e-6; our masses are float64 sums renormalised to 1. So the two
  agree exactly on CPU (tested; without the margin ~1 row in 1,000 differs).
  On other devices (CUDA) the warper itself is used: a sort is cheap there (one batch-32 step of
  warper + multinomial took 0.42 ms on an H200, the bucket select 1.9 ms, as it synchronises
  with the host several times per step), and the warper's CUDA result differs from its own CPU
  result in rare rows (11 of 5,120 measured), so no CPU method could match it exactly anyway.
* `sample_inverse_cdf` is an exact draw from the probabilities it is given (up to float64
  rounding of their cumulative sum): token i is chosen iff the uniform falls in
  [c_{i-1}, c_i) of the normalised cumulative sum. Checked with a chi-square test on many
  seeded draws.
* So `sample_tokens` draws from **the same distribution** as `model.generate(do_sample=True, ...)`
  with the same temperature / top-k / top-p (temperature and top-k are transformers' own
  warpers, applied in generate's order). It does **not** give the same samples for the same
  seed: the random numbers are consumed differently (one uniform per row per step from the
  row's own stream, instead of the global generator inside `torch.multinomial`).

**Seeds** (`row_uniforms`): every row has its own stream, numpy's `default_rng([seed, row_seed])`,
and step t uses the stream's t-th uniform. A row's samples therefore depend only on its seed and
its own logits, never on which other rows share its batch or how large the batch is.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from transformers import PreTrainedModel

#: Buckets per row for the bucket select (uniform in logit below the row's largest logit).
DEFAULT_BINS = 2048
#: Largest cut bucket the select orders itself; a row with a larger one goes to the fallback.
DEFAULT_MAX_CANDIDATES = 1024
#: Relative distance of a cumulative mass from the threshold below which a row's cut is left to the
#: warper, so float rounding never decides a token differently from it (~4.7x the largest relative
#: deviation of the warper's float32 masses from exact ones near the cut, 8.6e-7, measured on CPU).
DEFAULT_MARGIN = 4e-6
#: The bucket range ends at the minimum of every `_BOTTOM_STRIDE`-th logit (a cheap estimate of the
#: row's minimum: lower tokens share the last bucket, which never holds the cut unless its mass
#: exceeds 1 - top_p, and then the row is still exact: ordered or handed to the warper).
_BOTTOM_STRIDE = 8


# --------------------------------------------------------------------------------------------------
# Top-p


def _warper_drop(logits: torch.Tensor, top_p: float, min_tokens_to_keep: int) -> torch.Tensor:
    """Tokens transformers' `TopPLogitsWarper` removes (the reference, and the fallback)."""
    from transformers.generation.logits_process import TopPLogitsWarper

    warper = TopPLogitsWarper(top_p=top_p, min_tokens_to_keep=min_tokens_to_keep)
    return warper(None, logits) == -float("inf")


def top_p_mask(logits: torch.Tensor, top_p: float, min_tokens_to_keep: int = 1, *, bins: int = DEFAULT_BINS,
               max_candidates: int = DEFAULT_MAX_CANDIDATES, margin: float = DEFAULT_MARGIN) -> torch.Tensor:
    """Boolean [B, V] mask of the tokens `TopPLogitsWarper(top_p, min_tokens_to_keep)` keeps.

    `logits` is [B, V] (-inf allowed, e.g. after top-k; computed in float32). See the module
    docstring for the method and for when a row falls back to the warper.
    """
    return ~_top_p(logits, top_p, min_tokens_to_keep, bins, max_candidates, margin)[0]


def top_p_filter(logits: torch.Tensor, top_p: float, min_tokens_to_keep: int = 1,
                 filter_value: float = -float("inf")) -> torch.Tensor:
    """`logits` with the tokens outside the nucleus set to `filter_value`: equal to
    `TopPLogitsWarper(top_p, filter_value, min_tokens_to_keep)(None, logits)`."""
    return logits.masked_fill(~top_p_mask(logits, top_p, min_tokens_to_keep), filter_value)


def _bucket_members(members: torch.Tensor, logits: torch.Tensor,
                    max_candidates: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The True tokens of `members` [B, V], each row's in descending logit order.

    Returns (row, token, place) of every member (place = rank within its row, 0 = largest logit)
    and the members per row, set to 0 for a row with more than `max_candidates` (left out, so
    that row goes to the fallback). Cheaper than a top-k over the masked logits: one pass to find
    the members, then sorts of only those few.
    """
    row, token = members.nonzero(as_tuple=True)
    counts = torch.bincount(row, minlength=members.shape[0])
    small = counts <= max_candidates
    if not bool(small.all()):
        keep = small[row]
        row, token = row[keep], token[keep]
        counts = counts * small
    order = logits[row, token].sort(descending=True, stable=True).indices
    order = order[row[order].sort(stable=True).indices]  # by row, then by descending logit
    row, token = row[order], token[order]
    start = counts.cumsum(0) - counts
    place = torch.arange(len(row), device=row.device) - start[row]
    return row, token, place, counts


def _top_p(logits: torch.Tensor, top_p: float, min_tokens_to_keep: int, bins: int, max_candidates: int,
           margin: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(removed tokens [B, V] bool, softmax probabilities [B, V] float64) by the bucket select.

    Each step is one pass over the [B, V] logits (about a dozen in all); only the cut bucket's
    tokens are ordered.
    """
    if logits.ndim != 2:
        raise ValueError(f"logits must be [batch, vocab], got shape {tuple(logits.shape)}")
    logits = logits.float()
    if logits.device.type != "cpu":  # the sort is cheap there (module docstring)
        return _warper_drop(logits, top_p, min_tokens_to_keep), logits.softmax(dim=-1).double()
    n_rows = logits.shape[0]
    rows = torch.arange(n_rows, device=logits.device)
    # float64 copies of the float32 probabilities: the masses below are float64 sums, like the
    # warper's float64 accumulation on CPU.
    probs = logits.softmax(dim=-1).double()
    # The warper compares float32 cumulative masses with the Python float 1 - top_p, in float32.
    threshold = torch.tensor(1 - top_p, dtype=torch.float32).item()

    # Buckets: 0 holds the largest logits; bucket `bins` the lowest ones and -inf (after top-k).
    # Equal logits always share a bucket. (int32 buckets and a flat bincount: ~1.5x faster than
    # int64 and scatter_add on CPU.)
    top = logits.max(dim=-1, keepdim=True).values
    sample = logits[:, ::_BOTTOM_STRIDE]
    bottom = torch.where(torch.isneginf(sample), top, sample).amin(dim=-1, keepdim=True)
    scale = (bins - 1) / (top - bottom).clamp_min(1e-30)  # a row of equal logits: all in bucket 0
    bucket = torch.sub(top, logits).mul_(scale).clamp_(max=bins).int()
    offsets = rows.int()[:, None] * (bins + 1)
    mass = torch.bincount((bucket + offsets).view(-1), weights=probs.view(-1), minlength=n_rows * (bins + 1))
    mass = mass.view(n_rows, bins + 1)
    total = mass.sum(dim=-1, keepdim=True)  # renormalise: float32 softmax sums are off by up to ~1e-6
    # after[b] = normalised mass of every bucket after b, summed from the end (after[bins] is exactly 0).
    from_end = (mass / total).flip(-1).cumsum(dim=-1).flip(-1)
    after = torch.cat([from_end[:, 1:], from_end.new_zeros(n_rows, 1)], dim=-1)
    # The cut bucket: the first whose following buckets all have mass <= threshold. Every token of
    # an earlier bucket has more than that at or below it (kept); every later token has at most
    # that (removed). Only the cut bucket's tokens need ordering.
    cut = (after <= threshold).int().argmax(dim=-1)
    after_cut = after[rows, cut]

    cut_row, cut_token, place, counts = _bucket_members(bucket == cut[:, None].int(), logits, max_candidates)
    k = int(place.max()) + 1 if len(place) else 1
    values = logits.new_full((n_rows, k), -float("inf")).index_put_((cut_row, place), logits[cut_row, cut_token])
    p = probs.new_zeros(n_rows, k).index_put_((cut_row, place), probs[cut_row, cut_token]) / total
    valid = torch.arange(k, device=logits.device)[None, :] < counts[:, None]
    at_or_below = after_cut[:, None] + p.flip(-1).cumsum(-1).flip(-1)  # the warper's cumulative mass
    kept = (at_or_below.float() > threshold) & valid  # a prefix of the candidates
    n_kept = kept.sum(dim=-1)

    drop = bucket > cut[:, None].int()
    drop[cut_row, cut_token] = ~kept[cut_row, place]

    # Rows the warper must decide (see the module docstring).
    tolerance = margin * threshold + 1e-12  # absolute; the floor only matters for top_p = 1
    near = ((at_or_below - threshold).abs() < tolerance) & valid
    last = (n_kept - 1).clamp(min=0)
    tie = (n_kept < counts) & (values[rows, last] == values[rows, n_kept.clamp(max=k - 1)])
    fallback = near.any(dim=-1) | ((after_cut - threshold).abs() < tolerance) | tie | (n_kept == 0)
    if min_tokens_to_keep > 1:
        fallback |= (~drop).sum(dim=-1) < min_tokens_to_keep
    if bool(fallback.any()):
        drop[fallback] = _warper_drop(logits[fallback], top_p, min_tokens_to_keep)
    return drop, probs


# --------------------------------------------------------------------------------------------------
# Drawing


def row_uniforms(seed: int, row_seeds: Sequence[int], steps: int) -> torch.Tensor:
    """[len(row_seeds), steps] float64 uniforms in [0, 1): row r's stream is `default_rng([seed, row_seeds[r]])`.

    Seeds are taken modulo 2**64 (numpy seed sequences take non-negative integers).
    """
    out = np.empty((len(row_seeds), steps), dtype=np.float64)
    for r, row_seed in enumerate(row_seeds):
        out[r] = np.random.default_rng([seed % 2**64, row_seed % 2**64]).random(steps)
    return torch.from_numpy(out)


def sample_inverse_cdf(probs: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """One token per row, drawn from `probs` [B, V] (non-negative, any positive sum) with `uniforms` [B] in [0, 1).

    Token i is returned iff c_{i-1} <= u * c_V < c_i for the float64 cumulative sum c: an exact
    inverse-CDF draw, and a token of zero probability is never returned.
    """
    cdf = probs.double().cumsum(dim=-1)  # converting first is ~3x faster than cumsum(dtype=float64)
    target = uniforms.to(device=cdf.device, dtype=torch.float64)[:, None] * cdf[:, -1:]
    return torch.searchsorted(cdf, target, right=True).squeeze(-1).clamp_(max=probs.shape[-1] - 1)


def next_token_probs(logits: torch.Tensor, temperature: float = 1.0, top_k: int = 0,
                     top_p: float = 1.0) -> torch.Tensor:
    """Unnormalised sampling probabilities [B, V] (float64) of `generate(do_sample=True)` with these settings.

    The warpers run in generate's order: temperature, top-k (transformers' own warpers, which do
    not sort), then top-p (`top_p_mask`'s method). generate skips a warper at its neutral value
    (temperature 1, top_k 0, top_p 1), and so does this.
    """
    from transformers.generation.logits_process import TemperatureLogitsWarper, TopKLogitsWarper

    logits = logits.float()
    if temperature != 1.0:
        logits = TemperatureLogitsWarper(temperature)(None, logits)
    if top_k:
        logits = TopKLogitsWarper(top_k=top_k)(None, logits)
    if top_p < 1.0:
        drop, probs = _top_p(logits, top_p, 1, DEFAULT_BINS, DEFAULT_MAX_CANDIDATES, DEFAULT_MARGIN)
        return probs.masked_fill_(drop, 0.0)
    return logits.softmax(dim=-1).double()


# --------------------------------------------------------------------------------------------------
# Decoding loop


GPU_EOS_CHECK_EVERY = 16
"""Decoding steps between the all-rows-done checks on an accelerator: at most 15 wasted steps at the
end of a batch (~1 ms each for GPT-2 small) instead of a host sync at each of ~200 steps."""


def _cache_argument(model: PreTrainedModel) -> str:
    """Name of the KV cache in the model's forward and output: transformers 5.x renamed `past_key_values`
    to `cache` (the old name still works, with a deprecation warning)."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def sample_tokens(model: PreTrainedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor, *,
                  max_new_tokens: int, eos_token_id: int, do_sample: bool = True, temperature: float = 1.0,
                  top_p: float = 1.0, top_k: int = 0, seed: int = 0, row_seeds: Sequence[int] | None = None,
                  min_new_tokens: int = 0, eos_check_every: int | None = None) -> torch.Tensor:
    """New tokens [B, max_new_tokens] for a LEFT-padded batch, with the KV cache; EOS fills a row after it stops.

    Decoding follows `model.generate`: position ids count the attended tokens (padding has none),
    EOS is suppressed for the first `min_new_tokens` steps, greedy takes the first argmax, and
    sampling draws from `next_token_probs` (same distribution as generate; not the same samples).
    Row r draws its step-t uniform from `row_uniforms(seed, row_seeds)[r, t]` (default row seeds:
    0..B-1), so its tokens do not depend on the rest of the batch. The loop stops early once
    every row has produced EOS, checked every `eos_check_every` steps (default: every step on CPU,
    every `GPU_EOS_CHECK_EVERY` on an accelerator, where the check is a host sync that stalls the
    queue of kernels; the tokens are the same either way: a finished row only adds EOS).
    The caller's random state is not used or changed.
    """
    batch = input_ids.shape[0]
    device = input_ids.device
    uniforms = None
    if do_sample:
        seeds = list(range(batch)) if row_seeds is None else list(row_seeds)
        if len(seeds) != batch:
            raise ValueError(f"{len(seeds)} row seeds for a batch of {batch}")
        uniforms = row_uniforms(seed, seeds, max_new_tokens).to(device)
    out = torch.full((batch, max_new_tokens), eos_token_id, dtype=torch.long, device=device)
    done = torch.zeros(batch, dtype=torch.bool, device=device)
    mask = attention_mask.long()
    positions = (mask.cumsum(-1) - 1).clamp_(min=0)
    tokens, cache = input_ids, None
    cache_name = _cache_argument(model)
    check_every = eos_check_every or (1 if device.type == "cpu" else GPU_EOS_CHECK_EVERY)
    with torch.inference_mode():
        for step in range(max_new_tokens):
            result = model(input_ids=tokens, attention_mask=mask, position_ids=positions, use_cache=True,
                           logits_to_keep=1, **{cache_name: cache})
            cache = getattr(result, cache_name)
            logits = result.logits[:, -1, :].float()
            if step < min_new_tokens:
                logits[:, eos_token_id] = -float("inf")
            if uniforms is None:
                chosen = logits.argmax(dim=-1)
            else:
                chosen = sample_inverse_cdf(next_token_probs(logits, temperature, top_k, top_p), uniforms[:, step])
            chosen = chosen.masked_fill(done, eos_token_id)
            out[:, step] = chosen
            done |= chosen == eos_token_id
            if (step + 1) % check_every == 0 and bool(done.all()):
                break
            tokens = chosen[:, None]
            mask = torch.cat([mask, mask.new_ones(batch, 1)], dim=-1)
            positions = positions[:, -1:] + 1
    return out
