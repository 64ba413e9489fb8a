"""storytune's one YAML loader: numbers as users write them (`1e-4`, `3E-5`, `1_000`) in files and in
`key=value` overrides, strings kept where the schema wants strings, and repeated keys refused."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml

from conftest import REPO
from storytune.cli import main
from storytune.config import ConfigError, load_run_config, parse_override, read_yaml
from storytune.study.grid import load_grid
from storytune.yaml_loader import DuplicateKeyError, load_yaml

# --------------------------------------------------------------------------------------------------
# Numbers


@pytest.mark.parametrize(("text", "expected"), [
    ("1e-4", 1e-4), ("3E-5", 3e-5), ("1e3", 1000.0), ("-2e-3", -2e-3), ("+1E+2", 100.0), ("2.0e-3", 2e-3),
    ("1.5", 1.5), (".5", 0.5), ("1.", 1.0), ("1_000.5", 1000.5), ("1_0e2", 1000.0),
])
def test_floats_as_users_write_them(text: str, expected: float) -> None:
    value = load_yaml(f"x: {text}")["x"]
    assert isinstance(value, float)
    assert value == pytest.approx(expected, rel=1e-15)


@pytest.mark.parametrize(("text", "expected"), [
    ("1000", 1000), ("1_000", 1000), ("-1_000_000", -1_000_000), ("017", 17), ("0x1f", 31), ("0o17", 15),
    ("0b101", 5), ("+3", 3), ("0", 0),
])
def test_ints_as_users_write_them(text: str, expected: int) -> None:
    value = load_yaml(f"x: {text}")["x"]
    assert isinstance(value, int) and not isinstance(value, bool) and value == expected


def test_infinities_and_nan() -> None:
    values = load_yaml("[.inf, -.inf, .nan]")
    assert values[0] == math.inf and values[1] == -math.inf and math.isnan(values[2])


@pytest.mark.parametrize("text", ["1:20", "1e", "e3", "1__0", "1e-4x", "v1e3", "1.2.3", "0x", "_1", "1e3.5"])
def test_look_alikes_stay_strings(text: str) -> None:
    assert load_yaml(f"x: {text}")["x"] == text


def test_everything_else_resolves_as_before() -> None:
    """Only numbers changed: booleans, nulls, dates, quoted numbers are what PyYAML's safe loader makes."""
    text = "a: yes\nb: ~\nc: 2024-01-01\nd: '1e-4'\ne: [true, null, off]\nf: {g: 1.0e-4}\n"
    assert load_yaml(text) == yaml.safe_load(text)


def test_a_run_config_file_reads_scientific_notation(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text("train:\n  learning_rate: 1e-4\n  weight_decay: 3E-5\n  max_steps: 1_000\n"
                    "  eval_steps: 1_00\n")
    config = load_run_config(path)
    assert type(config.train.learning_rate) is float and config.train.learning_rate == 1e-4
    assert type(config.train.weight_decay) is float and config.train.weight_decay == 3e-5
    assert type(config.train.max_steps) is int and config.train.max_steps == 1000
    assert config.train.eval_steps == 100


def test_overrides_read_numbers_like_files() -> None:
    assert parse_override("train.learning_rate=1e-4") == ("train.learning_rate", 1e-4)
    config = load_run_config(None, ["train.learning_rate=1e-4", "train.max_steps=1_000", "generation.top_p=9.5E-1"])
    assert type(config.train.learning_rate) is float and config.train.learning_rate == 0.0001
    assert type(config.train.max_steps) is int and config.train.max_steps == 1000
    assert config.generation.top_p == 0.95


def test_strings_that_look_like_numbers_stay_as_written_where_the_schema_wants_strings() -> None:
    config = load_run_config(None, ["output.name=1e3", "wandb.group=2024_01", "wandb.tags=[3E-5, 0x1f]",
                                    "data.dataset_split=017"])
    assert config.output.name == "1e3" and config.wandb.group == "2024_01"
    assert config.wandb.tags == ["3E-5", "0x1f"] and config.data.dataset_split == "017"


def test_a_float_is_still_not_an_integer() -> None:
    with pytest.raises(ConfigError, match=r"train\.max_steps: must be an integer, got 1000\.0"):
        load_run_config(None, ["train.max_steps=1e3"])


def test_a_grid_file_sweeps_scientific_notation(tmp_path: Path) -> None:
    path = tmp_path / "grid.yaml"
    path.write_text("name: lr\nbase:\n  model: {name: tiny}\n  train: {max_steps: 1_000, eval_steps: 100}\n"
                    "axes:\n  train.learning_rate: [1e-4, 3E-4]\n")
    grid = load_grid(path, ["base.train.weight_decay=1e-2"])
    rates = [cell.config.train.learning_rate for cell in grid.cells]
    assert rates == [1e-4, 3e-4] and all(type(rate) is float for rate in rates)
    assert [type(cell.assignment["train.learning_rate"]) for cell in grid.cells] == [float, float]
    assert grid.cells[0].config.train.weight_decay == 0.01 and grid.cells[0].config.train.max_steps == 1000
    assert grid.cells[0].run_id != grid.cells[1].run_id


def test_the_cli_takes_scientific_notation(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The issue's report: `train.learning_rate=1e-4` was refused as "must be a number, got '1e-4'"."""
    code = main(["submit", "--grid", str(REPO / "configs" / "grids" / "tiny.yaml"), "--dry-run",
                 f"output_dir={tmp_path}", "base.train.learning_rate=1e-4", "axes.train.seed=[1_0]"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "error" not in captured.err


# --------------------------------------------------------------------------------------------------
# Duplicate keys


def test_a_repeated_key_names_the_key_both_lines_and_the_file(tmp_path: Path) -> None:
    path = tmp_path / "grid.yaml"
    path.write_text("name: g\nbase:\n  train: {max_steps: 10}\naxes:\n  train.seed: [1]\n"
                    "base:\n  model: {name: tiny}\n")
    with pytest.raises(ConfigError) as info:
        read_yaml(path)
    assert str(info.value) == (f"invalid config: duplicate key `base` in {path} at lines 2 and 6: YAML would "
                               "silently keep only the second; merge the two into one")


def test_a_repeated_nested_key_is_found_too(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text("train:\n  max_steps: 10\n  eval_steps: 5\n  max_steps: 20\n")
    with pytest.raises(ConfigError, match=r"duplicate key `max_steps` in .*run\.yaml at lines 2 and 4"):
        load_run_config(path)


def test_a_repeated_key_in_an_override() -> None:
    with pytest.raises(ConfigError, match=r"duplicate key `patience` in override .* at lines 1 and 1"):
        parse_override("early_stopping={patience: 1, patience: 2}")


def test_merge_keys_may_be_overridden() -> None:
    """`<<: *defaults` followed by a key of the defaults is YAML's way to override, not a duplicate."""
    data = load_yaml("defaults: &d {a: 1, b: 2}\nrun:\n  <<: *d\n  b: 3\n")
    assert data["run"] == {"a": 1, "b": 3}


def test_duplicate_key_error_carries_the_lines() -> None:
    with pytest.raises(DuplicateKeyError) as info:
        load_yaml("a: 1\nb: 2\na: 3\n")
    assert (info.value.key, info.value.first_line, info.value.second_line) == ("a", 1, 3)


# --------------------------------------------------------------------------------------------------
# Writing


def test_what_storytune_writes_reads_back_as_written(tmp_path: Path) -> None:
    """A run's config.yaml: strings that look like numbers are quoted, numbers stay numbers."""
    from storytune.paths import write_config
    from storytune.yaml_loader import dump_yaml

    config = load_run_config(None, ["output.name=1e3", "wandb.tags=[3E-5, '1_000', 'yes']",
                                    "train.learning_rate=1e-4", "train.max_steps=1_000", "train.eval_steps=100"])
    path = tmp_path / "config.yaml"
    write_config(path, config)
    assert "name: '1e3'" in path.read_text()
    assert load_run_config(path) == config
    data = {"a": load_yaml("[1e-4, 1_000]"), "b": "1e-4", "c": "0x1f"}
    assert load_yaml(dump_yaml(data)) == data and type(load_yaml(dump_yaml(data))["b"]) is str
