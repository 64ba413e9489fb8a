from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from storytune.config import DataConfig
from storytune.train.data import (
    DataError,
    clean_stories,
    load_local_stories,
    pack_blocks,
    prepare_data,
    split_stories,
    story_files,
)
from storytune.train.model import shipped_gpt2_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return shipped_gpt2_tokenizer()


def write_txt(path: Path, stories: list[str]) -> Path:
    path.write_text("".join(f"{s}\n<|endoftext|>\n" for s in stories))
    return path


def make_stories(n: int) -> list[str]:
    return [f"Story {i}. Once upon a time, a cat named Tom{i} found a red ball and was happy." for i in range(n)]


def test_txt_and_jsonl_are_read(tmp_path: Path) -> None:
    write_txt(tmp_path / "a.txt", ["First story.\nSecond line.", "Second story."])
    (tmp_path / "b.jsonl").write_text("\n".join(json.dumps({"text": t}) for t in ["Third.", "Fourth."]) + "\n")
    stories = clean_stories(load_local_stories(story_files([str(tmp_path)]), "text"))
    assert stories == ["First story.\nSecond line.", "Second story.", "Third.", "Fourth."]


def test_real_tinystories_counts(stories_dir: Path) -> None:
    files = story_files([str(stories_dir / "tinystories-valid.txt")])
    assert len(clean_stories(load_local_stories(files, "text"))) == 559


def test_cleaning_drops_empty_and_exact_duplicates() -> None:
    assert clean_stories(["  a ", "", "b", "a", None, "\n", "b "]) == ["a", "b"]


def test_split_is_seeded_disjoint_and_complete() -> None:
    stories = make_stories(50)
    config = DataConfig(files=["x"], validation_stories=5, test_stories=7, split_seed=3)
    first, again = split_stories(stories, config), split_stories(stories, config)
    assert first == again
    assert len(first.test) == 7 and len(first.validation) == 5 and len(first.train) == 38
    assert sorted(first.train + first.validation + first.test) == sorted(stories)


def test_packing_loses_and_duplicates_nothing() -> None:
    rows = [[1, 2, 3, 0], [4, 5, 0], [6, 7, 8, 9, 10, 0], [11, 0]]
    blocks, dropped = pack_blocks(rows, block_size=4)
    stream = [t for row in rows for t in row]
    assert blocks.shape == (3, 4)
    assert blocks.ravel().tolist() == stream[:12]
    assert dropped == len(stream) - 12 < 4


def test_prepared_blocks_are_the_token_stream(tmp_path: Path, tokenizer) -> None:
    stories = make_stories(40)
    write_txt(tmp_path / "s.txt", stories)
    config = DataConfig(files=[str(tmp_path / "s.txt")], validation_stories=5, test_stories=5,
                        block_size=16, cache_dir=str(tmp_path / "cache"))
    splits, summary = prepare_data(config, tokenizer)
    train_stories = split_stories(stories, config).train
    stream = []
    for story in train_stories:
        stream += tokenizer(story)["input_ids"] + [tokenizer.eos_token_id]
    blocks = np.array(splits["train"]["input_ids"])
    assert blocks.shape[1] == 16
    assert blocks.ravel().tolist() == stream[: blocks.size]
    assert summary.tokens["train"] == len(stream)
    assert summary.tokens_dropped["train"] == len(stream) - blocks.size < 16
    assert splits["test"]["text"] == split_stories(stories, config).test


def test_cache_is_reused_and_keyed_by_config(tmp_path: Path, tokenizer) -> None:
    write_txt(tmp_path / "s.txt", make_stories(30))
    config = DataConfig(files=[str(tmp_path / "s.txt")], validation_stories=5, test_stories=5,
                        block_size=16, cache_dir=str(tmp_path / "cache"))
    _, first = prepare_data(config, tokenizer)
    _, again = prepare_data(config, tokenizer)
    assert again == first
    _, other = prepare_data(DataConfig(**{**config.__dict__, "block_size": 8}), tokenizer)
    assert other.fingerprint != first.fingerprint
    assert len(list((tmp_path / "cache").glob("data-*"))) == 2  # (and their hidden build locks)


def test_missing_file_is_a_clear_error(tmp_path: Path, tokenizer) -> None:
    with pytest.raises(DataError, match="story file not found"):
        prepare_data(DataConfig(files=[str(tmp_path / "nope.txt")], cache_dir=str(tmp_path)), tokenizer)


def test_empty_file_is_a_clear_error(tmp_path: Path, tokenizer) -> None:
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(DataError, match="story file is empty"):
        prepare_data(DataConfig(files=[str(tmp_path / "empty.txt")], cache_dir=str(tmp_path)), tokenizer)


def test_too_few_stories_is_a_clear_error(tmp_path: Path, tokenizer) -> None:
    write_txt(tmp_path / "s.txt", make_stories(5))
    with pytest.raises(DataError, match="only 5 stories after cleaning"):
        prepare_data(DataConfig(files=[str(tmp_path / "s.txt")], validation_stories=3, test_stories=3,
                                cache_dir=str(tmp_path / "c")), tokenizer)


def test_fewer_tokens_than_one_block_is_a_clear_error(tmp_path: Path, tokenizer) -> None:
    write_txt(tmp_path / "s.txt", ["Hi.", "Yo.", "Ok.", "No."])
    config = DataConfig(files=[str(tmp_path / "s.txt")], validation_stories=1, test_stories=1,
                        block_size=512, cache_dir=str(tmp_path / "c"))
    with pytest.raises(DataError, match="fewer than one block of data.block_size=512"):
        prepare_data(config, tokenizer)
    assert not any((tmp_path / "c").glob("data-*")), "nothing half-written may look like a cache"


def test_hub_unreachable_says_how_to_provide_stories(tmp_path: Path, tokenizer) -> None:
    # HF_HUB_OFFLINE=1 (conftest) stands in for "no network": the hub is never contacted.
    with pytest.raises(DataError, match="STORYTUNE_DATA_DIR"):
        prepare_data(DataConfig(cache_dir=str(tmp_path)), tokenizer)
