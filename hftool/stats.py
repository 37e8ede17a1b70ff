"""Bootstrap confidence intervals and paired bootstrap tests over examples.

A metric is recomputed from each example's compact statistics (hftool.metrics.resampling) under
resampling weights: weight i is how many times example i was drawn into a resample. Corpus
metrics (entity F1, mAP, BLEU) are recomputed from pooled per-example counts, never by running
the whole metric again on raw outputs. Draws are seeded and depend only on the number of
examples, so every model scored on the same data gets the same resamples: the comparison of two
models is paired.

Intervals are percentile intervals: numpy's linear quantiles of the replicates, as
scipy.stats.bootstrap(method="percentile") computes them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

SEED = 0  # the same draws on every run, for every model: what makes intervals reproducible and tests paired
LEVEL = 0.95


def resamples(n: int, draws: int, seed: int = SEED) -> Iterator[np.ndarray]:
    """Index arrays of `draws` bootstrap resamples: n indices in [0, n) drawn with replacement."""
    rng = np.random.default_rng(seed)
    for _ in range(draws):
        yield rng.integers(0, n, size=n)


def replicates(compute: Callable[[np.ndarray], dict[str, float]], n: int, draws: int,
               seed: int = SEED) -> dict[str, np.ndarray]:
    """{metric: its value in each of `draws` resamples}, from `compute(weights)` where weights[i]
    counts how often example i was drawn."""
    values: dict[str, list[float]] = {}
    for index in resamples(n, draws, seed):
        for name, value in compute(np.bincount(index, minlength=n)).items():
            values.setdefault(name, []).append(value)
    return {name: np.asarray(v, dtype=np.float64) for name, v in values.items()}


def interval(values: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    """Percentile interval of replicates (NaN where every replicate is undefined)."""
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return float("nan"), float("nan")
    tail = (1 - level) / 2
    low, high = np.quantile(finite, [tail, 1 - tail])
    return float(low), float(high)


@dataclass
class Comparison:
    """Candidate minus baseline on the same examples."""

    diff: float  # candidate - baseline, on all examples
    low: float  # percentile interval of the difference over paired resamples
    high: float
    p: float  # two-sided bootstrap p-value of "no difference"

    def significant(self, alpha: float) -> bool:
        return self.p < alpha


def paired(baseline: float, candidate: float, baseline_reps: np.ndarray, candidate_reps: np.ndarray,
           level: float = LEVEL) -> Comparison:
    """Paired bootstrap test: the replicates must come from the same resamples of the same examples.

    p is twice the smaller share of resampled differences on either side of zero (each count
    with the observed resample added, so p is never 0), at most 1: the test that inverts the
    percentile interval, so p < 1 - level goes with an interval that leaves out 0 (the quantile
    can fall between two draws). Identical models give p = 1.
    """
    n = min(len(baseline_reps), len(candidate_reps))  # a longer run of the same seed starts with the same draws
    diffs = candidate_reps[:n] - baseline_reps[:n]
    diffs = diffs[np.isfinite(diffs)]
    observed = candidate - baseline
    if not np.isfinite(observed) or diffs.size == 0:
        return Comparison(observed, float("nan"), float("nan"), float("nan"))
    # The tolerance keeps float noise from deciding ties: identical models have every difference 0.
    below = int(np.count_nonzero(diffs <= 1e-12))
    above = int(np.count_nonzero(diffs >= -1e-12))
    low, high = interval(diffs, level)
    return Comparison(float(observed), low, high, min(1.0, 2 * (1 + min(below, above)) / (1 + diffs.size)))
