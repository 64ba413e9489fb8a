"""The run-directory and grid-directory layout and atomic writes: the ONLY place a file or folder
name of a run or a grid is spelled.

A run directory is the source of truth for one job. A file that marks completion (`result.json`,
`eval.json`) is written last and atomically, so a crashed job never leaves something that looks
finished; everything else can be rebuilt by re-running the job, which resumes from `checkpoints/`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from storytune.config import RunConfig
from storytune.yaml_loader import dump_yaml

WEIGHTS_ONLY_MARKER = "weights_only.json"
"""In a `checkpoints/checkpoint-<step>` folder that holds weights (and trainer_state.json) but no
optimizer, scheduler or RNG state (`train.resume_every` > 1): usable by replay and `keep: best`,
never resumed from."""


def compile_cache_dir(output_dir: str | Path) -> Path:
    """torch.compile's persistent cache (TORCHINDUCTOR_CACHE_DIR), shared by every run under
    `output.dir` so that a later run of the same shapes skips most of the compile time."""
    return Path(output_dir) / ".compile_cache"


@dataclass(frozen=True)
class RunDir:
    path: Path

    @property
    def config(self) -> Path:
        return self.path / "config.yaml"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def model(self) -> Path:
        """The weights this run keeps (last or best, by variant)."""
        return self.path / "model"

    @property
    def result(self) -> Path:
        return self.path / "result.json"

    @property
    def eval_dir(self) -> Path:
        return self.path / "eval"

    @property
    def eval_result(self) -> Path:
        """`eval.json`: written last by the evaluation job."""
        return eval_file(self.eval_dir)

    @property
    def base_scores(self) -> Path:
        """`base_scores.json`: the base model's losses, measured by a run's first attempt and read
        back when it resumes (so a resumed run's result.json still has them)."""
        return self.path / "base_scores.json"

    @property
    def failure(self) -> Path:
        """`failure.json`: why the last attempt of this run failed (removed when it succeeds)."""
        return failure_file(self.path)

    def is_complete(self) -> bool:
        return self.result.exists()

    def create(self) -> RunDir:
        """Make the directory, failing with a clear message when it cannot be written."""
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            probe = tempfile.NamedTemporaryFile(dir=self.path, prefix=".write-test-", delete=True)
            probe.close()
        except OSError as err:
            raise OutputError(f"output directory {self.path} is not writable: {err.strerror}") from None
        return self


EVAL_FILE = "eval.json"
FAILURE_FILE = "failure.json"
"""Why a job's last attempt failed: in its run directory, `base/eval-<key>/` or `report/` (removed on success)."""
STOPPED_FILE = "stopped.json"
"""Beside failure.json: the job was stopped on request (Ctrl-C, SIGTERM) and what a rerun does (removed when
the job starts again)."""
GENERATIONS_FILE = "generations.jsonl"
# The report folder (`GridDir.report`): summary.json (its completion marker) and what renders it.
SUMMARY_FILE = "summary.json"
REPORT_HTML = "report.html"
REPORT_MARKDOWN = "report.md"
REPORT_CSV = "summary.csv"
REPORT_PLOTS = "plots"


def eval_file(eval_dir: Path) -> Path:
    return Path(eval_dir) / EVAL_FILE


def failure_file(folder: Path) -> Path:
    return Path(folder) / FAILURE_FILE


def stopped_file(failure_record: Path) -> Path:
    """The stop record of the job whose failure record is `failure_record` (the same folder)."""
    return Path(failure_record).parent / STOPPED_FILE


def generations_file(eval_dir: Path) -> Path:
    return Path(eval_dir) / GENERATIONS_FILE


@dataclass(frozen=True)
class GridDir:
    """`<output_dir>/<grid name>/`: the plan, one RunDir per cell, the base model's evaluation, the report."""

    path: Path

    @property
    def plan(self) -> Path:
        return self.path / "plan.json"

    @property
    def submissions(self) -> Path:
        """Slurm job ids of every submitted job (slurm executor)."""
        return self.path / "submissions.json"

    @property
    def lock(self) -> Path:
        return self.path / ".submit.lock"

    @property
    def logs(self) -> Path:
        """submitit's folder: `logs/<job id>/` per job."""
        return self.path / "logs"

    def job_logs(self, job_id: str) -> Path:
        return self.logs / job_id

    def run(self, run_id: str) -> RunDir:
        return RunDir(self.path / run_id)

    @property
    def base(self) -> Path:
        """`base/`: the base model's evaluations, one folder per evaluation key."""
        return self.path / "base"

    def base_eval(self, key: str) -> Path:
        """`base/eval-<key>/`: the base model's evaluation under the settings hashed into `key`
        (`evaluation_key`), so an evaluation made under other settings never counts as done."""
        return self.base / f"eval-{key}"

    def base_eval_keys_done(self) -> list[str]:
        """Keys of every base-model evaluation on disk that finished (its eval.json exists)."""
        return sorted(folder.name.removeprefix("eval-") for folder in self.base.glob("eval-*")
                      if eval_file(folder).exists())

    def planned_base_eval(self) -> Path:
        """The base evaluation folder the grid's plan.json names (its key is `base_model.eval_key`)."""
        return self.base_eval(read_json(self.plan)["base_model"]["eval_key"])

    @property
    def report(self) -> Path:
        return self.path / "report"

    @property
    def report_html(self) -> Path:
        return self.report / REPORT_HTML

    @property
    def summary(self) -> Path:
        """`report/summary.json`: what the aggregation job concluded; its completion marker."""
        return self.report / SUMMARY_FILE

    def exists(self) -> bool:
        return self.plan.exists()


class OutputError(RuntimeError):
    """The output location cannot be used."""


def config_hash(config: RunConfig) -> str:
    """Stable short id of everything in a config except where its output goes."""
    data = config.to_dict()
    data.pop("output", None)
    data.pop("wandb", None)
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:8]


EVALUATION_INPUTS: dict[str, tuple[str, ...]] = {"model": (), "data": ("cache_dir", "num_proc"),
                                                 "generation": (), "eval": ("scorer_cache",)}
"""Config sections an evaluation's result depends on -> keys left out (where caches live, worker
counts: they change where or how fast, not what is computed)."""


def evaluation_key(config: RunConfig) -> str:
    """Stable short id of everything an evaluation depends on: the model, the data (which stories
    become prompts and references), generation and scoring settings. It keys the base model's
    evaluation (`GridDir.base_eval`), as `config_hash` keys a cell's run directory."""
    data = config.to_dict()
    inputs = {section: {k: v for k, v in data[section].items() if k not in skipped}
              for section, skipped in EVALUATION_INPUTS.items()}
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:8]


def default_run_name(config: RunConfig) -> str:
    """A cell's run id: `<arm>-seed<seed>-<hash of its resolved config>`, stable across submissions."""
    return f"{config.early_stopping.variant}-seed{config.train.seed}-{config_hash(config)}"


def run_dir_for(config: RunConfig) -> RunDir:
    return RunDir(Path(config.output.dir) / (config.output.name or default_run_name(config)))


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON next to `path`, fsync, rename: readers see the old file or the whole new one."""
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def write_text_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; results are meant to be shared
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())


def write_config(path: Path, config: RunConfig) -> None:
    write_text_atomic(path, dump_yaml(config.to_dict()))


def save_dir_atomically(target: Path, write: Callable[[Path], None]) -> None:
    """Fill a folder by `write(folder)` in a temporary sibling, then rename it to `target`, so a
    half-written folder (a crash, a killed job) never looks complete.

    The sibling's name carries the process id: processes saving the same folder at once (grid jobs
    sharing a data cache or the base model) never write into each other's. When another process
    renamed its copy first, ours is dropped: the same target name means the same content.
    """
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)  # left by a killed process that had our id
    try:
        write(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:
        tmp.rename(target)
    except OSError:  # target exists (another process was first): keep theirs
        shutil.rmtree(tmp, ignore_errors=True)
