#!/bin/bash

# Parameters
#SBATCH --account=proj
#SBATCH --array=0-3%3
#SBATCH --constraint=a100
#SBATCH --cpus-per-task=6
#SBATCH --error=<ROOT>/g/logs/%A_%a/%A_%a_0_log.err
#SBATCH --gpus-per-node=4
#SBATCH --job-name=g-finetune
#SBATCH --mem=200GB
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=4
#SBATCH --open-mode=append
#SBATCH --output=<ROOT>/g/logs/%A_%a/%A_%a_0_log.out
#SBATCH --partition=gpu
#SBATCH --signal=USR2@90
#SBATCH --time=90
#SBATCH --wckey=submitit

# setup
export MALLOC_MMAP_MAX_=0
export MALLOC_TRIM_THRESHOLD_=68719476736
module load cuda/12.4
source .venv/bin/activate

# command
export SUBMITIT_EXECUTOR=slurm
srun --unbuffered --output <ROOT>/g/logs/%A_%a/%A_%a_%t_log.out --error <ROOT>/g/logs/%A_%a/%A_%a_%t_log.err --kill-on-bad-exit=1 <PYTHON> -u -m submitit.core._submit <ROOT>/g/logs/%j
