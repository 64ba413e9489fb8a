"""What the README demo must show, checked on its output (CI runs it right after the demo):

    STORYTUNE_DEMO_DIR=runs/demo python -m pytest -m demo tests/test_demo_output.py

Skipped unless STORYTUNE_DEMO_DIR names a finished demo grid."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from wandb_reader import find_offline_runs, read_offline_run

from storytune.paths import GridDir

pytestmark = pytest.mark.demo


@pytest.fixture(scope="module")
def summary() -> dict:
    root = os.environ.get("STORYTUNE_DEMO_DIR")
    if not root:
        pytest.skip("STORYTUNE_DEMO_DIR is not set (run the README demo first)")
    grid = GridDir(Path(root))
    assert grid.summary.exists(), f"the demo wrote no {grid.summary}"
    return json.loads(grid.summary.read_text())


def test_every_cell_finished_with_two_seeds(summary: dict) -> None:
    assert summary["cells"]["finished"] == summary["cells"]["expected"] and not summary["cells"]["failed"]
    assert len(summary["seeds"]) >= 2 and summary["study_mode"] == "replay"


def test_the_none_arm_overfits(summary: dict) -> None:
    """Its validation minimum lies before its last evaluation, and it ends >= 0.05 nats above it, every seed;
    the finding itself rests on the test loss of an arm that keeps an earlier checkpoint (Holm-corrected)."""
    none = next(arm for arm in summary["arms"] if arm["variant"] == "none")
    for curve in none["curves"]:
        losses = [(p["step"], p["eval_loss"]) for p in curve["history"]]
        best_step, best = min(losses, key=lambda p: p[1])
        assert best_step < losses[-1][0], f"seed {curve['seed']}: no minimum before the end"
        assert losses[-1][1] - best >= 0.05, f"seed {curve['seed']}: rose only {losses[-1][1] - best:.3f} nats"
    finding = next(f for f in summary["findings"] if "the `none` arm overfits" in f)
    assert "keep an earlier checkpoint" in finding or "keeps an earlier checkpoint" in finding
    assert "lower than `none`" in finding and "Holm-adjusted" in finding


def test_findings_follow_the_inference_rules(summary: dict) -> None:
    """Directions only with an interval and a Holm-adjusted p; below 3 seeds only the conditional claim."""
    few_seeds = min(arm["n_seeds"] for arm in summary["arms"]) < summary["tests"]["min_seeds"]
    assert len(set(summary["findings"])) == len(summary["findings"])
    for finding in summary["findings"]:
        assert "can be told apart" not in finding and "is no difference" not in finding
        if " higher than " in finding or " lower than " in finding:
            assert "95% CI" in finding and "Holm-adjusted" in finding, finding
            assert ("for these trained models only" in finding) == few_seeds, finding


def test_identical_checkpoints_are_one_finding_and_every_arm_meets_the_base(summary: dict) -> None:
    for arm in summary["arms"]:
        name = f"`{arm['variant']}`"
        if arm["same_checkpoints_as"] and "none" not in arm["same_checkpoints_as"]:
            assert sum(f.count(f"{name} stopped") for f in summary["findings"]) == 0
            assert sum(name in f and "kept the same checkpoint in every seed" in f for f in summary["findings"]) == 1
        assert any(f.startswith("Against the base model") and name in f for f in summary["findings"]), name


def test_the_report_was_rendered(summary: dict) -> None:
    report = GridDir(Path(os.environ["STORYTUNE_DEMO_DIR"])).report
    assert (report / "report.html").stat().st_size > 10_000 and (report / "report.md").exists()
    assert all(arm["test_loss"] and arm["test_loss"]["ci_low"] is not None for arm in summary["arms"])


def test_every_job_recorded_to_wandb_offline(summary: dict) -> None:
    """The demo runs with `wandb.mode: auto`: without W&B credentials (as in CI) every job writes its
    offline run under its own folder, `runs/demo/**/wandb/offline-run-*`, for the README's `wandb sync`."""
    root = Path(os.environ["STORYTUNE_DEMO_DIR"])
    folders = sorted(root.glob("**/wandb/offline-run-*"))
    assert folders, f"no offline W&B runs under {root} (did the demo run with W&B credentials?)"
    assert set(folders) <= set(find_offline_runs(root))  # each holds a run-<id>.wandb file
    runs = [read_offline_run(folder) for folder in folders]
    ids = {job_type: {run.id for run in runs if run.job_type == job_type}
           for job_type in ("finetune", "evaluate", "aggregate")}
    trainings = summary["replay"]["trainings"] if summary.get("replay") else summary["cells"]["finished"]
    assert len(ids["finetune"]) == trainings and len(ids["aggregate"]) == 1
    assert any("base" in run.tags for run in runs if run.job_type == "evaluate")  # the base model's evaluation
    assert len(ids["evaluate"]) >= 2
    assert all(run.group == summary["grid"] for run in runs)
