"""Fine-tune with the Hugging Face Trainer and one early-stopping arm; return what happened.

Read top to bottom: data -> model -> TrainingArguments -> Trainer (+ EarlyStoppingCallback) ->
train (resuming from the run's last checkpoint) -> evaluate the kept weights -> save -> result.
The result is returned, not written: writing files is the job's side effect (see `jobs/finetune.py`).
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from storytune.config import EarlyStoppingConfig, RunConfig, TrainConfig
from storytune.paths import RunDir
from storytune.train.data import DataSummary, lm_collator, prepare_data
from storytune.train.model import load_model, load_tokenizer, resolve_base_model

if TYPE_CHECKING:
    from transformers import Trainer, TrainerCallback, TrainingArguments

log = logging.getLogger(__name__)


@dataclass
class FinetuneResult:
    """What one fine-tuning run did; becomes `result.json`."""

    variant: str
    seed: int
    base_model: str
    max_steps: int
    steps_run: int
    """Optimiser steps taken in total (across resumes)."""
    stop_step: int
    """Step at which training ended (== steps_run)."""
    stopped_early: bool
    best_step: int | None
    best_eval_loss: float | None
    final_eval_loss: float
    """Validation loss of the weights this run keeps (evaluated after training)."""
    kept_step: int
    """Step of the kept weights: best_step for early-stopped runs that keep the best, else stop_step."""
    base_eval_loss: float | None
    """Validation loss of the base model before any training (None when resumed or under DeepSpeed)."""
    patience_counter_at_stop: int | None
    train_tokens_seen: int
    tokens_per_step: int
    total_flos: float
    """Floating-point operations the Trainer counted for training (across resumes)."""
    wall_time_s: float
    """Seconds of training in this process (a resumed run counts only its own part)."""
    tokens_per_s: float
    resumed_from_step: int | None
    model_path: str
    eval_history: list[dict[str, float]] = field(default_factory=list)
    """Every evaluation: {"step": ..., "eval_loss": ...}."""
    data: dict[str, Any] = field(default_factory=dict)
    world_size: int = 1

    @property
    def best_perplexity(self) -> float | None:
        return None if self.best_eval_loss is None else math.exp(self.best_eval_loss)

    @property
    def final_perplexity(self) -> float:
        return math.exp(self.final_eval_loss)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["best_perplexity"] = self.best_perplexity
        out["final_perplexity"] = self.final_perplexity
        return out


def training_arguments(config: RunConfig, output_dir: Path) -> TrainingArguments:
    """TrainingArguments for one arm. Eval and save steps are aligned for the Trainer's checks."""
    import torch
    from transformers import TrainingArguments

    train, stopping = config.train, config.early_stopping
    use_cpu = not torch.cuda.is_available()
    extra: dict[str, Any] = {}
    if train.deepspeed:
        extra.update(deepspeed=train.deepspeed, **_deepspeed_cpu_workaround(use_cpu))
    return TrainingArguments(
        output_dir=str(output_dir),
        max_steps=train.max_steps,
        per_device_train_batch_size=train.batch_size,
        per_device_eval_batch_size=train.batch_size,
        gradient_accumulation_steps=train.gradient_accumulation_steps,
        learning_rate=train.learning_rate,
        lr_scheduler_type=train.lr_scheduler,
        warmup_steps=train.warmup_steps,
        weight_decay=train.weight_decay,
        max_grad_norm=train.max_grad_norm,
        eval_strategy="steps",
        eval_steps=train.eval_steps,
        save_strategy="steps",
        save_steps=train.checkpoint_steps,
        save_total_limit=train.save_total_limit,
        logging_steps=train.logging_steps,
        seed=train.seed,
        # Best-checkpoint bookkeeping runs for every arm (it gives best_step); only arms that
        # keep the best load it back. The `none` arm must keep its LAST weights.
        metric_for_best_model=stopping.metric,
        greater_is_better=False,
        load_best_model_at_end=keeps_best(stopping),
        # The patience counter lives in the callback: restore it on resume (transformers #28544).
        restore_callback_states_from_checkpoint=True,
        bf16=train.precision == "bf16",
        fp16=train.precision == "fp16",
        use_cpu=use_cpu,
        dataloader_num_workers=train.dataloader_num_workers,
        report_to="none",
        disable_tqdm=False,
        **extra,
    )


def keeps_best(stopping: EarlyStoppingConfig) -> bool:
    return stopping.enabled and stopping.keep == "best"


def _deepspeed_cpu_workaround(use_cpu: bool) -> dict[str, Any]:
    """On CPU, accelerate picks no process-group backend for DeepSpeed and believes it has one
    process; create the state with gloo first and tell the Trainer to use it (PLATFORM-NOTES)."""
    if not use_cpu:
        return {}
    from accelerate import PartialState

    os.environ["ACCELERATE_USE_DEEPSPEED"] = "true"
    PartialState(backend="gloo")
    return {"accelerator_config": {"use_configured_state": True}}


def early_stopping_callbacks(stopping: EarlyStoppingConfig) -> list[TrainerCallback]:
    from transformers import EarlyStoppingCallback

    if not stopping.enabled:
        return []
    return [EarlyStoppingCallback(early_stopping_patience=stopping.patience,
                                  early_stopping_threshold=stopping.threshold)]


def last_checkpoint(output_dir: Path) -> str | None:
    from transformers.trainer_utils import get_last_checkpoint

    return get_last_checkpoint(str(output_dir)) if output_dir.is_dir() else None


def build_trainer(config: RunConfig, run_dir: RunDir,
                  extra_callbacks: Sequence[TrainerCallback] = ()) -> tuple[Trainer, DataSummary, str]:
    """The Trainer for this run, its data summary and the base model it starts from."""
    from accelerate import PartialState
    from transformers import Trainer, set_seed

    args = training_arguments(config, run_dir.checkpoints)
    set_seed(config.train.seed)
    tokenizer = load_tokenizer(config.model.tokenizer or config.model.name)
    with PartialState().main_process_first():  # rank 0 builds the cache, the others read it
        base = resolve_base_model(config.model, config.output.dir)
        splits, summary = prepare_data(config.data, tokenizer)
    model = load_model(base)
    validation = splits["validation"]
    if config.train.max_eval_blocks is not None:
        validation = validation.select(range(min(len(validation), config.train.max_eval_blocks)))
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=splits["train"],
        eval_dataset=validation,
        data_collator=lm_collator,
        processing_class=tokenizer,
        callbacks=[*early_stopping_callbacks(config.early_stopping), *extra_callbacks],
    )
    return trainer, summary, base


def finetune(config: RunConfig, run_dir: RunDir,
             extra_callbacks: Sequence[TrainerCallback] = ()) -> FinetuneResult:
    """Train one arm to its stop, resuming from the run directory's last checkpoint if any."""
    trainer, summary, base = build_trainer(config, run_dir, extra_callbacks)
    resume_from = last_checkpoint(run_dir.checkpoints)
    # The base model's loss before any step. Skipped on resume (it was measured then) and under
    # DeepSpeed, whose engine only exists once training starts (evaluating first needs ZeRO-3).
    measure_base = not resume_from and not config.train.deepspeed
    base_eval_loss = trainer.evaluate()["eval_loss"] if measure_base else None
    if trainer.is_world_process_zero():
        log.info(describe_budget(config.train, config.data.block_size, trainer.args.world_size, summary))
        if resume_from:
            log.info("Resuming from %s", resume_from)

    started = time.perf_counter()
    trainer.train(resume_from_checkpoint=resume_from)
    wall_time_s = time.perf_counter() - started

    # Snapshot before the final evaluation: it would count against patience and log a point.
    history, patience = eval_history(trainer.state.log_history), _patience_counter(trainer)
    final_eval_loss = trainer.evaluate()["eval_loss"]
    trainer.save_model(str(run_dir.model))  # rank 0 writes; gathers ZeRO-3 shards when needed
    return collect_result(config, trainer, summary, base, base_eval_loss, final_eval_loss,
                          wall_time_s, history, patience, resume_from, run_dir)


def collect_result(config: RunConfig, trainer: Trainer, summary: DataSummary, base: str,
                   base_eval_loss: float | None, final_eval_loss: float, wall_time_s: float,
                   history: list[dict[str, float]], patience: int | None, resume_from: str | None,
                   run_dir: RunDir) -> FinetuneResult:
    state, args = trainer.state, trainer.args
    tokens_per_step = (args.per_device_train_batch_size * args.gradient_accumulation_steps
                       * args.world_size * config.data.block_size)
    stopped_early = state.global_step < config.train.max_steps
    kept_best = keeps_best(config.early_stopping) and state.best_global_step
    kept_step = state.best_global_step if kept_best else state.global_step
    resumed_steps = _checkpoint_step(resume_from)
    steps_this_process = state.global_step - (resumed_steps or 0)
    return FinetuneResult(
        variant=config.early_stopping.variant,
        seed=config.train.seed,
        base_model=base,
        max_steps=config.train.max_steps,
        steps_run=state.global_step,
        stop_step=state.global_step,
        stopped_early=stopped_early,
        best_step=state.best_global_step,
        best_eval_loss=state.best_metric,
        final_eval_loss=final_eval_loss,
        kept_step=kept_step,
        base_eval_loss=base_eval_loss,
        patience_counter_at_stop=patience,
        train_tokens_seen=state.global_step * tokens_per_step,
        tokens_per_step=tokens_per_step,
        total_flos=float(state.total_flos),
        wall_time_s=wall_time_s,
        tokens_per_s=steps_this_process * tokens_per_step / wall_time_s if wall_time_s > 0 else 0.0,
        resumed_from_step=resumed_steps,
        model_path=str(run_dir.model),
        eval_history=history,
        data=asdict(summary),
        world_size=args.world_size,
    )


def eval_history(log_history: list[dict[str, float]]) -> list[dict[str, float]]:
    """One point per evaluation logged so far, by step."""
    points: dict[int, float] = {}
    for entry in log_history:
        if "eval_loss" in entry:
            points[int(entry["step"])] = float(entry["eval_loss"])
    return [{"step": step, "eval_loss": loss} for step, loss in sorted(points.items())]


def _patience_counter(trainer: Trainer) -> int | None:
    from transformers import EarlyStoppingCallback

    for callback in trainer.callback_handler.callbacks:
        if isinstance(callback, EarlyStoppingCallback):
            return callback.early_stopping_patience_counter
    return None


def _checkpoint_step(path: str | None) -> int | None:
    return int(Path(path).name.rsplit("-", 1)[1]) if path else None


def describe_budget(train: TrainConfig, block_size: int, world_size: int, summary: DataSummary) -> str:
    """The derived numbers, printed once (nanoGPT habit): what one step and the budget mean."""
    tokens_per_step = train.batch_size * train.gradient_accumulation_steps * world_size * block_size
    epochs = train.max_steps * tokens_per_step / max(1, summary.tokens["train"])
    return (f"data: {summary.stories['train']} train / {summary.stories['validation']} validation / "
            f"{summary.stories['test']} test stories, {summary.blocks['train']} train blocks of {block_size} tokens\n"
            f"budget: {train.max_steps} steps x {tokens_per_step} tokens/step "
            f"({train.batch_size} blocks x {train.gradient_accumulation_steps} accumulation x {world_size} "
            f"processes) = {train.max_steps * tokens_per_step:,} tokens, {epochs:.1f} epochs; "
            f"eval every {train.eval_steps} steps")


def remove_checkpoints(run_dir: RunDir) -> None:
    """Drop intermediate checkpoints once the kept model and result are safely written."""
    shutil.rmtree(run_dir.checkpoints, ignore_errors=True)
