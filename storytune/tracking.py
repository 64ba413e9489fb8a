"""Weights & Biases for storytune jobs: the ONLY module that imports `wandb` (lazily).

Tracking never fails a job. Without wandb installed, without credentials, or when `wandb.init`
raises, a job still runs and writes its run directory (the source of truth); W&B only mirrors it.

- `resolve_mode(cfg.wandb)`: `auto` -> online when wandb finds credentials, else offline.
- `run_id_for(name, job_type, group)`: a deterministic W&B id, so a requeued or resubmitted grid
  cell continues the same W&B run (`resume="allow"`). The id, project, mode and the last logged
  step of each job type are kept in `<job dir>/wandb.json`, one record per job type.
- `Tracker.start(...)`: one W&B run per job (finetune / evaluate / aggregate), main process only;
  every other rank, `mode: disabled` and every failure give a no-op tracker.
- `trainer_callback(tracker)`: a `TrainerCallback` logging train/eval curves against
  `train/global_step` (and `train/tokens`) with explicit steps, never re-logging a step that a
  previous attempt of the same run already logged.
- `finetune_summary(result)`: result.json's early-stopping fields, under the same names, for
  `tracker.summary(...)`.
- `wandb.sync: osh`: an offline run asks a wandb-osh watcher on the login node to `wandb sync` it
  (`Tracker.request_sync`) after each evaluation of a fine-tune and when any job finishes.

Credentials are looked up and used by wandb itself; this module never stores, logs or records
one (the API key and env values whose names contain KEY, TOKEN, SECRET or PASSWORD are redacted
from everything it records).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import socket
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from storytune.errors import first_line
from storytune.paths import config_hash, read_json, write_json_atomic
from storytune.process import git_commit, is_main_process

if TYPE_CHECKING:
    from transformers import TrainerCallback

    from storytune.config import RunConfig, WandbConfig

log = logging.getLogger(__name__)

JobType = Literal["finetune", "evaluate", "aggregate"]

WANDB_JSON = "wandb.json"
"""Per-folder record of the W&B run of each job type, next to the job's outputs."""
INSTALL_HINT = "pip install wandb"
OSH_INSTALL_HINT = "pip install 'storytune[osh]'"
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

    `auto`: WANDB_MODE / WANDB_DISABLED from the environment when set, else online when wandb finds
    credentials, else offline. `online` without credentials falls back to offline with one warning.
    """
    mode = cfg.mode or "auto"
    if mode in ("disabled", "offline"):
        return mode
    if mode == "auto":
        env_mode = os.environ.get("WANDB_MODE", "").strip().lower()
        if os.environ.get("WANDB_DISABLED", "").strip().lower() in ("1", "true", "yes") or env_mode == "disabled":
            return "disabled"
        if env_mode in ("offline", "dryrun"):
            return "offline"
        return "online" if _credentials() is not None else "offline"
    if mode == "online":
        if _credentials() is not None:
            return "online"
        log.warning("wandb.mode=online but wandb found no credentials (WANDB_API_KEY, netrc or `wandb login`); "
                    "logging offline instead (sync later with `wandb sync`)")
        return "offline"
    log.warning("unknown wandb.mode %r; logging offline", mode)
    return "offline"


def _credentials() -> Any:
    """The credentials wandb itself would use, or None: WANDB_API_KEY or WANDB_IDENTITY_TOKEN_FILE,
    a netrc entry for the W&B host, or the `api_key` setting, looked up by wandb without prompting.

    Not `wandb.login(prompt=False)`: it also saves wandb's settings file and caches the key for the
    rest of the process. Never raises: a malformed key counts as none (wandb.init refuses it too).
    """
    try:
        from wandb.sdk import wandb_setup
        from wandb.sdk.lib import wbauth

        host = wandb_setup.singleton().settings.base_url  # WANDB_BASE_URL or the settings file
        return wbauth.authenticate_session(host=host, source="storytune", prompt=False, update_session=False)
    except Exception as err:  # noqa: BLE001 -- a credentials probe must never fail a job
        log.warning("cannot look up W&B credentials (%s: %s); treating them as absent",
                    type(err).__name__, first_line(err))
        return None


def _secret_values() -> list[str]:
    """Values that must never be recorded: env vars named like secrets, and wandb's API key."""
    values = {v for k, v in os.environ.items() if SECRET_NAME.search(k) and len(v) >= 8}
    api_key = getattr(_credentials(), "api_key", None)  # None for an identity-token file
    if api_key:
        values.add(api_key)
    return sorted(values, key=len, reverse=True)


def scrub(obj: Any, secrets: Sequence[str] | None = None) -> Any:
    """A copy of `obj` with every secret value (see `_secret_values`) replaced by <redacted>."""
    secrets = _secret_values() if secrets is None else secrets
    if isinstance(obj, str):
        for secret in secrets:
            obj = obj.replace(secret, REDACTED)
        return obj
    if isinstance(obj, dict):
        return {scrub(k, secrets) if isinstance(k, str) else k: scrub(v, secrets) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(scrub(v, secrets) for v in obj)
    return obj


# --------------------------------------------------------------------------------------------------
# Ids, the wandb.json record, and where the job ran


def run_id_for(run_name: str, job_type: str, group: str | None, attempt: int = 0) -> str:
    """Deterministic W&B run id (32 chars of [0-9a-f]) for one job of one grid cell.

    The same (group, run name, job type) always gives the same id, so a requeued or resubmitted job
    continues its W&B run. `attempt > 0` (a forced rerun from scratch) gives a new id.
    """
    key = f"storytune\x1f{group or ''}\x1f{run_name}\x1f{job_type}"
    if attempt:
        key += f"\x1fattempt{attempt}"
    return hashlib.sha256(key.encode()).hexdigest()[:32]


def _read_records(folder: Path) -> dict[str, Any]:
    """`<folder>/wandb.json`: job type -> that job's record ({} when absent or unreadable)."""
    try:
        data = read_json(folder / WANDB_JSON)
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def runtime_facts() -> dict[str, Any]:
    """Where and what ran: git commit, hostname, and the Slurm ids (a fixed list: no secrets)."""
    facts: dict[str, Any] = {"git_commit": git_commit(), "hostname": socket.gethostname()}
    facts.update({name.lower(): os.environ.get(name) for name in SLURM_VARS})
    return facts


# --------------------------------------------------------------------------------------------------
# The tracker


class Tracker:
    """One W&B run of one job, or a no-op (`Tracker()`). Every method swallows (and warns once
    about) errors."""

    def __init__(self, run: Any = None, *, config: RunConfig | None = None, run_dir: Path | None = None,
                 job_type: str | None = None, record: dict[str, Any] | None = None,
                 resume_floor: int | None = None, secrets: Sequence[str] = (),
                 sync_hook: Callable[[Path], None] | None = None, sync_dir: Path | None = None) -> None:
        self.run = run
        self.config = config
        self.run_dir = run_dir
        self.job_type = job_type
        self.record = dict(record or {})
        self.resume_floor = -1 if resume_floor is None else int(resume_floor)
        """Steps <= this were logged by an earlier attempt of this run: never logged again
        (-1: none were)."""
        self.last_step = self.resume_floor
        self.global_step = int(self.record.get("global_step") or 0)
        """Last train/global_step logged (for rows that do not carry one)."""
        self._secrets = list(secrets)
        self.sync_hook = sync_hook
        """wandb-osh's trigger (`wandb.sync: osh`, offline runs only); None: no live sync."""
        self.sync_dir = sync_dir
        """This run's offline folder (`.../wandb/offline-run-*`): what the watcher syncs."""
        self._warned: set[str] = set()
        self._axes_defined = False
        self._finished = False

    @classmethod
    def start(cls, cfg: RunConfig, run_dir: Path, job_type: JobType, name: str, tags: Iterable[str] = (), *,
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
            return cls._start(cfg, Path(run_dir), job_type, name, list(tags), restart)
        except Exception as err:  # noqa: BLE001 -- tracking never fails a job
            log.warning("W&B tracking disabled for this job: %s: %s", type(err).__name__, err)
            return cls()

    @classmethod
    def _start(cls, cfg: RunConfig, run_dir: Path, job_type: str, name: str, tags: list[str],
               restart: bool) -> Tracker:
        if not is_main_process() or cfg.wandb.mode == "disabled":
            return cls()
        try:
            import wandb
        except ImportError:
            log.warning("wandb is not installed; W&B tracking is off (%s)", INSTALL_HINT)
            return cls()
        mode = resolve_mode(cfg.wandb)
        if mode == "disabled":
            return cls()

        group = cfg.wandb.group
        previous = _read_records(run_dir).get(job_type) or {}
        same_run = (previous.get("name"), previous.get("group"), previous.get("project")) == (
            name, group, cfg.wandb.project)
        attempt = int(previous.get("attempt", 0) or 0) if same_run else 0
        if restart and same_run and previous.get("last_step") is not None:
            attempt += 1  # training restarts from step 0 in a run that already has steps
        run_id = run_id_for(name, job_type, group, attempt)
        recorded = previous.get("last_step") if same_run and previous.get("id") == run_id else None
        floor = -1 if recorded is None else int(recorded)

        secrets = _secret_values()
        config = scrub({**cfg.to_dict(), "run_id": name, "wandb_id": run_id, "job_type": job_type,
                        "config_hash": config_hash(cfg), "variant": cfg.early_stopping.variant,
                        "seed": cfg.train.seed, "run_dir": str(run_dir), **runtime_facts()}, secrets)
        run_dir.mkdir(parents=True, exist_ok=True)
        init_kwargs = {"project": cfg.wandb.project, "entity": cfg.wandb.entity, "group": group,
                       "job_type": job_type, "name": scrub(name, secrets),
                       "tags": _clean_tags([*cfg.wandb.tags, *tags], secrets), "id": run_id,
                       "resume": "allow", "dir": str(run_dir), "config": config}
        run, mode = _init_with_fallback(wandb, init_kwargs, mode)
        if run is None:
            return cls()

        floor = max(floor, _server_last_step(run))
        global_step = int(previous.get("global_step") or 0) if floor >= 0 else 0
        record = {"id": run_id, "project": cfg.wandb.project, "entity": cfg.wandb.entity, "group": group,
                  "mode": mode, "name": name, "attempt": attempt, "last_step": floor if floor >= 0 else None,
                  "global_step": global_step}
        sync_hook = _osh_hook(cfg.wandb, mode)
        sync_dir = _offline_run_dir(run) if sync_hook is not None else None
        tracker = cls(run, config=cfg, run_dir=run_dir, job_type=job_type, record=record, resume_floor=floor,
                      secrets=secrets, sync_hook=sync_hook, sync_dir=sync_dir)
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
            step = self.last_step + 1
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
            new_step, self.last_step = step > self.last_step, step
            if new_step:
                self.record.update(last_step=step, global_step=self.global_step)
                self._write_record()
            return True
        return False

    def summary(self, data: dict[str, Any]) -> None:
        """Set run summary values (None values are left out)."""
        values = {k: v for k, v in data.items() if v is not None}
        if self.active and values:
            with self._guard("summary"):
                self.run.summary.update(values)

    def table(self, key: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        """Log a wandb.Table under `key`."""
        if not self.active:
            return
        with self._guard("table"):
            import wandb

            self.log({key: wandb.Table(columns=list(columns), data=[list(r) for r in rows])})

    def images(self, images: dict[str, Path]) -> None:
        """Log image files (the report's plots) as one row, each under its key."""
        if not self.active or not images:
            return
        with self._guard("images"):
            import wandb

            self.log({key: wandb.Image(str(path)) for key, path in images.items()})

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
        self.request_sync()  # after the flush: the watcher then syncs the complete run

    def request_sync(self) -> None:
        """Ask the wandb-osh watcher to `wandb sync` this run's offline folder now (`wandb.sync: osh`):
        one trigger file per run folder in the command dir, which the watcher reads and removes.
        No-op without the switch, for online runs, and for no-op trackers."""
        if self.sync_hook is None or self.sync_dir is None:
            return
        with self._guard("sync trigger"):
            self.sync_hook(self.sync_dir)

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
        """Replace this job type's record in wandb.json (other job types' records are kept)."""
        if self.run_dir is None:
            return
        records = {**_read_records(self.run_dir), str(self.job_type): self.record}
        try:
            write_json_atomic(self.run_dir / WANDB_JSON, scrub(records, self._secrets))
        except OSError as err:
            self._warn_once(WANDB_JSON, f"cannot write {WANDB_JSON}: {err}")

    @contextmanager
    def _guard(self, what: str) -> Iterator[None]:
        """Swallow an exception from a wandb call, warning once per kind of call."""
        try:
            yield
        except Exception as err:  # noqa: BLE001 -- tracking never fails a job
            self._warn_once(what, f"{what} failed (ignored): {type(err).__name__}: {err}")

    def _warn_once(self, what: str, message: str) -> None:
        if what not in self._warned:
            self._warned.add(what)
            log.warning("W&B %s", message)


def _init_with_fallback(wandb: Any, kwargs: dict[str, Any], mode: str) -> tuple[Any, str]:
    """wandb.init; an online failure (no network on a compute node) retries offline."""
    try:
        return wandb.init(mode=mode, **kwargs), mode
    except Exception as err:  # noqa: BLE001
        if mode != "online":
            log.warning("wandb.init failed; W&B tracking is off for this job: %s: %s",
                        type(err).__name__, first_line(err))
            return None, mode
        log.warning("wandb.init online failed (%s: %s); retrying offline", type(err).__name__, first_line(err))
    try:  # the failed online run still holds its id in the wandb-core service: restart the service
        wandb.teardown()
    except (Exception, SystemExit) as err:  # noqa: BLE001
        log.debug("wandb.teardown after a failed init: %s", err)
    try:
        return wandb.init(mode="offline", **kwargs), "offline"
    except Exception as err:  # noqa: BLE001
        log.warning("wandb.init failed; W&B tracking is off for this job: %s: %s",
                    type(err).__name__, first_line(err))
        return None, mode


def _osh_hook(cfg: WandbConfig, mode: str) -> Callable[[Path], None] | None:
    """wandb-osh's `TriggerWandbSyncHook` for an offline run with `wandb.sync: osh`, else None."""
    if cfg.sync != "osh":
        return None
    if mode != "offline":
        log.info("wandb.sync=osh: this run is %s, so there is nothing for wandb-osh to sync", mode)
        return None
    try:
        from wandb_osh.hooks import TriggerWandbSyncHook
    except ImportError:
        log.warning("wandb.sync=osh but wandb-osh is not installed: no live sync for this job, the run stays "
                    "offline until `wandb sync` (%s)", OSH_INSTALL_HINT)
        return None
    if cfg.osh_command_dir:
        return TriggerWandbSyncHook(Path(cfg.osh_command_dir).expanduser())
    return TriggerWandbSyncHook()  # wandb-osh's default command dir, the watcher's default too


def _offline_run_dir(run: Any) -> Path | None:
    """`<dir>/wandb/offline-run-<time>-<id>`: the folder `wandb sync` takes (`run.dir` is its `files/`)."""
    try:
        return Path(run.dir).parent.resolve()
    except Exception:  # noqa: BLE001 -- tracking never fails a job
        return None


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
    cleaned = (scrub(str(tag), secrets).strip()[:64] for tag in tags)
    return list(dict.fromkeys(tag for tag in cleaned if tag))


def _artifact_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-")[:128] or "artifact"


# --------------------------------------------------------------------------------------------------
# Summaries


FINETUNE_SUMMARY_KEYS = ("stop_step", "stopped_early", "best_step", "best_eval_loss", "kept_step",
                         "kept_eval_loss", "test_loss", "base_eval_loss", "patience_counter_at_stop",
                         "train_tokens", "tokens_per_step", "total_flos", "wall_time_s", "tokens_per_s")
"""The result.json fields that become W&B summary values, under the same names."""


def finetune_summary(result: dict[str, Any]) -> dict[str, Any]:
    """W&B summary values from a finetune result (result.json); missing and None values are left out."""
    return {key: result[key] for key in FINETUNE_SUMMARY_KEYS if result.get(key) is not None}


# --------------------------------------------------------------------------------------------------
# Trainer callback

TRAIN_KEYS = {"loss": "train/loss", "learning_rate": "train/learning_rate",
              "grad_norm": "train/grad_norm", "epoch": "train/epoch"}
TRAIN_END_KEYS = {"train_runtime": "train/runtime_s", "train_samples_per_second": "train/samples_per_second",
                  "train_steps_per_second": "train/steps_per_second", "train_loss": "train/mean_loss",
                  "total_flos": "total_flos"}
"""The Trainer's end-of-training metrics -> summary keys (train/loss stays the last logged loss)."""


def trainer_callback(tracker: Tracker) -> TrainerCallback:
    """A TrainerCallback mirroring training into `tracker`.

    History (step = global step, rows of one step merged): train/loss, train/learning_rate,
    train/grad_norm, train/epoch and every eval/* metric, each row with train/global_step and
    train/tokens (global_step x tokens per step, from the Trainer's arguments and the run's
    `data.block_size`). Each evaluation during training is logged once. The evaluation before
    training goes to the summary as base_eval_loss at once, so it survives a crash; the rest of the
    early-stopping summary is set by the job from result.json (`finetune_summary`), so W&B and the
    run directory cannot disagree.
    """
    from transformers import TrainerCallback

    class WandbTrackingCallback(TrainerCallback):
        def __init__(self) -> None:
            self.tracker = tracker
            self.tokens_per_step: int | None = None
            self.training = False
            self.sync_due = False
            """An evaluation was logged since the last sync trigger (`wandb.sync: osh`)."""
            self.evals_logged: set[tuple[int, tuple[str, ...]]] = set()
            """(step, eval/* keys) of each evaluation logged: one per evaluation set and step."""

        def on_train_begin(self, args, state, control, **kwargs):
            from storytune.train.finetune import tokens_per_step

            self.training = True
            if self.tracker.config is not None:
                self.tokens_per_step = tokens_per_step(args, self.tracker.config)
            self.tracker.define_step_axes()
            if self.tracker.active and state.global_step == 0 and self.tracker.resume_floor > 0:
                log.warning("W&B run %s already holds steps up to %d but training starts from "
                            "step 0: those steps are not logged again (start the job with "
                            "restart=True for a new W&B run)", self.tracker.id,
                            self.tracker.resume_floor)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if not logs or not state.is_world_process_zero or not self.tracker.active:
                return
            if not self.training:  # an evaluation outside training: at step 0, the base model's
                loss = next((v for k, v in logs.items() if k.endswith("_loss") and _is_number(v)), None)
                if state.global_step == 0 and loss is not None:
                    self.tracker.summary({"base_eval_loss": float(loss)})
                return
            if "train_runtime" in logs:  # the Trainer's end-of-training metrics
                self.tracker.summary({TRAIN_END_KEYS[k]: v for k, v in logs.items()
                                      if k in TRAIN_END_KEYS and _is_number(v)})
                return
            self._log_row(int(state.global_step), logs)

        def _log_row(self, step: int, logs: dict[str, Any]) -> None:
            is_eval = any(k.startswith("eval_") for k in logs)
            row: dict[str, Any] = {}
            for key, value in logs.items():
                if not _is_number(value) or (is_eval and key == "epoch"):
                    continue
                row["eval/" + key.removeprefix("eval_") if key.startswith("eval_")
                    else TRAIN_KEYS.get(key, "train/" + key)] = value
            if not row:
                return
            if is_eval:
                logged = (step, tuple(sorted(row)))
                if logged in self.evals_logged:
                    return
                self.evals_logged.add(logged)
            row[STEP_AXIS] = step
            if self.tokens_per_step:
                row[TOKENS_AXIS] = step * self.tokens_per_step
            self.tracker.log(row, step=step)

        def on_evaluate(self, args, state, control, **kwargs):
            self.sync_due = True

        def on_step_begin(self, args, state, control, **kwargs):
            # The first moment after an evaluation at which every evaluation set of that step has
            # been logged (the Trainer evaluates each set separately): one sync trigger per evaluation.
            if self.sync_due:
                self.sync_due = False
                self.tracker.request_sync()

        def on_train_end(self, args, state, control, **kwargs):
            self.training = False
            self.sync_due = False  # the job's end (Tracker.finish) triggers the last sync

    return WandbTrackingCallback()


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
