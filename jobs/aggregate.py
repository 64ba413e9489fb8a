"""Compare every cell of a grid; writes <root>/report/ and prints the findings (= `storytune aggregate`).

    python jobs/aggregate.py runs/demo
"""

from __future__ import annotations

import sys

from storytune.cli import script

if __name__ == "__main__":
    sys.exit(script("aggregate"))
