"""benchmarks/gpu_check.sh must run in ONE call when a GPU machine is lent; its --smoke mode runs every row's
code path on CPU with tiny shapes (torch.compile with the `eager` backend), so a broken row shows up here."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

ROWS = ("train trainer [shipped]", "train trainer [gelu]", "train trainer [new]", "train raw [raw-new]",
        "eval 48 x 64 tokens, eval batch 4", "eval 48 x 64 tokens, eval batch 16", "checkpoint save, full",
        "checkpoint save, weights-only", "generate: sample_tokens, EOS check every 1",
        "generate: sample_tokens, EOS check every 16", "generate: HF generate")


@pytest.mark.slow
def test_smoke_mode_prints_every_row(tmp_path: Path) -> None:
    env = {**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable}
    out = subprocess.run(["bash", "benchmarks/gpu_check.sh", "--smoke"], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=1800)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    table = out.stdout[out.stdout.index("tokens/s"):]
    for name in ROWS:
        assert name in table, name
    assert "FAILED" not in table and "skipped" not in table
