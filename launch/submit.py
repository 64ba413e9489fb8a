"""Submit a grid: fine-tune array, evaluation array, base evaluation, aggregation.

    python launch/submit.py --grid configs/grids/early_stopping.yaml            # Slurm if sbatch exists
    python launch/submit.py --grid configs/demo.yaml --executor local           # this machine
    python launch/submit.py --grid configs/grids/early_stopping.yaml --dry-run  # plan + sbatch, no submit
    python launch/submit.py --grid X.yaml --status                              # where each job stands
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without install

from storytune.launch import submit_main  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--grid", required=True, help="grid YAML file")
    parser.add_argument("--executor", choices=["slurm", "local", "debug"],
                        help="default: slurm when sbatch is on PATH, else local")
    parser.add_argument("--dry-run", action="store_true", help="print the plan and sbatch script; submit nothing")
    parser.add_argument("--force", action="store_true", help="rerun cells that already have results")
    parser.add_argument("--parallel", type=int, default=1, help="local executor: jobs at a time")
    parser.add_argument("--status", action="store_true", help="show where each job stands and exit")
    parser.add_argument("overrides", nargs="*", metavar="key.path=value",
                        help="grid-file overrides, e.g. base.train.max_steps=100 output_dir=/scratch/runs")
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(submit_main(parse_args()))
