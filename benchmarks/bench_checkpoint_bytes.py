"""Benchmark: peak bytes of a training job's `checkpoints/` folder and its wall time, by `train.resume_every`.

Runs the FIRST training job of a grid (with its replayed arms, as the grid's executor would) once per
`--resume-every` value, interleaved over `--rounds`, each in a fresh output folder. A callback that runs
right after every save (before replay's pruning, so at the moment the folder is largest) adds up the bytes.
Also checks that the results are the same (stop, best and kept steps, kept validation loss) for every value.

    STORYTUNE_DATA_DIR=../shared/data python benchmarks/bench_checkpoint_bytes.py --grid configs/demo.yaml \\
        --resume-every 1 5 --rounds 2
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")


class PeakBytes:
    """TrainerCallback (duck-typed): the largest total size of the checkpoints folder seen after a save."""

    def __init__(self) -> None:
        self.peak = 0
        self.full = self.weights_only = 0

    def __getattr__(self, name: str):
        if name.startswith("on_"):
            return lambda *args, **kwargs: None
        raise AttributeError(name)

    def on_save(self, args, state, control, **kwargs) -> None:
        from storytune.paths import WEIGHTS_ONLY_MARKER

        folders = [p for p in Path(args.output_dir).glob("checkpoint-*") if p.is_dir()]
        total = sum(f.stat().st_size for p in folders for f in p.rglob("*") if f.is_file())
        if total > self.peak:
            self.peak = total
            self.weights_only = sum((p / WEIGHTS_ONLY_MARKER).exists() for p in folders)
            self.full = len(folders) - self.weights_only


def run_once(grid_file: Path, resume_every: int, out: Path) -> tuple[PeakBytes, float, dict, list[dict]]:
    import yaml

    from storytune.cluster.worker import run_finetune
    from storytune.study.grid import expand_grid
    from storytune.study.plan import make_plan
    from storytune.train.checkpoint_bytes import checkpoint_peak

    raw = yaml.safe_load(grid_file.read_text())
    raw["output_dir"] = str(out)
    raw.setdefault("base", {}).setdefault("train", {})["resume_every"] = resume_every
    raw["base"]["train"].pop("train_subset_every", None)  # bytes only: the same evaluations in every run
    plan = make_plan(expand_grid(raw))
    job = plan.finetunes[0]
    peak = PeakBytes()
    started = time.perf_counter()
    result = run_finetune(job.config, extra_callbacks=[peak], replays=job.replays)
    wall = time.perf_counter() - started
    estimate = checkpoint_peak(job.config, len(job.replays))
    result["estimate_bytes"] = estimate.bytes if estimate else None
    arms = []
    for config in job.replays:
        from storytune.paths import read_json, run_dir_for

        arms.append(read_json(run_dir_for(config).result))
    return peak, wall, result, arms


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--grid", type=Path, default=REPO / "configs" / "demo.yaml")
    parser.add_argument("--resume-every", type=int, nargs="+", default=[1, 5])
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    print(f"grid {args.grid}; load average {os.getloadavg()[0]:.1f}; {os.cpu_count()} CPUs", flush=True)
    rows: dict[int, list[tuple[int, float]]] = {k: [] for k in args.resume_every}
    outcomes: dict[int, set] = {k: set() for k in args.resume_every}
    for round_ in range(1, args.rounds + 1):
        for k in args.resume_every:
            with tempfile.TemporaryDirectory(prefix=f"ckpt-bytes-{k}-") as out:
                peak, wall, result, arms = run_once(args.grid, k, Path(out))
            rows[k].append((peak.peak, wall))
            key = tuple((r["variant"], r["stop_step"], r["best_step"], r["kept_step"], round(r["kept_eval_loss"], 5))
                        for r in [result, *arms])
            outcomes[k].add(key)
            print(f"round {round_} resume_every={k}: peak {peak.peak / 1e6:.1f} MB ({peak.full} full + "
                  f"{peak.weights_only} weights-only folders; dry-run estimate "
                  f"{(result['estimate_bytes'] or 0) / 1e6:.1f} MB), training job {wall:.1f} s", flush=True)
    base = args.resume_every[0]
    print("\nsummary (medians; ratios per round)")
    for k in args.resume_every:
        peaks, walls = [p for p, _ in rows[k]], [w for _, w in rows[k]]
        ratio = [rows[base][i][0] / rows[k][i][0] for i in range(len(rows[k]))]
        wall_ratio = [rows[k][i][1] / rows[base][i][1] for i in range(len(rows[k]))]
        print(f"resume_every={k}: peak {statistics.median(peaks) / 1e6:.1f} MB (bytes {base}/{k}: "
              f"{', '.join(f'{r:.2f}' for r in ratio)}), training job {statistics.median(walls):.1f} s "
              f"(time {k}/{base}: {', '.join(f'{r:.2f}' for r in wall_ratio)})")
    same = len(set().union(*outcomes.values())) == 1
    print(f"results (variant, stop, best, kept step, kept loss) {'IDENTICAL' if same else 'DIFFER'} across settings")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
