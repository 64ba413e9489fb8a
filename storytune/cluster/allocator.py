"""The memory-allocator environment every CPU job storytune starts gets (local and Slurm executors).

Why: with glibc's default malloc every buffer over 32 MiB (glibc's largest dynamic mmap threshold)
is an `mmap` of its own and is unmapped on `free`. A GPT-2 training step allocates several such
buffers (the [batch·block, 50257] logits and their gradient, the 147 MiB tied-embedding gradient
at the 124M shape), so every step the kernel maps them again and zero-fills them page by page:
≈ 45% of the CPU time at the tiny demo size was kernel time (PLATFORM-NOTES, issue 13).

The variables are read by the C library when a process starts, so they must be in the job's
environment BEFORE Python starts; setting `os.environ` inside a running job changes nothing.
That is why the executors put them in the job's shell setup lines, not in the worker.

Chosen by `benchmarks/bench_train.py` (BENCHMARKS.md, "Allocator"; 2-core CPU shared with other
jobs at load average 6-12, runs interleaved, per-round ratios): `tuned` = glibc with
`MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=68719476736`.
- Tiny demo model, 2 rounds: minor page faults per step 105-108k -> 0.3-1.2k, system time
  0.20 -> 0.002 s/step, tokens/s 2.9x (CPU time per step 1.6-2.1x less) in both the Trainer path
  and the raw loop; peak RSS +0.15-0.22 GiB.
- GPT-2-small shape (block 256, batch 4), 1 round: faults 288-364k -> 17-54k per step, system
  time 0.67-0.79 -> 0.04-0.09 s/step, CPU time per step 1.07-1.14x less; peak RSS +0.4 GiB.
- tcmalloc (LD_PRELOAD) removes the faults as well and was as fast within this machine's noise
  (head-to-head: 0.6-3.9x either way), with less peak memory; it is not the default because it
  needs a library on every node and writes "large alloc" lines to job logs above 1 GiB. jemalloc
  with its default settings did not help (large buffers are purged at once: faults unchanged).
- Final losses and weights were bit-identical under all four (same seed).
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

KEEP_BUFFERS_ENV: dict[str, str] = {
    # No mmap'd chunks at all: every buffer comes from the heap and is reused by the next step.
    "MALLOC_MMAP_MAX_": "0",
    # Never give the heap's free top back to the kernel (64 GiB in bytes: more than any job holds),
    # so the next step does not fault the same pages in and zero-fill them again.
    "MALLOC_TRIM_THRESHOLD_": str(64 * 2**30),
}
"""glibc tuning: keep freed buffers in the process instead of returning them to the kernel."""

PRELOAD_LIBRARIES: dict[str, str] = {"jemalloc": "libjemalloc.so.2", "tcmalloc": "libtcmalloc_minimal.so.4"}
"""Allocators that replace malloc via LD_PRELOAD (Debian: libjemalloc2, libtcmalloc-minimal4)."""

LIBRARY_DIRS = ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64", "/usr/lib",
                "/usr/local/lib")

ALLOCATORS = ("glibc", "tuned", *PRELOAD_LIBRARIES)
"""`glibc` = the C library's defaults (no variables), `tuned` = glibc with KEEP_BUFFERS_ENV."""

CHOSEN = "tuned"
"""The benchmark's choice (module docstring): as fast as tcmalloc here, and needs no library."""


def find_library(name: str) -> Path | None:
    """Absolute path of a shared library in the usual system folders (or $CONDA_PREFIX/lib), or None."""
    dirs = [*LIBRARY_DIRS, *([f"{os.environ['CONDA_PREFIX']}/lib"] if os.environ.get("CONDA_PREFIX") else [])]
    for folder in dirs:
        path = Path(folder) / name
        if path.exists():
            return path
    return None


def allocator_env(allocator: str) -> dict[str, str]:
    """Environment variables that select `allocator` (one of ALLOCATORS) for a process started with them.

    A preloaded allocator needs its library on this machine; raises FileNotFoundError when it is absent
    (the benchmark must not silently measure glibc under another name).
    """
    if allocator == "glibc":
        return {}
    if allocator == "tuned":
        return dict(KEEP_BUFFERS_ENV)
    if allocator in PRELOAD_LIBRARIES:
        path = find_library(PRELOAD_LIBRARIES[allocator])
        if path is None:
            raise FileNotFoundError(f"{PRELOAD_LIBRARIES[allocator]} not found in {', '.join(LIBRARY_DIRS)} "
                                    f"(Debian: apt-get install libjemalloc2 libtcmalloc-minimal4)")
        preload = os.environ.get("LD_PRELOAD")
        return {"LD_PRELOAD": f"{path}:{preload}" if preload else str(path)}
    raise ValueError(f"unknown allocator {allocator!r}; choose from {', '.join(ALLOCATORS)}")


FAST_ALLOCATOR_ENV: dict[str, str] = allocator_env(CHOSEN)
"""The environment every CPU job storytune starts gets (the benchmark's winner)."""


def setup_lines(env: dict[str, str] | None = None) -> list[str]:
    """Shell lines that export `env` (default FAST_ALLOCATOR_ENV) before the job's Python starts.

    The Slurm executor writes them into the sbatch script's setup section, before `srun`, which
    passes the environment on to every task.
    """
    env = FAST_ALLOCATOR_ENV if env is None else env
    return [f"export {name}={shlex.quote(value)}" for name, value in env.items()]


@contextmanager
def inherited_by_children(env: dict[str, str] | None = None) -> Iterator[None]:
    """Put `env` (default FAST_ALLOCATOR_ENV) into os.environ while the block runs, then restore it.

    For the local executor: submitit starts each job's controller with a copy of os.environ, and the
    job's Python inherits it. (submitit's `local_setup` lines would do it too, but through `sh -c`,
    whose shell then receives the cancel and timeout signals instead of the job.) This process's own
    allocator does not change: glibc read the variables when it started.
    """
    env = FAST_ALLOCATOR_ENV if env is None else env
    saved = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
