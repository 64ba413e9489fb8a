"""`paths.save_dir_atomically` (the data cache and the tiny base model use it) and `errors`' one-line messages."""

from __future__ import annotations

from pathlib import Path

import pytest

from storytune.errors import first_line, last_line
from storytune.paths import save_dir_atomically


def write_files(text: str):
    def write(folder: Path) -> None:
        folder.mkdir(parents=True)
        (folder / "a.txt").write_text(text)
        (folder / "b.txt").write_text(text)
    return write


def test_saved_folder_appears_whole(tmp_path: Path) -> None:
    target = tmp_path / "cache" / "data-1"
    (tmp_path / "cache").mkdir()
    save_dir_atomically(target, write_files("first"))
    assert sorted(p.name for p in target.iterdir()) == ["a.txt", "b.txt"]
    assert [p.name for p in (tmp_path / "cache").iterdir()] == ["data-1"]  # no temporary sibling left


def test_a_failed_write_leaves_nothing(tmp_path: Path) -> None:
    def crash(folder: Path) -> None:
        write_files("half")(folder)
        raise KeyboardInterrupt  # a job killed mid-write

    with pytest.raises(KeyboardInterrupt):
        save_dir_atomically(tmp_path / "data-1", crash)
    assert list(tmp_path.iterdir()) == []


def test_the_first_saver_wins(tmp_path: Path) -> None:
    target = tmp_path / "data-1"
    save_dir_atomically(target, write_files("first"))
    save_dir_atomically(target, write_files("second"))  # another job built the same folder meanwhile
    assert (target / "a.txt").read_text() == "first"
    assert [p.name for p in tmp_path.iterdir()] == ["data-1"]


def test_one_line_of_an_error() -> None:
    err = RuntimeError("\nTraceback (most recent call last):\n  File x\nValueError: bad value\n")
    assert first_line(err) == "Traceback (most recent call last):"
    assert last_line(err) == "ValueError: bad value"
    assert first_line(OSError()) == last_line(OSError()) == "OSError"
