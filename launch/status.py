"""Where each job of a submitted grid stands: queued / running / done / failed (= `storytune status`).

    python launch/status.py runs/early_stopping        # the grid's root: <output_dir>/<name>
"""

from __future__ import annotations

import sys

from storytune.cli import script

if __name__ == "__main__":
    sys.exit(script("status"))
