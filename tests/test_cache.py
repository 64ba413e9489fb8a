"""`storytune.cache.load_or_build`: a damaged cache is rebuilt with one warning, and concurrent
builders (jobs of a grid sharing STORYTUNE_CACHE) build it once. Real files, real processes."""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import time
from pathlib import Path

import pytest

from storytune.cache import load_or_build
from storytune.config import DataConfig, ModelConfig, TinyModelConfig
from storytune.train.data import prepare_data
from storytune.train.model import resolve_base_model, shipped_gpt2_tokenizer


def cache_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    """storytune.cache's warnings (caplog holds the whole test's records, INFO too once a job set up logging)."""
    return [r.getMessage() for r in caplog.records if r.name == "storytune.cache" and r.levelno >= logging.WARNING]


BUILD_S = 1.5
"""Seconds one build takes in the concurrency test: long enough that the builders overlap."""


def _build_slowly(folder: Path) -> None:
    """Count the build (one line per build, across processes), then write the cache."""
    with open(folder.parent / "builds.log", "a") as log:
        log.write(f"{os.getpid()}\n")
    time.sleep(BUILD_S)
    (folder / "value.json").write_text(json.dumps({"built_by": os.getpid()}))


def _read(folder: Path) -> dict:
    return json.loads((folder / "value.json").read_text())


def _builder(folder: str, start_at: float, results: multiprocessing.Queue) -> None:
    time.sleep(max(0.0, start_at - time.time()))  # every process asks at the same moment
    results.put(load_or_build(Path(folder), _build_slowly, _read, what="test cache"))


def test_concurrent_builders_build_once(tmp_path: Path) -> None:
    context = multiprocessing.get_context("spawn")  # fresh interpreters, like separate jobs
    results = context.Queue()
    start_at = time.time() + 8.0  # spawn imports take a few seconds on a loaded machine
    processes = [context.Process(target=_builder, args=(str(tmp_path / "cache-x"), start_at, results))
                 for _ in range(3)]
    for process in processes:
        process.start()
    values = [results.get(timeout=180) for _ in processes]
    for process in processes:
        process.join(timeout=60)
        assert process.exitcode == 0
    builds = (tmp_path / "builds.log").read_text().split()
    assert len(builds) == 1, builds
    assert values == [{"built_by": int(builds[0])}] * 3
    assert sorted(p.name for p in tmp_path.iterdir()) == [".cache-x.lock", "builds.log", "cache-x"]


def test_damaged_folder_is_rebuilt_with_one_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    folder = tmp_path / "cache-y"
    folder.mkdir()
    (folder / "value.json").write_text('{"built_by')  # truncated
    with caplog.at_level(logging.WARNING, logger="storytune.cache"):
        value = load_or_build(folder, _build_slowly, _read, what="test cache")
    assert value == {"built_by": os.getpid()}
    assert cache_warnings(caplog) == [
        f"test cache {folder} cannot be read (JSONDecodeError: Unterminated string starting at: line 1 column 2 "
        f"(char 1)): rebuilding it"]
    caplog.clear()
    assert load_or_build(folder, _build_slowly, _read) == value  # intact now: read, not rebuilt
    assert cache_warnings(caplog) == [] and len((tmp_path / "builds.log").read_text().split()) == 1


def test_check_failure_counts_as_damage(tmp_path: Path) -> None:
    folder = tmp_path / "cache-z"
    folder.mkdir()
    (folder / "value.json").write_text('{"built_by": 0}')
    def build(tmp: Path) -> None:
        _build_slowly(tmp)
        (tmp / "done").touch()

    value = load_or_build(folder, build, _read, check=lambda f: None if (f / "done").exists() else "missing done")
    assert value == {"built_by": os.getpid()}


def _story_file(folder: Path) -> Path:
    stories = [f"Story {i}. Once upon a time, a cat named Tom{i} found a red ball and was happy." for i in range(40)]
    path = folder / "stories.txt"
    path.write_text("".join(f"{s}\n<|endoftext|>\n" for s in stories))
    return path


def test_truncated_arrow_file_is_rebuilt_and_equals_a_fresh_build(tmp_path: Path,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    tokenizer = shipped_gpt2_tokenizer()
    files = [str(_story_file(tmp_path))]
    config = DataConfig(files=files, validation_stories=5, test_stories=5, block_size=16,
                        cache_dir=str(tmp_path / "cache"))
    prepare_data(config, tokenizer)
    (cache,) = (tmp_path / "cache").glob("data-*")
    arrow = sorted((cache / "splits" / "train").glob("*.arrow"))[0]
    os.truncate(arrow, arrow.stat().st_size // 2)  # what a crashed node or a full filesystem leaves

    with caplog.at_level(logging.WARNING, logger="storytune.cache"):
        splits, summary = prepare_data(config, tokenizer)
    warnings = cache_warnings(caplog)
    assert len(warnings) == 1 and warnings[0].startswith(f"data cache {cache} cannot be read (OSError: "), warnings
    assert warnings[0].endswith("): rebuilding it")

    fresh, fresh_summary = prepare_data(DataConfig(**{**config.__dict__, "cache_dir": str(tmp_path / "fresh")}),
                                        tokenizer)
    assert summary == fresh_summary
    for name in ("train", "validation", "test", "test_blocks"):
        assert splits[name].to_dict() == fresh[name].to_dict(), name
    assert not list((tmp_path / "cache").glob(".data-*.damaged-*")), "the damaged copy is deleted"


def test_damaged_tiny_base_model_is_rebuilt(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    model = ModelConfig(name="tiny", tiny=TinyModelConfig(n_layer=1, n_embd=32, n_head=2, n_positions=64))
    path = Path(resolve_base_model(model, tmp_path))
    weights = path / "model.safetensors"
    original = weights.read_bytes()
    weights.write_bytes(original[: len(original) // 3])
    with caplog.at_level(logging.WARNING, logger="storytune.cache"):
        assert resolve_base_model(model, tmp_path) == str(path)
    assert [w.split(" cannot be read")[0] for w in cache_warnings(caplog)] == [f"tiny base model {path}"]
    assert weights.read_bytes() == original  # same shape and init seed: the same weights again
