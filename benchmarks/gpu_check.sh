#!/usr/bin/env bash
# GPU check for storytune: one short script for a machine with a CUDA GPU and no internet.
#
#   bash benchmarks/gpu_check.sh            # from the repository root; ~2-4 minutes on an H100/H200
#
# 1. prints nvidia-smi, Python, torch and CUDA versions;
# 2. runs the GPU-marked tests (`pytest -m gpu`) of the test files that have any;
# 3. benchmarks the GPT-2-small architecture (124M parameters, bf16 autocast, sequence 1024) through
#    storytune's Trainer path and through a minimal PyTorch loop (benchmarks/bench_train.py, 2
#    interleaved rounds of 10 warm-up + 30 timed steps), printing tokens/s and MFU for both
#    (nanoGPT's 6N + 12·L·H·Q·T FLOPs per token over the GPU's dense bf16 peak, 989.4 TFLOP/s for
#    H100 SXM / H200);
# 4. prints a summary table (each step's status and seconds).
#
# Nothing is downloaded: it uses the machine's python3 (or $PYTHON) and its torch. storytune itself
# runs from this checkout (PYTHONPATH). Both arms need transformers, PyYAML and numpy; the Trainer
# arm also accelerate (`datasets` is optional: without it the same blocks are given as plain rows).
# Without accelerate only the raw-loop arm runs, and the script says so.
# Knobs (environment): PYTHON, BATCH (default 16; halved once on out-of-memory), STEPS (30),
# WARMUP (10), ROUNDS (2). Logs and bench.json go to $OUT when set (the device tool), else /tmp.
# A CPU smoke test of the script itself (no GPU needed):
#   DEVICE=cpu SIZE=tiny BLOCK=128 PRECISION=fp32 BATCH=4 WARMUP=1 STEPS=3 ROUNDS=1 bash benchmarks/gpu_check.sh
set -u

cd "$(dirname "$0")/.."
REPO=$(pwd)
PY=${PYTHON:-python3}
BATCH=${BATCH:-16}
STEPS=${STEPS:-30}
WARMUP=${WARMUP:-10}
ROUNDS=${ROUNDS:-2}
DEVICE=${DEVICE:-cuda}
SIZE=${SIZE:-124m}
BLOCK=${BLOCK:-1024}
PRECISION=${PRECISION:-bf16}
LOGDIR=${OUT:-/tmp/storytune-gpu-check}
mkdir -p "$LOGDIR"
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 WANDB_MODE=disabled TOKENIZERS_PARALLELISM=false

SUMMARY=()
STARTED=$SECONDS

# step NAME TIMEOUT_S COMMAND...: run one step under a time limit, log it, record status and seconds.
step() {
    local name=$1 limit=$2
    shift 2
    local t0=$SECONDS rc
    echo
    echo "=== $name ==="
    timeout --signal=TERM --kill-after=10 "$limit" "$@" 2>&1 | tee "$LOGDIR/$name.log"
    rc=${PIPESTATUS[0]}
    local status=ok
    if [ "$rc" = 124 ]; then status="TIMEOUT (${limit} s)"; elif [ "$rc" != 0 ]; then status="FAILED (exit $rc)"; fi
    SUMMARY+=("$(printf '%-22s %-20s %5d s' "$name" "$status" $((SECONDS - t0)))")
    return "$rc"
}

# 1. Machine and versions -------------------------------------------------------------------------
step versions 60 bash -c "nvidia-smi || echo 'nvidia-smi: not found'; $PY - <<'EOF'
import platform, torch
print('python', platform.python_version(), 'at', __import__('sys').executable)
print('torch', torch.__version__, 'CUDA', torch.version.cuda, 'cuDNN', torch.backends.cudnn.version())
print('cuda available:', torch.cuda.is_available())
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print('device:', p.name, f'{p.total_memory / 2**30:.1f} GiB,', p.multi_processor_count, 'SMs, bf16:',
          torch.cuda.is_bf16_supported())
EOF"
if [ "$DEVICE" = cuda ] && ! $PY -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
    echo "no CUDA GPU visible to $PY (or no torch): nothing more to check"
    printf '%s\n' "${SUMMARY[@]}"
    exit 1
fi

# Which arms can run. Both build the model with transformers and read storytune's config (PyYAML,
# numpy); the Trainer arm also needs accelerate.
missing() {
    $PY -c 'import importlib.util, sys; print(" ".join(m for m in sys.argv[1:] if importlib.util.find_spec(m) is None))' "$@"
}
ARMS="trainer raw"
MISSING_BOTH=$(missing torch transformers yaml numpy)
MISSING=$(missing accelerate)
if [ -n "$MISSING_BOTH" ]; then
    ARMS=""
    echo "NOTE: missing Python packages: $MISSING_BOTH -> no benchmark arm can run"
elif [ -n "$MISSING" ]; then
    ARMS="raw"
    echo "NOTE: missing Python packages: $MISSING -> storytune's Trainer arm cannot run; raw loop only"
elif $PY -c 'import datasets' 2>/dev/null; then
    # Everything storytune needs is here: install it (no downloads) so entry points work too.
    $PY -m pip install -q --no-deps --no-build-isolation -e . >"$LOGDIR/pip.log" 2>&1 \
        || echo "NOTE: pip install -e . failed (see pip.log); running from PYTHONPATH"
else
    echo "NOTE: no 'datasets' package: the Trainer arm gets the same blocks as plain rows instead of a datasets.Dataset"
fi

# 2. GPU-marked tests ----------------------------------------------------------------------------
GPU_TESTS=$(grep -rl 'mark\.gpu' tests --include='test_*.py' 2>/dev/null | sort | tr '\n' ' ')
if [ -n "$GPU_TESTS" ]; then
    # Only the files that mark GPU tests: collecting the others would import packages this image
    # may lack. pytest's exit 5 (nothing selected) is not a failure.
    step gpu-tests 150 bash -c "$PY -m pytest -m gpu -q -p no:cacheprovider $GPU_TESTS; rc=\$?; [ \$rc = 5 ] && exit 0; exit \$rc"
else
    echo; echo "=== gpu-tests ==="; echo "no GPU-marked tests in tests/"
    SUMMARY+=("$(printf '%-22s %-20s %5d s' gpu-tests 'none found' 0)")
fi

# 3. Throughput: GPT-2 small, bf16, sequence 1024, Trainer path vs raw loop -----------------------
bench() {
    # shellcheck disable=SC2086
    step "bench-batch$1" 330 $PY benchmarks/bench_train.py --device "$DEVICE" --size "$SIZE" --block "$BLOCK" \
        --batch "$1" --precision "$PRECISION" --warmup "$WARMUP" --steps "$STEPS" --rounds "$ROUNDS" --arms $ARMS \
        --child-timeout 150 --json "$LOGDIR/bench.json"
}
if [ -z "$ARMS" ]; then
    SUMMARY+=("$(printf '%-22s %-20s %5d s' bench 'SKIPPED (packages)' 0)")
elif ! bench "$BATCH" && grep -qi "out of memory" "$LOGDIR/bench-batch$BATCH.log"; then
    bench $((BATCH / 2))
fi

# 4. Summary --------------------------------------------------------------------------------------
echo
echo "=== summary (total $((SECONDS - STARTED)) s; logs in $LOGDIR) ==="
printf '%-22s %-20s %7s\n' step status seconds
printf '%s\n' "${SUMMARY[@]}"
[ "$ARMS" = raw ] && echo "Trainer arm NOT run (missing: $MISSING)"
[ -z "$ARMS" ] && echo "benchmark NOT run (missing: $MISSING_BOTH)"
echo
echo "throughput ($SIZE, $PRECISION, T=$BLOCK, $DEVICE; median over rounds):"
grep -hE '^ *(trainer|raw) +[a-z]+: .*tok/s|^trainer / raw|IDENTICAL|DIFFER' "$LOGDIR"/bench-batch*.log 2>/dev/null \
    | grep -v '^round' || echo "(no benchmark result)"
