"""Prompt construction and batched generation (storytune.eval.generate), on a tiny random GPT-2."""

from __future__ import annotations

import logging
from dataclasses import replace

import pytest
import torch

from storytune.config import GenerationConfig
from storytune.eval.generate import (
    GenerationRecord,
    Prompt,
    encode_prompts,
    first_sentence_end,
    generate_tokens,
    make_prompts,
    max_prompt_tokens,
    read_generations,
    trim_at_eos,
    write_generations,
)
from storytune.train.model import GPT2_EOS_ID, GPT2_VOCAB_SIZE, shipped_gpt2_tokenizer

PROMPTS = ["Once upon a time, there was a little boy named Tim.", "Hi", "One day",
           "The cat sat on the mat and looked at the big red ball in the garden."]


@pytest.fixture(scope="module")
def tokenizer():
    return shipped_gpt2_tokenizer()


@pytest.fixture(scope="module")
def model():
    """Random GPT-2 with large initial weights: peaked next-token distributions, so greedy
    decoding is not one repeated token and sampling is not near-uniform."""
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(n_layer=2, n_embd=32, n_head=2, n_positions=64, vocab_size=GPT2_VOCAB_SIZE,
                        initializer_range=0.5, bos_token_id=GPT2_EOS_ID, eos_token_id=GPT2_EOS_ID)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return GPT2LMHeadModel(config).eval()


def settings(**kwargs) -> GenerationConfig:
    return GenerationConfig(**{"max_new_tokens": 8, "batch_size": 4, **kwargs})


# --------------------------------------------------------------------------------------------------
# Prompts


def test_first_sentence_prompt_and_reference(tokenizer):
    story = "Once upon a time, there was a cat. The cat was big.\nIt liked milk."
    [p] = make_prompts([story], tokenizer, settings(prompt="first_sentence"))
    assert p == Prompt("Once upon a time, there was a cat.", "The cat was big.\nIt liked milk.", 0)


@pytest.mark.parametrize("story, first", [
    ("Mr. Brown had a dog. It was brown.", "Mr. Brown had a dog."),
    ('"Hi!" said Tom. He waved.', '"Hi!"'),
    ("Look at the sky! So blue.", "Look at the sky!"),
    ("What is that?! Wow.", "What is that?!"),
    ("The dog ran home\nand slept.", "The dog ran home"),
    ("It cost 3.5 coins. Yes.", "It cost 3.5 coins."),
    ("No end here", "No end here"),
])
def test_first_sentence_end(story, first):
    assert story[: first_sentence_end(story)] == first


def test_first_sentence_is_capped_at_prompt_tokens(tokenizer):
    story = "Once upon a time there was a very very very long sentence without an end soon. Then more."
    [p] = make_prompts([story], tokenizer, settings(prompt="first_sentence", prompt_tokens=5))
    assert story.startswith(p.prompt)
    assert len(tokenizer(p.prompt)["input_ids"]) == 5
    assert p.reference == story[len(p.prompt):].strip()


def test_first_tokens_prompt(tokenizer):
    story = "Once upon a time, there was a cat. The cat was big."
    [p] = make_prompts([story], tokenizer, settings(prompt="first_tokens", prompt_tokens=4))
    assert p.prompt == "Once upon a time"
    assert p.reference == ", there was a cat. The cat was big."


def test_token_cap_never_splits_a_character(tokenizer):
    story = "Tom said “hello” to Sue. She smiled."
    for k in range(1, 12):
        [p] = make_prompts([story], tokenizer, settings(prompt="first_tokens", prompt_tokens=k))
        assert story.startswith(p.prompt) and "\ufffd" not in p.prompt
        assert len(tokenizer(p.prompt)["input_ids"]) <= k


def test_skips_stories_without_continuation_and_counts_them(tokenizer, caplog):
    stories = ["Only one sentence.", "First. Second.", "A. B.", "Not used. Beyond num_prompts."]
    with caplog.at_level(logging.WARNING, logger="storytune.eval.generate"):
        prompts = make_prompts(stories, tokenizer, settings(num_prompts=3))
    assert [(p.prompt, p.reference, p.story_index) for p in prompts] == [("First.", "Second.", 1), ("A.", "B.", 2)]
    assert "skipped 1 of 3" in caplog.text


def test_prompts_are_deterministic(tokenizer):
    stories = [f"Story {i} starts here. Then it goes on." for i in range(10)]
    s = settings(num_prompts=6)
    assert make_prompts(stories, tokenizer, s) == make_prompts(list(stories), tokenizer, s)


# --------------------------------------------------------------------------------------------------
# Generation


def test_same_seed_gives_identical_samples(model, tokenizer):
    s = settings(do_sample=True, top_p=0.95, seed=3, batch_size=2)
    first = generate_tokens(model, tokenizer, PROMPTS, s, progress=False)
    assert generate_tokens(model, tokenizer, PROMPTS, s, progress=False) == first
    assert generate_tokens(model, tokenizer, PROMPTS, settings(do_sample=True, seed=4, batch_size=2),
                           progress=False) != first


def test_a_prompts_sample_does_not_depend_on_batch_size_or_batch_mates(model, tokenizer):
    """Seeds are per prompt: 32 prompts one at a time, in batches of 5 and in one batch of 32
    (left-padded to different widths) give identical samples."""
    prompts = [f"{p} {i}" * (1 + i % 3) for i, p in enumerate(PROMPTS * 8)]
    s = settings(do_sample=True, top_p=0.9, seed=5, max_new_tokens=8)
    batched = generate_tokens(model, tokenizer, prompts, replace(s, batch_size=32), progress=False)
    assert generate_tokens(model, tokenizer, prompts, replace(s, batch_size=5), progress=False) == batched
    assert generate_tokens(model, tokenizer, prompts, replace(s, batch_size=1), progress=False) == batched
    assert len({tuple(row) for row in batched}) == len(prompts)


def test_generation_leaves_global_rng_and_tokenizer_alone(model, tokenizer):
    side = tokenizer.padding_side
    state = torch.get_rng_state()
    generate_tokens(model, tokenizer, PROMPTS, settings(do_sample=True), progress=False)
    assert torch.equal(torch.get_rng_state(), state)
    assert tokenizer.padding_side == side


def test_greedy_batched_with_left_padding_equals_one_at_a_time(model, tokenizer):
    s = settings(do_sample=False, max_new_tokens=10, batch_size=4)
    batched = generate_tokens(model, tokenizer, PROMPTS, s, progress=False)
    single = [generate_tokens(model, tokenizer, [p], s, progress=False)[0] for p in PROMPTS]
    assert batched == single
    assert len({tuple(row) for row in batched}) == len(PROMPTS)  # not a degenerate model


def test_greedy_tokens_equal_transformers_generate(model, tokenizer):
    """New tokens only (the prompt is not repeated), cut at EOS, as transformers' greedy generate."""
    s = settings(do_sample=False, max_new_tokens=10)
    tokens = generate_tokens(model, tokenizer, PROMPTS, s, progress=False)
    for prompt, row in zip(PROMPTS, tokens, strict=True):
        ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
        expected = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=10, do_sample=False,
                                  eos_token_id=GPT2_EOS_ID, pad_token_id=GPT2_EOS_ID)[0, ids.shape[1]:]
        assert row == trim_at_eos(expected.tolist(), GPT2_EOS_ID)
        assert len(row) <= s.max_new_tokens and GPT2_EOS_ID not in row


def test_too_long_prompt_is_truncated_from_the_left(model, tokenizer, caplog):
    long_prompt = " ".join(f"word{i}" for i in range(200))
    limit = max_prompt_tokens(model, 16)
    assert limit == 64 - 16
    rows, cut = encode_prompts(tokenizer, [long_prompt, "Hi"], limit)
    full = tokenizer(long_prompt)["input_ids"]
    assert cut == 1 and rows[0] == full[-limit:] and rows[1] == tokenizer("Hi")["input_ids"]
    with caplog.at_level(logging.WARNING, logger="storytune.eval.generate"):
        out = generate_tokens(model, tokenizer, [long_prompt, "Hi"], settings(max_new_tokens=16), min_new_tokens=16,
                              progress=False)
    assert [len(row) for row in out] == [16, 16]
    assert "cut from the left" in caplog.text


def test_max_new_tokens_must_leave_room_for_a_prompt(model, tokenizer):
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate_tokens(model, tokenizer, ["Hi"], settings(max_new_tokens=64), progress=False)


def test_trim_at_eos():
    assert trim_at_eos([5, 6, GPT2_EOS_ID, 7, GPT2_EOS_ID], GPT2_EOS_ID) == [5, 6]
    assert trim_at_eos([5, 6], GPT2_EOS_ID) == [5, 6]


def test_generation_records_round_trip(tmp_path):
    record = GenerationRecord(index=0, story_index=3, model="m", prompt="Once.", continuation="Then “x”.",
                              reference="Ref.", decoding={"do_sample": False}, raw_continuation=" Then “x”.",
                              new_tokens=4, metrics={"coherence": 0.5, "self_bleu": None})
    path = tmp_path / "generations.jsonl"
    write_generations(path, [record, record])
    lines = read_generations(path)
    assert len(lines) == 2 and lines[0] == record.to_dict()
    assert set(lines[0]) >= {"prompt", "continuation", "reference", "model", "decoding", "index"}
