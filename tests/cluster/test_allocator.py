"""Jobs start with the benchmark-chosen allocator environment (storytune/cluster/allocator.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from storytune.cluster import executors
from storytune.cluster.allocator import FAST_ALLOCATOR_ENV, KEEP_BUFFERS_ENV, allocator_env, setup_lines
from storytune.study.grid import expand_grid
from storytune.study.plan import make_plan

# Allocates, fills and frees a 64 MiB buffer twice; prints the minor page faults of the second time.
SECOND_BUFFER_FAULTS = """
import resource
import numpy as np
def once():
    buffer = np.empty(16 * 2**20, dtype=np.float32)
    buffer.fill(1.0)
    del buffer
once()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
once()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def grid(tmp_path: Path, setup: list[str] | None = None):
    return expand_grid({
        "name": "g", "output_dir": str(tmp_path),
        "base": {"model": {"name": "tiny"}, "data": {"files": ["/x"]}, "train": {"max_steps": 20, "eval_steps": 10}},
        "axes": {"early_stopping": [{"patience": None}]},
        "resources": {"setup": setup or []},
    })


def test_local_executor_job_process_sees_the_allocator_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A real job process started by the local executor has the variables in its environment,
    and the submitting process's environment is left as it was."""
    seen = tmp_path / "seen.json"
    names = sorted(FAST_ALLOCATOR_ENV)

    class EnvProbe:
        """Stands in for JobRunner (a real fine-tune is too slow here); defined in the test so that
        submitit's cloudpickle ships it by value to the job process."""

        def __call__(self, job):
            seen.write_text(json.dumps({name: os.environ.get(name) for name in names} | {"pid": os.getpid()}))
            return {}

    for name in names:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(executors, "JobRunner", EnvProbe)
    g = grid(tmp_path)
    plan = make_plan(g)
    executor = executors.LocalExecutor(plan, g.eval_resources, g.spec.resources)

    outcome = executor._run_batch(plan.finetunes[:1])

    assert [o.status for o in outcome] == ["done"], outcome
    job_env = json.loads(seen.read_text())
    assert job_env.pop("pid") != os.getpid()  # it ran in another process
    assert job_env == FAST_ALLOCATOR_ENV
    assert all(name not in os.environ for name in names)


def test_sbatch_preview_exports_the_allocator_env_before_the_grid_setup(tmp_path: Path) -> None:
    g = grid(tmp_path, setup=["source .venv/bin/activate"])
    text = executors.SlurmExecutor(make_plan(g), g.eval_resources, g.spec.resources).sbatch_preview()
    setup = text.split("# setup\n", 1)[1].split("\n\n", 1)[0].splitlines()
    assert setup == [*setup_lines(), "source .venv/bin/activate"]
    for name, value in FAST_ALLOCATOR_ENV.items():
        assert f"export {name}={value}\n" in text
    assert text.index("export ") < text.index("srun ")


def test_setup_lines_quote_values() -> None:
    assert setup_lines({"A": "x y", "B": "1"}) == ["export A='x y'", "export B=1"]


def test_allocator_env_names_a_library_that_exists_or_refuses() -> None:
    assert allocator_env("glibc") == {} and allocator_env("tuned") == KEEP_BUFFERS_ENV
    for name in ("jemalloc", "tcmalloc"):
        try:
            env = allocator_env(name)
        except FileNotFoundError:
            continue
        assert Path(env["LD_PRELOAD"].split(":")[0]).exists()
    with pytest.raises(ValueError, match="unknown allocator"):
        allocator_env("mimalloc")


def second_buffer_faults(env: dict[str, str]) -> int:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "LD_PRELOAD"}
    out = subprocess.run([sys.executable, "-c", SECOND_BUFFER_FAULTS], env=clean | env, capture_output=True,
                         text=True, check=True, timeout=120)
    return int(out.stdout.strip())


def test_chosen_env_keeps_large_buffers_in_the_process() -> None:
    """What the setting is for: a freed 64 MiB buffer is reused by the next allocation instead of
    being unmapped and faulted in (and zero-filled) again, as glibc's default does."""
    default, chosen = second_buffer_faults({}), second_buffer_faults(FAST_ALLOCATOR_ENV)
    assert chosen * 4 < default, (chosen, default)
