"""Weights & Biases for storytune jobs: the ONLY module that imports `wandb` (lazily).

Tracking never fails a job. Without wandb installed, without an API key, or when `wandb.init`
raises, a job still runs and writes its run directory (the source of truth); W&B only mirrors it.

- `resolve_mode(cfg.wandb)`: `auto` -> online with an API key (env or netrc), else offline.
- `run_id_for(name, job_type, group)`: a deterministic W&B id, so a requeued or resubmitted grid
  cell continues the same W&B run (`resume="allow"`). The id, project, mode and the last logged
  step are kept in `<job dir>/wandb.json`.
- `Tracker.start(...)`: one W&B run per job (finetune / evaluate / aggregate), main process only;
  every other rank, `mode: disabled` and every failure give a no-op tracker.
- `trainer_callback(tracker)`: a `TrainerCallback` logging train/eval curves against
  `train/global_step` (and `train/tokens`) with explicit steps, never re-logging a step that a
  previous attempt of the same run already logged, plus the early-stopping summary at train end.
- `finetune_summary(result)`: result.json -> the same summary keys, for `tracker.summary(...)`.

API keys are read by wandb itself from the environment or netrc. This module only checks that
one exists; it never stores, logs or records one (env values whose names contain KEY, TOKEN,
SECRET or PASSWORD are redacted from everything it records).
"""

from __future__ import annotations

import hashlib
import logging
import netrc
import os
import re
import socket
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit

from storytune.paths import RunDir, config_hash, read_json, write_json_atomic
from storytune.process import git_commit, is_main_process

if TYPE_CHECKING:
    from transformers import TrainerCallback

    from storytune.config import RunConfig, WandbConfig

log = logging.getLogger(__name__)

JobType = Literal["finetune", "evaluate", "aggregate"]

WANDB_JSON = "wandb.json"
"""Per-job record of the W&B run, next to the job's outputs."""
DEFAULT_HOST = "https://api.wandb.ai"
INSTALL_HINT = "pip install wandb"
STEP_AXIS = "train/global_step"
TOKENS_AXIS = "train/tokens"
SECRET_NAME = re.compile(r"KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL", re.IGNORECASE)
REDACTED = "<redacted>"
SLURM_VARS = ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "SLURM_RESTART_COUNT",
              "SLURM_JOB_NAME", "SLURM_JOB_PARTITION", "SLURM_NNODES", "SLURM_NTASKS")

# --------------------------------------------------------------------------------------------------
# Mode and credentials


def resolve_mode(cfg: WandbConfig) -> str:
    """`disabled` | `online` | `offline` for this job. Never raises.

    `auto`: WANDB_MODE / WANDB_DISABLED from the environment when set, else online when an API key
    is available (WANDB_API_KEY, WANDB_IDENTITY_TOKEN_FILE or a netrc entry for the W&B host), else
    offline. `online` without any credential falls back to offline with one warning.
    """
    mode = getattr(cfg, "mode", "auto") or "auto"
    if mode == "disabled":
        return "disabled"
    if mode == "offline":
        return "offline"
    if mode == "auto":
        env_mode = os.environ.get("WANDB_MODE", "").strip().lower()
        if os.environ.get("WANDB_DISABLED", "").strip().lower() in ("1", "true", "yes"):
            return "disabled"
        if env_mode in ("disabled", "offline", "dryrun"):
            return "disabled" if env_mode == "disabled" else "offline"
        return "online" if has_api_key() else "offline"
    if mode == "online":
        if has_api_key():
            return "online"
        log.warning("wandb.mode=online but no W&B API key was found (WANDB_API_KEY or netrc); "
                    "logging offline instead (sync later with `wandb sync`)")
        return "offline"
    log.warning("unknown wandb.mode %r; logging offline", mode)
    return "offline"


def has_api_key() -> bool:
    """Whether wandb would find credentials: env key, identity-token file or a netrc entry."""
    try:
        if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
            return True
        return _netrc_password() is not None
    except Exception:  # noqa: BLE001 -- a credentials probe must never fail a job
        return False


def _netrc_password() -> str | None:
    """The netrc password for the W&B host, looked up the way wandb does (NETRC, ~/.netrc, ~/_netrc)."""
    path = os.environ.get("NETRC")
    candidates = [Path(path).expanduser()] if path else [Path("~/.netrc").expanduser(),
                                                        Path("~/_netrc").expanduser()]
    host = urlsplit(os.environ.get("WANDB_BASE_URL") or DEFAULT_HOST).netloc or "api.wandb.ai"
    for candidate in candidates:
        if not candidate.is_file():
            continue
        try:
            creds = netrc.netrc(str(candidate)).authenticators(host)
        except (netrc.NetrcParseError, OSError):
            return None
        return creds[2] if creds and creds[2] else None
    return None


def _secret_values() -> list[str]:
    """Values that must never be recorded: env vars named like secrets, and the netrc key."""
    values = [v for k, v in os.environ.items() if SECRET_NAME.search(k) and v and len(v) >= 8]
    try:
        password = _netrc_password()
    except Exception:  # noqa: BLE001
        password = None
    if password and len(password) >= 8:
        values.append(password)
    return sorted(set(values), key=len, reverse=True)


def scrub(obj: Any, secrets: Sequence[str] | None = None) -> Any:
    """A copy of `obj` with every secret value (see `_secret_values`) replaced by <redacted>."""
    secrets = _secret_values() if secrets is None else secrets
    if isinstance(obj, str):
        for secret in secrets:
            if secret in obj:
                obj = obj.replace(secret, REDACTED)
        return obj
    if isinstance(obj, dict):
        return {scrub(k, secrets) if isinstance(k, str) else k: scrub(v, secrets) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(scrub(v, secrets) for v in obj)
    return obj


# --------------------------------------------------------------------------------------------------
# Ids and the wandb.json record


def run_id_for(run_name: str, job_type: str, group: str | None, attempt: int = 0) -> str:
    """Deterministic W&B run id (32 chars of [0-9a-f]) for one job of one grid cell.

    The same (group, run name, job type) always gives the same id, so a requeued or resubmitted job
    continues its W&B run. `attempt > 0` (a forced rerun from scratch) gives a new id.
    """
    key = f"storytune\x1f{group or ''}\x1f{run_name}\x1f{job_type}"
    if attempt:
        key += f"\x1fattempt{attempt}"
    return hashlib.sha256(key.encode()).hexdigest()[:32]


def wandb_record_path(run_dir: Path | RunDir) -> Path:
    return _as_path(run_dir) / WANDB_JSON


def read_wandb_record(run_dir: Path | RunDir, job_type: str | None = None) -> dict[str, Any]:
    """`wandb.json` of a job folder, or {} when there is none (or it is unreadable).

    The file holds the latest job's record at top level ({id, project, entity, group, mode, ...})
    and every job type's record under "jobs", so jobs sharing a folder keep their own ids and
    steps. With `job_type`, that job's record.
    """
    try:
        data = read_json(wandb_record_path(run_dir))
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    if job_type is None:
        return data
    jobs = data.get("jobs") if isinstance(data.get("jobs"), dict) else {}
    record = jobs.get(job_type) or (data if data.get("job_type") == job_type else {})
    return {k: v for k, v in record.items() if k != "jobs"} if isinstance(record, dict) else {}


def _as_path(run_dir: Path | RunDir | str) -> Path:
    return run_dir.path if isinstance(run_dir, RunDir) else Path(run_dir)


# --------------------------------------------------------------------------------------------------
# Process and environment facts


def runtime_facts() -> dict[str, Any]:
    """Where and what ran: git commit, hostname, Slurm ids (never a secret-named variable)."""
    facts: dict[str, Any] = {"git_commit": git_commit(), "hostname": socket.gethostname()}
    for name in SLURM_VARS:
        if not SECRET_NAME.search(name):
            facts[name.lower()] = os.environ.get(name)
    return facts


# --------------------------------------------------------------------------------------------------
# The tracker


class Tracker:
    """One W&B run of one job, or a no-op. Every method swallows (and warns once about) errors."""

    def __init__(self, run: Any = None, *, config: RunConfig | None = None, run_dir: Path | None = None,
                 job_type: str | None = None, record: dict[str, Any] | None = None,
                 resume_floor: int | None = None) -> None:
        self.run = run
        self.config = config
        self.run_dir = run_dir
        self.job_type = job_type
        self.record = dict(record or {})
        self.resume_floor = -1 if resume_floor is None else int(resume_floor)
        """Steps <= this were logged by an earlier attempt of this run: never logged again
        (-1: none were)."""
        self.last_step = self.resume_floor
        self._persisted_step = self.resume_floor
        self._warned: set[str] = set()
        self._axes_defined = False
        self._finished = False
        self.global_step = int(self.record.get("global_step") or 0)
        """Last train/global_step logged (for rows that do not carry one)."""
        self._secrets = _secret_values() if run is not None else []
        self._other_jobs: dict[str, Any] | None = None

    # ---- construction ----------------------------------------------------------------------------

    @classmethod
    def noop(cls) -> Tracker:
        return cls()

    @classmethod
    def start(cls, cfg: RunConfig, run_dir: Path | RunDir, job_type: JobType, name: str,
              tags: Iterable[str] = (), extra_config: dict[str, Any] | None = None, *,
              restart: bool = False) -> Tracker:
        """Start (or resume) this job's W&B run; a no-op tracker when tracking is off or fails.

        `name` must be stable for a grid cell (use the run directory's name): with `job_type` and
        `cfg.wandb.group` it determines the W&B id. `run_dir` is the folder this job owns: W&B
        writes `<run_dir>/wandb/` and the tracker `<run_dir>/wandb.json`.

        `restart=True` says this attempt trains from step 0 (no checkpoint to resume from, e.g. a
        forced rerun after the checkpoints were removed): when the recorded W&B run already holds
        steps, a NEW W&B run (next attempt id) is started, because W&B drops steps below a run's
        last one. Without it, the recorded run is continued and steps it holds are not re-logged.
        """
        try:
            return cls._start(cfg, _as_path(run_dir), job_type, name, list(tags), extra_config, restart)
        except Exception as err:  # noqa: BLE001 -- tracking never fails a job
            log.warning("W&B tracking disabled for this job: %s: %s", type(err).__name__, err)
            return cls.noop()

    @classmethod
    def _start(cls, cfg: RunConfig, run_dir: Path, job_type: str, name: str, tags: list[str],
               extra_config: dict[str, Any] | None, restart: bool) -> Tracker:
        if not is_main_process():
            return cls.noop()
        mode = resolve_mode(cfg.wandb)
        if mode == "disabled":
            return cls.noop()
        try:
            import wandb
        except ImportError:
            log.warning("wandb is not installed; W&B tracking is off (%s)", INSTALL_HINT)
            return cls.noop()

        group = cfg.wandb.group
        previous = read_wandb_record(run_dir, job_type)
        same_run = (previous.get("job_type") == job_type and previous.get("name") == name
                    and previous.get("group") == group and previous.get("project") == cfg.wandb.project)
        attempt = int(previous.get("attempt", 0) or 0) if same_run else 0
        if restart and same_run and previous.get("last_step") is not None:
            attempt += 1  # training restarts from step 0 in a run that already has steps
        run_id = run_id_for(name, job_type, group, attempt)
        recorded = previous.get("last_step") if same_run and previous.get("id") == run_id else None
        floor = -1 if recorded is None else int(recorded)

        secrets = _secret_values()
        config = scrub({
            **cfg.to_dict(),
            "run_id": name,
            "wandb_id": run_id,
            "job_type": job_type,
            "config_hash": config_hash(cfg),
            "variant": cfg.early_stopping.variant,
            "seed": cfg.train.seed,
            "run_dir": str(run_dir),
            **runtime_facts(),
            **(extra_config or {}),
        }, secrets)
        all_tags = _clean_tags([*cfg.wandb.tags, *tags], secrets)
        run_dir.mkdir(parents=True, exist_ok=True)
        init_kwargs = {"project": cfg.wandb.project, "entity": cfg.wandb.entity, "group": group,
                       "job_type": job_type, "name": scrub(name, secrets), "tags": all_tags, "id": run_id,
                       "resume": "allow", "dir": str(run_dir), "config": config}
        run, mode = _init_with_fallback(wandb, init_kwargs, mode)
        if run is None:
            return cls.noop()

        floor = max(floor, _server_last_step(run))
        global_step = int(previous.get("global_step") or 0) if floor >= 0 else 0
        record = {"id": run_id, "project": cfg.wandb.project, "entity": cfg.wandb.entity,
                  "group": group, "mode": mode, "job_type": job_type, "name": name,
                  "attempt": attempt, "last_step": floor if floor >= 0 else None, "global_step": global_step,
                  "wandb_dir": str(run_dir / "wandb")}
        tracker = cls(run, config=cfg, run_dir=run_dir, job_type=job_type, record=record,
                      resume_floor=floor)
        tracker._write_record()
        if floor >= 0:
            log.info("W&B run %s continues after step %d", run_id, floor)
        if job_type == "finetune":
            tracker.define_step_axes()
        return tracker

    # ---- state -----------------------------------------------------------------------------------

    @property
    def active(self) -> bool:
        return self.run is not None and not self._finished

    @property
    def id(self) -> str | None:
        return self.record.get("id") if self.run is not None else None

    @property
    def mode(self) -> str:
        return self.record.get("mode", "disabled") if self.run is not None else "disabled"

    def __bool__(self) -> bool:  # `if tracker:` reads as "is it recording"
        return self.active

    def __repr__(self) -> str:
        return f"Tracker(id={self.id!r}, mode={self.mode!r}, active={self.active})"

    # ---- logging ---------------------------------------------------------------------------------

    def define_step_axes(self) -> None:
        """Every train/* and eval/* curve is plotted against train/global_step (train/tokens is
        logged in the same rows, so the x axis can be switched to tokens in the UI)."""
        if not self.active or self._axes_defined:
            return
        with self._guard("define_metric"):
            self.run.define_metric(STEP_AXIS)
            self.run.define_metric(TOKENS_AXIS, step_metric=STEP_AXIS)
            self.run.define_metric("train/*", step_metric=STEP_AXIS)
            self.run.define_metric("eval/*", step_metric=STEP_AXIS)
            self._axes_defined = True

    def log(self, data: dict[str, Any], step: int | None = None) -> bool:
        """Log a history row at `step`; a step an earlier attempt of this run already logged
        (<= `resume_floor`) or one below the last logged step is skipped.

        Rows logged at the same step merge into one. Without `step`, the row goes one step after
        everything logged so far (step 0 for a fresh run). Returns whether the row was logged.
        """
        if not self.active or not data:
            return False
        if step is None:
            # Always an explicit step: a resumed OFFLINE run restarts W&B's own counter at 0,
            # and rows below the run's last step are dropped when it is synced.
            step = max(self.last_step, self.resume_floor) + 1
        step = int(step)
        if step <= self.resume_floor or step < self.last_step:
            log.debug("W&B: step %d already logged (last %d); skipped", step, self.last_step)
            return False
        row = dict(data)
        if self._axes_defined:
            if STEP_AXIS in row:
                self.global_step = int(row[STEP_AXIS])
            elif any(k.startswith(("train/", "eval/")) for k in row):
                # What W&B's step_sync would insert, also right in a resumed offline part (where
                # W&B itself does not know the last global step and inserts 0).
                row[STEP_AXIS] = self.global_step
        with self._guard("log"):
            self.run.log(row, step=step)
            self.last_step = step
            if step > self._persisted_step:
                self._persisted_step = step
                self.record.update(last_step=step, global_step=self.global_step)
                self._write_record()
            return True
        return False

    def summary(self, data: dict[str, Any]) -> None:
        """Set run summary values (None values are left out)."""
        if not self.active:
            return
        values = {k: v for k, v in data.items() if v is not None}
        if values:
            with self._guard("summary"):
                self.run.summary.update(values)

    def table(self, key: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        """Log a wandb.Table under `key`."""
        if not self.active:
            return
        with self._guard("table"):
            import wandb

            self.log({key: wandb.Table(columns=list(columns), data=[list(r) for r in rows])})

    def bar_chart(self, key: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], x: str, y: str,
                  title: str = "") -> None:
        """Log a bar chart (wandb.plot.bar) of column `y` by label column `x`."""
        if not self.active:
            return
        with self._guard("bar_chart"):
            import wandb

            table = wandb.Table(columns=list(columns), data=[list(r) for r in rows])
            self.log({key: wandb.plot.bar(table, x, y, title=title)})

    def log_artifact_dir(self, path: Path | str, name: str, type: str = "model") -> None:
        """Upload a directory as an artifact; only when `wandb.log_model` is set in the config."""
        if not self.active or self.config is None or not self.config.wandb.log_model:
            return
        with self._guard("log_artifact"):
            import wandb

            artifact = wandb.Artifact(_artifact_name(name), type=type)
            artifact.add_dir(str(path))
            self.run.log_artifact(artifact)

    def finish(self, exit_code: int = 0) -> None:
        """Finish the run (idempotent); a non-zero exit code marks it failed.

        `run.finish()` returns before wandb-core has flushed the run's `.wandb` file (it only
        informs the service); when no other W&B run is open in this process, the service is shut
        down too (`wandb.teardown()`), which waits for the files to be complete.
        """
        if not self.active:
            return
        self._finished = True
        with self._guard("finish"):
            self.run.finish(exit_code=exit_code)
        self._flush()

    def _flush(self) -> None:
        try:
            import wandb
            from wandb.sdk import wandb_setup

            singleton = getattr(wandb_setup, "_singleton", None)
            if singleton is None or singleton.most_recent_active_run is not None:
                return  # no service, or another run still open: leave it running
            wandb.teardown()
        except (Exception, SystemExit) as err:  # noqa: BLE001 -- teardown may sys.exit on an internal error
            self._warn_once("teardown", f"teardown failed (ignored): {type(err).__name__}: {err}")

    def __enter__(self) -> Tracker:  # noqa: PYI034 -- subclasses are not expected
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.finish(0 if exc_type is None else 1)

    # ---- internals -------------------------------------------------------------------------------

    def _write_record(self) -> None:
        if self.run_dir is None:
            return
        if self._other_jobs is None:
            existing = read_wandb_record(self.run_dir)
            jobs = existing.get("jobs") if isinstance(existing.get("jobs"), dict) else {}
            if existing.get("job_type") and existing["job_type"] not in jobs:
                jobs[existing["job_type"]] = {k: v for k, v in existing.items() if k != "jobs"}
            self._other_jobs = {k: v for k, v in jobs.items() if k != self.job_type}
        data = {**self.record, "jobs": {**self._other_jobs, str(self.job_type): self.record}}
        try:
            write_json_atomic(wandb_record_path(self.run_dir), scrub(data, self._secrets))
        except OSError as err:
            self._warn_once("wandb.json", f"cannot write {WANDB_JSON}: {err}")

    def _guard(self, what: str) -> _Guard:
        return _Guard(self, what)

    def _warn_once(self, what: str, message: str) -> None:
        if what not in self._warned:
            self._warned.add(what)
            log.warning("W&B %s", message)


class _Guard:
    """Swallow an exception from a wandb call, warning once per kind of call."""

    def __init__(self, tracker: Tracker, what: str) -> None:
        self.tracker, self.what = tracker, what

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None or not issubclass(exc_type, Exception):
            return False
        self.tracker._warn_once(self.what, f"{self.what} failed (ignored): {type(exc).__name__}: {exc}")
        return True


def _init_with_fallback(wandb: Any, kwargs: dict[str, Any], mode: str) -> tuple[Any, str]:
    """wandb.init; an online failure (no network on a compute node) retries offline."""
    try:
        return wandb.init(mode=mode, **kwargs), mode
    except Exception as err:  # noqa: BLE001
        if mode != "online":
            log.warning("wandb.init failed; W&B tracking is off for this job: %s: %s",
                        type(err).__name__, _first_line(err))
            return None, mode
        log.warning("wandb.init online failed (%s: %s); retrying offline",
                    type(err).__name__, _first_line(err))
    try:  # the failed online run still holds its id in the wandb-core service: restart the service
        wandb.teardown()
    except (Exception, SystemExit) as err:  # noqa: BLE001
        log.debug("wandb.teardown after a failed init: %s", err)
    try:
        return wandb.init(mode="offline", **kwargs), "offline"
    except Exception as err:  # noqa: BLE001
        log.warning("wandb.init failed; W&B tracking is off for this job: %s: %s",
                    type(err).__name__, _first_line(err))
        return None, mode


def _server_last_step(run: Any) -> int:
    """For an online run resumed from the server: the last step it already holds (-1: none)."""
    try:
        if not getattr(run, "resumed", False):
            return -1
        starting = int(getattr(run, "starting_step", 0) or 0)  # the next step W&B accepts
        if starting > 0:
            return starting - 1
        value = run.summary.get("_step")
        return int(value) if value is not None else -1
    except Exception:  # noqa: BLE001
        return -1


def _clean_tags(tags: Iterable[str], secrets: Sequence[str]) -> list[str]:
    """Unique, non-empty tags of at most 64 characters (W&B's limit), order kept."""
    out: list[str] = []
    for tag in tags:
        tag = scrub(str(tag), secrets).strip()[:64]
        if tag and tag not in out:
            out.append(tag)
    return out


def _artifact_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-")[:128] or "artifact"


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else ""


# --------------------------------------------------------------------------------------------------
# Summaries


FINETUNE_SUMMARY_KEYS = {
    "stop_step": "stopped_at_step",
    "best_step": "best_step",
    "best_eval_loss": "best_eval_loss",
    "final_eval_loss": "final_eval_loss",
    "patience_counter_at_stop": "patience_counter_at_stop",
    "train_tokens_seen": "train_tokens_seen",
    "tokens_per_s": "tokens_per_s",
    "wall_time_s": "wall_time_s",
    "total_flos": "total_flos",
    "stopped_early": "stopped_early",
    "kept_step": "kept_step",
    "base_eval_loss": "base_eval_loss",
    "best_perplexity": "best_perplexity",
    "final_perplexity": "final_perplexity",
}
"""result.json key -> W&B summary key."""


def finetune_summary(result: dict[str, Any]) -> dict[str, Any]:
    """W&B summary values from a finetune result (result.json); None values are left out."""
    return {dst: result[src] for src, dst in FINETUNE_SUMMARY_KEYS.items() if result.get(src) is not None}


# --------------------------------------------------------------------------------------------------
# Trainer callback

TRAIN_KEYS = {"loss": "train/loss", "learning_rate": "train/learning_rate",
              "grad_norm": "train/grad_norm", "epoch": "train/epoch"}
TRAIN_END_KEYS = {"train_runtime": "train/runtime_s", "train_samples_per_second": "train/samples_per_second",
                  "train_steps_per_second": "train/steps_per_second", "train_loss": "train/mean_loss",
                  "total_flos": "total_flos"}
"""The Trainer's end-of-training metrics -> summary keys (train/loss stays the last logged loss)."""


def trainer_callback(tracker: Tracker, tokens_per_step: int | None = None) -> TrainerCallback:
    """A TrainerCallback mirroring training into `tracker`.

    History (step = global step, rows of one step merged): train/loss, train/learning_rate,
    train/grad_norm, train/epoch and every eval/* metric, each row with train/global_step and
    train/tokens (= global_step * tokens_per_step; computed from the Trainer's arguments and
    `data.block_size` when not given). Each evaluation during training is logged once; the
    evaluations before training and after it go to the summary as base_eval_loss and
    final_eval_loss. The early-stopping summary (stopped_at_step, best_step, ...) is set by the
    job from result.json with `finetune_summary`, so W&B and the run directory cannot disagree.
    """
    from transformers import TrainerCallback

    class WandbTrackingCallback(TrainerCallback):
        def __init__(self) -> None:
            self.tracker = tracker
            self.tokens_per_step = tokens_per_step
            self.training = False
            self.trained = False
            self.eval_steps_logged: set[int] = set()

        def on_train_begin(self, args, state, control, **kwargs):
            self.training = True
            if self.tokens_per_step is None:
                self.tokens_per_step = _tokens_per_step(args, self.tracker)
            self.tracker.define_step_axes()
            if self.tracker.active and state.global_step == 0 and self.tracker.resume_floor > 0:
                log.warning("W&B run %s already holds steps up to %d but training starts from "
                            "step 0: those steps are not logged again (start the job with "
                            "restart=True for a new W&B run)", self.tracker.id,
                            self.tracker.resume_floor)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if not logs or not state.is_world_process_zero or not self.tracker.active:
                return
            step = int(state.global_step)
            if not self.training:
                if "eval_loss" in logs:
                    key = "final_eval_loss" if self.trained else "base_eval_loss"
                    self.tracker.summary({key: float(logs["eval_loss"])})
                return
            row: dict[str, Any] = {}
            end: dict[str, Any] = {}
            is_eval = any(k.startswith("eval_") for k in logs)
            for key, value in logs.items():
                if not _is_number(value):
                    continue
                if "train_runtime" in logs:  # the Trainer's end-of-training metrics
                    if key in TRAIN_END_KEYS:
                        end[TRAIN_END_KEYS[key]] = value
                elif key.startswith("eval_"):
                    row["eval/" + key.removeprefix("eval_")] = value
                elif key == "epoch":
                    if not is_eval:
                        row["train/epoch"] = value
                else:
                    row[TRAIN_KEYS.get(key, "train/" + key)] = value
            if end:
                self.tracker.summary(end)
            if not row:
                return
            if is_eval:
                if step in self.eval_steps_logged:
                    return
                self.eval_steps_logged.add(step)
            row[STEP_AXIS] = step
            if self.tokens_per_step:
                row[TOKENS_AXIS] = step * self.tokens_per_step
            self.tracker.log(row, step=step)

        def on_train_end(self, args, state, control, **kwargs):
            # The early-stopping summary comes from result.json (`finetune_summary`), one source.
            self.training = False
            self.trained = True

    return WandbTrackingCallback()


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _tokens_per_step(args: Any, tracker: Tracker) -> int | None:
    """Same formula as train.collect_result: batch x accumulation x world size x block size."""
    if tracker.config is None:
        return None
    return (args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size
            * tracker.config.data.block_size)
