"""Benchmark: storytune's batched sampler against stock transformers `generate`, batched and one prompt at a time.

Arms (same model, prompts and decoding settings, one process, interleaved: every repeat runs
every arm once, in turn, so load from other jobs hits all arms alike):

* `hf x1`       : stock `model.generate` one prompt at a time (storytune before its own sampler);
* `hf xB`       : stock `model.generate` on left-padded batches of B prompts;
* `storytune xB`: `storytune.eval.generate.generate_tokens` with `batch_size` B (its exact top-p
  sampler, `storytune.eval.sampling`); `storytune x1` is the same one prompt at a time.

The model is GPT-2 with the real 50,257-token vocabulary and random weights (`--layers`/`--dim`:
the demo's tiny shape by default; `--layers 12 --dim 768 --heads 12` is GPT-2 small's). Prompts
are the first sentences of real TinyStories (valid file). Every sample generates exactly
`--new-tokens` tokens (`min_new_tokens == max_new_tokens`: EOS cannot end a sample early), so all
arms do the same work. One warm-up call per arm precedes the timings; the ratios printed are
medians over repeats of the per-repeat ratios (each from adjacent runs).

    python benchmarks/bench_generate.py                                   # tiny (2 layers, d=64)
    python benchmarks/bench_generate.py --layers 12 --dim 768 --heads 12 --new-tokens 16 --repeats 2
    python benchmarks/bench_generate.py --greedy                          # argmax instead of top-p
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from storytune.config import GenerationConfig, TinyModelConfig  # noqa: E402
from storytune.eval.generate import encode_prompts, generate_tokens, make_prompts, max_prompt_tokens  # noqa: E402
from storytune.train.model import build_tiny_model, shipped_gpt2_tokenizer  # noqa: E402

STORIES = Path("/work/shared/data/tinystories-valid.txt")


def load_prompts(n: int, tokenizer, path: Path = STORIES) -> list[str]:
    stories = [s.strip() for s in path.read_text(encoding="utf-8").split("<|endoftext|>") if s.strip()]
    prompts = [p.prompt for p in make_prompts(stories, tokenizer, GenerationConfig(num_prompts=2 * n))]
    if len(prompts) < n:
        raise SystemExit(f"only {len(prompts)} prompts from {path}")
    return prompts[:n]


def hf_generate(model, tokenizer, prompts: list[str], settings: GenerationConfig) -> list[list[int]]:
    """Stock transformers sampling, batched as storytune did before its own sampler (seed per batch)."""
    rows, _ = encode_prompts(tokenizer, prompts, max_prompt_tokens(model, settings.max_new_tokens))
    eos = tokenizer.eos_token_id
    kwargs = {"max_new_tokens": settings.max_new_tokens, "min_new_tokens": settings.max_new_tokens,
              "do_sample": settings.do_sample, "num_beams": 1, "eos_token_id": eos, "pad_token_id": eos}
    if settings.do_sample:
        kwargs.update(top_p=settings.top_p, top_k=settings.top_k, temperature=settings.temperature)
    out = []
    for batch_index, start in enumerate(range(0, len(rows), settings.batch_size)):
        padded = tokenizer.pad({"input_ids": rows[start:start + settings.batch_size]}, padding_side="left",
                               return_tensors="pt").to(model.device)
        with torch.random.fork_rng(devices=[]), torch.inference_mode():
            torch.manual_seed(settings.seed + batch_index)
            generated = model.generate(**padded, **kwargs)
        out.extend(generated[:, padded["input_ids"].shape[1]:].tolist())
    return out


def storytune_generate(model, tokenizer, prompts: list[str], settings: GenerationConfig) -> list[list[int]]:
    return generate_tokens(model, tokenizer, prompts, settings, min_new_tokens=settings.max_new_tokens,
                           progress=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--stories", type=Path, default=STORIES, help="TinyStories text (<|endoftext|>-separated)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--heads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--greedy", action="store_true", help="greedy decoding (default: top-p 0.95 sampling)")
    parser.add_argument("--skip-storytune-x1", action="store_true", help="omit storytune one prompt at a time")
    args = parser.parse_args()

    tokenizer = shipped_gpt2_tokenizer()
    model = build_tiny_model(TinyModelConfig(n_layer=args.layers, n_embd=args.dim, n_head=args.heads,
                                             n_positions=256))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model.to(device).eval()
    prompts = load_prompts(args.prompts, tokenizer, args.stories)
    base = {"max_new_tokens": args.new_tokens, "do_sample": not args.greedy, "top_p": 0.95, "seed": 0}

    print(f"machine: {platform.machine()} {platform.processor() or ''}, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f}, torch {torch.__version__} ({torch.get_num_threads()} threads), "
          f"device {device}" + (f" ({torch.cuda.get_device_name()})" if device == "cuda" else ""))
    print(f"model: GPT-2 {args.layers} layers, d={args.dim}, vocab {len(tokenizer)}, "
          f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters; "
          f"{len(prompts)} prompts (mean {sum(len(tokenizer(p)['input_ids']) for p in prompts) / len(prompts):.1f} "
          f"tokens), {args.new_tokens} new tokens each, {'greedy' if args.greedy else 'top-p 0.95 sampling'}")

    arms: dict[str, tuple[Callable, GenerationConfig]] = {
        "hf x1": (hf_generate, GenerationConfig(**base, batch_size=1))}
    if not args.skip_storytune_x1:
        arms["storytune x1"] = (storytune_generate, GenerationConfig(**base, batch_size=1))
    for b in args.batch_sizes:
        arms[f"hf x{b}"] = (hf_generate, GenerationConfig(**base, batch_size=b))
        arms[f"storytune x{b}"] = (storytune_generate, GenerationConfig(**base, batch_size=b))

    for fn, settings in arms.values():  # warm-up
        fn(model, tokenizer, prompts[:2], settings)
    seconds: dict[str, list[float]] = {name: [] for name in arms}
    expected_tokens = len(prompts) * args.new_tokens
    for _ in range(args.repeats):
        for name, (fn, settings) in arms.items():
            if device == "cuda":
                torch.cuda.synchronize()
            started = time.perf_counter()
            out = fn(model, tokenizer, prompts, settings)
            if device == "cuda":
                torch.cuda.synchronize()
            seconds[name].append(time.perf_counter() - started)
            assert sum(map(len, out)) == expected_tokens, (name, sum(map(len, out)))

    def ratio(slow: str, fast: str) -> float:
        return statistics.median(s / f for s, f in zip(seconds[slow], seconds[fast], strict=True))

    print(f"{'arm':<16}{'median s':>10}{'tokens/s':>10}   all runs (s)")
    for name, runs in seconds.items():
        median = statistics.median(runs)
        print(f"{name:<16}{median:>10.2f}{expected_tokens / median:>10.0f}   " + " ".join(f"{s:.2f}" for s in runs))
    print("speed-ups (median of per-repeat ratios):")
    for b in args.batch_sizes:
        line = (f"  batch {b:>3}: storytune vs hf x1 {ratio('hf x1', f'storytune x{b}'):5.1f}x | "
                f"hf x{b} vs hf x1 {ratio('hf x1', f'hf x{b}'):5.1f}x | "
                f"storytune vs hf x{b} {ratio(f'hf x{b}', f'storytune x{b}'):5.2f}x")
        if not args.skip_storytune_x1:
            line += f" | storytune vs storytune x1 {ratio('storytune x1', f'storytune x{b}'):5.1f}x"
        print(line)


if __name__ == "__main__":
    main()
