"""Fine-tune one early-stopping arm into its run directory; writes result.json last (= `storytune finetune`).

    python jobs/finetune.py --config configs/finetune_tiny.yaml [key.path=value ...]
    accelerate launch --config_file configs/accelerate/ddp.yaml jobs/finetune.py --config X.yaml
"""

from __future__ import annotations

import sys

from storytune.cli import script

if __name__ == "__main__":
    sys.exit(script("finetune"))
