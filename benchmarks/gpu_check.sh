#!/usr/bin/env bash
# storytune GPU check (issue 19): ONE call on a machine with one CUDA GPU (H100/H200 class) and no internet;
# prints one table within ~8 minutes:
#
#   bash benchmarks/gpu_check.sh             # from anywhere in the checkout; logs in $OUT, else /tmp/gpu-check
#   bash benchmarks/gpu_check.sh --smoke     # the same rows on CPU with tiny shapes (~3-6 min on a loaded 2-core box)
#
# Rows (each a fresh process, capped so the whole run ends before DEADLINE seconds, default 465):
#   train trainer  shipped : storytune's Trainer path as before issue 19 (gelu_new, no compile, no TF32, 0 workers)
#   train trainer  gelu    : + gelu_pytorch_tanh only
#   train trainer  new     : + torch.compile (train.compile), TF32, 2 data loader workers (storytune's CUDA defaults)
#   train raw      new     : a minimal PyTorch loop with the same settings (the Trainer's target: >= 0.95x of it)
#   eval                   : one evaluation of the GPU grid (820 blocks x 512: validation + train subset) at the old
#                            eval batch (= train batch 16) and the new default (4 x 16)
#   checkpoint             : one full save (weights + AdamW state) and one weights-only save (train.resume_every)
#   generate               : storytune's sampler with an EOS check every step vs every 16 (the new GPU default), and
#                            HF generate with a static cache
#   gpu tests              : the tests marked `gpu` (pytest -m gpu), full mode only
# GPT-2 124M, T=1024, batch 16, bf16 autocast for training; MFU = nanoGPT's 6N + 12LHQT FLOPs/token (a third of it
# for evaluation) over the dense bf16 peak (bench_train.PEAK_BF16_FLOPS). Random weights and token ids: nothing is
# downloaded (needs torch, transformers, accelerate, numpy, PyYAML; `datasets` optional).
# Knobs: PYTHON (python3), BATCH (16), STEPS (30), WARMUP (10), DEADLINE (465 s).
set -u
cd "$(dirname "$0")/.." || exit 2
MODE=full
[ "${1:-}" = --smoke ] && MODE=smoke
PY=${PYTHON:-python3}
LOG=${OUT:-${TMPDIR:-/tmp}/gpu-check}
mkdir -p "$LOG"
DEADLINE=${DEADLINE:-465}
export PYTHONPATH="$PWD:$PWD/benchmarks" HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false \
    WANDB_MODE=disabled GC_MODE=$MODE BATCH=${BATCH:-16} STEPS=${STEPS:-30} WARMUP=${WARMUP:-10}
SCALE=1  # row time caps x SCALE
if [ "$MODE" = smoke ]; then  # the same code paths, tiny shapes; torch.compile with the `eager` backend (no
    export BATCH=4 STEPS=3 WARMUP=1  # code generation: minutes on a loaded CPU); generous caps for a loaded CI box
    DEADLINE=${SMOKE_DEADLINE:-1500}
    SCALE=4
fi

cat >"$LOG/gc.py" <<'EOF'
"""One row of the table (argv: ROW KIND); prints 'ROW ...' lines."""
import os, subprocess, sys, tempfile, time
T0 = time.time()
import torch, transformers
import bench_train as bt

SMOKE, env = os.environ["GC_MODE"] == "smoke", os.environ.get
DEVICE = "cpu" if SMOKE else "cuda"
SIZE, TRAIN_T, EVAL_T, EVAL_N = ("tiny", 64, 64, 48) if SMOKE else ("124m", 1024, 512, 820)
PRECISION = "fp32" if SMOKE else "bf16"
GEN_B, GEN_N, GEN_P = (8, 12, 6) if SMOKE else (64, 200, 24)


def gib() -> float:
    return torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else 0.0


def row(name, tps=None, fpt=None, note=""):
    peak = bt.peak_flops(DEVICE, None) if DEVICE == "cuda" else None
    mfu = f"{100 * tps * fpt / peak:.1f}%" if tps and fpt and peak else "-"
    tok = "-" if tps is None else f"{tps:,.0f}"
    print(f"ROW {name:<44}{tok:>11} {mfu:>6} {gib():7.1f} {time.time() - T0:6.0f}  {note}", flush=True)


def bench_args(extra):
    a = bt.parse_args(["--device", DEVICE, "--size", SIZE, "--block", str(TRAIN_T), "--batch", env("BATCH"),
                       "--precision", PRECISION, "--warmup", env("WARMUP"), "--steps", env("STEPS"), *extra])
    a.child_allocator = "glibc"
    return a


TRAIN = {  # row -> (arm, bench_train flags)
    "shipped": ("trainer", ["--child-activation", "gelu_new", "--tf32", "off", "--workers", "0"]),
    "gelu": ("trainer", ["--child-activation", "gelu_pytorch_tanh", "--tf32", "off", "--workers", "0"]),
    "new": ("trainer", ["--child-activation", "gelu_pytorch_tanh", "--compile"]),
    "raw-new": ("raw", ["--child-activation", "gelu_pytorch_tanh", "--compile"]),
}
BACKEND = ["--compile-backend", "eager"] if SMOKE else []
kind = sys.argv[1]
if kind in TRAIN:
    arm, flags = TRAIN[kind]
    a = bench_args(flags + (BACKEND if "--compile" in flags else []))
    a.child = arm
    r = bt.run_child(a)
    row(f"train {arm} [{kind}], T={TRAIN_T}", r.tokens_per_s, r.flops_per_token, f"loss {r.final_loss:.4f}")
elif kind == "eval":  # the Trainer as build_trainer makes it: validation + train subset
    from storytune.train.data import lm_collator
    from storytune.train.finetune import training_arguments
    from storytune.train.model import use_fused_gelu
    a = bench_args(["--block", str(EVAL_T)])
    out = tempfile.mkdtemp()
    m = use_fused_gelu(bt.build_model(SIZE, EVAL_T))
    ds = lambda n, s: bt.as_dataset(bt.random_blocks(n, EVAL_T, s))  # noqa: E731
    tr = transformers.Trainer(model=m, args=training_arguments(bt.run_config(a, 1), out), data_collator=lm_collator,
                              train_dataset=ds(int(env("BATCH")), 0),
                              eval_dataset={"validation": ds(EVAL_N // 2, 1), "train": ds(EVAL_N // 2, 2)})
    tr.train()  # 1 step + 1 evaluation + 1 checkpoint: warms everything up
    batch = int(env("BATCH"))
    for bs in (batch, 4 * batch):
        tr.args.per_device_eval_batch_size = bs
        tr.evaluate()
        if DEVICE == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        tr.evaluate()
        if DEVICE == "cuda":
            torch.cuda.synchronize()
        dt = time.perf_counter() - t
        row(f"eval {EVAL_N} x {EVAL_T} tokens, eval batch {bs}", EVAL_N * EVAL_T / dt,
            bt.flops_per_token(m, EVAL_T)[1] / 3, f"{dt:.2f} s each, x30 = {30 * dt:.0f} s")
    for what in ("full", "weights-only"):
        target = os.path.join(out, what)
        t = time.perf_counter()
        if what == "full":
            tr.args.output_dir = target
            tr._save_checkpoint(tr.model, trial=None)
        else:
            tr.save_model(target)
        t1 = time.perf_counter()
        os.sync()
        t2 = time.perf_counter()
        gb = int(subprocess.run(["du", "-sb", target], capture_output=True, text=True).stdout.split()[0]) / 1e9
        row(f"checkpoint save, {what} (local disk)", note=f"{t1 - t:.2f} s + {t2 - t1:.2f} s sync, {gb:.3f} GB")
elif kind == "gen":  # the eval job's decoding, fp32 like load_lm: left-padded prompts, EOS suppressed
    from storytune.eval.sampling import sample_tokens
    from storytune.train.model import use_fused_gelu
    m = use_fused_gelu(bt.build_model(SIZE, TRAIN_T)).to(DEVICE).eval()
    g = torch.Generator().manual_seed(0)
    ids, mask = torch.full((GEN_B, GEN_P), 50256), torch.zeros(GEN_B, GEN_P, dtype=torch.long)
    for i, n in enumerate(torch.randint(2, GEN_P, (GEN_B,), generator=g).tolist()):
        ids[i, GEN_P - n:] = torch.randint(0, 50256, (n,), generator=g)
        mask[i, GEN_P - n:] = 1
    ids, mask = ids.to(DEVICE), mask.to(DEVICE)
    kw = dict(max_new_tokens=GEN_N, min_new_tokens=GEN_N, eos_token_id=50256, top_p=0.95)

    def tps(f):  # the second call is timed: the first one compiles / warms up
        f()
        if DEVICE == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        f()
        if DEVICE == "cuda":
            torch.cuda.synchronize()
        return GEN_B * GEN_N / (time.perf_counter() - t)

    for every in (1, 16):
        row(f"generate: sample_tokens, EOS check every {every}",
            tps(lambda: sample_tokens(m, ids, mask, row_seeds=range(GEN_B), eos_check_every=every, **kw)))
    static = {} if SMOKE else {"cache_implementation": "static"}
    row("generate: HF generate" + (", static cache" if static else ""),
        tps(lambda: m.generate(input_ids=ids, attention_mask=mask, do_sample=True, top_k=0, pad_token_id=50256,
                               **static, **kw)))
EOF

run() {  # run NAME CAP KIND: one fresh process per row, capped by the time left before DEADLINE
    local left=$((DEADLINE - SECONDS))
    if [ "$left" -lt 30 ]; then echo "ROW $1: skipped (time)" >"$LOG/$1.log"; return; fi
    local cap=$(($2 * SCALE))
    timeout -k 5 $((cap < left ? cap : left)) "$PY" "$LOG/gc.py" "$3" >"$LOG/$1.log" 2>&1 \
        || echo "ROW $1: FAILED/TIMEOUT (rc $?; see $LOG/$1.log)" >>"$LOG/$1.log"
}

if [ "$MODE" = full ]; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || echo "nvidia-smi: not found"
    if ! "$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
        echo "no CUDA GPU visible to $PY: nothing to measure (try: bash benchmarks/gpu_check.sh --smoke)"; exit 1
    fi
fi
"$PY" -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)'
ROWS=(t-shipped t-gelu t-new raw-new eval-save generate)
run t-shipped 120 shipped
run t-gelu 100 gelu
run t-new 200 new
run raw-new 150 raw-new
run eval-save 120 eval
run generate 150 gen
if [ "$MODE" = full ]; then  # the GPU-marked tests (skipped on CPU), with what time is left
    GPU_TESTS=$(grep -rl 'mark\.gpu' tests --include='test_*.py' 2>/dev/null | sort | tr '\n' ' ')
    left=$((DEADLINE + 15 - SECONDS))
    if [ -n "$GPU_TESTS" ] && [ "$left" -gt 20 ]; then
        # shellcheck disable=SC2086
        timeout -k 5 "$left" "$PY" -m pytest -m gpu -q -p no:cacheprovider $GPU_TESTS >"$LOG/gpu-tests.log" 2>&1
        echo "ROW gpu tests: $(tail -1 "$LOG/gpu-tests.log")" >>"$LOG/gpu-tests.log"
        ROWS+=(gpu-tests)
    fi
fi
echo
printf '%-44s%11s %6s %7s %6s  %s\n' "GPT-2 $([ "$MODE" = smoke ] && echo tiny, CPU smoke || echo '124M, bf16')" \
    tokens/s MFU peakGiB wall_s note
for name in "${ROWS[@]}"; do grep -h '^ROW' "$LOG/$name.log" | cut -c5-; done
echo "total ${SECONDS} s; logs in $LOG"
! grep -qh 'FAILED/TIMEOUT' "$LOG"/*.log
