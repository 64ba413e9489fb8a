"""Evaluate one model: generate from held-out prompts, score, write eval.json (= `storytune evaluate`).

    python jobs/evaluate.py --run-dir RUN_DIR                  # RUN_DIR/model -> RUN_DIR/eval/
    python jobs/evaluate.py --config RUN_DIR/config.yaml       # the same
    python jobs/evaluate.py --run-dir RUN_DIR --base           # the run's base model -> <output.dir>/base/eval-<key>/
    python jobs/evaluate.py --config CFG --model PATH_OR_NAME --out DIR [key.path=value ...]

Overrides (`generation.num_prompts=20`, ...) apply on top of the config. An output folder that
already holds eval.json is skipped unless --force.
"""

from __future__ import annotations

import sys

from storytune.cli import script

if __name__ == "__main__":
    sys.exit(script("evaluate"))
