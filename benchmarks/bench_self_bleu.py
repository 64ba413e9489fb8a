"""Benchmark: storytune.eval.metrics.self_bleu against the straightforward NLTK loop (Texygen's definition).

Texts: TinyStories from /work/shared/data (valid first, topped up from train), each cut to its first
``--words`` words; synthetic Zipfian texts when the files are missing (or with ``--synthetic``).

The NLTK loop (each text as hypothesis against all other texts, sentence_bleu + method1) costs the
same for every hypothesis, so by default it is timed on a random subset of ``--nltk-hyps``
hypotheses, each against ALL the other texts, and extrapolated linearly to all texts; the scores of
those hypotheses must equal self_bleu's per-text scores (asserted). ``--nltk-hyps 0`` runs the full loop.

    python benchmarks/bench_self_bleu.py --n-texts 1000 --words 100
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu  # noqa: E402

from storytune.eval.metrics import self_bleu, self_bleu_scores  # noqa: E402

DATA = Path("/work/shared/data")


def real_texts(n_texts: int, words: int) -> tuple[list[str], str] | None:
    texts: list[str] = []
    used = []
    for name in ("tinystories-valid.txt", "tinystories-train.txt"):
        path = DATA / name
        if not path.is_file() or len(texts) >= n_texts:
            continue
        before = len(texts)
        for story in path.read_text(encoding="utf-8").split("<|endoftext|>"):
            toks = story.split()
            if toks:
                texts.append(" ".join(toks[:words]))
            if len(texts) >= n_texts:
                break
        used.append(f"{name} ({len(texts) - before})")
    if len(texts) < n_texts:
        return None
    return texts, "TinyStories " + " + ".join(used) + f", first {words} words of each story"


def synthetic_texts(n_texts: int, words: int, seed: int = 0, vocab: int = 5000) -> tuple[list[str], str]:
    rng = random.Random(seed)
    vocabulary = [f"w{i}" for i in range(vocab)]
    weights = [1.0 / (i + 1) for i in range(vocab)]  # Zipf, exponent 1
    texts = [" ".join(rng.choices(vocabulary, weights, k=max(1, int(rng.gauss(words, words / 10)))))
             for _ in range(n_texts)]
    return texts, f"synthetic Zipf(1) over {vocab} words, ~{words} words per text, seed {seed}"


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-texts", type=int, default=1000)
    ap.add_argument("--words", type=int, default=100)
    ap.add_argument("--n", type=int, default=4, help="BLEU order (uniform weights up to n)")
    ap.add_argument("--nltk-hyps", type=int, default=100,
                    help="hypotheses timed with the NLTK loop (0 = all texts, no extrapolation)")
    ap.add_argument("--repeats", type=int, default=3, help="self_bleu timing: best of this many runs")
    ap.add_argument("--synthetic", action="store_true", help="use synthetic texts even if the data is there")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    got = None if args.synthetic else real_texts(args.n_texts, args.words)
    texts, source = got if got is not None else synthetic_texts(args.n_texts, args.words, args.seed)
    m = len(texts)
    toks = [t.split() for t in texts]
    print(f"machine: {cpu_name()}, {os.cpu_count()} CPU cores, "
          f"Python {platform.python_version()}")
    print(f"texts: {m} ({source}); mean {sum(map(len, toks)) / m:.1f} words; BLEU-{args.n}")

    fast_times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        score = self_bleu(texts, args.n)
        fast_times.append(time.perf_counter() - t0)
    fast = min(fast_times)
    per_text = self_bleu_scores(texts, args.n)

    k = m if args.nltk_hyps <= 0 or args.nltk_hyps >= m else args.nltk_hyps
    hyps = list(range(m)) if k == m else sorted(random.Random(args.seed).sample(range(m), k))
    weight = tuple(1.0 / args.n for _ in range(args.n))
    smooth = SmoothingFunction().method1
    t0 = time.perf_counter()
    ref = [sentence_bleu(toks[:i] + toks[i + 1:], toks[i], weight, smoothing_function=smooth) for i in hyps]
    nltk_sub = time.perf_counter() - t0
    nltk_full = nltk_sub * m / k
    max_diff = max(abs(r - per_text[i]) for r, i in zip(ref, hyps))
    assert max_diff <= 1e-9, f"self_bleu differs from NLTK by {max_diff}"
    if k == m:
        nltk_score = sum(ref) / m
        assert abs(nltk_score - score) <= 1e-9, (nltk_score, score)
        method = f"full NLTK loop over all {m} hypotheses"
    else:
        method = (f"NLTK loop timed on {k} random hypotheses (seed {args.seed}), each against all {m - 1} "
                  f"others, extrapolated x{m / k:g}")

    print(f"self_bleu: {score:.6f}  time {fast:.3f} s (best of {args.repeats}: "
          + ", ".join(f"{t:.3f}" for t in fast_times) + ")")
    if k == m:
        print(f"NLTK loop: {nltk_score:.6f}  time {nltk_full:.1f} s")
    else:
        print(f"NLTK loop: {nltk_sub:.2f} s for {k} hypotheses -> {nltk_full:.1f} s for {m} (extrapolated)")
        print(f"mean BLEU over those {k} hypotheses: NLTK {sum(ref) / k:.6f}, "
              f"self_bleu_scores {sum(per_text[i] for i in hyps) / k:.6f}")
    print(f"max |NLTK - self_bleu_scores| on {k} hypotheses: {max_diff:.2e}")
    print(f"method: {method}")
    print(f"speedup: {nltk_full / fast:.0f}x")


if __name__ == "__main__":
    main()
