"""Evaluate one model: generate from held-out prompts, score, write eval.json (see storytune/evaluate.py).

    python jobs/evaluate.py --run-dir RUN_DIR                  # RUN_DIR/model -> RUN_DIR/eval/
    python jobs/evaluate.py --config RUN_DIR/config.yaml       # the same
    python jobs/evaluate.py --run-dir RUN_DIR --base           # the run's base model -> <output.dir>/base/eval/
    python jobs/evaluate.py --config CFG --model PATH_OR_NAME --out DIR [key.path=value ...]

Overrides (`generation.num_prompts=20`, `eval.scorer=base`, ...) apply on top of the config. An
output folder that already holds eval.json is skipped unless --force. Exit status 2 with a one-line
message for a bad config, a missing model or missing data.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without install

from storytune.jobs import evaluate_main  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--config", help="config YAML, usually RUN_DIR/config.yaml")
    parser.add_argument("--run-dir", help="a fine-tuning run directory (its config.yaml and model/)")
    parser.add_argument("--model", help="model path or hub name to evaluate instead of the run's model/")
    parser.add_argument("--base", action="store_true", help="evaluate the run's base model")
    parser.add_argument("--out", help="output folder (default RUN_DIR/eval, or <output.dir>/base/eval with --base)")
    parser.add_argument("--label", help="model label in the results (default: run name, `base`, or the model)")
    parser.add_argument("--force", action="store_true", help="re-evaluate even if eval.json exists")
    parser.add_argument("overrides", nargs="*", metavar="key.path=value", help="config overrides")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    return evaluate_main(parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
