from __future__ import annotations

from pathlib import Path

from storytune.paths import write_json_atomic
from storytune.study.grid import expand_grid
from storytune.study.plan import make_plan


def small_grid(tmp_path: Path, evaluate: bool = True):
    return expand_grid({
        "name": "g", "output_dir": str(tmp_path), "evaluate": evaluate,
        "base": {"model": {"name": "tiny"}, "data": {"files": ["/x"]}, "train": {"max_steps": 20, "eval_steps": 10}},
        "axes": {"early_stopping": [{"patience": None}, {"patience": 1}], "train.seed": [1, 2]},
    })


def test_dependencies(tmp_path: Path) -> None:
    plan = make_plan(small_grid(tmp_path))
    assert len(plan.finetunes) == 4 and len(plan.evaluations) == 4
    for finetune, evaluation in zip(plan.finetunes, plan.evaluations):
        assert evaluation.depends_on == (finetune.name,)
        assert evaluation.run_id == finetune.run_id
    assert plan.base_evaluation is not None and plan.base_evaluation.depends_on == ()
    assert set(plan.aggregation.depends_on) == {e.name for e in plan.evaluations} | {"evaluate/base"}


def test_without_evaluation_aggregation_waits_for_finetunes(tmp_path: Path) -> None:
    plan = make_plan(small_grid(tmp_path, evaluate=False))
    assert plan.evaluations == [] and plan.base_evaluation is None
    assert set(plan.aggregation.depends_on) == {f.name for f in plan.finetunes}


def test_done_cells_are_marked_and_force_clears(tmp_path: Path) -> None:
    grid = small_grid(tmp_path)
    first = make_plan(grid).finetunes[0]
    write_json_atomic(first.output, {"stop_step": 20})
    plan = make_plan(grid)
    assert plan.finetunes[0].done and not any(j.done for j in plan.finetunes[1:])
    assert [j.name for j in plan.pending("finetune")] == [j.name for j in plan.finetunes[1:]]
    assert not make_plan(grid, force=True).finetunes[0].done
    assert not plan.aggregation.done, "aggregation always runs afresh"


def test_manifest_lists_cells_and_jobs(tmp_path: Path) -> None:
    plan = make_plan(small_grid(tmp_path))
    manifest = plan.manifest()
    assert [c["run_id"] for c in manifest["cells"]] == [f.run_id for f in plan.finetunes]
    assert manifest["cells"][2]["variant"] == "patience1"
    assert len(manifest["jobs"]) == 4 + 4 + 1 + 1
