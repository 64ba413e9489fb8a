"""StoryTrainer's cost policies change no result: weights-only snapshots between full checkpoints
(`train.resume_every`), a full checkpoint on Slurm's time-limit signal, and a train subset scored only
every k-th evaluation (`train.train_subset_every`). Real Trainer, tiny GPT-2, CPU."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
from safetensors.torch import load_file
from test_finetune import CrashAfterSave

from conftest import tiny_overrides
from storytune.cluster.worker import run_finetune
from storytune.config import load_run_config
from storytune.paths import WEIGHTS_ONLY_MARKER, run_dir_for
from storytune.train.finetune import WEIGHTS_ONLY, checkpoint_problem, last_checkpoint
from storytune.train.trainer import rotate_keeping_full

SAME = ("stop_step", "best_step", "kept_step", "stopped_early", "train_tokens")


def _folder(root: Path, step: int, weights_only: bool) -> Path:
    folder = root / f"checkpoint-{step}"
    folder.mkdir(parents=True)
    names = ["model.safetensors"] + ([] if weights_only else ["optimizer.pt", "scheduler.pt"])
    for name in names:
        (folder / name).write_bytes(b"x")
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    if weights_only:
        (folder / WEIGHTS_ONLY_MARKER).write_text("{}")
    return folder


def test_rotation_keeps_the_newest_full_checkpoint(tmp_path: Path) -> None:
    for step, weights_only in ((10, True), (20, False), (30, True), (40, True), (50, True)):
        _folder(tmp_path, step, weights_only)
    rotate_keeping_full(tmp_path, limit=2, best=str(tmp_path / "checkpoint-10"))
    # newest (50), newest full (20), best (10) are protected; 30 and 40 go (limit 2 < 3 protected)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-10", "checkpoint-20", "checkpoint-50"]
    assert checkpoint_problem(tmp_path / "checkpoint-50") == WEIGHTS_ONLY
    assert last_checkpoint(tmp_path) == str(tmp_path / "checkpoint-20")


def _extra(max_steps: int = 60, **keys: object) -> dict[str, object]:
    return {"train.max_steps": max_steps, "train.eval_steps": 10, **{f"train.{k}": v for k, v in keys.items()}}


def _du(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def test_resume_every_saves_weights_between_full_checkpoints_and_resumes_from_the_last_full(
        stories_dir: Path, data_cache: Path, tmp_path: Path) -> None:
    straight = run_finetune(load_run_config(None, tiny_overrides(stories_dir, data_cache, tmp_path / "a", _extra())))

    config = load_run_config(None, tiny_overrides(stories_dir, data_cache, tmp_path / "b",
                                                  _extra(resume_every=3, save_total_limit=5)))
    with pytest.raises(KeyboardInterrupt):  # killed right after the step-50 save (a weights-only one)
        run_finetune(config, extra_callbacks=[CrashAfterSave(step=50)])
    checkpoints = run_dir_for(config).checkpoints
    for step in (10, 20, 40, 50):
        assert (checkpoints / f"checkpoint-{step}" / WEIGHTS_ONLY_MARKER).exists(), step
        assert not (checkpoints / f"checkpoint-{step}" / "optimizer.pt").exists(), step
    full = checkpoints / "checkpoint-30"
    assert (full / "optimizer.pt").exists() and not (full / WEIGHTS_ONLY_MARKER).exists()
    assert _du(checkpoints / "checkpoint-20") < 0.6 * _du(full)  # AdamW's two moments are 2x the weights
    assert last_checkpoint(checkpoints) == str(full)  # never a weights-only snapshot

    resumed = run_finetune(config)
    assert resumed["resumed_from_step"] == 30
    assert {k: resumed[k] for k in SAME} == {k: straight[k] for k in SAME}
    assert resumed["kept_eval_loss"] == pytest.approx(straight["kept_eval_loss"], abs=1e-4)
    assert [p["eval_loss"] for p in resumed["eval_history"]] == \
        pytest.approx([p["eval_loss"] for p in straight["eval_history"]], abs=1e-4)


class SignalAt:
    """Sends the process `signum` at the end of optimizer step `step` (Slurm's `--signal`, in-process)."""

    def __init__(self, step: int, signum: int) -> None:
        self.step, self.signum = step, signum

    def __getattr__(self, name: str):  # TrainerCallback's other hooks: do nothing
        return lambda *args, **kwargs: None

    def on_step_end(self, args, state, control, **kwargs) -> None:
        if state.global_step == self.step:
            os.kill(os.getpid(), self.signum)


class TimeLimitExit(Exception):
    """What submitit's handler does after its checkpoint(): requeue, then leave the process."""


def test_time_limit_signal_saves_a_full_checkpoint_then_hands_over(stories_dir: Path, data_cache: Path,
                                                                    tmp_path: Path) -> None:
    """submitit's USR2 handler is replaced by a recorder (no Slurm here); the rest is the real path."""
    config = load_run_config(None, tiny_overrides(stories_dir, data_cache, tmp_path,
                                                  _extra(30, resume_every=5, save_total_limit=5)))
    handed_over: list[int] = []

    def submitit_handler(signum: int, frame: object) -> None:
        handed_over.append(signum)
        raise TimeLimitExit

    previous = signal.signal(signal.SIGUSR2, submitit_handler)
    try:
        with pytest.raises(TimeLimitExit):
            run_finetune(config, extra_callbacks=[SignalAt(13, signal.SIGUSR2)])
    finally:
        signal.signal(signal.SIGUSR2, previous)
    assert handed_over == [signal.SIGUSR2]
    checkpoints = run_dir_for(config).checkpoints
    assert (checkpoints / "checkpoint-10" / WEIGHTS_ONLY_MARKER).exists()
    assert last_checkpoint(checkpoints) == str(checkpoints / "checkpoint-13")  # not the step-10 snapshot
    resumed = run_finetune(config)
    assert resumed["resumed_from_step"] == 13 and resumed["stop_step"] == 30


def test_skipping_the_train_subset_changes_no_training_bit(stories_dir: Path, data_cache: Path,
                                                           tmp_path: Path) -> None:
    """A DataLoader iterator draws its seed from the global RNG (dropout's too): the train-subset pass
    must not move it, or skipping it would change the training."""
    runs = {}
    for every in (1, 3):
        config = load_run_config(None, tiny_overrides(stories_dir, data_cache, tmp_path / str(every),
                                                      _extra(40, train_subset_every=every)))
        runs[every] = (run_finetune(config), load_file(str(run_dir_for(config).model / "model.safetensors")))
    (every_eval, weights_1), (every_third, weights_3) = runs[1], runs[3]
    assert weights_1.keys() == weights_3.keys()
    assert all(bool((weights_1[k] == weights_3[k]).all()) for k in weights_1)  # bit-identical
    assert [p["eval_loss"] for p in every_third["eval_history"]] == [p["eval_loss"] for p in every_eval["eval_history"]]
    assert [p["step"] for p in every_third["eval_history"] if "train_loss" in p] == [30]
    assert all("train_loss" in p for p in every_eval["eval_history"])
    scored = {p["step"]: p["train_loss"] for p in every_eval["eval_history"]}
    assert [p["train_loss"] for p in every_third["eval_history"] if "train_loss" in p] == [scored[30]]


def test_training_arguments_on_cpu_and_with_compile(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from storytune.paths import compile_cache_dir
    from storytune.train.finetune import training_arguments

    config = load_run_config(data={"model": {"name": "tiny"}, "wandb": {"mode": "disabled"},
                                   "output": {"dir": str(tmp_path)}, "train": {"batch_size": 3}})
    args = training_arguments(config, tmp_path / "checkpoints")
    assert args.per_device_eval_batch_size == 12  # 4 x the training batch
    if not torch.cuda.is_available():
        assert args.dataloader_num_workers == 0 and not args.torch_compile
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    config = load_run_config(data={"model": {"name": "tiny"}, "wandb": {"mode": "disabled"},
                                   "output": {"dir": str(tmp_path)},
                                   "train": {"compile": True, "eval_batch_size": 5, "dataloader_num_workers": 1}})
    args = training_arguments(config, tmp_path / "checkpoints")
    assert args.torch_compile and args.per_device_eval_batch_size == 5 and args.dataloader_num_workers == 1
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(compile_cache_dir(tmp_path))


@pytest.mark.gpu
def test_cuda_run_with_compile_tf32_and_workers(stories_dir: Path, data_cache: Path, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from storytune.paths import compile_cache_dir
    from storytune.train.finetune import training_arguments

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU (benchmarks/gpu_check.sh runs the gpu-marked tests)")
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    config = load_run_config(None, tiny_overrides(stories_dir, data_cache, tmp_path, {
        "train.max_steps": 20, "train.compile": True, "train.precision": "bf16", "train.resume_every": 2}))
    args = training_arguments(config, tmp_path / "x")
    assert args.torch_compile and args.dataloader_num_workers == 2
    assert args.tf32 == (torch.cuda.get_device_capability()[0] >= 8 or None)
    result = run_finetune(config)
    assert result["stop_step"] == 20 and result["kept_eval_loss"] == result["kept_eval_loss"]  # finite, not NaN
    assert any(compile_cache_dir(tmp_path).iterdir())
