"""Which process this is, and its logging: the one place that decides "main process".

Every side effect of a job (files, W&B, printing) happens on the main process only, and every
module asks `is_main_process()` here rather than deciding for itself.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import subprocess
import sys
from pathlib import Path


def is_main_process() -> bool:
    """Global rank 0, read from the launcher's environment (torchrun, accelerate, or Slurm via
    `storytune.cluster.worker.export_slurm_distributed_env`); a single process has no RANK.

    Deliberately not accelerate's `PartialState`: created before `TrainingArguments` it would set
    up the process group itself (and on CPU then report rank 0 in every process)."""
    return int(os.environ.get("RANK", "0")) == 0


def setup_logging(main_process: bool | None = None) -> None:
    """INFO on the main process, warnings elsewhere (one readable log per job)."""
    main = is_main_process() if main_process is None else main_process
    logging.basicConfig(level=logging.INFO if main else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S", stream=sys.stderr, force=True)
    import transformers

    transformers.utils.logging.set_verbosity(logging.WARNING if main else logging.ERROR)


@functools.lru_cache(maxsize=1)
def git_commit() -> str | None:
    """`git rev-parse HEAD` of the storytune checkout (None outside git or without commits)."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
                             capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    commit = out.stdout.strip()
    return commit if out.returncode == 0 and re.fullmatch(r"[0-9a-f]{40,64}", commit) else None


def library_versions() -> dict[str, str | None]:
    """Versions of what shapes a result (provenance in eval.json and the report)."""
    import platform
    from importlib import metadata

    versions: dict[str, str | None] = {"python": platform.python_version()}
    for package in ("storytune", "torch", "transformers", "accelerate", "datasets", "numpy", "scipy",
                    "sentence-transformers", "submitit", "wandb"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return versions
