"""Benchmark: batched generation (storytune.eval.generate) against generating one prompt at a time.

Same model, prompts and decoding settings in both arms, in the same process. The model is the
`tiny` preset's architecture (GPT-2 with the real 50,257-token vocabulary, random weights,
`--layers`/`--dim`); prompts are the first sentences of real TinyStories (valid file). Every
sample generates exactly `--new-tokens` tokens (`min_new_tokens == max_new_tokens`: EOS cannot end a
sample early), so both arms do the same amount of work and tokens/s compare directly.
One warm-up call precedes the timings; each arm is timed `--repeats` times and the median is kept.

    python benchmarks/bench_generate.py --prompts 32 --batch-sizes 16 32 --new-tokens 64
    python benchmarks/bench_generate.py --greedy                      # argmax instead of top-p sampling
    python benchmarks/bench_generate.py --layers 12 --dim 768 --heads 12   # GPT-2 small's shape
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from storytune.config import GenerationConfig, TinyModelConfig  # noqa: E402
from storytune.eval.generate import generate_tokens, make_prompts  # noqa: E402
from storytune.train.model import build_tiny_model, shipped_gpt2_tokenizer  # noqa: E402

STORIES = Path("/work/shared/data/tinystories-valid.txt")


def load_prompts(n: int, tokenizer) -> list[str]:
    stories = [s.strip() for s in STORIES.read_text(encoding="utf-8").split("<|endoftext|>") if s.strip()]
    prompts = [p.prompt for p in make_prompts(stories, tokenizer, GenerationConfig(num_prompts=2 * n))]
    if len(prompts) < n:
        raise SystemExit(f"only {len(prompts)} prompts from {STORIES}")
    return prompts[:n]


def time_arm(model, tokenizer, prompts: list[str], settings: GenerationConfig, repeats: int) -> tuple[float, int]:
    """Median seconds over `repeats` runs, and the number of tokens generated per run."""
    seconds, tokens = [], 0
    for _ in range(repeats):
        started = time.perf_counter()
        out = generate_tokens(model, tokenizer, prompts, settings, min_new_tokens=settings.max_new_tokens,
                              progress=False)
        seconds.append(time.perf_counter() - started)
        tokens = sum(len(row) for row in out)
    return statistics.median(seconds), tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[16, 32])
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--greedy", action="store_true", help="greedy decoding (default: top-p 0.95 sampling)")
    args = parser.parse_args()

    tokenizer = shipped_gpt2_tokenizer()
    model = build_tiny_model(TinyModelConfig(n_layer=args.layers, n_embd=args.dim, n_head=args.heads, n_positions=256))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model.to(device).eval()
    prompts = load_prompts(args.prompts, tokenizer)
    base = {"max_new_tokens": args.new_tokens, "do_sample": not args.greedy, "top_p": 0.95, "seed": 0}

    print(f"machine: {platform.machine()} {platform.processor() or ''}, {os.cpu_count()} CPUs, "
          f"torch {torch.__version__} ({torch.get_num_threads()} threads), device {device}"
          + (f" ({torch.cuda.get_device_name()})" if device == "cuda" else ""))
    print(f"model: GPT-2 {args.layers} layers, d={args.dim}, vocab {len(tokenizer)}, "
          f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters; "
          f"{len(prompts)} prompts (mean {sum(len(tokenizer(p)['input_ids']) for p in prompts) / len(prompts):.1f} "
          f"tokens), {args.new_tokens} new tokens each, {'greedy' if args.greedy else 'top-p 0.95 sampling'}")
    generate_tokens(model, tokenizer, prompts[:2], GenerationConfig(**base, batch_size=2), progress=False)  # warm-up

    one_s, one_tokens = time_arm(model, tokenizer, prompts, GenerationConfig(**base, batch_size=1), args.repeats)
    print(f"one at a time : {one_s:7.2f} s  {one_tokens / one_s:8.0f} tokens/s")
    for batch_size in args.batch_sizes:
        s, tokens = time_arm(model, tokenizer, prompts, GenerationConfig(**base, batch_size=batch_size), args.repeats)
        assert tokens == one_tokens, (tokens, one_tokens)
        print(f"batch {batch_size:>3}     : {s:7.2f} s  {tokens / s:8.0f} tokens/s  "
              f"speed-up {one_s / s:5.1f}x")


if __name__ == "__main__":
    main()
