"""One test per row of docs/errors.md: a bad input, through the real CLI, gets its one-line message.

Each test asserts the exit status (2 for bad input, 1 for a failed submission, 0 where W&B only
warns), the message, that no traceback is printed (the CLI shows one only with --debug), and where
something could be half-written, that nothing looking complete (result.json, plan.json) is left.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from conftest import REPO
from storytune.cli import guarded, main
from storytune.config import load_run_config

CONSOLE_SCRIPT = REPO / ".venv" / "bin" / "storytune"

# A run small enough to reach data loading, or finish, in seconds on a 2-core CPU.
TINY = ["model.name=tiny", "model.tiny.n_layer=1", "model.tiny.n_embd=16", "model.tiny.n_head=2",
        "model.tiny.n_positions=32", "data.block_size=32", "data.validation_stories=4", "data.test_stories=4",
        "train.max_steps=2", "train.eval_steps=1", "train.warmup_steps=0", "train.batch_size=2",
        "train.logging_steps=1", "generation.num_prompts=2"]


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err, captured.err[-3000:]  # one line, not a traceback
    return code, captured.err


def error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, err[-2000:]
    return lines[0]


def write_grid(tmp_path: Path, text: str | bytes) -> Path:
    path = tmp_path / "grid.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


def submit(capsys: pytest.CaptureFixture[str], grid: Path, *extra: str) -> tuple[int, str]:
    return run_cli(capsys, "submit", "--grid", str(grid), "--dry-run", f"output_dir={grid.parent / 'out'}", *extra)


def stories_file(folder: Path, count: int = 40, name: str = "stories.txt") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text("<|endoftext|>".join(f"Story {i}. Once upon a time a cat named Tom{i} found a red ball and "
                                          "played with it all day in the sun." for i in range(count)))
    return path


def finetune(capsys: pytest.CaptureFixture[str], tmp_path: Path, *extra: str) -> tuple[int, str]:
    return run_cli(capsys, "finetune", "--config", "configs/finetune_tiny.yaml", *TINY,
                   f"output.dir={tmp_path / 'runs'}", f"data.cache_dir={tmp_path / 'cache'}", *extra)


def no_result(tmp_path: Path) -> bool:
    return not list((tmp_path / "runs").rglob("result.json"))


# --------------------------------------------------------------------------------------------------
# Config and grid files


def test_malformed_yaml(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, err = submit(capsys, write_grid(tmp_path, "name: g\naxes: [1, 2\n"))
    assert code == 2
    assert "malformed YAML in" in error_line(err) and "at line 3, column 1" in err


def test_empty_yaml(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, err = submit(capsys, write_grid(tmp_path, "# nothing yet\n"))
    assert code == 2
    assert "grid.yaml is empty: it must hold a mapping of keys to values" in error_line(err)


def test_non_mapping_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, err = submit(capsys, write_grid(tmp_path, "- name: g\n"))
    assert code == 2
    assert "must hold a mapping of keys to values (`key: value` lines), got a YAML list" in error_line(err)


def test_non_utf8_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, err = submit(capsys, write_grid(tmp_path, "name: caf\xe9\n".encode("latin-1")))
    assert code == 2
    assert "grid.yaml is not UTF-8 text (byte 0xe9 at offset 9); save it as UTF-8" in error_line(err)


def test_duplicate_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Row 27: in a grid file (submit) and in a run config file (finetune), one line each."""
    grid = write_grid(tmp_path, "name: g\nbase:\n  train: {max_steps: 10}\naxes:\n  train.seed: [1]\n"
                                "base:\n  model: {name: tiny}\n")
    code, err = submit(capsys, grid)
    assert code == 2
    assert error_line(err) == (f"error: invalid config: duplicate key `base` in {grid} at lines 2 and 6: YAML would "
                               "silently keep only the second; merge the two into one")
    run = tmp_path / "run.yaml"
    run.write_text("# python jobs/finetune.py --config run.yaml\ntrain:\n  max_steps: 10\n  max_steps: 20\n")
    code, err = run_cli(capsys, "finetune", "--config", str(run))
    assert code == 2
    assert f"duplicate key `max_steps` in {run} at lines 3 and 4" in error_line(err)
    assert no_result(tmp_path)


def test_missing_required_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, err = submit(capsys, write_grid(tmp_path, "output_dir: runs\n"))
    assert code == 2
    assert "name: required key is missing; add `name: ...`" in error_line(err)


def test_misspelled_key_suggests_the_valid_ones(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, err = submit(capsys, write_grid(tmp_path, "name: g\nbase: {trian: {max_steps: 10}}\n"))
    assert code == 2
    assert ("base.trian: unknown key; did you mean `train`? valid keys: model, data, train, early_stopping, "
            "generation, eval, wandb, output") in error_line(err)


def test_wrong_type(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, err = submit(capsys, write_grid(tmp_path, "name: g\nbase: {train: {max_steps: ten}}\n"))
    assert code == 2
    assert "base.train.max_steps: must be an integer, got 'ten'" in error_line(err)


def test_out_of_range_without_knock_on(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, err = submit(capsys, write_grid(tmp_path, "name: g\nbase: {train: {max_steps: 0}, "
                                                    "model: {name: tiny, tiny: {n_positions: 64}}, "
                                                    "data: {block_size: -1}}\n"))
    assert code == 2
    assert "(2 problems)" in err
    assert "base.train.max_steps: must be a positive integer, got 0" in err
    assert "base.data.block_size: must be a positive integer, got -1" in err
    assert "eval_steps" not in err and "n_positions" not in err  # no knock-on from the values reported


def test_axis_over_a_missing_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, err = submit(capsys, write_grid(tmp_path, "name: g\naxes: {train.sed: [1, 2, 3]}\n"))
    assert code == 2
    line = error_line(err)
    assert "axes.train.sed: unknown key; did you mean `seed`? valid keys of `train`:" in line
    assert "cell[" not in err  # reported once for the axis, not once per cell


def test_empty_axis(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, err = submit(capsys, write_grid(tmp_path, "name: g\naxes: {train.seed: []}\n"))
    assert code == 2
    assert "axes.train.seed: must be a non-empty list of values, got []" in error_line(err)


# --------------------------------------------------------------------------------------------------
# Story files


def test_missing_story_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, err = finetune(capsys, tmp_path, f"data.files=[{tmp_path / 'nope.txt'}]")
    assert code == 2
    assert error_line(err) == f"error: story file not found: {tmp_path / 'nope.txt'}"
    assert no_result(tmp_path)


def test_empty_story_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "empty.txt").write_text("\n\n")
    code, err = finetune(capsys, tmp_path, f"data.files=[{tmp_path / 'empty.txt'}]")
    assert code == 2
    assert error_line(err) == f"error: story file is empty: {tmp_path / 'empty.txt'}"
    assert no_result(tmp_path)


def test_non_utf8_story_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "latin1.txt"
    path.write_bytes("Once upon a time.\nA caf\xe9.".encode("latin-1"))
    code, err = finetune(capsys, tmp_path, f"data.files=[{path}]")
    assert code == 2
    assert f"story file {path} is not UTF-8 (byte 0xe9 on line 2); convert it, e.g. `iconv" in error_line(err)
    assert no_result(tmp_path)


def test_binary_story_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "data.txt"
    path.write_bytes(b"ARROW1\x00\x00\xff\xfe" * 10)
    code, err = finetune(capsys, tmp_path, f"data.files=[{path}]")
    assert code == 2
    assert f"story file {path} is binary, not text (NUL bytes at offset 6)" in error_line(err)


def test_jsonl_without_the_text_field(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "stories.jsonl"
    path.write_text('{"text": "A story."}\n{"story": "Another."}\n')
    code, err = finetune(capsys, tmp_path, f"data.files=[{path}]")
    assert code == 2
    assert (f"{path} line 2 has no 'text' field (found: story); set data.text_column to the field holding "
            "the story") in error_line(err)


def test_too_few_stories_for_the_split(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = stories_file(tmp_path / "few", count=6)
    code, err = finetune(capsys, tmp_path, f"data.files=[{path}]")
    assert code == 2
    assert ("only 6 stories after cleaning; need more than data.validation_stories + data.test_stories = 8"
            in error_line(err))
    assert no_result(tmp_path)


def test_data_shorter_than_one_block(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "short.txt"
    path.write_text("<|endoftext|>".join(f"Hi {i}." for i in range(12)))
    code, err = finetune(capsys, tmp_path, f"data.files=[{path}]")
    assert code == 2
    assert "fewer than one block of data.block_size=32; add stories or lower data.block_size" in error_line(err)
    assert no_result(tmp_path)


# --------------------------------------------------------------------------------------------------
# Hub, output, cluster, W&B, hardware


def test_model_unavailable_offline(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = stories_file(tmp_path / "stories")
    code, err = finetune(capsys, tmp_path, f"data.files=[{path}]", "model.name=someorg/not-downloaded")
    assert code == 2  # conftest sets HF_HUB_OFFLINE=1; the model is in no cache
    line = error_line(err)
    assert "'someorg/not-downloaded': not a local folder, not in the local Hugging Face cache" in line
    assert "`hf download someorg/not-downloaded`" in line and "huggingface-cli download" in line
    assert no_result(tmp_path)


def test_dataset_unavailable_offline(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STORYTUNE_DATA_DIR", raising=False)
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-datasets"))  # an empty cache
    code, err = finetune(capsys, tmp_path, "data.files=[]", "data.dataset=someorg/no-such-stories")
    assert code == 2
    line = error_line(err)
    assert "dataset 'someorg/no-such-stories' is not in the local Hugging Face cache and the Hub is unreachable" in line
    assert "`hf download someorg/no-such-stories --repo-type dataset`" in line and "STORYTUNE_DATA_DIR" in line


def test_non_writable_output_root(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")  # a folder cannot be made inside a file, even as root (chmod does not stop root)
    grid = write_grid(tmp_path, "name: g\nbase: {model: {name: tiny}}\n")
    code, err = run_cli(capsys, "submit", "--grid", str(grid), "--executor", "local", f"output_dir={blocker}/runs")
    assert code == 2
    assert f"output directory {blocker}/runs/g is not writable: Not a directory; set output_dir=" in error_line(err)


def test_slurm_partition_that_does_not_exist(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                              slurm_cluster: None) -> None:
    grid = write_grid(tmp_path, "name: g\nbase: {model: {name: tiny}}\nresources: {partition: no-such-partition}\n")
    code, err = run_cli(capsys, "submit", "--grid", str(grid), "--executor", "slurm", f"output_dir={tmp_path / 'out'}")
    assert code == 1  # a failed submission
    assert "error: submission failed:" in err and "invalid partition" in err.lower()
    assert not (tmp_path / "out" / "g" / "plan.json").exists()  # nothing that looks submitted


def finetune_process(tmp_path: Path, env: dict[str, str], *extra: str) -> subprocess.CompletedProcess:
    """`storytune finetune` in a fresh process: wandb wraps the process's stdout and stderr, which
    pytest's capture also replaces, so W&B rows run as a user would."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")} | env
    return subprocess.run([str(CONSOLE_SCRIPT), "finetune", "--config", "configs/finetune_tiny.yaml", *TINY,
                           f"output.dir={tmp_path / 'runs'}", f"data.cache_dir={tmp_path / 'cache'}", *extra],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def test_wandb_key_missing(tmp_path: Path) -> None:
    env = {"NETRC": str(tmp_path / "no-netrc"), "WANDB_CONFIG_DIR": str(tmp_path / "wandb-config")}
    path = stories_file(tmp_path / "stories")
    result = finetune_process(tmp_path, env, f"data.files=[{path}]", "wandb.mode=online")
    assert result.returncode == 0, result.stderr[-3000:]  # W&B never fails a job
    assert "wandb.mode=online but wandb found no credentials" in result.stderr
    assert "logging offline instead" in result.stderr
    assert list((tmp_path / "runs").rglob("result.json")) and list((tmp_path / "runs").rglob("offline-run-*"))


def test_wandb_key_rejected(tmp_path: Path) -> None:
    """An expired key: wandb finds credentials, the server does not take them (here: no server at all
    on the W&B host; the same path in tracking: online init fails, the job logs offline)."""
    env = {"WANDB_API_KEY": "x" * 40, "WANDB_BASE_URL": "http://127.0.0.1:9",  # discard port: nothing listens
           "WANDB_INIT_TIMEOUT": "20", "WANDB_CONFIG_DIR": str(tmp_path / "wandb-config")}
    path = stories_file(tmp_path / "stories")
    result = finetune_process(tmp_path, env, f"data.files=[{path}]", "wandb.mode=online")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "wandb.init online failed" in result.stderr and "retrying offline" in result.stderr
    assert list((tmp_path / "runs").rglob("result.json"))


def test_gpus_requested_without_cuda(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """`check_hardware` through the CLI's error policy (`guarded`), as `storytune finetune` calls it
    first. torch.cuda.is_available is forced False because this machine's answer cannot be changed;
    the CPU-only torch installed here is the cause it must name."""
    import torch

    from storytune.train.hardware import check_hardware

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    config = load_run_config("configs/finetune_tiny.yaml", ["train.precision=bf16"])
    code = guarded(lambda: check_hardware(config, environ={}))
    err = capsys.readouterr().err
    assert code == 2
    line = error_line(err)
    assert "train.precision: train.precision=bf16 needs a CUDA GPU, but CUDA is unavailable on" in line
    if torch.version.cuda is None:
        assert "is a CPU-only build; install a CUDA wheel" in line
    assert "Not training on CPU instead." in line


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    """The one-line policy's escape hatch: --debug re-raises the error."""
    from storytune.config import ConfigError

    with pytest.raises(ConfigError, match="is empty"):
        main(["submit", "--grid", str(write_grid(tmp_path, "")), "--dry-run", "--debug"])


@pytest.mark.skipif(not os.access(CONSOLE_SCRIPT, os.X_OK), reason="console script not installed")
def test_console_script_exit_status(tmp_path: Path) -> None:
    """A fresh process: the installed `storytune` prints one line and exits 2."""
    result = subprocess.run([str(CONSOLE_SCRIPT), "submit", "--grid", str(write_grid(tmp_path, "[]")), "--dry-run"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: invalid config:")
    assert "Traceback" not in result.stderr
