"""W&B through the real launch: `launch/submit.py --executor local` on the tiny grid, in offline mode,
read back with wandb_reader (no server). One run per job, grouped by the grid, with the
right job_type, tags, summaries and tables, and the API key in no file the launch writes. With
`wandb.sync: osh`, the real wandb-osh watcher syncs exactly the grid's offline runs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
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
                 "base.wandb.sync=osh", f"base.wandb.osh_command_dir={out / 'osh'}",
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


def test_osh_watcher_syncs_exactly_the_grid_runs(grid_root: Path, tmp_path: Path) -> None:
    """`wandb.sync: osh`: every job (fine-tunes, evaluations, base evaluation, aggregation) left a
    trigger in the command dir, and the real login-node watcher (`wandb-osh --command-dir DIR`, the
    README's command) runs `wandb sync` in exactly the grid's offline run folders, then removes the
    triggers. No W&B server is reachable here, so the `wandb` command the watcher runs is a stub
    first on its PATH that records its arguments and working directory instead of uploading."""
    watcher = shutil.which("wandb-osh", path=str(Path(sys.executable).parent))
    if watcher is None:
        pytest.skip("wandb-osh is not installed (pip install 'storytune[osh]')")
    command_dir = grid_root.parent / "osh"
    runs = sorted(str(folder.resolve()) for folder in find_offline_runs(grid_root))
    assert runs
    assert sorted(path.read_text() for path in command_dir.glob("*.command")) == runs  # one trigger per run

    calls = tmp_path / "wandb-calls.txt"
    stub = tmp_path / "bin" / "wandb"
    stub.parent.mkdir()
    stub.write_text(f'#!/bin/sh\nprintf "%s|%s\\n" "$(pwd -P)" "$*" >> {calls}\n')
    stub.chmod(0o755)
    # Without PYTEST_CURRENT_TEST: with it, wandb-osh skips `wandb sync` and stops after one pass.
    env = {k: v for k, v in os.environ.items() if k != "PYTEST_CURRENT_TEST"}
    env["PATH"] = f"{stub.parent}{os.pathsep}{env['PATH']}"
    process = subprocess.Popen([watcher, "--command-dir", str(command_dir), "--wait", "1"], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120  # seconds: one pass takes about one on an idle machine
        while list(command_dir.glob("*.command")) and time.monotonic() < deadline:
            time.sleep(0.5)
    finally:
        process.terminate()
        log = process.communicate(timeout=30)[0]
    assert not list(command_dir.glob("*.command")), log[-3000:]
    synced = [line.split("|") for line in calls.read_text().splitlines()]
    assert sorted(folder for folder, _ in synced) == runs, log[-3000:]  # each folder once, nothing else
    assert {args for _, args in synced} == {"sync ."}
