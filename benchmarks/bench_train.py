"""Benchmark: storytune's Trainer path against a minimal PyTorch loop, each run in its own process.

Both arms train the same model (GPT-2 architecture, real 50,257-token vocabulary, the same random
initial weights) on the same blocks with the same batch, AdamW (fused, weight decay on matrices
only, as the Trainer does), learning-rate schedule, gradient clipping and precision:

- `trainer`: `storytune.train.finetune.training_arguments` + the Trainer built as `build_trainer`
  builds it (`lm_collator`, a `datasets.Dataset` of packed blocks, the early-stopping callbacks of
  the config), with evaluation and saving switched off at the last step so neither is timed;
- `raw`: `model(input_ids, labels) -> backward -> clip_grad_norm_ -> AdamW.step -> scheduler.step`.

Every run is a fresh subprocess, so each gets its own allocator environment (glibc reads its
MALLOC_* variables, and LD_PRELOAD is applied, only when a process starts); runs are interleaved
(round 1: every allocator x arm, round 2: the same again, ...) so that load from other jobs on a
shared machine hits every arm alike: compare the per-round ratios, not seconds.

Timed: the steps after `--warmup` steps, from the end of step `warmup` to the end of the last step
(CUDA synchronised at both ends). Reported per arm: tokens/s, minor page faults and system CPU
seconds per timed step (getrusage in the child), peak RSS, peak CUDA memory, the loss of the
final weights on a fixed batch (dropout off) and a checksum of the final weights, which must be
identical across allocators for the same arm. Tokens are random ids (seeded): a dense model's
speed does not depend on token values, and no tokenizer or data set is needed (the GPU machine
has neither). With `--device cuda` and bf16, MFU uses nanoGPT's estimate: 6N + 12·L·H·Q·T FLOPs
per token (N = parameters without position embeddings) over the GPU's dense bf16 peak.

    python benchmarks/bench_train.py --size tiny --allocator glibc tuned jemalloc tcmalloc --rounds 3
    python benchmarks/bench_train.py --size 124m --block 256 --batch 4 --steps 4 --warmup 2 --allocator glibc tuned
    python benchmarks/bench_train.py --device cuda --size 124m --block 1024 --batch 16 --precision bf16 --steps 30
    python benchmarks/bench_train.py --size tiny --allocator glibc --activation gelu_new gelu_pytorch_tanh --rounds 3

Settings (both arms alike): `--activation` (GPT-2's `gelu_new`, or `gelu_pytorch_tanh`, what storytune
trains with: `storytune.train.model.use_fused_gelu`; several = interleaved comparison), `--compile`
(torch.compile: `train.compile` for the Trainer, `torch.compile(model)` for the raw loop), `--tf32`
(TF32 matmuls on CUDA; the Trainer path turns it on by itself since issue 19), `--workers` (data
loader workers; the raw loop indexes a tensor and has none).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from storytune.cluster.allocator import ALLOCATORS, CHOSEN, allocator_env  # noqa: E402

SIZES: dict[str, dict[str, int]] = {
    "tiny": {"n_layer": 2, "n_embd": 64, "n_head": 2},  # the demo's model (configs/demo.yaml)
    "124m": {"n_layer": 12, "n_embd": 768, "n_head": 12, "n_positions": 1024},  # GPT-2 small
}
ARMS = ("trainer", "raw")
ACTIVATIONS = ("gelu_pytorch_tanh", "gelu_new")
VOCAB = 50257
# Dense bf16 peak in FLOP/s by GPU name (NVIDIA data sheets; H200 has the H100 SXM's tensor cores).
PEAK_BF16_FLOPS = {"H100 PCIe": 756e12, "H100": 989.4e12, "H200": 989.4e12, "A100": 312e12}
# Variables that select or tune an allocator; removed from every child's environment first so that
# `glibc` really means the defaults even when this script itself runs with the tuned setting.
ALLOCATOR_VARIABLES = ("LD_PRELOAD", "GLIBC_TUNABLES", "MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_",
                       "MALLOC_MMAP_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_ARENA_MAX", "MALLOC_CONF")


@dataclass
class ArmResult:
    """What one child process measured."""

    arm: str
    allocator: str
    allocator_active: bool
    device: str
    tokens_per_s: float
    step_s: float
    minor_faults_per_step: float
    sys_s_per_step: float
    user_s_per_step: float
    peak_rss_gib: float
    peak_cuda_gib: float | None
    final_loss: float
    weights_sha: str
    params: int
    flops_per_token: float
    mfu: float | None
    threads: int
    activation: str = "gelu_new"


# --------------------------------------------------------------------------------------------------
# Child: one arm, one allocator, one process


def snapshot(device: str) -> tuple[float, int, float, float]:
    """(wall s, minor faults, system s, user s) of this process, after the GPU has caught up."""
    import torch

    if device == "cuda":
        torch.cuda.synchronize()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return time.perf_counter(), usage.ru_minflt, usage.ru_stime, usage.ru_utime


def build_model(size: str, block: int, activation: str = "gelu_new"):
    from storytune.config import TinyModelConfig
    from storytune.train.model import build_tiny_model, use_fused_gelu

    shape = {"n_positions": block, **SIZES[size]}
    model = build_tiny_model(TinyModelConfig(**shape, init_seed=0))
    return use_fused_gelu(model) if activation == "gelu_pytorch_tanh" else model


def random_blocks(n: int, block: int, seed: int):
    """[n, block] int32 token ids, the same for the same seed (both arms, every allocator)."""
    import numpy as np

    return np.random.default_rng(seed).integers(0, VOCAB, size=(n, block), dtype=np.int32)


def run_config(args: argparse.Namespace, total_steps: int):
    """The storytune config both arms take their hyper-parameters from (TrainConfig defaults)."""
    from storytune.config import load_run_config

    shape = {"n_positions": args.block, **SIZES[args.size]}
    return load_run_config(data={
        "model": {"name": "tiny", "tiny": shape},
        "data": {"block_size": args.block},
        "train": {"max_steps": total_steps, "batch_size": args.batch, "eval_steps": total_steps,
                  "warmup_steps": min(10, total_steps), "precision": args.precision, "seed": 1,
                  "compile": bool(getattr(args, "compile", False)),
                  "dataloader_num_workers": getattr(args, "workers", None)},
        "wandb": {"mode": "disabled"},
    })


def as_dataset(blocks) -> Any:
    """Packed blocks as `build_data` stores them (a `datasets.Dataset` with an `input_ids` column);
    plain dicts of the same rows where `datasets` is not installed (the GPU image)."""
    try:
        from datasets import Dataset
    except ImportError:
        return [{"input_ids": row.tolist()} for row in blocks]
    return Dataset.from_dict({"input_ids": blocks})


def train_with_trainer(args: argparse.Namespace, model, blocks, device: str) -> tuple[tuple, tuple]:
    """storytune's Trainer path; returns the snapshots at the start and end of the timed steps."""
    from transformers import Trainer, TrainerCallback

    from storytune.train.data import lm_collator
    from storytune.train.finetune import early_stopping_callbacks, training_arguments

    total = args.warmup + args.steps
    config = run_config(args, total)
    marks: dict[str, tuple] = {}

    class StepClock(TrainerCallback):
        """Marks the timed steps; stops the final evaluation and checkpoint (not training work)."""

        def on_step_end(self, targs, state, control, **kwargs):
            if state.global_step == args.warmup:
                marks["start"] = snapshot(device)
            if state.global_step == total:
                marks["end"] = snapshot(device)
                control.should_evaluate = control.should_save = False
            return control

    with tempfile.TemporaryDirectory(prefix="bench-train-") as out:
        training_args = training_arguments(config, Path(out) / "checkpoints")
        set_tf32(args)  # after TrainingArguments, which turns TF32 on for CUDA by itself
        if args.compile:
            training_args.torch_compile_backend = args.compile_backend
        # The Trainer wants a validation set for eval_strategy="steps"; it is never evaluated here.
        validation = random_blocks(args.batch, args.block, seed=1)
        trainer = Trainer(model=model, args=training_args, train_dataset=as_dataset(blocks),
                          eval_dataset=as_dataset(validation), data_collator=lm_collator,
                          callbacks=[*early_stopping_callbacks(config.early_stopping), StepClock()])
        trainer.train()
    return marks["start"], marks["end"]


def train_raw(args: argparse.Namespace, model, blocks, device: str) -> tuple[tuple, tuple]:
    """The minimal loop with the Trainer's hyper-parameters; returns the timed steps' snapshots."""
    import torch
    from transformers import get_scheduler

    total = args.warmup + args.steps
    train = run_config(args, total).train
    torch.manual_seed(train.seed)
    model.to(device).train()
    set_tf32(args)
    forward = torch.compile(model, backend=args.compile_backend) if args.compile else model
    decay = [p for p in model.parameters() if p.ndim >= 2]  # HF: no decay on biases and LayerNorm
    rest = [p for p in model.parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": train.weight_decay},
                                   {"params": rest, "weight_decay": 0.0}],
                                  lr=train.learning_rate, betas=(0.9, 0.999), eps=1e-8, fused=True)
    scheduler = get_scheduler(train.lr_scheduler, optimizer, num_warmup_steps=train.warmup_steps,
                              num_training_steps=total)
    data = torch.from_numpy(blocks)
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(train.seed))
    autocast = torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=args.precision == "bf16")
    start = snapshot(device)
    for step in range(total):
        ids = data[order[step * args.batch:(step + 1) * args.batch]].long().to(device, non_blocking=True)
        with autocast:
            loss = forward(input_ids=ids, labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), train.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if step + 1 == args.warmup:
            start = snapshot(device)
    return start, snapshot(device)


def set_tf32(args: argparse.Namespace) -> None:
    import torch

    if args.device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = args.tf32 == "on"


def final_loss_and_checksum(args: argparse.Namespace, model, device: str) -> tuple[float, str]:
    """Loss of the trained weights on a fixed batch (eval mode, no dropout), and a weights hash."""
    import torch

    ids = torch.from_numpy(random_blocks(args.batch, args.block, seed=12345)).long().to(device)
    model.eval()
    with torch.no_grad(), torch.autocast(device_type=device, dtype=torch.bfloat16,
                                         enabled=args.precision == "bf16"):
        loss = model(input_ids=ids, labels=ids).loss.item()
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().numpy().tobytes())
    return loss, digest.hexdigest()[:16]


def flops_per_token(model, block: int) -> tuple[int, float]:
    """nanoGPT's estimate: 6N + 12·L·H·Q·T, N without the position embeddings (the token embedding
    is tied to the output layer, so it counts once)."""
    cfg = model.config
    n = sum(p.numel() for p in model.parameters()) - model.transformer.wpe.weight.numel()
    return n, 6 * n + 12 * cfg.n_layer * cfg.n_head * (cfg.n_embd // cfg.n_head) * block


def peak_flops(device: str, override_tflops: float | None) -> float | None:
    import torch

    if override_tflops:
        return override_tflops * 1e12
    if device != "cuda":
        return None
    name = torch.cuda.get_device_name()
    return next((peak for key, peak in PEAK_BF16_FLOPS.items() if key in name), None)


def allocator_active(allocator: str) -> bool:
    """Whether this process really runs with `allocator` (a preloaded library is mapped, or the
    glibc variables are set)."""
    expected = allocator_env(allocator) if allocator != "glibc" else {}
    if "LD_PRELOAD" in expected:
        library = Path(expected["LD_PRELOAD"].split(":")[0]).name
        return library in Path("/proc/self/maps").read_text()
    return all(os.environ.get(k) == v for k, v in expected.items())


def run_child(args: argparse.Namespace) -> ArmResult:
    import torch

    device = args.device
    if args.threads:
        torch.set_num_threads(args.threads)
    model = build_model(args.size, args.block, args.child_activation)
    params, fpt = flops_per_token(model, args.block)
    blocks = random_blocks(args.batch * (args.warmup + args.steps), args.block, seed=0)
    train = train_with_trainer if args.child == "trainer" else train_raw
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    (t0, f0, s0, u0), (t1, f1, s1, u1) = train(args, model, blocks, device)
    steps = args.steps
    tokens_per_s = steps * args.batch * args.block / (t1 - t0)
    loss, sha = final_loss_and_checksum(args, model, device)
    peak = peak_flops(device, args.peak_tflops)
    mfu = tokens_per_s * fpt / peak if peak and (args.precision == "bf16" or args.peak_tflops) else None
    return ArmResult(
        arm=args.child, allocator=args.child_allocator, allocator_active=allocator_active(args.child_allocator),
        device=device + (f" ({torch.cuda.get_device_name()})" if device == "cuda" else ""),
        tokens_per_s=tokens_per_s, step_s=(t1 - t0) / steps, minor_faults_per_step=(f1 - f0) / steps,
        sys_s_per_step=(s1 - s0) / steps, user_s_per_step=(u1 - u0) / steps,
        peak_rss_gib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,  # KiB on Linux
        peak_cuda_gib=torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None,
        final_loss=loss, weights_sha=sha, params=params, flops_per_token=fpt, mfu=mfu,
        threads=torch.get_num_threads(), activation=args.child_activation)


# --------------------------------------------------------------------------------------------------
# Parent: start the children interleaved, then summarise


def child_command(args: argparse.Namespace, arm: str, allocator: str, activation: str) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), "--child", arm, "--child-allocator", allocator,
            "--child-activation", activation, "--tf32", args.tf32,
            *(["--compile", "--compile-backend", args.compile_backend] if args.compile else []),
            *(["--workers", str(args.workers)] if args.workers is not None else []),
            "--size", args.size, "--block", str(args.block), "--batch", str(args.batch),
            "--steps", str(args.steps), "--warmup", str(args.warmup), "--device", args.device,
            "--precision", args.precision, *(["--threads", str(args.threads)] if args.threads else []),
            *(["--peak-tflops", str(args.peak_tflops)] if args.peak_tflops else [])]


def child_env(allocator: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ALLOCATOR_VARIABLES}
    env.update(allocator_env(allocator))
    return env


def start(args: argparse.Namespace, arm: str, allocator: str, activation: str) -> ArmResult | str:
    """Run one child; its result, or the tail of its output when it failed."""
    proc = subprocess.run(child_command(args, arm, allocator, activation), env=child_env(allocator),
                          capture_output=True,
                          text=True, timeout=args.child_timeout)
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("RESULT "):
            return ArmResult(**json.loads(line[len("RESULT "):]))
    return f"exit {proc.returncode}: " + " | ".join((proc.stdout + proc.stderr).strip().splitlines()[-6:])


def describe_machine(args: argparse.Namespace) -> str:
    load = os.getloadavg()
    return (f"machine: {platform.machine()}, {os.cpu_count()} CPUs, load average {load[0]:.1f}/{load[1]:.1f}/"
            f"{load[2]:.1f}, Python {platform.python_version()}; size {args.size}, block {args.block}, "
            f"batch {args.batch}, {args.warmup} warm-up + {args.steps} timed steps, {args.precision}, {args.device}, "
            f"compile {'on' if args.compile else 'off'}, tf32 {args.tf32}, workers {args.workers}")


def row(r: ArmResult) -> str:
    cuda = f"  cuda peak {r.peak_cuda_gib:5.2f} GiB" if r.peak_cuda_gib is not None else ""
    mfu = f"  MFU {100 * r.mfu:5.1f}%" if r.mfu is not None else ""
    active = "" if r.allocator_active else "  (ALLOCATOR NOT ACTIVE)"
    return (f"{r.arm:>7} {r.allocator:>8} {r.activation}: {r.tokens_per_s:9.1f} tok/s  "
            f"{r.minor_faults_per_step:9.0f} faults/step  "
            f"sys {r.sys_s_per_step:6.3f} + user {r.user_s_per_step:6.3f} CPU s/step  "
            f"RSS {r.peak_rss_gib:5.2f} GiB{cuda}{mfu}  loss {r.final_loss!r}  w {r.weights_sha}{active}")


def print_ratio(name: str, results: list[dict[tuple[str, str], ArmResult]], num: tuple[str, str],
                den: tuple[str, str]) -> None:
    """Speed ratio num/den per round: by tokens/s (wall clock) and by CPU seconds per step (user +
    system of the child: less sensitive to other jobs on a shared machine). Nothing when no round has both."""
    pairs = [(r[num], r[den]) for r in results if num in r and den in r]
    if not pairs:
        return
    wall = [a.tokens_per_s / b.tokens_per_s for a, b in pairs]
    cpu = [(b.sys_s_per_step + b.user_s_per_step) / (a.sys_s_per_step + a.user_s_per_step) for a, b in pairs]
    print(f"{name}: tokens/s ratio median {statistics.median(wall):.3f} (rounds: "
          f"{', '.join(f'{x:.3f}' for x in wall)}); CPU-time ratio median {statistics.median(cpu):.3f} "
          f"(rounds: {', '.join(f'{x:.3f}' for x in cpu)})")


def summarise(results: list[dict[tuple[str, str], ArmResult]], allocators: list[str], arms: list[str]) -> bool:
    """Print medians, per-round ratios and the identity check; True when every arm's losses and
    weights are identical across allocators and rounds."""
    print("\nsummary (median over rounds; ratios are per round, then their median)")
    for allocator in allocators:
        for arm in arms:
            runs = [r[(arm, allocator)] for r in results if (arm, allocator) in r]
            if runs:
                print(f"{arm:>7} {allocator:>8}: {statistics.median(x.tokens_per_s for x in runs):9.1f} tok/s  "
                      f"{statistics.median(x.minor_faults_per_step for x in runs):9.0f} faults/step  "
                      f"sys {statistics.median(x.sys_s_per_step for x in runs):6.3f} s/step  "
                      f"CPU {statistics.median(x.sys_s_per_step + x.user_s_per_step for x in runs):6.3f} s/step  "
                      f"peak RSS {max(x.peak_rss_gib for x in runs):5.2f} GiB"
                      + (f"  MFU {100 * statistics.median(x.mfu for x in runs):5.1f}%" if runs[0].mfu else ""))

    if set(ARMS) <= set(arms):
        for allocator in allocators:
            print_ratio(f"trainer / raw, {allocator}", results, ("trainer", allocator), ("raw", allocator))
    base = "glibc" if "glibc" in allocators else allocators[0]
    for allocator in (a for a in allocators if a != base):
        for arm in arms:
            print_ratio(f"{arm}: {allocator} / {base}", results, (arm, allocator), (arm, base))

    identical = True
    for arm in arms:
        finals = {(r[(arm, a)].final_loss, r[(arm, a)].weights_sha) for r in results for a in allocators
                  if (arm, a) in r}
        if not finals:
            continue
        same = len(finals) == 1
        identical &= same
        print(f"{arm}: final loss and weights {'IDENTICAL' if same else 'DIFFER'} across allocators and rounds: "
              + "; ".join(f"{loss!r} {sha}" for loss, sha in sorted(finals)))
    return identical


def label(allocator: str, activation: str, activations: list[str]) -> str:
    """Result key of a setting: the allocator, suffixed by the activation when several are compared."""
    return allocator if len(activations) == 1 else f"{allocator}:{activation}"


def activation_ratios(results: list[dict[tuple[str, str], ArmResult]], args: argparse.Namespace) -> None:
    """Per-round tokens/s ratio of each activation over the last one named, per arm and allocator."""
    first, last = args.activation[0], args.activation[-1]
    for allocator in args.allocator:
        for arm in args.arms:
            num, den = label(allocator, first, args.activation), label(allocator, last, args.activation)
            print_ratio(f"{arm}: {first} / {last}, {allocator}", results, (arm, num), (arm, den))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="tiny")
    parser.add_argument("--block", type=int, default=128, help="tokens per sequence")
    parser.add_argument("--batch", type=int, default=4, help="sequences per step")
    parser.add_argument("--steps", type=int, default=30, help="timed steps")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved repetitions of every run")
    parser.add_argument("--allocator", nargs="+", choices=ALLOCATORS, default=[CHOSEN],
                        help=f"allocators to compare (default: {CHOSEN}, what storytune's jobs get)")
    parser.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS))
    parser.add_argument("--threads", type=int, default=None, help="torch threads per child (default: torch's)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="peak FLOP/s for MFU (default: dense bf16 peak of a known GPU)")
    parser.add_argument("--child-timeout", type=float, default=3600, help="seconds per child process")
    parser.add_argument("--json", type=Path, default=None, help="also write every result here")
    parser.add_argument("--child", choices=ARMS, help=argparse.SUPPRESS)
    parser.add_argument("--child-allocator", choices=ALLOCATORS, help=argparse.SUPPRESS)
    parser.add_argument("--activation", nargs="+", choices=ACTIVATIONS, default=["gelu_pytorch_tanh"],
                        help="MLP activation(s) to compare (default: what storytune trains with)")
    parser.add_argument("--child-activation", choices=ACTIVATIONS, default="gelu_new", help=argparse.SUPPRESS)
    parser.add_argument("--compile", action="store_true", help="torch.compile (both arms)")
    parser.add_argument("--compile-backend", default="inductor",
                        help="torch.compile backend (`eager`: the plumbing without code generation, for smoke tests)")
    parser.add_argument("--tf32", choices=("on", "off"), default="on", help="TF32 matmuls on CUDA (both arms)")
    parser.add_argument("--workers", type=int, default=None,
                        help="Trainer data loader workers (default: storytune's, 2 on CUDA, 0 on CPU)")
    args = parser.parse_args(argv)
    if args.size == "tiny" and args.block > 1024:
        parser.error("--block must be <= 1024")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        print("RESULT " + json.dumps(asdict(run_child(args))), flush=True)
        return 0
    print(describe_machine(args), flush=True)
    results: list[dict[tuple[str, str], ArmResult]] = []
    failures = []
    for round_ in range(1, args.rounds + 1):
        measured: dict[tuple[str, str], ArmResult] = {}
        for activation in args.activation:
            for allocator in args.allocator:
                for arm in args.arms:
                    outcome = start(args, arm, allocator, activation)
                    key = label(allocator, activation, args.activation)
                    if isinstance(outcome, str):
                        failures.append(f"{arm}/{key}: {outcome}")
                        print(f"round {round_} {arm:>7} {key:>8}: FAILED {outcome}", flush=True)
                        continue
                    measured[(arm, key)] = outcome
                    print(f"round {round_} {row(outcome)}", flush=True)
        results.append(measured)
    identical = all(summarise(results, [label(al, ac, args.activation) for al in args.allocator], args.arms)
                    for ac in args.activation)
    if len(args.activation) > 1:  # the activation comparison: the first named is the numerator
        activation_ratios(results, args)
    if args.json:
        args.json.write_text(json.dumps({"machine": describe_machine(args), "args": {k: str(v) for k, v in
                                         vars(args).items()},
                                         "rounds": [[asdict(r) for r in m.values()] for m in results],
                                         "failures": failures}, indent=1))
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")
    # On CPU the same seed must give the same bits under every allocator. CUDA kernels (atomic adds
    # in the embedding backward, for one) are not bitwise reproducible, so there it is only shown.
    return 1 if failures or (not identical and args.device == "cpu") else 0


if __name__ == "__main__":
    sys.exit(main())
