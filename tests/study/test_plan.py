from __future__ import annotations

from pathlib import Path

from storytune.config import deep_merge
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


def replay_grid(tmp_path: Path, **base: object):
    return expand_grid({
        "name": "r", "output_dir": str(tmp_path), "replay": True,
        "base": deep_merge({"model": {"name": "tiny"}, "data": {"files": ["/x"]},
                            "train": {"max_steps": 20, "eval_steps": 10}}, base),
        "axes": {"train.seed": [1, 2], "early_stopping": [{"patience": None}, {"patience": 1}, {"patience": 3}]},
    })


def test_replay_has_one_evaluation_per_training_after_that_training_only(tmp_path: Path) -> None:
    """A failed training must cancel only its own cells' evaluations: each evaluation job waits for
    the one training its cells come from, and covers exactly those cells."""
    plan = make_plan(replay_grid(tmp_path))
    assert len(plan.finetunes) == 2 and len(plan.evaluations) == 2
    for finetune, evaluation in zip(plan.finetunes, plan.evaluations):
        assert evaluation.depends_on == (finetune.name,)
        assert evaluation.cells == finetune.cells and len(evaluation.cells) == 3
        assert [p.parent.parent.name for p in evaluation.outputs] == evaluation.cells
        assert all(p.name == "eval.json" for p in evaluation.outputs)
    assert set(plan.aggregation.depends_on) == {e.name for e in plan.evaluations} | {"evaluate/base"}
    manifest = plan.manifest()
    by_training = {c["run_id"]: c["evaluated_by"] for c in manifest["cells"]}
    assert {by_training[run_id] for run_id in plan.evaluations[0].cells} == {plan.evaluations[0].name}
    assert [len(j["cells"]) for j in manifest["jobs"] if j["kind"] == "evaluate"] == [3, 3]


def test_replay_evaluation_is_done_only_when_every_cell_is(tmp_path: Path) -> None:
    grid = replay_grid(tmp_path)
    evaluation = make_plan(grid).evaluations[0]
    for path in evaluation.outputs[:2]:
        write_json_atomic(path, {"done": True})
    assert not make_plan(grid).evaluations[0].done
    write_json_atomic(evaluation.outputs[2], {"done": True})
    assert make_plan(grid).evaluations[0].done and not make_plan(grid).evaluations[1].done


def test_base_evaluation_is_keyed_by_what_it_depends_on(tmp_path: Path) -> None:
    """A base evaluation made under other settings is never taken as done: its folder is keyed."""
    plan = make_plan(small_grid(tmp_path))
    base = plan.base_evaluation
    assert base is not None and base.key and len(base.key) == 8
    assert base.output == tmp_path / "g" / "base" / f"eval-{base.key}" / "eval.json"
    assert plan.manifest()["base_model"]["eval_key"] == base.key
    write_json_atomic(base.output, {"done": True})
    assert make_plan(small_grid(tmp_path)).base_evaluation.done

    def key_with(**base_section: object) -> str:
        return make_plan(replay_grid(tmp_path / "k", **base_section)).base_evaluation.key

    plain = key_with()
    # Settings the evaluation depends on change the key ...
    for changed in ({"generation": {"num_prompts": 4}}, {"generation": {"max_new_tokens": 12}},
                    {"eval": {"scorer": "gpt2-large"}}, {"data": {"files": ["/y"]}},
                    {"data": {"test_stories": 50}}, {"model": {"tiny": {"n_layer": 3}}}):
        assert key_with(**changed) != plain, changed
    # ... where caches live, training and W&B settings do not.
    for same in ({"data": {"cache_dir": "/c"}}, {"eval": {"scorer_cache": "/s"}},
                 {"train": {"max_steps": 40, "eval_steps": 10}}, {"wandb": {"mode": "disabled"}}):
        assert key_with(**same) == plain, same
