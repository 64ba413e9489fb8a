"""torch.distributed set-up for multi-task Slurm jobs (one task per GPU).

Under `accelerate launch` or `torchrun` the launcher exports RANK/WORLD_SIZE/MASTER_ADDR itself.
Under Slurm, submitit starts one process per task; `TorchDistributedEnvironment` turns Slurm's
variables into the same env:// variables, so the Trainer (through Accelerate) forms the group.
"""

from __future__ import annotations

import os


def export_slurm_distributed_env() -> bool:
    """Export RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT when inside a multi-task Slurm job."""
    if "RANK" in os.environ or int(os.environ.get("SLURM_NTASKS", "1")) <= 1 or "SUBMITIT_FOLDER" not in os.environ:
        return False
    from submitit.helpers import TorchDistributedEnvironment

    TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
    return True
