"""Where each job of a grid stands, from the run directories and (on Slurm) sacct."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from storytune.cluster.executors import ACTIVE_STATES, read_submissions, slurm_states
from storytune.paths import GridDir, read_json


@dataclass(frozen=True)
class JobStatus:
    name: str
    state: str
    """done / queued / running / failed / not submitted."""
    job_id: str | None
    log_tail: list[str]
    reason: str | None = None
    """The failure record's one-line reason (`failure.json`), when the job left one."""


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
        failure = _failure(job)
        state = _state(Path(job["output"]), job_id, states, failure is not None)
        statuses.append(JobStatus(job["name"], state, job_id, _tail(root, job_id, tail_lines),
                                  failure.get("reason") if failure and state.startswith("failed") else None))
    return statuses


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


def _state(output: Path, job_id: str | None, states: dict[str, str], has_failure: bool) -> str:
    if output.exists():
        return "done"
    slurm = states.get(job_id, "") if job_id else ""
    if slurm == "PENDING":
        return "queued"
    if slurm in ACTIVE_STATES:
        return "running"
    if has_failure:  # local and debug executors leave no Slurm state: the record says it failed
        return f"failed ({slurm.lower()})" if slurm else "failed"
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
        out.append(f"{s.name.ljust(width)}  {s.state:<28} {s.job_id or ''}")
        if s.reason:
            out.append(f"    reason: {s.reason}")
        if show_logs and s.state.startswith("failed"):
            out.extend(f"    | {line}" for line in s.log_tail)
    counts: dict[str, int] = {}
    for s in statuses:
        counts[s.state.split(" ")[0]] = counts.get(s.state.split(" ")[0], 0) + 1
    out.append(", ".join(f"{n} {state}" for state, n in sorted(counts.items())))
    return "\n".join(out)
