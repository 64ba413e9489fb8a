from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from storytune.config import ConfigError
from storytune.study.grid import expand_grid, load_grid
from storytune.study.stats import MIN_SEEDS

REPO = Path(__file__).resolve().parents[2]


def grid_dict(**changes) -> dict:
    raw = {
        "name": "g", "output_dir": "/tmp/out",
        "base": {"model": {"name": "tiny"}, "data": {"files": ["/x"]}, "train": {"max_steps": 100, "eval_steps": 10}},
        "axes": {"early_stopping": [{"patience": None}, {"patience": 2}], "train.seed": [1, 2]},
    }
    raw.update(changes)
    return raw


def test_expansion_is_the_product_in_order() -> None:
    grid = expand_grid(grid_dict())
    assert [(c.config.early_stopping.variant, c.config.train.seed) for c in grid.cells] == [
        ("none", 1), ("none", 2), ("patience2", 1), ("patience2", 2)]
    assert all(c.config.output.dir == "/tmp/out/g" for c in grid.cells)
    assert all(c.config.wandb.group == "g" for c in grid.cells)
    assert grid.cells[0].config.train.max_steps == 100


def test_ids_are_stable_and_depend_on_config_only() -> None:
    first = [c.run_id for c in expand_grid(grid_dict()).cells]
    again = [c.run_id for c in expand_grid(grid_dict(output_dir="/elsewhere")).cells]
    assert first == again
    assert len(set(first)) == 4
    assert first[2].startswith("patience2-seed1-")
    changed = [c.run_id for c in expand_grid(grid_dict(base={"model": {"name": "tiny"}, "data": {"files": ["/x"]},
                                                            "train": {"max_steps": 200, "eval_steps": 10}})).cells]
    assert set(changed).isdisjoint(first)


def test_same_file_same_ids(tmp_path: Path) -> None:
    path = tmp_path / "g.yaml"
    path.write_text(yaml.safe_dump(grid_dict()))
    assert [c.run_id for c in load_grid(path).cells] == [c.run_id for c in load_grid(path).cells]


def test_section_values_merge_with_base() -> None:
    raw = grid_dict(base={"model": {"name": "tiny"}, "early_stopping": {"threshold": 0.0, "keep": "last"}})
    grid = expand_grid(raw)
    assert grid.cells[2].config.early_stopping.keep == "last"
    assert grid.cells[2].config.early_stopping.patience == 2


def test_all_problems_listed_before_anything_runs() -> None:
    raw = grid_dict(axes={"early_stopping": [{"patience": 0}, {"patiense": 2}], "train.sed": [1],
                          "train.max_steps": []})
    with pytest.raises(ConfigError) as info:
        expand_grid(raw)
    text = str(info.value)
    assert "axes.train.max_steps: must be a non-empty list" in text
    raw["axes"].pop("train.max_steps")
    with pytest.raises(ConfigError) as info:
        expand_grid(raw)
    text = str(info.value)
    assert "early_stopping.patience: must be a positive integer, got 0" in text
    assert "early_stopping.patiense: unknown key" in text
    assert "train.sed: unknown key" in text


def test_base_problems_reported_once() -> None:
    raw = grid_dict(base={"train": {"eval_steps": "ten"}})
    with pytest.raises(ConfigError) as info:
        expand_grid(raw)
    assert [p.path for p in info.value.problems] == ["base.train.eval_steps"]


def test_duplicate_cells_are_rejected() -> None:
    with pytest.raises(ConfigError, match="resolve to the same config"):
        expand_grid(grid_dict(axes={"train.seed": [1, 1]}))


def test_shipped_study_grid() -> None:
    grid = load_grid(REPO / "configs" / "grids" / "early_stopping.yaml")
    assert len(grid.cells) == 15
    assert {c.config.early_stopping.variant for c in grid.cells} == {
        "none", "patience1", "patience3", "patience5", "patience3-thr0.01"}
    assert grid.aggregate_resources.gpus_per_node == 0 and grid.spec.resources.gpus_per_node == 1


def test_shipped_pretrained_grid_has_an_independent_scorer_and_enough_seeds_for_procedure_claims() -> None:
    from storytune.train.pretrained import find_preset, model_family

    grid = load_grid(REPO / "configs" / "grids" / "pretrained.yaml")
    config = grid.cells[0].config
    assert find_preset(config.model.name) is not None and not config.model.is_tiny
    assert model_family(config.eval.scorer) != model_family(config.model.name)  # no family bias in fluency
    assert len({c.config.train.seed for c in grid.cells}) >= MIN_SEEDS and grid.spec.replay
    assert "none" in {c.config.early_stopping.variant for c in grid.cells}


def test_overrides_reach_base_and_axes(tmp_path: Path) -> None:
    path = tmp_path / "g.yaml"
    path.write_text(yaml.safe_dump(grid_dict()))
    grid = load_grid(path, ["base.train.max_steps=50", "axes.train.seed=[7]", "name=other"])
    assert [c.config.train.seed for c in grid.cells] == [7, 7]
    assert grid.cells[0].config.train.max_steps == 50 and grid.spec.name == "other"


def test_aggregation_gets_cpu_resources_of_its_own(tmp_path) -> None:
    """The aggregation is CPU work: no GPU unless `aggregate_resources` asks, charged like `resources`."""
    import pytest

    from storytune.config import ConfigError
    from storytune.study.grid import expand_grid

    raw = {"name": "g", "output_dir": str(tmp_path), "base": {"model": {"name": "tiny"}},
           "resources": {"partition": "gpu", "account": "proj", "gpus_per_node": 4, "time_min": 90,
                         "sbatch": {"constraint": "a100"}, "setup": ["source .venv/bin/activate"]}}
    default = expand_grid(raw).aggregate_resources
    assert default.gpus_per_node == 0 and default.nodes == 1 and default.partition is None
    assert default.account == "proj" and default.setup == ["source .venv/bin/activate"] and default.sbatch == {}
    custom = expand_grid({**raw, "aggregate_resources": {"partition": "cpu", "time_min": 15}}).aggregate_resources
    assert (custom.partition, custom.time_min, custom.gpus_per_node) == ("cpu", 15, 0)
    with pytest.raises(ConfigError, match="aggregate_resources.time_min"):
        expand_grid({**raw, "aggregate_resources": {"time_min": 0}})
