"""W&B through the real launch: `launch/submit.py --executor local` on the tiny grid, in offline mode,
read back with wandb_reader (no server). One run per job, grouped by the grid, with the
right job_type, tags, summaries and tables, and the API key in no file the launch writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from wandb_reader import find_offline_runs, read_offline_run

from conftest import REPO
from storytune.paths import GridDir

pytestmark = pytest.mark.slow

FAKE_KEY = "local-" + "0123456789abcdef" * 3  # a well-formed key so wandb accepts it


@pytest.fixture(scope="module")
def grid_root(stories_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wandb-launch")
    env = {**os.environ, "STORYTUNE_DATA_DIR": str(stories_dir), "STORYTUNE_CACHE": str(out / "cache"),
           "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "WANDB_API_KEY": FAKE_KEY, "WANDB_SILENT": "true",
           "WANDB_CACHE_DIR": str(out / "wandb-cache"), "WANDB_DATA_DIR": str(out / "wandb-data"),
           "WANDB_CONFIG_DIR": str(out / "wandb-config"), "NETRC": str(out / "no-netrc")}
    overrides = [f"output_dir={out}", "axes.train.seed=[1]", "base.wandb.mode=auto", "base.wandb.tags=[study]",
                 "base.generation.num_prompts=4", "base.generation.max_new_tokens=12"]
    result = subprocess.run([sys.executable, "launch/submit.py", "--grid", "configs/grids/tiny.yaml",
                             "--executor", "local", *overrides], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return out / "tiny"


def test_finetune_runs_are_grouped_tagged_and_summarised(grid_root: Path) -> None:
    manifest = json.loads((grid_root / "plan.json").read_text())
    for cell in manifest["cells"]:
        run_dir = grid_root / cell["run_id"]
        run = read_offline_run(run_dir, job_type="finetune")
        result = json.loads((run_dir / "result.json").read_text())
        assert run.group == "tiny" and run.job_type == "finetune"
        assert {cell["variant"], "seed1", "study"} <= set(run.tags)
        assert run.config["run_id"] == cell["run_id"] and run.config["train"]["max_steps"] == 30
        assert run.summary["stop_step"] == result["stop_step"]
        assert run.summary["best_eval_loss"] == pytest.approx(result["best_eval_loss"])
        evals = [row for row in run.history if "eval/validation_loss" in row]
        assert [row["train/global_step"] for row in evals] == [p["step"] for p in result["eval_history"]]
        assert all(row["train/tokens"] == row["train/global_step"] * result["tokens_per_step"] for row in evals)


def test_evaluation_runs_carry_metrics_and_samples(grid_root: Path) -> None:
    base_eval = GridDir(grid_root).planned_base_eval()
    for folder in [*grid_root.glob("*/eval"), base_eval]:
        run = read_offline_run(folder, job_type="evaluate")
        payload = json.loads((folder / "eval.json").read_text())
        assert run.group == "tiny" and run.job_type == "evaluate"
        assert run.summary["eval/diversity"] == pytest.approx(payload["metrics"]["diversity"]["mean"])
        assert "eval/coherence_ci_low" in run.summary
        columns, rows = run.table("eval/samples")
        assert columns == ["prompt", "continuation", "reference"] and len(rows) == 4
    assert "base" in read_offline_run(base_eval).tags


def test_aggregation_run_mirrors_the_report(grid_root: Path) -> None:
    run = read_offline_run(grid_root / "report", job_type="aggregate")
    assert run.group == "tiny" and run.job_type == "aggregate"
    columns, rows = run.table("report/arms")
    assert columns[0] == "variant" and [r[0] for r in rows] == ["none", "patience1-thr0.05"]
    plots = sorted(path.stem for path in (grid_root / "report" / "plots").glob("*.png"))
    assert plots and all(f"report/{name}" in run.summary for name in plots)


def test_one_wandb_run_per_job(grid_root: Path) -> None:
    ids = {read_offline_run(folder).id for folder in find_offline_runs(grid_root)}
    assert len(ids) == 2 + 2 + 1 + 1  # fine-tunes, evaluations, base evaluation, aggregation


def test_api_key_is_in_no_file_the_launch_writes(grid_root: Path) -> None:
    needle = FAKE_KEY.encode()
    leaked = [p for p in grid_root.parent.rglob("*") if p.is_file() and needle in p.read_bytes()]
    assert leaked == []
