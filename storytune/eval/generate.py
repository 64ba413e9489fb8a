"""Prompts from held-out stories, batched generation, and the JSONL record of every sample.

Prompt rules (the same for every model compared, so the prompts depend only on the test stories,
`generation.*` and the tokenizer):

* The first `generation.num_prompts` stories of the held-out `test` split, in split order, are
  used; a story with nothing left after its prompt is skipped (and counted), not replaced.
* `prompt: first_sentence`: the story up to and including the end of its first sentence: the
  first `.`, `!` or `?` (a run of them, plus closing quotes or brackets) followed by whitespace or
  the end of the story, or the first line break, whichever comes first. `Mr.`, `Mrs.`, `Ms.`,
  `Dr.` and `St.` do not end a sentence. The sentence is capped at `prompt_tokens` tokens.
* `prompt: first_tokens`: the first `prompt_tokens` tokens of the story.
* A cap never splits a character: when the cut falls inside a multi-byte character (a curly quote
  spread over two byte-level tokens), the prompt ends before that character.
* The prompt is an exact prefix of the story; the reference is the rest of the story (whitespace
  stripped), i.e. the true continuation.

Generation rules (`generate_tokens`; the decoding loop is `storytune.eval.sampling.sample_tokens`):

* Prompts are generated in batches of `generation.batch_size`, in the given order, LEFT-padded
  with an attention mask (position ids follow the mask), with the KV cache; finished rows are
  filled with EOS.
* Sampling draws from the same distribution as transformers' `generate(do_sample=True)` with the
  same temperature, top-k and top-p (exactly the same nucleus, see `storytune.eval.sampling`), but
  not the same samples for the same seed.
* Seeds are per prompt: the prompt at position i of the list draws its step-t uniform from
  numpy's `default_rng([generation.seed, i])`. A prompt's sample therefore does not depend on the
  batch size or on the other prompts in its batch: the same prompts with the same seed give the
  same samples for every model and every run, batched or one at a time (up to floating-point
  rounding of the logits in padded batches, which in practice never moves a draw across a
  token boundary; the tests check batch 1 == batch 32). Greedy decoding takes the first argmax.
* A prompt longer than the model's context minus `max_new_tokens` keeps its LAST
  `context - max_new_tokens` tokens (truncated from the left, a warning says how many were cut),
  so every prompt has room for all new tokens.
* Each sample stops at its first EOS (EOS is not part of the text) or after `max_new_tokens`.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from storytune.config import GenerationConfig
from storytune.paths import write_text_atomic
from storytune.train.data import story_start_ids
from storytune.train.model import context_length

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------------
# Prompts


@dataclass(frozen=True)
class Prompt:
    """One prompt: the opening of a held-out story and the story's true continuation."""

    prompt: str
    reference: str
    story_index: int
    """Index of the story in the held-out `test` split."""


_SENTENCE_END = re.compile(r"[.!?]+[\"”’')\]]*(?=\s|$)|\n")
_ABBREVIATIONS = {"mr", "mrs", "ms", "dr", "st"}


def first_sentence_end(story: str) -> int:
    """Character index just past the story's first sentence (see the module docstring)."""
    for match in _SENTENCE_END.finditer(story):
        if match.group() == "\n":
            return match.start()
        word = re.search(r"(\w+)$", story[: match.start()])
        if match.group() == "." and word and word.group(1).lower() in _ABBREVIATIONS:
            continue
        return match.end()
    return len(story)


def token_prefix_end(text: str, tokenizer: PreTrainedTokenizerBase, max_tokens: int) -> int:
    """Character index just past the first `max_tokens` tokens of `text`, never inside a character."""
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    offsets = encoded["offset_mapping"]
    k = min(max_tokens, len(offsets))
    if k == len(offsets):
        return len(text)
    # A byte-level BPE can spread one character over several tokens, which then share offsets:
    # back off while the next token starts before our cut (the cut would split that character).
    while k > 0 and offsets[k][0] < offsets[k - 1][1]:
        k -= 1
    return offsets[k - 1][1] if k > 0 else 0


def prompt_end(story: str, tokenizer: PreTrainedTokenizerBase, settings: GenerationConfig) -> int:
    """Where the prompt of `story` ends (a character index), by `settings.prompt`."""
    if settings.prompt == "first_sentence":
        sentence = story[: first_sentence_end(story)]
        return token_prefix_end(sentence, tokenizer, settings.prompt_tokens)
    if settings.prompt == "first_tokens":
        return token_prefix_end(story, tokenizer, settings.prompt_tokens)
    raise ValueError(f"unknown prompt rule {settings.prompt!r}; use first_sentence or first_tokens")


def make_prompts(stories: Sequence[str], tokenizer: PreTrainedTokenizerBase,
                 settings: GenerationConfig) -> list[Prompt]:
    """Prompts from the first `settings.num_prompts` stories; stories with no continuation are skipped.

    Deterministic: the same stories and settings give the same prompts. Fewer than `num_prompts`
    prompts come back when stories are skipped or too few (both are logged).
    """
    prompts: list[Prompt] = []
    skipped = 0
    chosen = list(stories)[: settings.num_prompts]
    for index, story in enumerate(chosen):
        end = prompt_end(story, tokenizer, settings)
        prompt, reference = story[:end], story[end:].strip()
        if not prompt.strip() or not reference:
            skipped += 1
            continue
        prompts.append(Prompt(prompt=prompt, reference=reference, story_index=index))
    if len(chosen) < settings.num_prompts:
        log.warning("only %d held-out stories for generation.num_prompts=%d", len(chosen), settings.num_prompts)
    if skipped:
        log.warning("skipped %d of %d stories with no continuation after the %s prompt",
                    skipped, len(chosen), settings.prompt)
    return prompts


# --------------------------------------------------------------------------------------------------
# Generation


def max_prompt_tokens(model: PreTrainedModel, max_new_tokens: int) -> int | None:
    """Longest prompt that leaves room for `max_new_tokens` (None: the model states no limit)."""
    context = context_length(model)
    if context is None:
        return None
    if context <= max_new_tokens:
        raise ValueError(f"generation.max_new_tokens={max_new_tokens} leaves no room for a prompt in the "
                         f"model's context of {context} tokens; lower it below {context}")
    return context - max_new_tokens


def encode_prompts(tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str],
                   limit: int | None) -> tuple[list[list[int]], int]:
    """Token ids of each prompt, cut from the LEFT to `limit` tokens; also how many were cut.

    A prompt opens a document the way training stories do (`story_start_ids`: BOS for Gemma, nothing
    for GPT-2); an empty prompt without such a start becomes the single EOS token (GPT-2's
    start-of-text). A cut keeps the document start.
    """
    rows = tokenizer(list(prompts), add_special_tokens=False)["input_ids"] if prompts else []
    start = story_start_ids(tokenizer)
    truncated = 0
    out = []
    for row in rows:
        row = list(row)
        if limit is not None and len(start) + len(row) > limit:
            row = row[len(start) + len(row) - limit:]
            truncated += 1
        row = (start + row) or [tokenizer.eos_token_id]
        out.append(row)
    return out, truncated


def decoding_settings(settings: GenerationConfig) -> dict[str, Any]:
    """The decoding part of the settings, as recorded with every sample."""
    keys = ["do_sample", "max_new_tokens", "seed", "batch_size"]
    if settings.do_sample:
        keys += ["top_p", "top_k", "temperature"]
    return {key: getattr(settings, key) for key in keys}


def trim_at_eos(ids: Sequence[int], eos_token_id: int) -> list[int]:
    ids = list(ids)
    return ids[: ids.index(eos_token_id)] if eos_token_id in ids else ids


def _batches(n: int, size: int) -> list[range]:
    return [range(start, min(start + size, n)) for start in range(0, n, size)]


def generate_tokens(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str],
                    settings: GenerationConfig, device: Any = None, min_new_tokens: int = 0,
                    progress: bool = True) -> list[list[int]]:
    """New token ids for each prompt (EOS and anything after it removed); rules in the module docstring.

    `min_new_tokens` > 0 suppresses EOS until that many tokens were generated (benchmarks use
    `min_new_tokens == max_new_tokens` so every sample does the same work).
    """
    from tqdm.auto import tqdm

    from storytune.eval.sampling import sample_tokens

    if device is None:
        device = next(model.parameters()).device
    eos = tokenizer.eos_token_id
    rows, truncated = encode_prompts(tokenizer, prompts, max_prompt_tokens(model, settings.max_new_tokens))
    if truncated:
        log.warning("%d prompt(s) longer than the model's context minus max_new_tokens were cut from the left",
                    truncated)
    out: list[list[int]] = []
    was_training = model.training
    model.eval()
    try:
        for span in tqdm(_batches(len(rows), settings.batch_size), desc="Generating", unit="batch",
                         disable=not progress):
            padded = tokenizer.pad({"input_ids": [rows[i] for i in span]}, padding_side="left",
                                   return_tensors="pt")
            generated = sample_tokens(
                model, padded["input_ids"].to(device), padded["attention_mask"].to(device),
                max_new_tokens=settings.max_new_tokens, eos_token_id=eos, do_sample=settings.do_sample,
                temperature=settings.temperature, top_p=settings.top_p, top_k=settings.top_k,
                seed=settings.seed, row_seeds=span, min_new_tokens=min_new_tokens)
            out.extend(trim_at_eos(row, eos) for row in generated.tolist())
    finally:
        model.train(was_training)
    return out


# --------------------------------------------------------------------------------------------------
# Records


@dataclass
class GenerationRecord:
    """One generated sample, a line of `generations.jsonl`."""

    index: int
    """Position of the sample in this evaluation (0-based)."""
    story_index: int
    """Index of the prompt's story in the held-out test split."""
    model: str
    """Label of the model that generated it."""
    prompt: str
    continuation: str
    """Generated text, whitespace stripped (what the text metrics see)."""
    reference: str
    """The story's true continuation."""
    decoding: dict[str, Any]
    raw_continuation: str = ""
    """Generated text exactly as it follows the prompt (leading whitespace kept)."""
    new_tokens: int = 0
    """Tokens generated before EOS or the limit."""
    metrics: dict[str, float | None] = field(default_factory=dict)
    """Per-sample metric values (None where undefined, e.g. an empty continuation)."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def jsonl_text(records: Iterable[GenerationRecord]) -> str:
    return "".join(json.dumps(record.to_dict(), ensure_ascii=False, allow_nan=False) + "\n" for record in records)


def write_generations(path: Path, records: Iterable[GenerationRecord]) -> None:
    """All records to `path`, one JSON object per line, written atomically."""
    write_text_atomic(Path(path), jsonl_text(records))


def read_generations(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
