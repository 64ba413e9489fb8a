"""Fine-tune with the Hugging Face Trainer and one early-stopping arm; return what happened.

Read top to bottom: data -> model -> TrainingArguments -> Trainer (+ the early-stopping callback,
validation and a train subset evaluated together) -> train (resuming from the run's last complete
checkpoint) -> the kept weights' validation loss (the criterion) and test loss (the result) -> save
-> result. `replay` derives the other early-stopping arms from a `none` run's checkpoints.
The result is returned, not written: writing files is the job's side effect (`storytune.cluster.worker`).
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from transformers import TrainerCallback

from storytune.config import EarlyStoppingConfig, RunConfig, TrainConfig
from storytune.faults import install_save_pauses
from storytune.paths import WEIGHTS_ONLY_MARKER, RunDir, compile_cache_dir, read_json, write_json_atomic
from storytune.stop import guard_checkpoint_saves
from storytune.train.data import DataSummary, lm_collator, prepare_data
from storytune.train.hardware import check_hardware
from storytune.train.heldout import StoryLosses, score_stories, test_loss_interval
from storytune.train.model import load_model, load_tokenizer, resolve_base_model
from storytune.train.stopping import StoppingCallback
from storytune.train.trainer import TRAIN_SUBSET, SaveOnTimeLimit, StoryTrainer

if TYPE_CHECKING:
    from transformers import Trainer, TrainingArguments

log = logging.getLogger(__name__)


@dataclass
class FinetuneResult:
    """What one fine-tuning run did; becomes `result.json`. Losses are nats per token."""

    variant: str
    seed: int
    base_model: str
    max_steps: int
    stop_step: int
    """Last optimiser step trained (across resumes)."""
    stopped_early: bool
    best_step: int | None
    """Step of the lowest validation loss up to the stop."""
    best_eval_loss: float | None
    kept_step: int
    """Step of the kept weights: best_step for arms that keep the best, else stop_step."""
    kept_eval_loss: float
    """Validation loss of the kept weights: the criterion that CHOSE the stop, optimistic by construction."""
    test_loss: dict[str, Any]
    """Generalization: {mean, ci_low, ci_high, n_stories} on the held-out test stories (`heldout`)."""
    base_eval_loss: float | None
    """Validation loss of the base model before any training (a resumed run reads its first attempt's)."""
    base_test_loss: dict[str, Any] | None
    """Test loss of the base model (same stories, same definition)."""
    patience_counter_at_stop: int | None
    train_tokens: int
    """Tokens trained on: stop_step x tokens_per_step."""
    tokens_per_step: int
    total_flos: float
    """Floating-point operations the Trainer counted for training (across resumes)."""
    wall_time_s: float
    """Seconds of training in this process (a resumed run counts only its own part)."""
    tokens_per_s: float
    resumed_from_step: int | None
    model_path: str
    eval_history: list[dict[str, float]] = field(default_factory=list)
    """Every evaluation: {step, tokens, eval_loss (validation), train_loss (fixed train subset, eval mode)}."""
    test_story_losses: dict[str, list] = field(default_factory=dict)
    """Per test story: {loss_sum (nats), tokens}: pairs models story by story."""
    base_test_story_losses: dict[str, list] = field(default_factory=dict)
    """The base model's, the same way (empty when not measured)."""
    data: dict[str, Any] = field(default_factory=dict)
    world_size: int = 1
    replayed_from: str | None = None
    """Run id of the `none` run this arm was derived from by replay (None: trained itself)."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


VALIDATION = "validation"
"""Names of the two evaluation sets: the Trainer logs `eval_validation_loss` and `eval_train_loss`."""
STOP_METRIC = f"{VALIDATION}_loss"


def training_arguments(config: RunConfig, output_dir: Path, keep_all_checkpoints: bool = False) -> TrainingArguments:
    """TrainingArguments for one arm. A checkpoint at every evaluation, so the best step always has one."""
    import torch
    from transformers import TrainingArguments

    train, stopping = config.train, config.early_stopping
    use_cpu = not torch.cuda.is_available()
    extra: dict[str, Any] = {}
    if train.compile:
        # Inductor's cache outlives the job: the next run of the same shapes reuses the compiled kernels.
        os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(compile_cache_dir(config.output.dir)))
        extra.update(torch_compile=True)
    workers = dataloader_workers(train, use_cpu)
    if workers:
        extra.update(dataloader_persistent_workers=True, dataloader_pin_memory=True)
    if (deepspeed := deepspeed_config(train)) is not None:
        extra.update(deepspeed=deepspeed, **_deepspeed_cpu_workaround(use_cpu, train.ddp_timeout_s))
    return TrainingArguments(
        output_dir=str(output_dir),
        max_steps=train.max_steps,
        per_device_train_batch_size=train.batch_size,
        per_device_eval_batch_size=eval_batch_size(train),
        gradient_accumulation_steps=train.gradient_accumulation_steps,
        learning_rate=train.learning_rate,
        lr_scheduler_type=train.lr_scheduler,
        warmup_steps=train.warmup_steps,
        weight_decay=train.weight_decay,
        max_grad_norm=train.max_grad_norm,
        eval_strategy="steps",
        eval_steps=train.eval_steps,
        save_strategy="steps",
        save_steps=train.eval_steps,
        # Replay derives every arm's kept weights from this run's checkpoints: keep them all.
        save_total_limit=None if keep_all_checkpoints else train.save_total_limit,
        logging_steps=train.logging_steps,
        # Log a NaN/inf loss as it is (the filter would replace it by the running mean and hide a
        # diverged run): `NonFiniteLossCheck` stops on it.
        logging_nan_inf_filter=False,
        seed=train.seed,
        # Best-checkpoint bookkeeping runs for every arm (it gives best_step); only arms that
        # keep the best load it back. The `none` arm must keep its LAST weights.
        metric_for_best_model=STOP_METRIC,
        greater_is_better=False,
        load_best_model_at_end=keeps_best(stopping),
        # The patience counter lives in the callback: restore it on resume (transformers #28544).
        restore_callback_states_from_checkpoint=True,
        bf16=train.precision == "bf16",
        fp16=train.precision == "fp16",
        use_cpu=use_cpu,
        # TF32 matmuls for whatever runs in fp32 (Ampere and newer; bf16 autocast covers the rest).
        tf32=True if tf32_available() else None,
        dataloader_num_workers=workers,
        ddp_find_unused_parameters=False,  # every GPT-2 parameter gets a gradient: skip DDP's extra graph walk
        ddp_timeout=train.ddp_timeout_s,
        report_to="none",
        disable_tqdm=False,
        **extra,
    )


def eval_batch_size(train: TrainConfig) -> int:
    """`train.eval_batch_size`, else 4 x the training batch (no activations are kept for a backward pass)."""
    return train.eval_batch_size or 4 * train.batch_size


def dataloader_workers(train: TrainConfig, use_cpu: bool) -> int:
    """`train.dataloader_num_workers`, else 2 on CUDA (collate the next batches while the GPU computes)
    and 0 on CPU (a worker would take a core from the computation)."""
    if train.dataloader_num_workers is not None:
        return train.dataloader_num_workers
    return 0 if use_cpu else 2


def tf32_available() -> bool:
    """TF32 tensor cores exist: a CUDA GPU of compute capability 8.0 (Ampere) or newer."""
    import torch

    return torch.cuda.is_available() and torch.cuda.get_device_capability()[0] >= 8


def keeps_best(stopping: EarlyStoppingConfig) -> bool:
    return stopping.enabled and stopping.keep == "best"


def deepspeed_config(train: TrainConfig) -> str | None:
    """The DeepSpeed JSON this run uses: `train.deepspeed`, else the one `accelerate launch` was given
    (`--deepspeed_config_file` or configs/accelerate/zero*.yaml export ACCELERATE_DEEPSPEED_CONFIG_FILE)."""
    if train.deepspeed:
        return train.deepspeed
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true":
        return os.environ.get("ACCELERATE_DEEPSPEED_CONFIG_FILE") or None
    return None


def _deepspeed_cpu_workaround(use_cpu: bool, timeout_s: int) -> dict[str, Any]:
    """On CPU, accelerate picks no process-group backend for DeepSpeed and believes it has one
    process; create the state with gloo first and tell the Trainer to use it (PLATFORM-NOTES).
    The group is created here, so it takes `train.ddp_timeout_s` here (the Trainer's would be ignored)."""
    if not use_cpu:
        return {}
    from datetime import timedelta

    from accelerate import PartialState

    os.environ["ACCELERATE_USE_DEEPSPEED"] = "true"
    PartialState(backend="gloo", timeout=timedelta(seconds=timeout_s))
    return {"accelerator_config": {"use_configured_state": True}}


def end_process_group() -> None:
    """Barrier, then destroy the default process group (no-op in a single process). Without it a
    multi-process run sometimes died at interpreter exit ("terminate called without an active
    exception", PLATFORM-NOTES); the barrier keeps rank 0 from tearing down while others still talk."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


class NonFiniteLoss(RuntimeError):
    """The training loss became NaN or infinite: the run cannot recover, so it stops."""


class NonFiniteLossCheck(TrainerCallback):
    """Stop with `NonFiniteLoss` at the first logging step whose training `loss` (or an evaluation
    whose validation loss) is NaN/inf.

    Always on: a diverged run would otherwise train on to `max_steps` and be scored as if it were a
    result. Checked at logging steps (`train.logging_steps`), where the Trainer averages the loss."""

    def on_log(self, args: TrainingArguments, state: Any, control: Any, logs: dict | None = None,
               **kwargs: Any) -> None:
        for key in ("loss", f"eval_{STOP_METRIC}"):  # training loss; validation loss at evaluations
            loss = (logs or {}).get(key)
            if isinstance(loss, (int, float)) and not math.isfinite(loss):
                raise NonFiniteLoss(f"{key} is {loss} at step {state.global_step}: the run diverged "
                                    f"(lower train.learning_rate or raise train.warmup_steps)")


def early_stopping_callbacks(stopping: EarlyStoppingConfig) -> list[TrainerCallback]:
    if not stopping.enabled:
        return []
    return [StoppingCallback(early_stopping_patience=stopping.patience, early_stopping_threshold=stopping.threshold)]


def last_checkpoint(output_dir: Path, before_step: int | None = None) -> str | None:
    """The newest COMPLETE `checkpoint-<step>` folder in `output_dir`, of a step below `before_step` if
    given (None: start fresh).

    A job killed mid-save leaves a folder that transformers' `get_last_checkpoint` would pick. Such
    folders are logged and ignored (not deleted: the Trainer's rotation or the final cleanup removes them)."""
    if not output_dir.is_dir():
        return None
    folders = [p for p in output_dir.iterdir() if p.is_dir() and _CHECKPOINT_NAME.fullmatch(p.name)
               and (before_step is None or int(p.name.rsplit("-", 1)[1]) < before_step)]
    for folder in sorted(folders, key=lambda p: int(p.name.rsplit("-", 1)[1]), reverse=True):
        if (problem := checkpoint_problem(folder)) is None:
            return str(folder)
        if problem == WEIGHTS_ONLY:
            log.info("not resuming from %s: %s", folder.name, problem)
        else:
            log.warning("skipping incomplete %s: %s", folder.name, problem)
    return None


_CHECKPOINT_NAME = re.compile(r"checkpoint-\d+")
WEIGHTS_ONLY = "weights-only snapshot (train.resume_every), not resumable"


def checkpoint_problem(folder: Path) -> str | None:
    """Why `folder` is not a complete checkpoint, or None when it is.

    `Trainer._save_checkpoint` (transformers 5.x) writes the weights, then the optimizer and scheduler
    (DeepSpeed: its `global_step*` folder), scaler and RNG state, and `trainer_state.json` LAST. So
    trainer_state.json is the completeness marker; the other files are checked too because rotation or
    a partial copy can remove them, and trainer_state.json itself is written in place (not atomically):
    it must parse and name this folder's step."""
    if (folder / WEIGHTS_ONLY_MARKER).exists():
        return WEIGHTS_ONLY
    deepspeed = any(p.is_dir() for p in folder.glob("global_step*"))
    weights = deepspeed or any((folder / name).is_file() for name in ("model.safetensors", "pytorch_model.bin"))
    if not weights:
        return "missing model.safetensors"
    if not deepspeed:
        for name in ("optimizer.pt", "scheduler.pt"):
            if not (folder / name).is_file():
                return f"missing {name}"
    state_file = folder / "trainer_state.json"
    if not state_file.is_file():
        return "missing trainer_state.json"
    try:
        step = json.loads(state_file.read_text()).get("global_step")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as error:
        return f"unreadable trainer_state.json ({type(error).__name__})"
    if step != _checkpoint_step(str(folder)):
        return f"trainer_state.json says global_step {step}"
    return None


@dataclass
class Prepared:
    """A Trainer ready to train one arm, and what it was built from."""

    trainer: Trainer
    summary: DataSummary
    base: str
    test_blocks: Any
    """The packed test stories with their story ids (`heldout.score_stories`)."""


def build_trainer(config: RunConfig, run_dir: RunDir, extra_callbacks: Sequence[TrainerCallback] = (),
                  keep_all_checkpoints: bool = False) -> Prepared:
    """The Trainer for this run: validation AND a fixed train subset of the same size at every evaluation."""
    from accelerate import PartialState
    from transformers import set_seed

    args = training_arguments(config, run_dir.checkpoints, keep_all_checkpoints)
    set_seed(config.train.seed)
    tokenizer = load_tokenizer(config.model.tokenizer or config.model.name)
    with PartialState().main_process_first():  # rank 0 builds the cache, the others read it
        base = resolve_base_model(config.model, config.output.dir)
        splits, summary = prepare_data(config.data, tokenizer)
    model = load_model(base)
    validation = splits["validation"]
    if config.train.max_eval_blocks is not None:
        validation = validation.select(range(min(len(validation), config.train.max_eval_blocks)))
    # The same blocks at every evaluation (the first ones: stories were shuffled by the split seed).
    train_subset = splits["train"].select(range(min(len(splits["train"]), len(validation))))
    train = config.train
    trainer = StoryTrainer(
        resume_every=train.resume_every,
        train_subset_every=train.train_subset_every,
        model=model,
        args=args,
        train_dataset=splits["train"],
        eval_dataset={VALIDATION: validation, TRAIN_SUBSET: train_subset},  # validation first: it decides
        data_collator=lm_collator,
        processing_class=tokenizer,
        callbacks=[*early_stopping_callbacks(config.early_stopping), NonFiniteLossCheck(), *extra_callbacks],
    )
    install_save_pauses(trainer, run_dir.path)  # test-only; off unless STORYTUNE_TEST_PAUSE is set
    if train.resume_every > 1 and args.world_size == 1 and not trainer.is_deepspeed_enabled:
        import signal

        on_time_limit = SaveOnTimeLimit(trainer, signal.SIGUSR2)  # submitit's time-limit signal
        if on_time_limit.install():  # only inside a submitit job, which has a handler to hand over to
            trainer.add_callback(on_time_limit)
    guard_checkpoint_saves(trainer)  # a stop request (SIGTERM) waits for the checkpoint being saved
    return Prepared(trainer, summary, base, splits["test_blocks"])


def validation_loss(trainer: Trainer, prefix: str = "kept") -> float:
    """The stopping criterion of the trainer's current weights, logged as `<prefix>_loss`: not counted
    against patience, not a best-model candidate, not in `eval_history` (those read `eval_validation_loss`)."""
    dataset = trainer.eval_dataset[VALIDATION]
    return trainer.evaluate(eval_dataset=dataset, metric_key_prefix=prefix)[f"{prefix}_loss"]


BASE_PREFIX = "eval_base"
"""Metric prefix of the base model's validation loss (W&B: `eval/base_loss` at step 0 under DeepSpeed)."""


class BaseModelScore(TrainerCallback):
    """The base model's validation loss and per-story test losses, measured before the first step.

    Without DeepSpeed, `score()` runs before `train()` (then `unprepare_after_eval`). Under DeepSpeed the
    callback scores at `on_train_begin`: inside `train()`, once the engine exists, before any step
    (transformers 5.24 reads: `evaluate()` before `train()` calls `deepspeed_init(inference=True)`, which
    raises for ZeRO < 3, and under ZeRO-3 wraps the model in an optimizer-less engine that `train()` then
    reuses instead of building the training engine; a plain forward is wrong under ZeRO-3, whose parameters
    are partitioned at load time). `eval_on_start` evaluates at the same point, but under the stopping
    metric's name: a step-0 point in `eval_history` and W&B, a `StoppingCallback` call, and again on every
    resume, where it would count the resumed checkpoint's evaluation against patience a second time.
    Here the metrics are named `eval_base_*` (`validation_loss`), which nothing of the stopping rule reads."""

    def __init__(self, trainer: Trainer, test_blocks: Any, n_stories: int, record: Path) -> None:
        self.trainer, self.test_blocks, self.n_stories, self.record = trainer, test_blocks, n_stories, record
        self.eval_loss: float | None = None
        self.stories: StoryLosses | None = None
        self.seconds_in_train = 0.0
        """Time spent scoring inside `train()`: not training, so not counted in `wall_time_s`."""

    def score(self) -> None:
        """Measure, and (main process) keep the numbers in `self.record` for a resumed attempt."""
        self.eval_loss = validation_loss(self.trainer, prefix=BASE_PREFIX)
        self.stories = score_stories(self.trainer, self.test_blocks, self.n_stories)
        if self.trainer.is_world_process_zero():
            write_json_atomic(self.record, {"eval_loss": self.eval_loss, "test_story_losses": self.stories.to_dict()})

    def load(self) -> None:
        """A resumed attempt: the first attempt's numbers (none if it died before measuring)."""
        if self.record.exists():
            saved = read_json(self.record)
            self.eval_loss, self.stories = saved["eval_loss"], StoryLosses(**saved["test_story_losses"])

    def on_train_begin(self, args: TrainingArguments, state: Any, control: Any, **kwargs: Any) -> None:
        if state.global_step == 0 and self.eval_loss is None:  # registered only for a fresh start
            started = time.perf_counter()
            self.score()
            self.seconds_in_train = time.perf_counter() - started


def unprepare_after_eval(trainer: Trainer) -> None:
    """Let `train()` wrap the model in DDP after an `evaluate()` on the bare model.

    `evaluate()` before `train()` has accelerate prepare the model in evaluation mode, which marks it
    `_is_accelerate_prepared` (accelerate 1.15); `train()`'s prepare then returns it unwrapped, so
    under a multi-process launch every rank silently trained on its own gradients (seen here: the two
    ranks' gradient norms differed at step 1 and validation loss after 30 steps was 0.1 nats worse than
    the single-process run of the same global batch). Forget that preparation; nothing else was prepared yet."""
    if trainer.is_deepspeed_enabled:
        return  # evaluation never runs before train() under DeepSpeed (see `BaseModelScore`)
    trainer.accelerator.free_memory()
    if getattr(trainer.model, "_is_accelerate_prepared", False):
        del trainer.model._is_accelerate_prepared
    trainer.model_wrapped = trainer.model


def finetune(config: RunConfig, run_dir: RunDir, extra_callbacks: Sequence[TrainerCallback] = (),
             keep_all_checkpoints: bool = False) -> tuple[FinetuneResult, Prepared]:
    """Train one arm to its stop, resuming from the run directory's last checkpoint if any; then
    score the kept weights on the validation blocks (the criterion) and the test stories (the result)."""
    check_hardware(config)  # a GPU run on a node without CUDA stops here, not on the CPU hours later
    prepared = build_trainer(config, run_dir, extra_callbacks, keep_all_checkpoints)
    trainer = prepared.trainer
    resume_from = last_checkpoint(run_dir.checkpoints)
    if resume_from and trainer.is_deepspeed_enabled and stopped_at(resume_from, config.early_stopping):
        # Killed after its stopping evaluation. `finish_from_checkpoint` cannot work here: DeepSpeed's
        # engine exists only inside train() (ZeRO-2 cannot even evaluate without it; ZeRO-3's partitioned
        # parameters cannot take a plain state dict). Training resumes from the checkpoint before instead
        # and repeats the same steps (same data order, restored RNG and patience) up to the same stop.
        stop = _checkpoint_step(resume_from)
        resume_from = last_checkpoint(run_dir.checkpoints, before_step=stop)
        log.info("checkpoint-%s is the stopping evaluation's: under DeepSpeed, training again from %s", stop,
                 resume_from or "the start")
    # The base model's losses before any step; a resumed run reads its first attempt's.
    base = BaseModelScore(trainer, prepared.test_blocks, prepared.summary.stories["test"], run_dir.base_scores)
    if resume_from:
        base.load()
    elif trainer.is_deepspeed_enabled:
        trainer.add_callback(base)  # scores inside train(), once the DeepSpeed engine exists
    else:
        base.score()
        unprepare_after_eval(trainer)
    if trainer.is_world_process_zero():
        log.info(describe_budget(config.train, trainer.args, tokens_per_step(trainer.args, config), prepared.summary))
        if resume_from:
            log.info("Resuming from %s (step %s)", resume_from, _checkpoint_step(resume_from))

    started = time.perf_counter()
    if resume_from and stopped_at(resume_from, config.early_stopping):
        # Killed after its stopping evaluation: `train()` would reset should_training_stop and train
        # on (transformers #10290). Finish from the checkpoint instead.
        log.info("%s is the stopping evaluation's checkpoint: finishing without training further", resume_from)
        finish_from_checkpoint(trainer, resume_from, config.early_stopping)
    else:
        trainer.train(resume_from_checkpoint=resume_from)
    wall_time_s = time.perf_counter() - started - base.seconds_in_train

    # Snapshot before the next evaluations: they would log points.
    history, patience = eval_history(trainer.state.log_history, tokens_per_step(trainer.args, config)), \
        _patience_counter(trainer)
    kept_eval_loss = validation_loss(trainer)
    story_losses = score_stories(trainer, prepared.test_blocks, prepared.summary.stories["test"])
    trainer.save_model(str(run_dir.model))  # rank 0 writes; gathers ZeRO-3 shards when needed
    result = collect_result(config, trainer, prepared, base.eval_loss, kept_eval_loss, story_losses,
                            wall_time_s, history, patience, resume_from, run_dir)
    if base.stories is not None:
        result.base_test_loss = test_loss_interval(base.stories, seed=config.train.seed)
        result.base_test_story_losses = base.stories.to_dict()
    if not keep_all_checkpoints:  # else replay evaluates with this group next; its caller ends it
        end_process_group()
    return result, prepared


def tokens_per_step(args: TrainingArguments, config: RunConfig) -> int:
    """Tokens in one optimiser step: blocks per device x accumulation x processes x block size."""
    blocks = args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size
    return blocks * config.data.block_size


def stopped_at(checkpoint: str, stopping: EarlyStoppingConfig) -> bool:
    """Did the run stop at this checkpoint's evaluation? (its saved patience counter reached patience)"""
    if not stopping.enabled:
        return False
    state = json.loads((Path(checkpoint) / "trainer_state.json").read_text())
    for name, saved in (state.get("stateful_callbacks") or {}).items():
        if "EarlyStopping" in name or "Stopping" in name:
            saved = saved[0] if isinstance(saved, list) else saved
            counter = saved.get("attributes", {}).get("early_stopping_patience_counter", 0)
            return counter >= stopping.patience
    return False


def finish_from_checkpoint(trainer: Trainer, checkpoint: str, stopping: EarlyStoppingConfig) -> None:
    """Load the checkpoint's state (and the weights the arm keeps) without training."""
    from transformers import TrainerState

    trainer.state = TrainerState.load_from_json(str(Path(checkpoint) / "trainer_state.json"))
    kept = trainer.state.best_model_checkpoint if keeps_best(stopping) else checkpoint
    load_weights(trainer.model, Path(kept or checkpoint))
    for callback in trainer.callback_handler.callbacks:
        if isinstance(callback, StoppingCallback):
            callback.early_stopping_patience_counter = stopping.patience or 0


def load_weights(model: Any, checkpoint: Path) -> None:
    """Load a checkpoint's weights into `model` in place (tied embeddings are stored once)."""
    from safetensors.torch import load_file

    state = load_file(str(checkpoint / "model.safetensors"))
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = set(getattr(model, "_tied_weights_keys", None) or [])
    if unexpected or [k for k in missing if k not in tied and "lm_head" not in k]:
        raise RuntimeError(f"checkpoint {checkpoint} does not match the model: missing {missing}, "
                           f"unexpected {unexpected}")


def collect_result(config: RunConfig, trainer: Trainer, prepared: Prepared, base_eval_loss: float | None,
                   kept_eval_loss: float, story_losses: StoryLosses, wall_time_s: float,
                   history: list[dict[str, float]], patience: int | None, resume_from: str | None,
                   run_dir: RunDir) -> FinetuneResult:
    state, args = trainer.state, trainer.args
    per_step = tokens_per_step(args, config)
    kept_best = keeps_best(config.early_stopping) and state.best_global_step
    resumed_steps = _checkpoint_step(resume_from)
    steps_this_process = state.global_step - (resumed_steps or 0)
    return FinetuneResult(
        variant=config.early_stopping.variant,
        seed=config.train.seed,
        base_model=prepared.base,
        max_steps=config.train.max_steps,
        stop_step=state.global_step,
        stopped_early=state.global_step < config.train.max_steps,
        best_step=state.best_global_step,
        best_eval_loss=state.best_metric,
        kept_step=state.best_global_step if kept_best else state.global_step,
        kept_eval_loss=kept_eval_loss,
        test_loss=test_loss_interval(story_losses, seed=config.train.seed),
        base_eval_loss=base_eval_loss,
        base_test_loss=None,
        patience_counter_at_stop=patience,
        train_tokens=state.global_step * per_step,
        tokens_per_step=per_step,
        total_flos=float(state.total_flos),
        wall_time_s=wall_time_s,
        tokens_per_s=steps_this_process * per_step / wall_time_s if wall_time_s > 0 else 0.0,
        resumed_from_step=resumed_steps,
        model_path=str(run_dir.model),
        eval_history=history,
        test_story_losses=story_losses.to_dict(),
        data=asdict(prepared.summary),
        world_size=args.world_size,
    )


def eval_history(log_history: list[dict[str, float]], per_step: int) -> list[dict[str, float]]:
    """One point per evaluation logged so far, by step: validation and train-subset loss."""
    points: dict[int, dict[str, float]] = {}
    for entry in log_history:
        for key, name in ((f"eval_{VALIDATION}_loss", "eval_loss"), (f"eval_{TRAIN_SUBSET}_loss", "train_loss")):
            if key in entry:
                step = int(entry["step"])
                points.setdefault(step, {"step": step, "tokens": step * per_step})[name] = float(entry[key])
    return [points[step] for step in sorted(points)]


def _patience_counter(trainer: Trainer) -> int | None:
    for callback in trainer.callback_handler.callbacks:
        if isinstance(callback, StoppingCallback):
            return callback.early_stopping_patience_counter
    return None


def _checkpoint_step(path: str | None) -> int | None:
    return int(Path(path).name.rsplit("-", 1)[1]) if path else None


def describe_budget(train: TrainConfig, args: TrainingArguments, per_step: int, summary: DataSummary) -> str:
    """The derived numbers, printed once (nanoGPT habit): what one step and the budget mean."""
    epochs = train.max_steps * per_step / max(1, summary.tokens["train"])
    return (f"data: {summary.stories['train']} train / {summary.stories['validation']} validation / "
            f"{summary.stories['test']} test stories, {summary.blocks['train']} train blocks of "
            f"{summary.block_size} tokens\n"
            f"budget: {train.max_steps} steps x {per_step} tokens/step "
            f"({train.batch_size} blocks x {train.gradient_accumulation_steps} accumulation x {args.world_size} "
            f"processes) = {train.max_steps * per_step:,} tokens, {epochs:.1f} epochs; "
            f"eval every {train.eval_steps} steps")


def remove_checkpoints(run_dir: RunDir) -> None:
    """Drop intermediate checkpoints once the kept model and result are safely written."""
    shutil.rmtree(run_dir.checkpoints, ignore_errors=True)
