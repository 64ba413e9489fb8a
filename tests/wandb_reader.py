"""Read W&B run files back without a server (offline runs, or the local copy of online runs).

wandb 0.31 writes no `wandb-summary.json` / `config.yaml` into offline run folders and has no
Python reader for its transaction log any more (`wandb.sdk.internal.datastore` is gone). The
`.wandb` file is a LevelDB-style log: a 7-byte file header (`:W&B`, a 2-byte magic, a version
byte), then 32 KiB blocks of chunks, each chunk a 7-byte header (masked CRC32C: 4 bytes, length:
2 bytes little-endian, type: 1 byte FULL/FIRST/MIDDLE/LAST) and its payload; the payloads of a
FULL chunk or of a FIRST..LAST sequence are one serialized `wandb_internal_pb2.Record`. This
module parses that framing in Python and decodes the records with wandb's own protobuf classes.
(`wandb leet inspect --json PATH` prints the same records; the tests cross-check against it.)

A resumed job (a Slurm requeue, a resubmission) writes one more run folder with the same id; they
are merged in start order: config and summary updated in order, history concatenated.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

BLOCK_SIZE = 32 * 1024
CHUNK_HEADER = 7
FILE_HEADER = b":W&B"
FILE_HEADER_SIZE = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4
RUN_DIR_PATTERN = re.compile(r"^(offline-run|run)-(\d{8}_\d{6})-(.+)$")


@dataclass
class OfflineRun:
    """One W&B run as recorded locally (possibly merged from several resumed run folders)."""

    id: str
    project: str = ""
    entity: str = ""
    name: str = ""
    group: str = ""
    job_type: str = ""
    tags: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    """One dict per committed history row, with `_step`, in the order written."""
    exit_codes: list[int | None] = field(default_factory=list)
    """Exit code of each run folder (None: the process ended without finishing the run)."""
    run_dirs: list[Path] = field(default_factory=list)
    """The run folders merged, in start order."""
    start_times: list[str] = field(default_factory=list)
    resumed: bool = False
    """Whether the run was continued: several folders merged, or W&B resumed it from a server."""
    console: list[str] = field(default_factory=list)

    @property
    def exit_code(self) -> int | None:
        return self.exit_codes[-1] if self.exit_codes else None

    @property
    def steps(self) -> list[int]:
        return [int(row["_step"]) for row in self.history if "_step" in row]

    def metric(self, key: str, step_key: str = "_step") -> list[tuple[Any, Any]]:
        """(x, value) for every history row holding `key`, x from `step_key`."""
        return [(row.get(step_key), row[key]) for row in self.history if key in row]

    def table(self, key: str) -> tuple[list[str], list[list[Any]]]:
        """Columns and rows of a wandb.Table logged under `key` (read from the run's files)."""
        ref = self.summary.get(key)
        if not isinstance(ref, dict) or "path" not in ref:
            for row in reversed(self.history):
                if isinstance(row.get(key), dict) and "path" in row[key]:
                    ref = row[key]
                    break
            else:
                raise KeyError(f"no table logged under {key!r} in run {self.id}")
        for run_dir in reversed(self.run_dirs):
            path = run_dir / "files" / ref["path"]
            if path.is_file():
                data = json.loads(path.read_text())
                return list(data.get("columns", [])), [list(r) for r in data.get("data", [])]
        raise FileNotFoundError(f"table file {ref['path']} of run {self.id} is not in {self.run_dirs}")


# --------------------------------------------------------------------------------------------------
# Finding run folders


def find_offline_runs(root: Path | str) -> list[Path]:
    """Every W&B run folder (`offline-run-*` or `run-*` holding a `.wandb` file) under `root`,
    in start order (the time in the folder name, then the `-N` suffix W&B adds on a clash)."""
    root = Path(root)
    if _is_run_folder(root):
        return [root]
    found = {p.parent for p in root.rglob("run-*.wandb") if _is_run_folder(p.parent)} if root.is_dir() else set()
    return sorted(found, key=_folder_order)


def _is_run_folder(path: Path) -> bool:
    return path.is_dir() and bool(RUN_DIR_PATTERN.match(path.name)) and any(path.glob("run-*.wandb"))


def _folder_order(path: Path) -> tuple[str, int, str]:
    match = RUN_DIR_PATTERN.match(path.name)
    if not match:
        return ("", 0, str(path))
    rest, run_id = match.group(3), _folder_run_id(path)
    suffix = rest[len(run_id) + 1:] if rest.startswith(run_id + "-") else ""
    return (match.group(2), int(suffix) if suffix.isdigit() else 0, str(path))


def _run_file(folder: Path) -> Path:
    files = sorted(folder.glob("run-*.wandb"))
    if not files:
        raise FileNotFoundError(f"no run-*.wandb file in {folder}")
    return files[0]


# --------------------------------------------------------------------------------------------------
# The transaction log


def iter_records(path: Path | str) -> Iterator[Any]:
    """Every `wandb_internal_pb2.Record` in a `.wandb` file, in order.

    A torn tail (a process killed mid-write) ends the iteration with a warning instead of failing.
    """
    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(path).read_bytes()
    if len(data) < FILE_HEADER_SIZE or data[:4] != FILE_HEADER:
        raise ValueError(f"{path} is not a W&B transaction log (header {data[:7]!r})")
    pending = bytearray()
    in_fragment = False
    pos = FILE_HEADER_SIZE
    while pos < len(data):
        left_in_block = BLOCK_SIZE - pos % BLOCK_SIZE
        if left_in_block < CHUNK_HEADER:  # block trailer: zero padding
            pos += left_in_block
            continue
        if pos + CHUNK_HEADER > len(data):
            break
        length = int.from_bytes(data[pos + 4:pos + 6], "little")
        kind = data[pos + 6]
        start, end = pos + CHUNK_HEADER, pos + CHUNK_HEADER + length
        if kind == 0 and length == 0:  # zero padding (preallocated or trailer)
            pos += left_in_block
            continue
        if kind not in (FULL, FIRST, MIDDLE, LAST) or length > left_in_block - CHUNK_HEADER or end > len(data):
            log.warning("%s: unreadable chunk at byte %d (torn tail?); stopping there", path, pos)
            break
        payload = data[start:end]
        pos = end
        if kind == FULL:
            pending, in_fragment = bytearray(), False
            yield _parse(pb, bytes(payload), path)
        elif kind == FIRST:
            pending, in_fragment = bytearray(payload), True
        elif kind == MIDDLE and in_fragment:
            pending += payload
        elif kind == LAST and in_fragment:
            pending += payload
            in_fragment = False
            yield _parse(pb, bytes(pending), path)
            pending = bytearray()


def _parse(pb: Any, payload: bytes, path: Path | str) -> Any:
    record = pb.Record()
    record.ParseFromString(payload)
    return record


def _value(item: Any) -> Any:
    """The Python value of a HistoryItem / SummaryItem / ConfigItem."""
    if item.value_json:
        return json.loads(item.value_json)
    oneofs = item.DESCRIPTOR.oneofs_by_name
    if "value" in oneofs:
        which = item.WhichOneof("value")
        if which == "none":
            return None
        if which == "json":
            return json.loads(item.json)
        if which is not None:
            return getattr(item, which)
    return None


def _key(item: Any) -> list[str]:
    return list(item.nested_key) if item.nested_key else [item.key]


def _assign(target: dict[str, Any], keys: list[str], value: Any) -> None:
    node = target
    for part in keys[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[keys[-1]] = value


def _remove(target: dict[str, Any], keys: list[str]) -> None:
    node: Any = target
    for part in keys[:-1]:
        node = node.get(part) if isinstance(node, dict) else None
    if isinstance(node, dict):
        node.pop(keys[-1], None)


# --------------------------------------------------------------------------------------------------
# Reading runs


def read_run_folder(folder: Path | str) -> OfflineRun:
    """One run folder (`offline-run-*` / `run-*`) or one `.wandb` file."""
    folder = Path(folder)
    path = folder if folder.is_file() else _run_file(folder)
    run = OfflineRun(id="", run_dirs=[path.parent])
    _apply(run, path)
    return run


def _apply(run: OfflineRun, path: Path) -> None:
    """Fold the records of one `.wandb` file into `run`."""
    exit_code: int | None = None
    for record in iter_records(path):
        which = record.WhichOneof("record_type")
        if which == "run":
            r = record.run
            run.id = r.run_id or run.id
            run.project = r.project or run.project
            run.entity = r.entity or run.entity
            run.name = r.display_name or run.name
            run.group = r.run_group or run.group
            run.job_type = r.job_type or run.job_type
            run.tags = list(r.tags) or run.tags
            run.resumed = run.resumed or bool(r.resumed)
            if r.start_time.seconds or r.start_time.nanos:
                run.start_times.append(r.start_time.ToJsonString())
            for item in r.config.update:
                _assign(run.config, _key(item), _value(item))
            for item in r.summary.update:
                _assign(run.summary, _key(item), _value(item))
        elif which == "config":
            for item in record.config.update:
                _assign(run.config, _key(item), _value(item))
            for item in record.config.remove:
                _remove(run.config, _key(item))
        elif which == "summary":
            for item in record.summary.update:
                _assign(run.summary, _key(item), _value(item))
            for item in record.summary.remove:
                _remove(run.summary, _key(item))
        elif which == "history":
            row: dict[str, Any] = {}
            for item in record.history.item:
                row[".".join(_key(item))] = _value(item)
            if "_step" not in row and record.history.HasField("step"):
                row["_step"] = record.history.step.num
            run.history.append(row)
        elif which == "output_raw":
            run.console.append(record.output_raw.line)
        elif which == "exit":
            exit_code = int(record.exit.exit_code)
    run.config.pop("_wandb", None)
    run.summary.pop("_wandb", None)
    run.exit_codes.append(exit_code)


def read_offline_run(run_dir: Path | str, run_id: str | None = None, job_type: str | None = None) -> OfflineRun:
    """The W&B run recorded under `run_dir`, all its resumed parts merged in start order.

    `run_dir` may be a storytune job folder (holding `wandb/` and `wandb.json`), a `wandb/`
    folder, one run folder or a `.wandb` file. When the folder holds several runs, `run_id` or
    `job_type` picks one (default: the one job type recorded in `wandb.json`, if only one is).
    """
    run_dir = Path(run_dir)
    if run_dir.is_file():
        return read_run_folder(run_dir)
    search = run_dir / "wandb" if (run_dir / "wandb").is_dir() else run_dir
    folders = find_offline_runs(search)
    if not folders:
        raise FileNotFoundError(f"no W&B run folder (offline-run-*/run-*.wandb) under {run_dir}")
    by_id: dict[str, list[Path]] = {}
    for folder in folders:
        by_id.setdefault(_folder_run_id(folder), []).append(folder)
    if run_id is None and job_type is not None:
        run_id = _recorded_id(run_dir, job_type)
        if run_id not in by_id:
            typed = [i for i, folders_ in by_id.items() if read_run_folder(folders_[0]).job_type == job_type]
            if len(typed) != 1:
                raise ValueError(f"{run_dir} holds {len(typed)} W&B runs of job type {job_type!r}; pass run_id")
            run_id = typed[0]
    if run_id is None:
        recorded = _recorded_id(run_dir)
        if recorded in by_id:
            run_id = recorded
        elif len(by_id) == 1:
            run_id = next(iter(by_id))
        else:
            raise ValueError(f"{run_dir} holds several W&B runs ({', '.join(sorted(by_id))}); pass run_id")
    if run_id not in by_id:
        raise FileNotFoundError(f"no W&B run {run_id!r} under {run_dir} (found {', '.join(sorted(by_id))})")
    parts = [read_run_folder(folder) for folder in by_id[run_id]]
    parts.sort(key=lambda part: (part.start_times[0] if part.start_times else "", _folder_order(part.run_dirs[0])))
    return merge_runs(parts)


def merge_runs(parts: list[OfflineRun]) -> OfflineRun:
    """Merge the parts of one resumed run (already in start order)."""
    merged = OfflineRun(id=parts[0].id)
    for part in parts:
        for attr in ("id", "project", "entity", "name", "group", "job_type"):
            value = getattr(part, attr)
            if value:
                setattr(merged, attr, value)
        merged.tags = part.tags or merged.tags
        _deep_update(merged.config, part.config)
        _deep_update(merged.summary, part.summary)
        merged.history.extend(part.history)
        merged.exit_codes.extend(part.exit_codes)
        merged.run_dirs.extend(part.run_dirs)
        merged.start_times.extend(part.start_times)
        merged.console.extend(part.console)
        merged.resumed = merged.resumed or part.resumed
    merged.resumed = merged.resumed or len(parts) > 1
    return merged


def _deep_update(target: dict[str, Any], update: dict[str, Any]) -> None:
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(target.get(key), dict) and not _is_media(value):
            _deep_update(target[key], value)
        else:
            target[key] = value


def _is_media(value: dict[str, Any]) -> bool:
    return "_type" in value


def _folder_run_id(folder: Path) -> str:
    """The run id, from the `run-<id>.wandb` file name (folder names may carry a `-N` suffix)."""
    return _run_file(folder).stem.removeprefix("run-")


def _recorded_id(run_dir: Path, job_type: str | None = None) -> str | None:
    """The id storytune.tracking recorded in `wandb.json` ({job type: record}) for `job_type`, or
    without one, for the only job type recorded (None when there are several)."""
    try:
        records = json.loads((run_dir / "wandb.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(records, dict):
        return None
    if job_type is None:
        job_type = next(iter(records)) if len(records) == 1 else None
    record = records.get(job_type)
    return record.get("id") if isinstance(record, dict) else None
