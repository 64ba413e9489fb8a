"""A grid -> the jobs that answer it, with their dependencies and which are already done.

finetune[i] ──▶ evaluate[i] ──┐
base evaluation ──────────────┼──▶ aggregate (runs even when some jobs failed)
(finetune[i] when evaluation is off) ┘

There is one evaluation job per training job, waiting for that training only: with replay it
evaluates every cell derived from that training (each distinct kept checkpoint once), so a failed
training takes only its own cells' evaluations with it. The base model's evaluation lives in a
folder keyed by what it depends on (`paths.evaluation_key`), so one made under other settings is
never taken as done.

The only I/O here is looking at run directories to see what is complete.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from storytune.config import RunConfig
from storytune.paths import GridDir, RunDir, config_hash, eval_file, evaluation_key, failure_file
from storytune.study.grid import Cell, Grid

JobKind = Literal["finetune", "evaluate", "evaluate_base", "aggregate"]


@dataclass(frozen=True)
class Job:
    """One unit of work; `config` plus `kind` is all a worker needs to run it."""

    kind: JobKind
    name: str
    """Unique in the plan, e.g. `finetune/patience3-seed1-1a2b3c4d`."""
    config: RunConfig
    grid_root: str
    run_id: str | None = None
    depends_on: tuple[str, ...] = ()
    replays: tuple[RunConfig, ...] = ()
    """Configs of the arms this fine-tune derives by replay (grid `replay: true`); for an evaluation
    job, the arms it evaluates besides its own cell (those derived from its cell's training)."""
    done: bool = False
    """Its output is already complete on disk (it will be skipped unless forced)."""
    key: str | None = None
    """The base evaluation's key (`paths.evaluation_key`): its folder is `base/eval-<key>/`."""

    @property
    def run_dir(self) -> RunDir:
        """The cell's run directory (fine-tune and evaluate jobs only)."""
        assert self.run_id is not None, f"{self.name} has no run directory"
        return GridDir(Path(self.grid_root)).run(self.run_id)

    @property
    def output(self) -> Path:
        """The file whose existence means this job's own cell (or output) is complete."""
        return output_file(self.kind, Path(self.grid_root), self.run_id, self.key)

    @property
    def outputs(self) -> list[Path]:
        """Every file this job writes last, one per cell it covers (its own and replayed arms')."""
        grid = Path(self.grid_root)
        return [self.output, *(output_file(self.kind, grid, c.output.name) for c in self.replays)]

    @property
    def cells(self) -> list[str]:
        """Run ids of the cells this job produces (fine-tune) or evaluates (evaluation)."""
        return [str(self.run_id), *(str(c.output.name) for c in self.replays)] if self.run_id else []

    @property
    def failure(self) -> Path:
        return failure_record_file(self.kind, Path(self.grid_root), self.run_id, self.key)


def failure_record_file(kind: JobKind, grid_root: Path, run_id: str | None, key: str | None = None) -> Path:
    """Where a job of this kind leaves `failure.json`: a cell's run directory (fine-tune and its
    evaluation), the base evaluation's folder, or the report folder (aggregation)."""
    grid = GridDir(grid_root)
    if kind in ("finetune", "evaluate"):
        return grid.run(str(run_id)).failure
    return failure_file(grid.base_eval(str(key)) if kind == "evaluate_base" else grid.report)


def output_file(kind: JobKind, grid_root: Path, run_id: str | None, key: str | None = None) -> Path:
    grid = GridDir(grid_root)
    if kind == "finetune":
        return grid.run(str(run_id)).result
    if kind == "evaluate":
        return grid.run(str(run_id)).eval_result
    if kind == "evaluate_base":
        return eval_file(grid.base_eval(str(key)))
    return grid.summary


@dataclass(frozen=True)
class Plan:
    grid_name: str
    root: Path
    finetunes: list[Job]
    evaluations: list[Job]
    base_evaluation: Job | None
    aggregation: Job
    cells: list[dict[str, Any]] = field(default_factory=list)
    """Manifest of the grid's cells (run id, variant, seed, assignment, trained_by, evaluated_by)
    for status and aggregation."""
    replay: bool = False
    """Stopping arms are derived from their seed's `none` run (grid `replay: true`)."""
    base_model: dict[str, Any] = field(default_factory=dict)
    """The base model: {name, random (a random initialisation, e.g. the tiny preset), config_hash,
    eval_key (`paths.evaluation_key`), eval_dir (`base/eval-<eval_key>`)}."""

    @property
    def jobs(self) -> list[Job]:
        base = [self.base_evaluation] if self.base_evaluation else []
        return [*self.finetunes, *self.evaluations, *base, self.aggregation]

    def pending(self, kind: JobKind) -> list[Job]:
        return [job for job in self.jobs if job.kind == kind and not job.done]

    def manifest(self) -> dict[str, Any]:
        return {"grid": self.grid_name, "root": str(self.root), "replay": self.replay,
                "base_model": self.base_model, "cells": self.cells,
                "jobs": [{"name": j.name, "kind": j.kind, "run_id": j.run_id, "depends_on": list(j.depends_on),
                          "output": str(j.output), "outputs": [str(p) for p in j.outputs], "cells": j.cells,
                          "failure": str(j.failure), **({"key": j.key} if j.key else {})} for j in self.jobs]}


def make_plan(grid: Grid, force: bool = False) -> Plan:
    """Every job of the grid; `done` marks those whose outputs exist (all pending when `force`)."""
    root = grid.root

    def is_done(kind: JobKind, run_ids: list[str | None], key: str | None = None) -> bool:
        return not force and all(output_file(kind, root, run_id, key).exists() for run_id in run_ids)

    sources = grid.replay_sources()
    derived = {c.run_id: [d.config for d in grid.cells if sources[d.run_id] is c and d is not c] for c in grid.cells}
    trainings = [c for c in grid.cells if sources[c.run_id] is c]
    finetunes = [Job("finetune", f"finetune/{c.run_id}", c.config, str(root), c.run_id,
                     replays=tuple(derived[c.run_id]),
                     done=is_done("finetune", [c.run_id, *(d.output.name for d in derived[c.run_id])]))
                 for c in trainings]
    evaluations: list[Job] = []
    base: Job | None = None
    key = evaluation_key(grid.base_config)
    if grid.spec.evaluate:
        # One per training, after that training only (Slurm `aftercorr`: task i after fine-tune task i).
        evaluations = [Job("evaluate", f"evaluate/{c.run_id}", c.config, str(root), c.run_id,
                           depends_on=(f"finetune/{c.run_id}",), replays=tuple(derived[c.run_id]),
                           done=is_done("evaluate", [c.run_id, *(d.output.name for d in derived[c.run_id])]))
                       for c in trainings]
        base = Job("evaluate_base", "evaluate/base", grid.base_config, str(root), key=key,
                   done=is_done("evaluate_base", [None], key))
    upstream = [*(evaluations or finetunes), *([base] if base else [])]
    aggregation = Job("aggregate", "aggregate", grid.base_config, str(root),
                      depends_on=tuple(j.name for j in upstream))
    return Plan(grid_name=grid.spec.name, root=root, finetunes=finetunes, evaluations=evaluations,
                base_evaluation=base, aggregation=aggregation,
                cells=[cell_entry(c, sources[c.run_id], grid.spec.evaluate) for c in grid.cells],
                replay=grid.spec.replay,
                base_model={"name": grid.base_config.model.name, "random": grid.base_config.model.is_tiny,
                            "config_hash": config_hash(grid.base_config), "eval_key": key,
                            "eval_dir": str(GridDir(root).base_eval(key))})


def cell_entry(cell: Cell, source: Cell, evaluate: bool) -> dict[str, Any]:
    return {"run_id": cell.run_id, "variant": cell.config.early_stopping.variant,
            "seed": cell.config.train.seed, "assignment": cell.assignment, "trained_by": source.run_id,
            "evaluated_by": f"evaluate/{source.run_id}" if evaluate else None,
            "early_stopping": asdict(cell.config.early_stopping)}
