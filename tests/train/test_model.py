from __future__ import annotations

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
    with pytest.raises(ModelLoadError, match="not a local path and the Hugging Face Hub is unreachable"):
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
