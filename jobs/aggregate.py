"""Compare every cell of a grid with the base model; writes <root>/report/ and prints the table.

    python jobs/aggregate.py runs/demo
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without install

from storytune.jobs import aggregate_main  # noqa: E402

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", help="grid root directory (holds plan.json)")
    sys.exit(aggregate_main(Path(parser.parse_args().root)))
