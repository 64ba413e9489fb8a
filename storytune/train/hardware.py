"""Fail loudly on the wrong hardware: a run that asks for GPUs stops when CUDA is unavailable.

Without this check the Trainer quietly trains on CPU (hours instead of minutes, and bf16 refused or
emulated), which on a cluster looks like a slow job rather than a broken node. A run asks for GPUs
when `train.precision` is bf16/fp16, or when Slurm gave its job GPUs (`resources.gpus_per_node > 0`
sets SLURM_GPUS_ON_NODE / SLURM_JOB_GPUS in the job's environment).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from storytune.config import ConfigError, Problem, RunConfig

SLURM_GPU_VARIABLES = ("SLURM_GPUS_ON_NODE", "SLURM_JOB_GPUS", "SLURM_GPUS_PER_NODE", "SLURM_STEP_GPUS")
NVIDIA_DRIVER_FILE = Path("/proc/driver/nvidia/version")


class HardwareError(ConfigError):
    """The run asks for GPUs this node cannot give. A ConfigError, so the CLI shows it as one line
    (exit 2) like any other problem of the config it was asked to run."""


def slurm_gpus(environ: Mapping[str, str]) -> str | None:
    """The Slurm variable (`NAME=value`) saying this job was given GPUs, or None."""
    for name in SLURM_GPU_VARIABLES:
        value = environ.get(name, "").strip()
        if value and value not in ("0", "(null)"):
            return f"{name}={value}"
    return None


def gpu_request(config: RunConfig, environ: Mapping[str, str]) -> tuple[str, str] | None:
    """(config key, why) when this run asks for GPUs, else None."""
    if config.train.precision in ("bf16", "fp16"):
        return "train.precision", f"train.precision={config.train.precision} needs a CUDA GPU"
    if "SLURM_JOB_ID" in environ and (granted := slurm_gpus(environ)):
        return "resources.gpus_per_node", f"this Slurm job was given GPUs ({granted})"
    return None


def likely_cause(environ: Mapping[str, str]) -> str:
    """Why torch sees no GPU, most specific first."""
    import torch

    visible = environ.get("CUDA_VISIBLE_DEVICES")
    if torch.version.cuda is None:
        return (f"this torch ({torch.__version__}) is a CPU-only build; install a CUDA wheel matching the node's "
                "driver, e.g. `pip install torch --index-url https://download.pytorch.org/whl/cu126`")
    if visible is not None and visible.strip() in ("", "-1", "NoDevFiles"):
        return (f"CUDA_VISIBLE_DEVICES={visible!r} hides every GPU (did the job ask Slurm for GPUs with "
                "resources.gpus_per_node, or does a setup line unset them?)")
    if not NVIDIA_DRIVER_FILE.exists():
        return (f"no NVIDIA driver on this node ({NVIDIA_DRIVER_FILE} is missing): run on a GPU partition "
                "(resources.partition) or use train.precision=fp32 on CPU")
    driver = NVIDIA_DRIVER_FILE.read_text(errors="replace").splitlines()[0].strip()
    return (f"torch {torch.__version__} is built for CUDA {torch.version.cuda}, which likely needs a newer "
            f"driver than this node's ({driver}); install a torch wheel for an older CUDA (see `nvidia-smi` for "
            "the highest CUDA the driver supports) or run on nodes with a newer driver")


def check_hardware(config: RunConfig, environ: Mapping[str, str] | None = None) -> None:
    """Raise HardwareError when the run asks for GPUs and `torch.cuda.is_available()` is False."""
    import torch

    environ = os.environ if environ is None else environ
    request = gpu_request(config, environ)
    if request is None or torch.cuda.is_available():
        return
    key, why = request
    raise HardwareError([Problem(key, f"{why}, but CUDA is unavailable on {os.uname().nodename}: "
                                      f"{likely_cause(environ)}. Not training on CPU instead.")])
