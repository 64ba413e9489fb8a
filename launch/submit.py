"""Submit a grid: fine-tune array, evaluation array, base evaluation, aggregation (= `storytune submit`).

    python launch/submit.py --grid configs/grids/early_stopping.yaml            # Slurm if sbatch exists
    python launch/submit.py --grid configs/demo.yaml --executor local           # this machine
    python launch/submit.py --grid configs/grids/early_stopping.yaml --dry-run  # plan + sbatch, no submit
    python launch/submit.py --grid X.yaml --status                              # where each job stands
"""

from __future__ import annotations

import sys

from storytune.cli import script

if __name__ == "__main__":
    sys.exit(script("submit"))
