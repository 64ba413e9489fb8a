from __future__ import annotations

from pathlib import Path

import pytest

from storytune.config import (
    ConfigError,
    EarlyStoppingConfig,
    RunConfig,
    TrainConfig,
    from_dict,
    load_run_config,
    parse_override,
)

REPO = Path(__file__).resolve().parents[1]


def test_defaults_are_valid() -> None:
    config = RunConfig()
    assert config.model.name == "gpt2"
    assert config.early_stopping.variant == "none"


def test_every_problem_is_listed_once_with_its_path(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(
        "train:\n  eval_steps: ten\n  max_steps: -5\n  lerning_rate: 0.1\n"
        "early_stopping:\n  patience: 0\n"
        "data:\n  block_size: 64\n  validation_stories: 50\n  test_stories: 50\n  max_stories: 80\n"
        "modle: {}\n"
    )
    with pytest.raises(ConfigError) as info:
        load_run_config(path)
    paths = [p.path for p in info.value.problems]
    assert "train.eval_steps" in paths
    assert "train.max_steps" in paths
    assert "train.lerning_rate" in paths
    assert "early_stopping.patience" in paths
    assert "data.max_stories" in paths
    assert "modle" in paths
    text = str(info.value)
    assert "train.eval_steps: must be an integer, got 'ten'" in text
    assert "valid keys: " in text and "learning_rate" in text  # unknown keys list the valid ones
    assert str(path) in text


def test_save_steps_must_equal_eval_steps() -> None:
    with pytest.raises(ConfigError, match="save_steps: must equal eval_steps=20"):
        TrainConfig(eval_steps=20, save_steps=40)
    assert TrainConfig(eval_steps=20, save_steps=20).save_steps == 20


def test_max_steps_must_be_a_multiple_of_eval_steps() -> None:
    with pytest.raises(ConfigError, match="max_steps: must be a multiple of eval_steps=20"):
        TrainConfig(max_steps=50, eval_steps=20)


def test_threshold_without_patience_is_rejected() -> None:
    with pytest.raises(ConfigError, match="threshold: needs `patience` set"):
        EarlyStoppingConfig(threshold=0.1)


def test_variant_names() -> None:
    assert EarlyStoppingConfig().variant == "none"
    assert EarlyStoppingConfig(patience=3).variant == "patience3"
    assert EarlyStoppingConfig(patience=1, threshold=0.05).variant == "patience1-thr0.05"


def test_overrides_are_parsed_as_yaml() -> None:
    assert parse_override("train.max_steps=200") == ("train.max_steps", 200)
    assert parse_override("early_stopping.patience=null") == ("early_stopping.patience", None)
    assert parse_override("data.files=[a, b]") == ("data.files", ["a", "b"])
    config = load_run_config(None, ["model.name=tiny", "train.max_steps=200", "early_stopping.patience=2"])
    assert config.train.max_steps == 200 and config.early_stopping.patience == 2


def test_bad_override_syntax() -> None:
    with pytest.raises(ConfigError, match="must look like key.path=value"):
        load_run_config(None, ["train.max_steps"])


def test_malformed_yaml_names_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("train:\n  max_steps: [1, 2\n")
    with pytest.raises(ConfigError, match="malformed YAML .* at line"):
        load_run_config(path)


def test_missing_file() -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_run_config("/nonexistent/x.yaml")


def test_tiny_block_size_must_fit_context() -> None:
    with pytest.raises(ConfigError, match="data.block_size: must be <= model.tiny.n_positions=64"):
        from_dict(RunConfig, {"model": {"name": "tiny", "tiny": {"n_positions": 64}}, "data": {"block_size": 128}})


def test_environment_points_at_local_stories(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STORYTUNE_DATA_DIR", "/some/stories")
    assert load_run_config(None).data.files == ["/some/stories"]


def test_every_shipped_yaml_loads() -> None:
    """Run configs load as RunConfig, grids expand into valid cells."""
    from storytune.study.grid import load_grid

    # configs/accelerate/*.yaml are accelerate's own files (tests/train/test_accelerate_launch.py loads them).
    files = sorted(p for p in (REPO / "configs").rglob("*.yaml") if "accelerate" not in p.parts) + \
        sorted(REPO.glob("*.yaml"))
    assert files, "no shipped YAML found"
    for path in files:
        first_lines = path.read_text().splitlines()[:12]
        assert any("python " in line for line in first_lines if line.startswith("#")), \
            f"{path} must say in a header comment which command runs it"
        text = path.read_text()
        if "\naxes:" in text or text.startswith("axes:"):
            grid = load_grid(path)
            assert grid.cells
        else:
            load_run_config(path)


def test_a_bad_section_does_not_cause_spurious_cross_checks() -> None:
    with pytest.raises(ConfigError) as info:
        from_dict(RunConfig, {"model": {"name": "tiny", "tiny": {"n_positions": 64}},
                              "data": {"max_stories": 300, "validation_stories": 5000, "block_size": 64}})
    assert [p.path for p in info.value.problems] == ["data.max_stories"]
