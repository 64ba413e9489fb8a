from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from storytune.config import ModelConfig, TinyModelConfig
from storytune.train.model import (
    ModelLoadError,
    build_tiny_model,
    load_model,
    load_tokenizer,
    resolve_base_model,
    shipped_gpt2_tokenizer,
)


def test_shipped_tokenizer_gives_gpt2_ids() -> None:
    tokenizer = shipped_gpt2_tokenizer()
    assert len(tokenizer) == 50257
    assert tokenizer.eos_token_id == 50256
    assert tokenizer("Once upon a time")["input_ids"] == [7454, 2402, 257, 640]
    sentence = "Once upon a time, there was a little girl named Lily."
    ids = tokenizer(sentence)["input_ids"]
    assert ids == [7454, 2402, 257, 640, 11, 612, 373, 257, 1310, 2576, 3706, 20037, 13]
    assert tokenizer.decode(ids) == sentence


def test_gpt2_name_falls_back_offline() -> None:
    # HF_HUB_OFFLINE=1 (conftest): the hub is not asked, GPT-2's shipped vocabulary is used.
    assert load_tokenizer("gpt2")("Once upon a time")["input_ids"] == [7454, 2402, 257, 640]


def test_unknown_model_offline_is_a_clear_error() -> None:
    with pytest.raises(ModelLoadError, match="not in the local Hugging Face cache .* `hf download no-such-org/"):
        load_model("no-such-org/no-such-model")
    with pytest.raises(ModelLoadError, match="cannot load tokenizer"):
        load_tokenizer("no-such-org/no-such-model")


def test_tiny_model_is_deterministic_and_saved_once(tmp_path: Path) -> None:
    tiny = TinyModelConfig(n_layer=1, n_embd=32, n_head=2, n_positions=64, init_seed=3)
    a, b = build_tiny_model(tiny), build_tiny_model(tiny)
    assert all((pa == pb).all() for pa, pb in zip(a.parameters(), b.parameters()))
    assert a.config.vocab_size == 50257
    path = resolve_base_model(ModelConfig(name="tiny", tiny=tiny), tmp_path)
    assert Path(path, "config.json").exists()
    assert resolve_base_model(ModelConfig(name="tiny", tiny=tiny), tmp_path) == path
    loaded = load_model(path)
    assert all((pa == pb).all() for pa, pb in zip(a.parameters(), loaded.parameters()))
    assert load_tokenizer(path)("Once upon a time")["input_ids"] == [7454, 2402, 257, 640]


def test_hub_names_are_kept() -> None:
    assert resolve_base_model(ModelConfig(name="gpt2"), "/unused") == "gpt2"


OFFLINE_LOAD = """
import sys
from storytune.train.model import load_model, load_tokenizer
model = load_model("someorg/tiny")
tokenizer = load_tokenizer("someorg/tiny")
print(type(model).__name__, model.config.n_layer, tokenizer("Once upon a time")["input_ids"])
"""


def test_cached_hub_model_loads_offline(tmp_path: Path) -> None:
    """A model pre-downloaded into the Hugging Face cache (as `hf download someorg/tiny` leaves it:
    models--someorg--tiny/{refs/main, snapshots/<commit>/...}) loads with HF_HUB_OFFLINE=1, in a
    fresh process whose HF_HOME is that cache (huggingface_hub reads it when imported)."""
    from storytune.config import TinyModelConfig

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hf" / "hub" / "models--someorg--tiny"
    snapshot = repo / "snapshots" / commit
    build_tiny_model(TinyModelConfig(n_layer=1, n_embd=16, n_head=2, n_positions=32)).save_pretrained(snapshot)
    shipped_gpt2_tokenizer().save_pretrained(snapshot)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    env.pop("HF_HUB_CACHE", None)
    result = subprocess.run([sys.executable, "-c", OFFLINE_LOAD], env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split("\n")[-2] == "GPT2LMHeadModel 1 [7454, 2402, 257, 640]"


def test_gpt2_models_get_the_fused_gelu_with_the_same_logits() -> None:
    """`gelu_pytorch_tanh` is `gelu_new`'s tanh approximation in one kernel: same logits within rounding."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from storytune.train.model import FUSED_GELU, use_fused_gelu

    config = GPT2Config(n_layer=2, n_embd=64, n_head=4, n_positions=32, vocab_size=500)
    assert config.activation_function == "gelu_new"
    torch.manual_seed(0)
    reference = GPT2LMHeadModel(config).eval()
    fused = GPT2LMHeadModel(config).eval()
    fused.load_state_dict(reference.state_dict())
    use_fused_gelu(fused)
    assert fused.config.activation_function == FUSED_GELU
    ids = torch.randint(0, 500, (3, 32), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected, got = reference(ids).logits, fused(ids).logits
    assert type(reference.transformer.h[0].mlp.act) is not type(fused.transformer.h[0].mlp.act)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_load_model_uses_the_fused_gelu(tmp_path: Path) -> None:
    path = resolve_base_model(ModelConfig(name="tiny", tiny=TinyModelConfig(n_layer=1, n_embd=32, n_head=2,
                                                                           n_positions=16)), tmp_path)
    model = load_model(path)
    assert model.config.activation_function == "gelu_pytorch_tanh"
    from transformers.activations import ACT2FN

    assert all(type(block.mlp.act) is type(ACT2FN["gelu_pytorch_tanh"]) for block in model.transformer.h)
