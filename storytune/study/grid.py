"""A grid file -> cells: one fully resolved, validated RunConfig each, with a stable run id.

Pure: reads the YAML it is given, builds configs, touches nothing else. The same grid file always
yields the same cells in the same order with the same ids (ids hash the resolved config).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from storytune.config import (
    ConfigError,
    Problem,
    RunConfig,
    apply_environment,
    deep_merge,
    from_dict,
    parse_override,
    read_yaml,
    set_path,
    unknown_key_message,
)
from storytune.paths import default_run_name
from storytune.yaml_loader import plain


@dataclass
class ResourcesConfig:
    """What one Slurm job asks for."""

    partition: str | None = None
    """Slurm partition; None = the cluster's default."""
    account: str | None = None
    """Slurm account to charge."""
    qos: str | None = None
    """Slurm quality of service."""
    time_min: int = 60
    """Time limit in minutes."""
    nodes: int = 1
    """Nodes per job."""
    gpus_per_node: int = 0
    """GPUs per node; one task (process) runs per GPU unless `tasks_per_node` says otherwise."""
    tasks_per_node: int | None = None
    """Slurm tasks (training processes) per node; None = one per GPU, or 1 without GPUs. Set it to
    run several processes without GPUs (DDP over gloo on CPU nodes, as the local-cluster test does)."""
    cpus_per_task: int = 2
    """CPU cores per task."""
    mem_gb: float | None = None
    """Memory per node in GB; None = the partition's default."""
    array_parallelism: int = 64
    """Most array tasks running at once (the `%N` throttle)."""
    max_requeues: int = 3
    """Times a job that reaches its time limit is checkpointed and requeued (submitit's
    `max_num_timeout`); a preempted job is always requeued. Past the limit the job fails with a
    failure record. Either way a requeued cell resumes from its newest complete checkpoint."""
    sbatch: dict[str, Any] = field(default_factory=dict)
    """Extra sbatch options, e.g. {constraint: a100, exclusive: true}."""
    setup: list[str] = field(default_factory=list)
    """Shell lines run before the job, e.g. `module load cuda` or `source .venv/bin/activate`."""

    def __post_init__(self) -> None:
        problems = []
        for key in ("time_min", "nodes", "cpus_per_task", "array_parallelism"):
            value = getattr(self, key)
            if not (isinstance(value, int) and not isinstance(value, bool) and value > 0):
                problems.append(Problem(key, f"must be a positive integer, got {value!r}"))
        if not (isinstance(self.max_requeues, int) and not isinstance(self.max_requeues, bool)
                and self.max_requeues >= 0):
            problems.append(Problem("max_requeues", f"must be an integer >= 0, got {self.max_requeues!r}"))
        if not (isinstance(self.gpus_per_node, int) and self.gpus_per_node >= 0):
            problems.append(Problem("gpus_per_node", f"must be an integer >= 0, got {self.gpus_per_node!r}"))
        tasks = self.tasks_per_node
        if tasks is not None and not (isinstance(tasks, int) and not isinstance(tasks, bool) and tasks > 0):
            problems.append(Problem("tasks_per_node", f"must be a positive integer or null, got {tasks!r}"))
        if problems:
            raise ConfigError(problems)

    @property
    def processes_per_node(self) -> int:
        """Tasks Slurm starts on each node: `tasks_per_node` if set, else one per GPU, else 1."""
        if self.tasks_per_node is not None:
            return self.tasks_per_node
        return max(1, self.gpus_per_node)


def default_aggregate_resources(resources: ResourcesConfig) -> ResourcesConfig:
    """CPU resources for the aggregation: the defaults (no GPU, the cluster's default partition, no
    extra sbatch options, which may name GPU constraints), charged and set up like `resources`."""
    return ResourcesConfig(account=resources.account, qos=resources.qos, setup=list(resources.setup))


@dataclass
class GridFile:
    """The grid file's own keys (the `base` run config and `axes` are validated per cell)."""

    name: str
    """Grid name: the W&B group and the folder under `output_dir`."""
    output_dir: str = "runs"
    """Root of the grid's run directories (`<output_dir>/<name>/<run>`)."""
    base: dict[str, Any] = field(default_factory=dict)
    """A run config (same keys as `configs/*.yaml` run configs) shared by every cell."""
    axes: dict[str, list[Any]] = field(default_factory=dict)
    """Dotted key -> values to sweep; a mapping value merges into that section."""
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)
    """Slurm resources of fine-tuning jobs."""
    eval_resources: ResourcesConfig | None = None
    """Slurm resources of evaluation jobs; default: same as `resources`."""
    aggregate_resources: ResourcesConfig | None = None
    """Slurm resources of the aggregation job (CPU work: statistics and the report). Default: one
    node, no GPU, 2 CPUs, 60 min on the cluster's default partition, with `resources`' account, qos
    and setup lines (`default_aggregate_resources`)."""
    evaluate: bool = True
    """Run the evaluation jobs (generation metrics) for every cell and the base model."""
    replay: bool = False
    """Train only the `none` arm per seed and derive every other early-stopping arm from its
    checkpoints (`storytune.train.replay`): exact, and one training per seed instead of one per arm.
    Needs a `none` arm (`patience: null`) for every combination of the other axes."""

    def __post_init__(self) -> None:
        problems = []
        if not (isinstance(self.name, str) and re.fullmatch(r"[A-Za-z0-9_.-]+", self.name)):
            problems.append(Problem("name", f"must be letters, digits, '_', '.', '-', got {self.name!r}"))
        for key, values in self.axes.items():
            if not isinstance(values, list) or not values:
                problems.append(Problem(f"axes.{key}", f"must be a non-empty list of values, got {values!r}"))
        if problems:
            raise ConfigError(problems)


@dataclass(frozen=True)
class Cell:
    """One point of the grid."""

    index: int
    run_id: str
    """Stable: `<variant>-seed<seed>-<hash of the resolved config>`."""
    config: RunConfig
    assignment: dict[str, Any]
    """Axis key -> the value this cell takes."""


@dataclass(frozen=True)
class Grid:
    spec: GridFile
    cells: list[Cell]
    base_config: RunConfig
    source: str | None = None

    @property
    def root(self) -> Path:
        return Path(self.spec.output_dir).resolve() / self.spec.name

    @property
    def eval_resources(self) -> ResourcesConfig:
        return self.spec.eval_resources or self.spec.resources

    @property
    def aggregate_resources(self) -> ResourcesConfig:
        return self.spec.aggregate_resources or default_aggregate_resources(self.spec.resources)

    def replay_sources(self) -> dict[str, Cell]:
        """Run id of each cell -> the cell that trains it: itself, or (replay) its seed's `none` cell,
        the cell whose config equals it in everything but early stopping."""
        if not self.spec.replay:
            return {cell.run_id: cell for cell in self.cells}
        sources = {_without_stopping(c.config): c for c in self.cells if not c.config.early_stopping.enabled}
        return {c.run_id: sources[_without_stopping(c.config)] for c in self.cells
                if _without_stopping(c.config) in sources}


def load_grid(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Grid:
    """Read, expand and validate a grid file; every problem of every cell is listed at once.

    Overrides are `key.path=value` on the grid file (`base.train.max_steps=100`, `output_dir=/x`,
    `axes.train.seed=[1,2,3]`).
    """
    raw = read_yaml(path)
    for text in overrides:
        key, value = parse_override(text)
        if key.startswith("axes."):  # axis names are dotted keys themselves: `axes.train.seed=[1,2]`
            raw.setdefault("axes", {})[key.removeprefix("axes.")] = value
        else:
            set_path(raw, key, value)
    try:
        return expand_grid(raw, source=str(path))
    except ConfigError as err:
        raise ConfigError(err.problems, source=str(path)) from None


def expand_grid(raw: dict[str, Any], source: str | None = None) -> Grid:
    spec = from_dict(GridFile, raw)
    # An axis over a key that does not exist is reported once, and left out of the expansion (not
    # once per cell); the other axes still expand so their problems are listed too.
    problems: list[Problem] = [p for key in spec.axes if (p := axis_key_problem(key)) is not None]
    bad_axes = {p.path.removeprefix("axes.") for p in problems}
    axes = {key: values for key, values in spec.axes.items() if key not in bad_axes}
    base_raw = apply_environment(spec.base)
    base_config = _cell_config(base_raw, spec, "base", problems)
    cells = []
    for index, values in enumerate(itertools.product(*axes.values())):
        assignment = dict(zip(axes, values))
        cell_raw = base_raw
        for key, value in assignment.items():
            cell_raw = _assign(cell_raw, key, value)
        where = "cell[" + ", ".join(f"{k}={_short(v)}" for k, v in assignment.items()) + "]"
        config = _cell_config(cell_raw, spec, where, problems)
        if config is not None:
            run_id = default_run_name(config)
            config.output.name = run_id
            cells.append(Cell(index=index, run_id=run_id, config=config, assignment=plain(assignment)))
    problems.extend(_duplicate_ids(cells))
    grid = Grid(spec=spec, cells=cells, base_config=base_config, source=source)
    if spec.replay and not problems:
        problems.extend(_replay_problems(grid))
    if problems:
        raise ConfigError(_dedupe(problems))
    return grid


def axis_key_problem(key: str) -> Problem | None:
    """An axis must name a run-config key (`train.seed`) or section (`early_stopping`)."""
    section: Any = RunConfig
    walked: list[str] = []
    for part in key.split("."):
        if not dataclasses.is_dataclass(section):
            return Problem(f"axes.{key}", f"`{'.'.join(walked)}` is a value, not a section; an axis names a key "
                                          "such as `train.seed` or a section such as `early_stopping`")
        names = [f.name for f in dataclasses.fields(section)]
        if part not in names:
            return Problem(f"axes.{key}", unknown_key_message(part, names, ".".join(walked) or "the run config"))
        section = typing.get_type_hints(section)[part]
        walked.append(part)
    return None


def _assign(raw: dict[str, Any], key: str, value: Any) -> dict[str, Any]:
    """Set a dotted key; a mapping value changes only the keys it names in that section."""
    update: dict[str, Any] = {}
    set_path(update, key, value)
    return deep_merge(raw, update)


def _cell_config(cell_raw: dict[str, Any], spec: GridFile, where: str,
                 problems: list[Problem]) -> RunConfig | None:
    # Output and W&B group are the grid's: every cell lands under <output_dir>/<name>/.
    forced = {"output": {"dir": str(Path(spec.output_dir).resolve() / spec.name)}}
    cell_raw = deep_merge(cell_raw, forced)
    if not (cell_raw.get("wandb") or {}).get("group"):
        cell_raw = deep_merge(cell_raw, {"wandb": {"group": spec.name}})
    try:
        return from_dict(RunConfig, cell_raw)
    except ConfigError as err:
        base_problems = {(p.path.removeprefix("base."), p.message) for p in problems if p.path.startswith("base.")}
        # A problem already reported for `base` is not repeated for every cell.
        problems.extend(Problem(f"{where}.{p.path}", p.message) for p in err.problems
                        if (p.path, p.message) not in base_problems)
        return None


def _without_stopping(config: RunConfig) -> str:
    """Everything that shapes training except the early-stopping arm (and where outputs go)."""
    data = config.to_dict()
    for key in ("early_stopping", "output", "wandb"):
        data.pop(key, None)
    return json.dumps(data, sort_keys=True)


def _replay_problems(grid: Grid) -> list[Problem]:
    sources = grid.replay_sources()
    problems = [Problem("replay", f"cell {c.run_id} has no `none` arm (patience: null) with the same settings to "
                                  "replay it from; add `{patience: null}` to axes.early_stopping or set replay: false")
                for c in grid.cells if c.run_id not in sources]
    if any(c.config.train.deepspeed for c in grid.cells):
        problems.append(Problem("replay", "replay loads checkpoints into one process's model; it does not support "
                                          "DeepSpeed (train.deepspeed): set replay: false"))
    return problems


def _duplicate_ids(cells: list[Cell]) -> list[Problem]:
    seen: dict[str, int] = {}
    problems = []
    for cell in cells:
        if cell.run_id in seen:
            problems.append(Problem("axes", f"cells {seen[cell.run_id]} and {cell.index} resolve to the same "
                                            f"config ({cell.run_id}); remove the repeated axis value"))
        seen.setdefault(cell.run_id, cell.index)
    return problems


def _dedupe(problems: list[Problem]) -> list[Problem]:
    return list(dict.fromkeys(problems))


def _short(value: Any) -> str:
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {v}" for k, v in value.items()) + "}"
    return str(value)
