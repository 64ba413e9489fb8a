"""MAUVE (optional: needs the `mauve-text` package)."""

from __future__ import annotations

import warnings
from typing import Any

from storytune.eval.metrics.ngrams import _check_texts

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
