"""One interface, three backends: run a plan on Slurm (submitit), locally (subprocesses), or in-process.

- `slurm`: fine-tunes as one job array, evaluations as a second array whose task i waits for
  fine-tune task i only (`aftercorr`; with replay, evaluation i covers every cell derived from
  training i), so a failed training cancels its own evaluation and no other; the base evaluation;
  and an aggregation job on CPU resources of its own that waits for all of them with `afterany` (so
  it still runs, and reports failures, when some fail). Submissions are recorded in
  `<grid root>/submissions.json`; a job still queued or running is not submitted again.
- `local`: the same plan on this machine, in dependency order, N jobs at a time, each a real
  subprocess with its own log (submitit's LocalExecutor).
- `debug`: in this process, one job after another (for pdb).
"""

from __future__ import annotations

import json
import logging
import shutil
import signal
import sys
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from storytune.cluster import allocator
from storytune.errors import last_line
from storytune.paths import GridDir, write_json_atomic
from storytune.stop import handlers_installed, signal_name
from storytune.study.grid import ResourcesConfig, default_aggregate_resources
from storytune.study.plan import Job, Plan

log = logging.getLogger(__name__)

ACTIVE_STATES = {"PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "COMPLETING", "RESIZING", "SUSPENDED"}


def import_submitit():
    try:
        import submitit
    except ImportError:
        raise RuntimeError("submitting jobs needs submitit: pip install submitit") from None
    return submitit


@dataclass
class Submitted:
    """What happened to one job of the plan in this submission."""

    name: str
    kind: str
    status: str
    """`submitted`, `skipped (done)`, `skipped (queued)`, `done`, `failed`."""
    job_id: str | None = None
    log: str | None = None
    error: str | None = None


class JobRunner:
    """The callable submitit pickles: runs one plan job on the worker.

    It is Checkpointable by duck typing (submitit looks for `checkpoint`): on preemption or timeout
    the job is requeued and resumes from the files in its run directory.
    """

    def __call__(self, job: Job) -> dict[str, Any]:
        from storytune.cluster.worker import run_job

        return run_job(job)

    def checkpoint(self, job: Job) -> Any:
        submitit = import_submitit()
        return submitit.helpers.DelayedSubmission(JobRunner(), job)


def submitit_parameters(resources: ResourcesConfig, name: str, dependency: str | None = None) -> dict[str, Any]:
    """AutoExecutor parameters for one kind of job (slurm_* keys are ignored off Slurm)."""
    extra = dict(resources.sbatch)
    if resources.account:
        extra["account"] = resources.account
    if resources.qos:
        extra["qos"] = resources.qos
    if dependency:
        extra["dependency"] = dependency
        extra["kill-on-invalid-dep"] = "yes"  # a dependency that can never be met must not hang
    params: dict[str, Any] = {
        "name": name,
        "timeout_min": resources.time_min,
        "nodes": resources.nodes,
        "tasks_per_node": resources.processes_per_node,  # --ntasks-per-node: srun starts this many a node
        "cpus_per_task": resources.cpus_per_task,
        "slurm_array_parallelism": resources.array_parallelism,
        # One task that dies ends the job: the others would wait in a collective until ddp_timeout.
        "slurm_srun_args": ["--kill-on-bad-exit=1"],
        "slurm_setup": list(resources.setup),
        "slurm_additional_parameters": extra,
    }
    if resources.gpus_per_node:
        params["gpus_per_node"] = resources.gpus_per_node
    if resources.mem_gb is not None:
        params["mem_gb"] = resources.mem_gb
    if resources.partition:
        params["slurm_partition"] = resources.partition
    return params


def with_fast_allocator(params: dict[str, Any]) -> dict[str, Any]:
    """Slurm parameters whose setup exports the benchmark-chosen allocator environment before the
    job's Python starts (storytune/cluster/allocator.py); the grid's own setup lines come after, so
    an `export` there overrides it."""
    return {**params, "slurm_setup": [*allocator.setup_lines(), *params.get("slurm_setup", [])]}


class Executor(ABC):
    name: str

    def __init__(self, plan: Plan, eval_resources: ResourcesConfig, resources: ResourcesConfig, *,
                 aggregate_resources: ResourcesConfig | None = None):
        self.plan = plan
        self.resources = resources
        self.eval_resources = eval_resources
        self.aggregate_resources = aggregate_resources or default_aggregate_resources(resources)
        self.folder = GridDir(plan.root.resolve()).logs

    def resources_of(self, job: Job) -> ResourcesConfig:
        """What a job of this kind asks for: training, evaluation (base too), or aggregation (CPU)."""
        if job.kind == "finetune":
            return self.resources
        return self.aggregate_resources if job.kind == "aggregate" else self.eval_resources

    @abstractmethod
    def submit(self) -> list[Submitted]:
        """Start every pending job of the plan; return what happened to each."""


# --------------------------------------------------------------------------------------------------
# Slurm


class SlurmExecutor(Executor):
    name = "slurm"

    def __init__(self, plan: Plan, eval_resources: ResourcesConfig, resources: ResourcesConfig,
                 state_of: Callable[[list[str]], dict[str, str]] | None = None, *,
                 aggregate_resources: ResourcesConfig | None = None):
        super().__init__(plan, eval_resources, resources, aggregate_resources=aggregate_resources)
        self.state_of = state_of or slurm_states
        self.record_path = GridDir(plan.root).submissions

    def _executor(self, resources: ResourcesConfig, name: str, dependency: str | None = None):
        submitit = import_submitit()
        # The requeue budget is a constructor argument: submitit stores it in each job's pickle, and
        # the job's USR2 handler requeues only while it lasts.
        executor = submitit.AutoExecutor(folder=self.folder / "%j", cluster="slurm",
                                         slurm_max_num_timeout=resources.max_requeues)
        executor.update_parameters(**with_fast_allocator(submitit_parameters(resources, name, dependency)))
        return executor

    def submit(self) -> list[Submitted]:
        record = read_submissions(self.record_path)
        in_flight = self._in_flight(record)
        outcome: list[Submitted] = []
        job_ids: dict[str, str] = {name: entry["job_id"] for name, entry in record.items() if name in in_flight}

        name = self.plan.grid_name
        finetunes = self._pending(self.plan.finetunes, in_flight, outcome)
        finetune_ids = self._submit_array(finetunes, self.resources, f"{name}-finetune")
        job_ids.update(finetune_ids)
        evals = self._pending(self.plan.evaluations, in_flight, outcome)
        job_ids.update(self._submit_evaluations(evals, finetunes, finetune_ids, job_ids))
        base = self._pending([self.plan.base_evaluation] if self.plan.base_evaluation else [], in_flight, outcome)
        job_ids.update(self._submit_array(base, self.eval_resources, f"{name}-base"))
        # afterany: the aggregation runs even when jobs fail, and reports the failed cells.
        waits = sorted({job_ids[n] for n in self.plan.aggregation.depends_on if n in job_ids})
        job_ids.update(self._submit_array([self.plan.aggregation], self.aggregate_resources, f"{name}-aggregate",
                                          "afterany:" + ":".join(waits) if waits else None))

        submitted_now = {job: job_id for job, job_id in job_ids.items() if job not in in_flight}
        outcome += [Submitted(job.name, job.kind, "submitted", job_id, self._log(job_id))
                    for job in self.plan.jobs if (job_id := submitted_now.get(job.name))]
        # `output` tells a later submission whether a recorded job made what the plan needs now (a
        # base evaluation under other settings has the same name but another keyed folder).
        outputs = {job.name: str(job.output) for job in self.plan.jobs}
        record.update({job: {"job_id": job_id, "submitted_at": time.time(), "output": outputs[job]}
                       for job, job_id in submitted_now.items()})
        write_json_atomic(self.record_path, record)
        order = [job.name for job in self.plan.jobs]
        return sorted(outcome, key=lambda s: order.index(s.name))

    def _submit_evaluations(self, evals: list[Job], finetunes: list[Job], finetune_ids: dict[str, str],
                            job_ids: dict[str, str]) -> dict[str, str]:
        """Evaluations of this submission's fine-tunes as one array, task i after fine-tune task i
        only (`aftercorr`: a failed fine-tune cancels its own evaluation, no other); others (their
        fine-tune finished earlier, is still queued from an earlier submission, or the arrays do not
        line up) one by one, each after its own fine-tune task (`afterok:<array>_<task>`)."""
        name = f"{self.plan.grid_name}-evaluate"
        paired = [job for job in evals if job.depends_on[0] in finetune_ids]
        ids: dict[str, str] = {}
        if paired and one_to_one(paired, finetunes):
            array_id = finetune_ids[finetunes[0].name].split("_")[0]
            ids.update(self._submit_array(paired, self.eval_resources, name, f"aftercorr:{array_id}"))
        for job in evals:
            if job.name not in ids:
                upstream = job_ids.get(job.depends_on[0])
                ids.update(self._submit_array([job], self.eval_resources, name,
                                              f"afterok:{upstream}" if upstream else None))
        return ids

    def _log(self, job_id: str) -> str:
        return str(self.folder / job_id / f"{job_id}_0_log.out")

    def _in_flight(self, record: dict[str, dict[str, Any]]) -> set[str]:
        """Names of unfinished jobs that an earlier submission left queued or running (and that
        write the output the plan needs now: not a base evaluation under other settings)."""
        done = {job.name for job in self.plan.jobs if job.done}
        outputs = {job.name: str(job.output) for job in self.plan.jobs}
        record = {name: entry for name, entry in record.items()
                  if name not in done and entry.get("output", outputs.get(name)) == outputs.get(name)}
        if not record:
            return set()
        states = self.state_of([entry["job_id"] for entry in record.values()])
        return {name for name, entry in record.items() if states.get(entry["job_id"], "") in ACTIVE_STATES}

    @staticmethod
    def _pending(jobs: list[Job], in_flight: set[str], outcome: list[Submitted]) -> list[Job]:
        pending = []
        for job in jobs:
            if job.done:
                outcome.append(Submitted(job.name, job.kind, "skipped (done)"))
            elif job.name in in_flight:
                outcome.append(Submitted(job.name, job.kind, "skipped (queued or running)"))
            else:
                pending.append(job)
        return pending

    def _submit_array(self, jobs: list[Job], resources: ResourcesConfig, name: str,
                      dependency: str | None = None) -> dict[str, str]:
        """One sbatch call for all `jobs` (an array when more than one); returns name -> job id."""
        if not jobs:
            return {}
        executor = self._executor(resources, name, dependency)
        handles = executor.map_array(JobRunner(), jobs)
        return {job.name: handle.job_id for job, handle in zip(jobs, handles)}

    def sbatch_preview(self) -> str:
        """The sbatch script submitit would write for the fine-tune array (see `stages` for all)."""
        return self.stages()[0].script

    def stages(self) -> list[Stage]:
        """What `submit` would ask Slurm for, stage by stage, without submitting (no Slurm needed):
        each stage's jobs, resources, dependency and sbatch script. Job ids are not known before
        submission, so dependencies name the stage they wait for (`aftercorr:FINETUNE_ID`)."""
        name = self.plan.grid_name
        finetunes = self.plan.pending("finetune")
        evals = self.plan.pending("evaluate")
        pending_finetunes = {job.name for job in finetunes}
        paired = [job for job in evals if job.depends_on[0] in pending_finetunes]
        stages = [Stage("finetune", f"{name}-finetune", len(finetunes), self.resources, None)]
        if evals:
            # As `submit`: task i after fine-tune task i only (`aftercorr`), else each after its own task.
            lined_up = bool(paired) and one_to_one(paired, finetunes)
            dependency = (f"aftercorr:{placeholder('finetune')}" if lined_up
                          else f"afterok:{placeholder('finetune')}_TASK" if paired else None)
            cells = sum(len(job.cells) for job in evals)
            notes = [f"{cells} cells, each distinct kept checkpoint evaluated once"] if cells > len(evals) else []
            if paired and not lined_up:
                notes.append("submitted one by one, each after its own fine-tune task")
            if len(paired) < len(evals):
                notes.append(f"{len(evals) - len(paired)} of them after fine-tunes finished earlier")
            stages.append(Stage("evaluate", f"{name}-evaluate", len(evals), self.eval_resources, dependency,
                                note="; ".join(notes)))
        if self.plan.base_evaluation and not self.plan.base_evaluation.done:
            stages.append(Stage("evaluate_base", f"{name}-base", 1, self.eval_resources, None,
                                note=f"key {self.plan.base_evaluation.key}"))
        # afterany: the aggregation runs even when jobs fail, and reports the failed cells.
        upstream = {job.kind for job in self.plan.jobs if job.name in self.plan.aggregation.depends_on and not job.done}
        waits = [placeholder(stage.kind) for stage in stages if stage.jobs and stage.kind in upstream]
        stages.append(Stage("aggregate", f"{name}-aggregate", 1, self.aggregate_resources,
                            "afterany:" + ":".join(waits) if waits else None))
        for stage in stages:
            stage.script = self.sbatch_script(stage.resources, stage.job_name, stage.jobs, stage.dependency)
        return stages

    def sbatch_script(self, resources: ResourcesConfig, name: str, count: int, dependency: str | None) -> str:
        """The sbatch script submitit would write for `count` jobs (an array when more than one): its
        own template (private `_make_sbatch_string`, submitit 1.5) filled with the same parameters."""
        import shlex

        import_submitit()
        from submitit.slurm import slurm

        generic = with_fast_allocator(submitit_parameters(resources, name, dependency))
        renames = slurm.SlurmExecutor._equivalence_dict()
        params = {(key.removeprefix("slurm_") if key.startswith("slurm_") else renames[key]): value
                  for key, value in generic.items()}
        if "mem" in params:
            params["mem"] = slurm._convert_mem(params["mem"])
        folder = self.folder / "%j"
        command = f"{shlex.quote(sys.executable)} -u -m submitit.core._submit {shlex.quote(str(folder))}"
        # submitit submits a one-job map_array as a plain job, not an array of one.
        return slurm._make_sbatch_string(command=command, folder=folder, map_count=count if count > 1 else None,
                                         **params)


def one_to_one(evaluations: list[Job], finetunes: list[Job]) -> bool:
    """Evaluation task i waits for fine-tune task i, for every i: the arrays line up for `aftercorr`."""
    return [job.depends_on[0] for job in evaluations] == [job.name for job in finetunes]


def placeholder(kind: str) -> str:
    """Stands for a stage's job id in a dry run (`FINETUNE_ID`); plain letters, so sbatch lines stay unquoted."""
    return f"{kind.upper()}_ID"


@dataclass
class Stage:
    """One sbatch submission of a plan: an array (or single job) of one kind."""

    kind: str
    job_name: str
    jobs: int
    resources: ResourcesConfig
    dependency: str | None
    """Slurm dependency with stage placeholders (`aftercorr:FINETUNE_ID`); None = starts at once."""
    note: str = ""
    script: str = ""

    @property
    def gpu_hours(self) -> float:
        """GPU-hours requested (not used): jobs x nodes x GPUs per node x time limit."""
        r = self.resources
        return self.jobs * r.nodes * r.gpus_per_node * r.time_min / 60

    def summary(self) -> str:
        """`finetune  4 jobs (array 0-3%3)  2 nodes x 4 GPUs, 6 CPUs/task, 200 GB, 90 min  after: -`"""
        r = self.resources
        shape = f"array 0-{self.jobs - 1}%{min(r.array_parallelism, self.jobs)}" if self.jobs > 1 else "single job"
        gpus = f" x {r.gpus_per_node} GPUs" if r.gpus_per_node else ""
        if r.tasks_per_node is not None:  # set explicitly (CPU DDP, or not one task per GPU): say so
            gpus += f" x {r.tasks_per_node} task(s)"
        mem = f", {r.mem_gb:g} GB" if r.mem_gb is not None else ""
        where = f", partition {r.partition}" if r.partition else ""
        note = f" ({self.note})" if self.note else ""
        jobs = f"{self.jobs:>3} job{'s' if self.jobs != 1 else ' '}"
        return (f"{self.kind:<14} {jobs} ({shape}); {r.nodes} node(s){gpus}, {r.cpus_per_task} CPUs/task{mem}, "
                f"{r.time_min} min{where}; after: {self.dependency or '-'}{note}")


def read_submissions(path: Path) -> dict[str, dict[str, Any]]:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return {}


def slurm_states(job_ids: list[str]) -> dict[str, str]:
    """Job id (`123` or `123_4`) -> Slurm state (`PENDING`, `CANCELLED`, ...); ids sacct does not
    know are left out, and off Slurm (no sacct) there are none.

    One sacct call, made and parsed by submitit's watcher: it also gives each task of an array
    line such as `123_[0-4%2]` (tasks not started yet) that line's state.
    """
    if not job_ids or shutil.which("sacct") is None:
        return {}
    import_submitit()
    from submitit.slurm.slurm import SlurmInfoWatcher

    watcher = SlurmInfoWatcher()  # our own: SlurmJob's shared watcher caches states for minutes
    for job_id in job_ids:
        watcher.register_job(job_id)
    watcher.update()  # a failing sacct is logged by submitit and leaves every state unknown
    states = {job_id: watcher.get_info(job_id, mode="cache").get("State", "") for job_id in job_ids}
    return {job_id: state.split()[0] for job_id, state in states.items() if state}  # "CANCELLED by 0"


# --------------------------------------------------------------------------------------------------
# Local and debug: dependency order on this machine


class _SequentialExecutor(Executor):
    """Runs jobs wave by wave: fine-tunes, evaluations, base evaluation, aggregation.

    Local executor: the first SIGINT (Ctrl-C) or SIGTERM stops it cleanly (`GracefulStop`): no new
    job starts, the running ones get SIGTERM and end without cutting a checkpoint save short; the
    outcome calls them `stopped` and the rest `not started`. A second signal kills them at once."""

    cluster: str

    def __init__(self, plan: Plan, eval_resources: ResourcesConfig, resources: ResourcesConfig,
                 parallel: int = 1, stream: TextIO | None = None, *,
                 aggregate_resources: ResourcesConfig | None = None):
        super().__init__(plan, eval_resources, resources, aggregate_resources=aggregate_resources)
        self.parallel = max(1, parallel)
        self.stream = stream
        self.stop = GracefulStop()

    def submit(self) -> list[Submitted]:
        outcome: dict[str, Submitted] = {}
        with self.stop.handling(self.cluster == "local"):
            for wave in self._waves():
                runnable = []
                for job in wave:
                    failed = [d for d in job.depends_on if outcome.get(d) and outcome[d].status == "failed"]
                    if job.done:
                        outcome[job.name] = Submitted(job.name, job.kind, "skipped (done)")
                    elif failed and job.kind != "aggregate":
                        outcome[job.name] = Submitted(job.name, job.kind, "failed", error=f"{failed[0]} failed")
                    else:
                        runnable.append(job)
                for start in range(0, len(runnable), self.parallel):
                    batch = runnable[start:start + self.parallel]
                    if self.stop.signum is not None:
                        outcome.update({job.name: Submitted(job.name, job.kind, NOT_STARTED) for job in batch})
                        continue
                    for result in self._run_batch(batch):
                        outcome[result.name] = result
        return [outcome[job.name] for job in self.plan.jobs if job.name in outcome]

    def _waves(self) -> list[list[Job]]:
        base = [self.plan.base_evaluation] if self.plan.base_evaluation else []
        return [self.plan.finetunes, self.plan.evaluations + base, [self.plan.aggregation]]

    def _run_batch(self, jobs: list[Job]) -> list[Submitted]:
        submitit = import_submitit()
        handles = []
        for job in jobs:
            executor = submitit.AutoExecutor(folder=self.folder / "%j", cluster=self.cluster)
            resources = self.resources_of(job)
            executor.update_parameters(**submitit_parameters(resources, f"{self.plan.grid_name}-{job.kind}"))
            log.info("starting %s", job.name)
            # Local jobs inherit this process's environment, so the allocator's goes in for the submit;
            # debug jobs run in this process, whose allocator was fixed when it started.
            with allocator.inherited_by_children() if self.cluster == "local" else nullcontext(), \
                    self.stop.children_ignore_sigint(self.cluster == "local"):
                handle = executor.submit(JobRunner(), job)
            handles.append((job, handle))
            self.stop.running.append(handle)
        try:
            return self._collect(handles)
        except KeyboardInterrupt:  # debug executor (or a signal this process does not handle): stop them too
            for _, handle in handles:
                kill_job(handle)
            raise
        finally:
            self.stop.running.clear()

    def _collect(self, handles: list[tuple[Job, Any]]) -> list[Submitted]:
        results = []
        for job, handle in handles:
            if self.stream is not None and len(handles) == 1 and self.cluster == "local":
                follow_log(handle, self.stream)
            try:
                handle.result()
                results.append(Submitted(job.name, job.kind, "done", str(handle.job_id), _log_path(handle)))
            except Exception as err:  # a failed job is reported; the others go on
                if self.stop.signum is not None and _stopped(err):
                    results.append(Submitted(job.name, job.kind, STOPPED, str(handle.job_id), _log_path(handle)))
                    continue
                message = last_line(err)
                results.append(Submitted(job.name, job.kind, "failed", str(handle.job_id), _log_path(handle), message))
                log.error("%s failed: %s (log: %s)", job.name, message, _log_path(handle))
        return results


STOPPED, NOT_STARTED = "stopped", "not started"
"""Outcomes of a local grid stopped on request: ended by the stop / never started."""


def _stopped(err: Exception) -> bool:
    """Did the job end without a result (stopped by our SIGTERM), rather than raise?"""
    submitit = import_submitit()
    return isinstance(err, submitit.core.utils.UncompletedJobError)


class StopNow(KeyboardInterrupt):
    """A second interrupt: the running jobs were killed, the grid ends at once."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        super().__init__(f"second {signal_name(signum)}: running jobs killed")


class GracefulStop:
    """The local executor's SIGINT/SIGTERM handling (main process).

    The jobs' processes are started with SIGINT ignored (`children_ignore_sigint`): a terminal's
    Ctrl-C goes to the whole process group, and a job (with submitit's controller, which kills its
    task 1 s after a SIGINT) would otherwise die wherever it is. This process decides instead: the
    first signal sends SIGTERM to the running jobs (`storytune.stop`: they end cleanly) and lets no
    new job start; a second kills their process trees and raises `StopNow`."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.running: list[Any] = []

    def handling(self, enabled: bool) -> AbstractContextManager[None]:
        return handlers_installed(self._on_signal, (signal.SIGINT, signal.SIGTERM)) if enabled else nullcontext()

    @staticmethod
    def children_ignore_sigint(enabled: bool) -> AbstractContextManager[None]:
        """Processes started inside inherit SIGINT ignored (Python then installs no KeyboardInterrupt)."""
        return handlers_installed(signal.SIG_IGN, (signal.SIGINT,)) if enabled else nullcontext()

    def _on_signal(self, signum: int, frame: Any) -> None:
        if self.signum is None:
            self.signum = signum
            print(f"\n{signal_name(signum)}: stopping the grid: no new job starts; {len(self.running)} running "
                  f"job(s) asked to stop (SIGTERM), keeping their checkpoints. Interrupt again to end at once.",
                  file=sys.stderr, flush=True)
            for handle in self.running:
                terminate_job(handle)
            return
        print(f"\n{signal_name(signum)} again: killing {len(self.running)} running job(s) now", file=sys.stderr,
              flush=True)
        for handle in self.running:
            kill_job(handle)
        raise StopNow(self.signum)


def _job_processes(handle: Any) -> list[Any]:
    """The local job's controller process and everything it started (submitit's task, its workers)."""
    import psutil

    process = getattr(handle, "_process", None)  # submitit's LocalJob keeps its controller's Popen here
    if process is None or process.poll() is not None:
        return []
    try:
        controller = psutil.Process(process.pid)
        return [controller, *controller.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def terminate_job(handle: Any) -> None:
    """SIGTERM to a local job's task processes (`python -m submitit.core._submit`), not to its helpers
    (data-loader workers would die mid-batch) nor its controller (which forwards it, unless a `setup`
    shell stands between them)."""
    import psutil

    for process in _job_processes(handle)[1:]:
        try:
            if "submitit.core._submit" in " ".join(process.cmdline()):
                process.terminate()
        except psutil.Error:  # gone meanwhile
            pass


def kill_job(handle: Any) -> None:
    """SIGKILL a local job's whole process tree at once (an in-process debug job: nothing to kill)."""
    import psutil

    for process in _job_processes(handle):
        try:
            process.kill()
        except psutil.Error:
            pass


def _log_path(handle: Any) -> str | None:
    try:
        return str(handle.paths.stderr)
    except Exception:
        return None


def follow_log(handle: Any, stream: TextIO, poll_s: float = 0.5) -> None:
    """Copy a local job's stdout and stderr to `stream` while it runs (the demo is watched live)."""
    positions: dict[Path, int] = {}
    while True:
        finished = handle.done()
        for path in (handle.paths.stdout, handle.paths.stderr):
            if path.exists():
                with open(path, "rb") as f:
                    f.seek(positions.get(path, 0))
                    chunk = f.read()
                    positions[path] = f.tell()
                if chunk:
                    stream.write(chunk.decode(errors="replace"))
                    stream.flush()
        if finished:
            return
        time.sleep(poll_s)


class LocalExecutor(_SequentialExecutor):
    name = "local"
    cluster = "local"


class DebugExecutor(_SequentialExecutor):
    name = "debug"
    cluster = "debug"


EXECUTORS: dict[str, type[Executor]] = {"slurm": SlurmExecutor, "local": LocalExecutor, "debug": DebugExecutor}


def default_executor_name() -> str:
    return "slurm" if shutil.which("sbatch") else "local"
