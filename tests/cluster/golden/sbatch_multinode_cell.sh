#!/bin/bash

# Parameters
#SBATCH --cpus-per-task=8
#SBATCH --error=<ROOT>/mn/logs/%j/%j_0_log.err
#SBATCH --gpus-per-node=4
#SBATCH --job-name=mn-finetune
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=4
#SBATCH --open-mode=append
#SBATCH --output=<ROOT>/mn/logs/%j/%j_0_log.out
#SBATCH --partition=gpu
#SBATCH --signal=USR2@90
#SBATCH --time=120
#SBATCH --wckey=submitit

# setup
export MALLOC_MMAP_MAX_=0
export MALLOC_TRIM_THRESHOLD_=68719476736

# command
export SUBMITIT_EXECUTOR=slurm
srun --unbuffered --output <ROOT>/mn/logs/%j/%j_%t_log.out --error <ROOT>/mn/logs/%j/%j_%t_log.err --kill-on-bad-exit=1 <PYTHON> -u -m submitit.core._submit <ROOT>/mn/logs/%j
