"""Fine-tune one early-stopping arm into its run directory (writes result.json last).

    python jobs/finetune.py --config configs/finetune_tiny.yaml [key.path=value ...]
    accelerate launch --multi_gpu --num_processes 2 jobs/finetune.py --config X.yaml
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without install

from storytune.jobs import finetune_main  # noqa: E402

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="run config YAML")
    parser.add_argument("--force", action="store_true", help="rerun even if result.json exists")
    parser.add_argument("overrides", nargs="*", metavar="key.path=value")
    sys.exit(finetune_main(parser.parse_args()))
