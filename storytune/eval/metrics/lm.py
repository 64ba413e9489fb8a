"""Perplexity under a causal language model: of continuations given their prompts (fluency), and of a corpus."""

from __future__ import annotations

import math
import warnings
from typing import Any

from storytune.eval.metrics.ngrams import _check_texts

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
    """Per-sample perplexity ``exp(conditional_nlls(...))`` of each continuation given its prompt."""
    return [math.exp(v) if not math.isnan(v) else math.nan
            for v in conditional_nlls(model, tokenizer, prompts, continuations, batch_size, device)]


def conditional_nlls(
    model: Any,
    tokenizer: Any,
    prompts: list[str],
    continuations: list[str],
    batch_size: int = 8,
    device: Any = None,
) -> list[float]:
    """Per-sample mean negative log-likelihood per token (nats) of each continuation given its prompt.

    ``nll_i = mean over continuation tokens t of -log p(t | prompt, earlier continuation tokens)``
    (its perplexity is ``exp(nll_i)``).
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
    from storytune.train.model import context_length

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
            out[i] = nll / count
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
    from storytune.train.model import context_length

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
