"""Accuracy over many seeds: hftool's default against Trainer with dynamic padding and length grouping.

    python benchmarks/seed_sweep.py --seeds 42-85      # about a minute per seed on 2 CPU cores

Three repetitions in `run.py` cannot resolve half a point of accuracy: one epoch of 63 steps
leaves MiniLM undertrained, and single runs range over several points from seed to seed. This
runs the bert-cls benchmark's own commands (the same model, data and settings) once per seed and
side, and compares the two sides seed by seed: the seed sets the classifier head's init, the
data order and dropout in both tools.

Every result is appended to results/seed_sweep/accuracy.csv as it arrives; a rerun skips the
(seed, side) pairs already there, so an interrupted sweep continues and a longer one adds seeds.
Prints the mean and median per side and the paired difference hftool - Trainer with a bootstrap
95% interval of its mean.
"""

from __future__ import annotations

import argparse
import csv
import random
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS  # noqa: E402
from run import accuracy_of, bert_cls_sides, timed  # noqa: E402

PEER = "Trainer, dynamic padding + group_by_length"
OUT = RESULTS / "seed_sweep" / "accuracy.csv"


def seed_range(text: str) -> list[int]:
    first, _, last = text.partition("-")
    return list(range(int(first), int(last or first) + 1))


def read(path: Path) -> dict[tuple[int, str], float]:
    if not path.is_file():
        return {}
    with open(path, encoding="utf-8") as f:
        return {(int(row["seed"]), row["side"]): float(row["accuracy"]) for row in csv.DictReader(f)}


def bootstrap_interval(values: list[float], draws: int = 10000) -> tuple[float, float]:
    """95% percentile interval of the mean, resampling `values` with replacement (seeded)."""
    rng = random.Random(0)
    means = sorted(statistics.mean(rng.choices(values, k=len(values))) for _ in range(draws))
    return means[int(0.025 * draws)], means[int(0.975 * draws) - 1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=seed_range, default=seed_range("42-63"), help="FIRST-LAST, inclusive")
    parser.add_argument("--train-rows", type=int, default=2000, help="TREC-6 training rows (0: all 5452)")
    args = parser.parse_args()

    sides, default, _ = bert_cls_sides(args.train_rows or None)
    sides = {name: sides[name] for name in (default, PEER)}
    OUT.parent.mkdir(parents=True, exist_ok=True)
    done = read(OUT)
    new_file = not OUT.is_file() or OUT.stat().st_size == 0
    with open(OUT, "a", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        if new_file:
            writer.writerow(["seed", "side", "accuracy", "seconds"])
        for seed in args.seeds:
            for name, command in sides.items():
                if (seed, name) in done:
                    continue
                command = command(seed)
                result = timed(command)
                done[seed, name] = accuracy_of(name, command, result)
                writer.writerow([seed, name, done[seed, name], round(result["seconds"], 1)])
                f.flush()
                print(f"seed {seed} {name}: {done[seed, name]:.3f} ({result['seconds']:.0f} s)", flush=True)

    seeds = [s for s in args.seeds if all((s, name) in done for name in sides)]
    ours, theirs = ([done[s, name] for s in seeds] for name in sides)
    differences = [a - b for a, b in zip(ours, theirs)]
    low, high = bootstrap_interval(differences)
    print(f"\n{len(seeds)} seeds ({seeds[0]}-{seeds[-1]}), test accuracy, 1 epoch of TREC-6 "
          f"({args.train_rows} rows)")
    for name, values in zip(sides, (ours, theirs)):
        print(f"{name}: mean {statistics.mean(values):.4f}, median {statistics.median(values):.4f}, "
              f"range {min(values):.3f}-{max(values):.3f}")
    print(f"hftool - Trainer, per seed: mean {100 * statistics.mean(differences):+.2f} points "
          f"(95% bootstrap interval {100 * low:+.2f} to {100 * high:+.2f}), median "
          f"{100 * statistics.median(differences):+.2f}; hftool lower for {sum(d < 0 for d in differences)} seeds, "
          f"higher for {sum(d > 0 for d in differences)}, equal for {sum(d == 0 for d in differences)}")


if __name__ == "__main__":
    main()
