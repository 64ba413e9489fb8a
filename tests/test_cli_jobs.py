"""The entry points as a user runs them: real subprocesses, real exit codes and messages."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, tiny_overrides


def run(args: list[str], env_extra: dict[str, str] | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled", **(env_extra or {})}
    return subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def finetune(config: Path, *overrides: str, env_extra: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return run([sys.executable, "jobs/finetune.py", "--config", str(config), *overrides], env_extra)


@pytest.fixture()
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text("model:\n  name: tiny\n")
    return path


def error_line(result: subprocess.CompletedProcess) -> str:
    assert result.returncode != 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert lines, result.stderr
    return lines[0]


def test_finetune_cli_writes_result(stories_dir: Path, data_cache: Path, tmp_path: Path, config_file: Path) -> None:
    result = finetune(config_file, *tiny_overrides(stories_dir, data_cache, tmp_path, {"train.max_steps": 10}))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "ran all 10 steps" in result.stdout
    (saved,) = tmp_path.glob("*/result.json")
    assert json.loads(saved.read_text())["stop_step"] == 10


def test_malformed_yaml(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1,\n")
    assert "malformed YAML" in error_line(finetune(bad))


def test_every_config_problem_at_once(config_file: Path) -> None:
    result = finetune(config_file, "train.eval_steps=ten", "train.max_stepz=3", "early_stopping.patience=0")
    error_line(result)
    assert "3 problems" in result.stderr
    assert "train.eval_steps: must be an integer, got 'ten'" in result.stderr


def test_missing_data_file(config_file: Path, tmp_path: Path) -> None:
    line = error_line(finetune(config_file, f"data.files=[{tmp_path}/none.txt]", f"output.dir={tmp_path}/out"))
    assert "story file not found" in line
    assert not list(tmp_path.rglob("result.json"))


def test_unknown_model_offline(config_file: Path, stories_dir: Path, data_cache: Path, tmp_path: Path) -> None:
    overrides = tiny_overrides(stories_dir, data_cache, tmp_path, {"model.name": "someone/unknown-model"})
    line = error_line(finetune(config_file, *overrides))
    assert "cannot load" in line and "unknown-model" in line
    assert not list(tmp_path.rglob("result.json")), "nothing may look finished"


def test_output_dir_not_writable(config_file: Path, stories_dir: Path, data_cache: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")  # a directory cannot be created inside a file, even as root
    overrides = tiny_overrides(stories_dir, data_cache, blocker / "runs")
    assert "is not writable" in error_line(finetune(config_file, *overrides))


def test_no_stories_anywhere(config_file: Path, tmp_path: Path) -> None:
    line = error_line(finetune(config_file, f"output.dir={tmp_path}", f"data.cache_dir={tmp_path}/c"))
    assert "STORYTUNE_DATA_DIR" in line


@pytest.mark.slow
def test_accelerate_launch_two_processes(stories_dir: Path, data_cache: Path, tmp_path: Path,
                                        config_file: Path) -> None:
    """Real 2-process DDP over gloo on CPU (`--cpu` would silently run one process: PLATFORM-NOTES)."""
    accelerate = Path(sys.executable).with_name("accelerate")
    overrides = tiny_overrides(stories_dir, data_cache, tmp_path, {"train.max_steps": 10, "train.batch_size": 2})
    result = run([str(accelerate), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                  "--mixed_precision", "no", "--dynamo_backend", "no", "jobs/finetune.py", "--config", str(config_file),
                  *overrides], {"ACCELERATE_USE_CPU": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    (saved,) = tmp_path.glob("*/result.json")
    data = json.loads(saved.read_text())
    assert data["world_size"] == 2
    assert data["tokens_per_step"] == 2 * 2 * 64  # per-device batch x processes x block size
    assert result.stdout.count("ran all 10 steps") == 1, "only the main process reports"
