"""Where each job of a submitted grid stands: queued / running / done / failed (with its log tail).

    python launch/status.py runs/early_stopping        # the grid's root: <output_dir>/<name>
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without install

from storytune.launch import status_main  # noqa: E402

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", help="grid root directory (holds plan.json)")
    sys.exit(status_main(Path(parser.parse_args().root)))
