"""Stories -> clean -> split -> tokenize -> packed blocks, cached by a fingerprint of the config.

Sources: a hub dataset with a text column (streamed, so a slice does not download the whole
dataset), or local `.txt` files with `<|endoftext|>` separators / `.jsonl` files with a text field.
The split is by story and seeded, so every run of a grid sees the same train/validation/test stories.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from storytune.cache import load_or_build
from storytune.config import DataConfig
from storytune.train.hub import hub_reachable

if TYPE_CHECKING:
    from datasets import Dataset, DatasetDict
    from transformers import PreTrainedTokenizerBase

log = logging.getLogger(__name__)

STORY_SEPARATOR = "<|endoftext|>"
STORY_SUFFIXES = (".txt", ".jsonl")
CACHE_FORMAT = 2  # bump when the processing below changes, to invalidate old caches
HOW_TO_PROVIDE = ("set STORYTUNE_DATA_DIR=/path/to/stories (a folder of .txt files with "
                  "<|endoftext|> separators or .jsonl files with a 'text' field) or data.files=[...]")


class DataError(RuntimeError):
    """Stories could not be loaded or are too few; the message says what to do."""


@dataclass(frozen=True)
class StorySplits:
    train: list[str]
    validation: list[str]
    test: list[str]


@dataclass(frozen=True)
class DataSummary:
    """Counts written beside the cached data and into result.json."""

    stories: dict[str, int]
    tokens: dict[str, int]
    blocks: dict[str, int]
    tokens_dropped: dict[str, int]
    block_size: int
    fingerprint: str


# --------------------------------------------------------------------------------------------------
# Loading


def story_files(paths: Iterable[str]) -> list[Path]:
    """Expand folders into their story files; every path must exist and yield at least one file."""
    files: list[Path] = []
    for raw in paths:
        path = Path(raw).expanduser()
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix in STORY_SUFFIXES and p.is_file())
            if not found:
                raise DataError(f"no .txt or .jsonl story files in folder {path}")
            files.extend(found)
        elif path.is_file():
            if path.suffix not in STORY_SUFFIXES:
                raise DataError(f"unsupported story file {path}: use .txt (<|endoftext|> separators) or .jsonl")
            files.append(path)
        else:
            raise DataError(f"story file not found: {path}")
    return files


def read_story_text(path: Path) -> str:
    """A story file's text, refusing binary files and text that is not UTF-8 with a message that
    names the file and the first bad byte (a `datasets` loader would raise a generation traceback)."""
    data = path.read_bytes()
    if not data.strip():
        raise DataError(f"story file is empty: {path}")
    if b"\0" in data[:65536]:  # text never holds NUL bytes; archives, pickles and arrow files do
        raise DataError(f"story file {path} is binary, not text (NUL bytes at offset {data.index(0)}): "
                        f"use .txt (<|endoftext|> separators) or .jsonl files")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise DataError(f"story file {path} is not UTF-8 (byte {data[err.start]:#04x} on line {line}); convert "
                        f"it, e.g. `iconv -f latin1 -t utf-8 {path} > fixed.txt`") from None


def read_jsonl_stories(path: Path, text_column: str) -> list[str]:
    """The `text_column` field of every line of a JSON-lines file (blank lines skipped)."""
    stories: list[str] = []
    for number, line in enumerate(read_story_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"{path} line {number} is not JSON ({err.msg}); each line must be one JSON object "
                            f"with a {text_column!r} field") from None
        if not isinstance(record, dict) or text_column not in record:
            fields = ", ".join(record) if isinstance(record, dict) else type(record).__name__
            raise DataError(f"{path} line {number} has no {text_column!r} field (found: {fields}); "
                            "set data.text_column to the field holding the story")
        value = record[text_column]
        if value is not None and not isinstance(value, str):
            raise DataError(f"{path} line {number}: {text_column!r} must be a string, got {type(value).__name__}")
        stories.append(value or "")
    return stories


def load_local_stories(files: list[Path], text_column: str) -> list[str]:
    """Stories from `.txt` (split on `<|endoftext|>`) and `.jsonl` files, in file order.

    Read with plain Python rather than `datasets`: the files are read once and whole anyway, and
    every malformed file gets a message that names it.
    """
    stories: list[str] = []
    for path in files:
        if path.suffix == ".jsonl":
            stories.extend(read_jsonl_stories(path, text_column))
        else:
            stories.extend(read_story_text(path).split(STORY_SEPARATOR))
    return stories


def load_hub_stories(config: DataConfig) -> list[str]:
    """Stories from a hub dataset: streamed when the Hub is reachable (so `max_stories` does not
    download everything), else from the local cache (`datasets`' offline mode), as pre-downloaded on
    a login node."""
    from datasets import load_dataset

    # Take a little more than needed: cleaning drops empties and duplicates.
    limit = None if config.max_stories is None else int(config.max_stories * 1.1) + 10
    if hub_reachable():
        records = load_dataset(config.dataset, split=config.dataset_split, streaming=True)
    else:
        try:
            records = load_dataset(config.dataset, split=config.dataset_split)
        except Exception as err:  # noqa: BLE001  (datasets raises ConnectionError, FileNotFoundError, ValueError...)
            log.debug("cached dataset %r not loadable: %s", config.dataset, err)
            raise DataError(f"dataset {config.dataset!r} is not in the local Hugging Face cache and the Hub is "
                            f"unreachable (or HF_HUB_OFFLINE=1): pre-download it where there is internet (login "
                            f"node: `hf download {config.dataset} --repo-type dataset`), or "
                            f"{HOW_TO_PROVIDE}") from None
    stories = []
    for i, record in enumerate(records):
        if limit is not None and i >= limit:
            break
        if config.text_column not in record:
            raise DataError(f"{config.dataset}: no column {config.text_column!r} "
                            f"(columns: {', '.join(record)}); set data.text_column")
        stories.append(record[config.text_column])
    return stories


def clean_stories(stories: Iterable[str | None]) -> list[str]:
    """Strip whitespace, drop empty stories and exact duplicates (first occurrence kept)."""
    seen: set[str] = set()
    cleaned = []
    for story in stories:
        text = (story or "").strip()
        if text and text not in seen:
            seen.add(text)
            cleaned.append(text)
    return cleaned


def split_stories(stories: list[str], config: DataConfig) -> StorySplits:
    """Seeded shuffle, then test, validation and train slices, by story."""
    held_out = config.validation_stories + config.test_stories
    if len(stories) <= held_out:
        raise DataError(f"only {len(stories)} stories after cleaning; need more than "
                        f"data.validation_stories + data.test_stories = {held_out}")
    order = list(stories)
    random.Random(config.split_seed).shuffle(order)
    test = order[: config.test_stories]
    validation = order[config.test_stories : held_out]
    train = order[held_out:]
    if config.max_stories is not None:
        train = train[: config.max_stories - held_out]
    return StorySplits(train=train, validation=validation, test=test)


def load_story_splits(config: DataConfig) -> StorySplits:
    files = story_files(config.files) if config.files else None
    raw = load_local_stories(files, config.text_column) if files else load_hub_stories(config)
    stories = clean_stories(raw)
    if not stories:
        raise DataError(f"no stories found in {', '.join(map(str, files or [config.dataset]))}")
    return split_stories(stories, config)


# --------------------------------------------------------------------------------------------------
# Tokenizing and packing


def story_start_ids(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Tokens that open a document for this model: `[BOS]` when its tokenizer adds one by default
    (Gemma, whose outputs degrade badly without it), else none (GPT-2, SmolLM2: a story follows the
    previous story's EOS directly)."""
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        return []
    probe = tokenizer("a")["input_ids"]
    return [bos] if probe and probe[0] == bos else []


def tokenize_stories(stories: list[str], tokenizer: PreTrainedTokenizerBase, num_proc: int) -> Dataset:
    """One row of token ids per story: the model's document start (`story_start_ids`), the story, and
    the model's EOS (which separates stories once packed)."""
    from datasets import Dataset

    eos, start = tokenizer.eos_token_id, story_start_ids(tokenizer)

    def encode(batch: dict[str, list[str]]) -> dict[str, list[list[int]]]:
        ids = tokenizer(batch["text"], add_special_tokens=False)["input_ids"]
        return {"input_ids": [start + row + [eos] for row in ids]}

    dataset = Dataset.from_dict({"text": stories})
    return dataset.map(encode, batched=True, remove_columns=["text"], desc="Tokenizing stories",
                       num_proc=num_proc if num_proc > 1 and len(stories) >= 2 * num_proc else None)


def pack_blocks(token_rows: Iterable[list[int]], block_size: int) -> tuple[np.ndarray, int]:
    """Concatenate rows into one stream and cut it into full blocks.

    Returns (blocks of shape [n, block_size], tokens dropped from the final partial block).
    Packing the whole stream at once (not per map batch) loses at most block_size - 1 tokens.
    """
    stream = np.fromiter((t for row in token_rows for t in row), dtype=np.int32)
    n_blocks = len(stream) // block_size
    return stream[: n_blocks * block_size].reshape(n_blocks, block_size), len(stream) - n_blocks * block_size


def pack_scored_blocks(token_rows: Iterable[list[int]], block_size: int, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Pack rows like `pack_blocks`, but keep every token and say which row (story) each belongs to.

    Returns (blocks [n, block_size], story ids [n, block_size]); the last block is padded with
    `pad_id` under story id -1 (not scored). Scoring these blocks with the next-token loss gives
    the validation loss's definition (same packing, same context), split by story.
    """
    rows = [list(row) for row in token_rows]
    stream = np.fromiter((t for row in rows for t in row), dtype=np.int32)
    owner = np.repeat(np.arange(len(rows), dtype=np.int32), [len(row) for row in rows])
    pad = (-len(stream)) % block_size
    stream = np.concatenate([stream, np.full(pad, pad_id, dtype=np.int32)])
    owner = np.concatenate([owner, np.full(pad, -1, dtype=np.int32)])
    return stream.reshape(-1, block_size), owner.reshape(-1, block_size)


# --------------------------------------------------------------------------------------------------
# The cached result


def default_cache_dir() -> Path:
    return Path(os.environ.get("STORYTUNE_CACHE", Path.home() / ".cache" / "storytune"))


def fingerprint(config: DataConfig, tokenizer: PreTrainedTokenizerBase) -> str:
    """Hash of everything that changes the processed data (not num_proc or cache_dir)."""
    relevant = {k: v for k, v in asdict(config).items() if k not in ("num_proc", "cache_dir")}
    files = []
    for path in story_files(config.files) if config.files else []:
        stat = path.stat()
        files.append([str(path.resolve()), stat.st_size, stat.st_mtime_ns])
    spec = {"format": CACHE_FORMAT, "config": relevant, "files": files,
            "tokenizer": [type(tokenizer).__name__, len(tokenizer), tokenizer.eos_token_id]}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def prepare_data(config: DataConfig, tokenizer: PreTrainedTokenizerBase) -> tuple[DatasetDict, DataSummary]:
    """Processed splits, from cache when possible: `train`/`validation` blocks, `test` stories (prompts)
    and `test_blocks` (the test stories packed like validation, with story ids).

    The cache (`data-<fingerprint>/` under `data.cache_dir` or STORYTUNE_CACHE) is built once however
    many jobs of a grid start together, and rebuilt with a warning when it cannot be read
    (`storytune.cache.load_or_build`)."""
    key = fingerprint(config, tokenizer)
    target = Path(config.cache_dir or default_cache_dir()) / f"data-{key}"

    def build(folder: Path) -> None:
        splits, summary = build_data(config, tokenizer, key)
        splits.save_to_disk(str(folder / DATA_SPLITS))
        (folder / DATA_SUMMARY).write_text(json.dumps(asdict(summary), indent=2))  # last: marks it complete

    return load_or_build(target, build, load_cached_data, check=cached_data_problem, what="data cache")


DATA_SPLITS, DATA_SUMMARY = "splits", "summary.json"
"""A data cache folder: the splits as `datasets` saves them, and the summary (written last)."""


def cached_data_problem(folder: Path) -> str | None:
    for name in (DATA_SUMMARY, DATA_SPLITS):
        if not (folder / name).exists():
            return f"missing {name}"
    return None


def load_cached_data(folder: Path) -> tuple[DatasetDict, DataSummary]:
    """Read a data cache; `datasets` raises on a truncated or missing arrow file (the cache is then rebuilt)."""
    from datasets import load_from_disk

    splits = load_from_disk(str(folder / DATA_SPLITS))
    summary = DataSummary(**json.loads((folder / DATA_SUMMARY).read_text()))
    missing = {"train", "validation", "test", "test_blocks"} - set(splits)
    if missing:
        raise ValueError(f"no split {', '.join(sorted(missing))}")
    log.info("Using cached data %s", folder)
    return splits, summary


def build_data(config: DataConfig, tokenizer: PreTrainedTokenizerBase, key: str) -> tuple[DatasetDict, DataSummary]:
    from datasets import Dataset, DatasetDict

    stories = load_story_splits(config)
    packed: dict[str, Dataset] = {}
    tokens: dict[str, int] = {}
    dropped: dict[str, int] = {}
    for name in ("train", "validation"):
        rows = tokenize_stories(getattr(stories, name), tokenizer, config.num_proc)["input_ids"]
        blocks, dropped[name] = pack_blocks(rows, config.block_size)
        tokens[name] = int(blocks.size + dropped[name])
        if len(blocks) == 0:
            raise DataError(f"the {name} split has {tokens[name]} tokens, fewer than one block of "
                            f"data.block_size={config.block_size}; add stories or lower data.block_size")
        packed[name] = Dataset.from_dict({"input_ids": blocks})
    packed["test"] = Dataset.from_dict({"text": stories.test})
    test_rows = tokenize_stories(stories.test, tokenizer, config.num_proc)["input_ids"]
    test_blocks, test_owner = pack_scored_blocks(test_rows, config.block_size, tokenizer.eos_token_id)
    packed["test_blocks"] = Dataset.from_dict({"input_ids": test_blocks, "story_ids": test_owner})
    summary = DataSummary(
        stories={"train": len(stories.train), "validation": len(stories.validation), "test": len(stories.test)},
        tokens=tokens, blocks={name: len(packed[name]) for name in ("train", "validation")},
        tokens_dropped=dropped, block_size=config.block_size, fingerprint=key)
    return DatasetDict(packed), summary


def lm_collator(features: list[dict[str, list[int]]]) -> dict[str, object]:
    """Stack packed blocks; labels are the inputs (the model shifts them).

    Not DataCollatorForLanguageModeling: GPT-2's pad token is EOS, and that collator would mask
    every EOS (the story boundaries) out of the loss.
    """
    import torch

    ids = torch.tensor([f["input_ids"] for f in features], dtype=torch.long)
    return {"input_ids": ids, "labels": ids.clone()}
