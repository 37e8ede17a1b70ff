"""Seed sweeps shared by the accuracy benchmarks: run each side once per seed, keep every result in
a CSV that a rerun continues, and compare two sides seed by seed.

One run per seed cannot resolve a point of accuracy (single runs of a short fine-tune range over
several points from seed to seed); the paired difference over many seeds can. Sides run in a
rotated order (seed i starts with side i mod n), so a change of machine load falls on every side
alike.
"""

from __future__ import annotations

import csv
import os
import random
import statistics
from collections.abc import Callable
from pathlib import Path

FIELDS = ("seed", "side", "score", "seconds", "cpu_seconds", "load")


def seed_range(text: str) -> list[int]:
    """`42-63` -> [42, ..., 63] (inclusive); `7` -> [7]."""
    first, _, last = text.partition("-")
    return list(range(int(first), int(last or first) + 1))


def bootstrap_interval(values: list[float], draws: int = 10000) -> tuple[float, float]:
    """95% percentile interval of the mean, resampling `values` with replacement (seeded)."""
    rng = random.Random(0)
    means = sorted(statistics.mean(rng.choices(values, k=len(values))) for _ in range(draws))
    return means[int(0.025 * draws)], means[int(0.975 * draws) - 1]


class Results:
    """The sweep's CSV: one row per (seed, side) with its score, wall and CPU seconds and the
    1-minute load average when the run ended. Rows are appended as they arrive."""

    def __init__(self, path: Path):
        self.path = path
        self.rows: dict[tuple[int, str], dict] = {}
        if path.is_file() and path.stat().st_size:
            with open(path, encoding="utf-8") as f:
                reader = csv.DictReader(f)
                if tuple(reader.fieldnames or ()) != FIELDS:
                    raise SystemExit(f"{path} has columns {reader.fieldnames}, not {list(FIELDS)}: it was written "
                                     "by an older version of this benchmark; move it aside")
                for row in reader:
                    self.rows[int(row["seed"]), row["side"]] = {**row, "score": float(row["score"])}

    def add(self, seed: int, side: str, score: float, run: dict) -> None:
        row = {"seed": seed, "side": side, "score": score, "seconds": round(run["seconds"], 1),
               "cpu_seconds": round(run["cpu_seconds"], 1), "load": round(os.getloadavg()[0], 2)}
        new = not self.path.is_file() or not self.path.stat().st_size
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, FIELDS)
            if new:
                writer.writeheader()
            writer.writerow(row)
        self.rows[seed, side] = row

    def score(self, seed: int, side: str) -> float | None:
        row = self.rows.get((seed, side))
        return None if row is None else row["score"]


def run_sweep(results: Results, seeds: list[int], sides: dict[str, Callable[[int], list[str]]],
              score: Callable[[str, list[str], dict], float], timed: Callable[[list[str]], dict]) -> None:
    """Run every (seed, side) not in `results` yet; sides rotate from seed to seed."""
    names = list(sides)
    for n, seed in enumerate(seeds):
        for name in names[n % len(names):] + names[:n % len(names)]:
            if results.score(seed, name) is not None:
                continue
            command = sides[name](seed)
            run = timed(command)
            results.add(seed, name, score(name, command, run), run)
            print(f"seed {seed} {name}: {results.score(seed, name):.4f} ({run['seconds']:.0f} s, "
                  f"load {os.getloadavg()[0]:.1f})", flush=True)


def summary(results: Results, seeds: list[int], sides: list[str], reference: str, what: str) -> str:
    """Mean, median, range and time per side over the seeds every side has, and each side's
    paired difference from `reference` with a bootstrap 95% interval (in points)."""
    seeds = [s for s in seeds if all(results.score(s, name) is not None for name in sides)]
    if not seeds:
        return "no seed has a result for every side yet"
    lines = [f"{len(seeds)} seeds ({', '.join(map(str, seeds))}), {what}"]
    for name in sides:
        scores = [results.score(s, name) for s in seeds]
        seconds = [float(results.rows[s, name]["seconds"]) for s in seeds]
        cpu = [float(results.rows[s, name]["cpu_seconds"]) for s in seeds]
        lines.append(f"  {name}: mean {statistics.mean(scores):.4f}, median {statistics.median(scores):.4f}, "
                     f"range {min(scores):.3f}-{max(scores):.3f}; wall {statistics.median(seconds):.0f} s, "
                     f"CPU {statistics.median(cpu):.0f} s (medians)")
    for name in sides:
        if name == reference:
            continue
        differences = [results.score(s, name) - results.score(s, reference) for s in seeds]
        low, high = bootstrap_interval(differences)
        lines.append(f"  {name} - {reference}: mean {100 * statistics.mean(differences):+.2f} points (95% bootstrap "
                     f"interval {100 * low:+.2f} to {100 * high:+.2f}), median "
                     f"{100 * statistics.median(differences):+.2f}; lower for {sum(d < 0 for d in differences)} "
                     f"seeds, higher for {sum(d > 0 for d in differences)}, equal for "
                     f"{sum(d == 0 for d in differences)}")
    loads = [float(results.rows[s, name]["load"]) for s in seeds for name in sides]
    lines.append(f"  load average at the end of the runs: {min(loads):.1f}-{max(loads):.1f}, "
                 f"median {statistics.median(loads):.1f}")
    return "\n".join(lines)
