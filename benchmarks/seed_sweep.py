"""Accuracy over many seeds: hftool's default against Trainer with dynamic padding and length grouping.

    python benchmarks/seed_sweep.py --seeds 42-85      # about a minute per seed and side on 2 CPU cores
    python benchmarks/seed_sweep.py --seeds 42-63 --sides hftool,hftool-ungrouped,trainer

Three repetitions in `run.py` cannot resolve half a point of accuracy: one epoch of 63 steps
leaves MiniLM undertrained, and single runs range over several points from seed to seed. This
runs the bert-cls benchmark's own commands (the same model, data and settings) once per seed and
side, and compares the sides seed by seed: the seed sets the classifier head's init, the data
order and dropout in both tools. `hftool-ungrouped` is hftool's default with
`train.group_by_length=false`.

Every result (with its wall and CPU time and the load average) is appended to
results/seed_sweep/bert_cls.csv as it arrives; a rerun skips the (seed, side) pairs already
there, so an interrupted sweep continues and a longer one adds seeds. Prints the mean and median
per side and each side's paired difference from Trainer with a bootstrap 95% interval.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS  # noqa: E402
from run import accuracy_of, bert_cls_sides, timed  # noqa: E402
from sweep import Results, run_sweep, seed_range, summary  # noqa: E402

PEER = "Trainer, dynamic padding + group_by_length"
OUT = RESULTS / "seed_sweep" / "bert_cls.csv"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=seed_range, default=seed_range("42-63"), help="FIRST-LAST, inclusive")
    parser.add_argument("--train-rows", type=int, default=2000, help="TREC-6 training rows (0: all 5452)")
    parser.add_argument("--sides", default="hftool,trainer", help="comma-separated: hftool, hftool-ungrouped, trainer")
    args = parser.parse_args()

    sides, default, _ = bert_cls_sides(args.train_rows or None)
    known = {"hftool": (default, sides[default]), "trainer": (PEER, sides[PEER]),
             "hftool-ungrouped": (f"{default}, group_by_length=false",
                                  lambda seed: [*sides[default](seed), "train.group_by_length=false"])}
    unknown = [name for name in args.sides.split(",") if name not in known]
    if unknown:
        raise SystemExit(f"unknown side(s) {', '.join(unknown)}; choose from {', '.join(known)}")
    chosen = dict(known[name] for name in args.sides.split(","))
    results = Results(OUT)
    run_sweep(results, args.seeds, chosen, accuracy_of, timed)
    print(summary(results, args.seeds, list(chosen), PEER if PEER in chosen else next(iter(chosen)),
                  f"test accuracy, 1 epoch of TREC-6 ({args.train_rows} rows)"))


if __name__ == "__main__":
    main()
