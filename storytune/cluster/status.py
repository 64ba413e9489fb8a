"""Where each job of a grid stands, from the run directories and (on Slurm) sacct."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from storytune.cluster.executors import ACTIVE_STATES, read_submissions, slurm_states
from storytune.paths import GridDir, read_json, stopped_file


@dataclass(frozen=True)
class JobStatus:
    name: str
    state: str
    """done / queued / running / failed / stopped / not submitted."""
    job_id: str | None
    log_tail: list[str]
    reason: str | None = None
    """The failure record's one-line reason (`failure.json`), or a stopped job's rerun note (`stopped.json`)."""
    detail: str | None = None
    """What the job's output is keyed by (the base evaluation: `key 1a2b3c4d`), or how many of its
    cells are evaluated (an evaluation job covering several cells under replay)."""


def grid_status(root: Path, state_of: Callable[[list[str]], dict[str, str]] = slurm_states,
                tail_lines: int = 5) -> list[JobStatus]:
    grid = GridDir(root)
    manifest = read_json(grid.plan)
    record = read_submissions(grid.submissions)
    states = state_of([e["job_id"] for e in record.values()]) if record else {}
    statuses = []
    for job in manifest["jobs"]:
        entry = record.get(job["name"])
        job_id = entry["job_id"] if entry else None
        failure, stop = _failure(job), _stop(job)
        # Done when every output exists (an evaluation job writes one eval.json per cell it covers);
        # plans written before `outputs`: the one `output`.
        outputs = [Path(path) for path in job.get("outputs") or [job["output"]]]
        state = _state(outputs, job_id, states, failure is not None, stop)
        reason = (failure.get("reason") if failure and state.startswith("failed")
                  else stop.get("rerun") if stop and state.startswith("stopped") else None)
        statuses.append(JobStatus(job["name"], state, job_id, _tail(root, job_id, tail_lines), reason,
                                  _detail(grid, job, outputs)))
    return statuses


def _detail(grid: GridDir, job: dict, outputs: list[Path]) -> str | None:
    if job.get("key"):  # the base evaluation: say which settings' result counts, and which do not
        others = [key for key in grid.base_eval_keys_done() if key != job["key"]]
        return f"key {job['key']}" + (f"; done under other settings: {', '.join(others)}" if others else "")
    if len(outputs) > 1:
        return f"{sum(path.exists() for path in outputs)} of {len(outputs)} cells"
    return None


def _failure(job: dict) -> dict | None:
    """The job's failure.json, if it left one (plans written before the `failure` key: none)."""
    path = Path(job["failure"]) if job.get("failure") else None
    if path is None or not path.exists():
        return None
    try:
        record = read_json(path)
    except (OSError, ValueError):
        return {"reason": f"unreadable {path}"}
    return record if isinstance(record, dict) else None


def _stop(job: dict) -> dict | None:
    """This job's stopped.json (Ctrl-C or SIGTERM ended it cleanly), if it left one."""
    if not job.get("failure"):
        return None
    try:
        record = read_json(stopped_file(Path(job["failure"])))
    except (OSError, ValueError):  # none: the usual case
        return None
    return record if isinstance(record, dict) and record.get("job") == job["name"] else None


def _state(outputs: list[Path], job_id: str | None, states: dict[str, str], has_failure: bool,
           stop: dict | None = None) -> str:
    if all(path.exists() for path in outputs):
        return "done"
    slurm = states.get(job_id, "") if job_id else ""
    if slurm == "PENDING":
        return "queued"
    if slurm in ACTIVE_STATES:
        return "running"
    if has_failure:  # local and debug executors leave no Slurm state: the record says it failed
        return f"failed ({slurm.lower()})" if slurm else "failed"
    if stop is not None:  # ended cleanly on request: its checkpoints are kept, a rerun goes on
        return f"stopped ({stop.get('signal', 'on request')})"
    if job_id is None:
        return "not submitted"
    if slurm == "COMPLETED":
        return "failed (completed without output)"
    return f"failed ({slurm.lower()})" if slurm else "unknown"


def _tail(root: Path, job_id: str | None, lines: int) -> list[str]:
    if not job_id:
        return []
    folder = GridDir(root).job_logs(job_id)
    logs = sorted(folder.glob("*_log.err")) + sorted(folder.glob("*_log.out"))
    text: list[str] = []
    for path in logs[:1]:
        text = path.read_text(errors="replace").replace("\r", "\n").splitlines()
    return [line for line in text if line.strip()][-lines:]


def format_status(statuses: list[JobStatus], show_logs: bool = True) -> str:
    width = max(len(s.name) for s in statuses)
    out = []
    for s in statuses:
        detail = f"  ({s.detail})" if s.detail else ""
        out.append(f"{s.name.ljust(width)}  {s.state:<28} {s.job_id or ''}{detail}".rstrip())
        if s.reason:
            out.append(f"    {'rerun' if s.state.startswith('stopped') else 'reason'}: {s.reason}")
        if show_logs and s.state.startswith("failed"):
            out.extend(f"    | {line}" for line in s.log_tail)
    counts: dict[str, int] = {}
    for s in statuses:
        counts[s.state.split(" ")[0]] = counts.get(s.state.split(" ")[0], 0) + 1
    out.append(", ".join(f"{n} {state}" for state, n in sorted(counts.items())))
    return "\n".join(out)
