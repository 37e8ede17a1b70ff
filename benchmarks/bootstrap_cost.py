"""What one bootstrap resample costs: eval-suite's recomputation from per-example statistics
against rerunning the metric on the resampled examples (what a plain bootstrap does).

    python benchmarks/bootstrap_cost.py [--draws 200]

Both sides score the same seeded resamples, and the script checks that they agree. Sides:
macro F1 and accuracy of 5,000 six-class predictions (hftool's own evaluate modules, as the
training loop computes them), and COCO mAP of 200 images with 10 boxes each (pycocotools).
Prints milliseconds per resample and the ratio.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from hftool import stats  # noqa: E402
from hftool.metrics import resampling  # noqa: E402


def classification(n: int = 5000, k: int = 6):
    from hftool.metrics import Accuracy, PrecisionRecallF1, combine

    rng = np.random.default_rng(0)
    refs = rng.integers(0, k, n)
    preds = np.where(rng.random(n) < 0.8, refs, rng.integers(0, k, n))
    collected = resampling.ClassStats([str(i) for i in range(k)])
    collected.add_batch({"predictions": preds, "references": refs}, np.arange(n))
    collected.finish()
    metric = combine([Accuracy(), PrecisionRecallF1(num_classes=k)])

    def rerun(index):
        return metric.compute(predictions=preds[index], references=refs[index])

    return "macro F1 + accuracy, 5,000 examples", collected, rerun, n, "f1_macro"


def detection(images: int = 200, classes: int = 3):
    from hftool.metrics.detection import coco_map

    rng = np.random.default_rng(0)
    truth, rows = {}, []
    for image in range(images):
        count = int(rng.integers(1, 4))
        xy = rng.uniform(0, 200, (count, 2))
        boxes = np.concatenate([xy, xy + rng.uniform(10, 80, (count, 2))], 1)
        labels = rng.integers(0, classes, count)
        truth[image] = {"boxes": boxes.tolist(), "classes": labels.tolist(), "crowd": [0] * count,
                        "area": ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).tolist()}
        found = np.concatenate([boxes + rng.normal(0, 4, boxes.shape), rng.uniform(0, 250, (10 - count, 4))])
        found[:, 2:] = np.maximum(found[:, 2:], found[:, :2] + 5)
        rows.append((image, found, rng.random(10), np.concatenate([labels, rng.integers(0, classes, 10 - count)])))
    names = [f"c{i}" for i in range(classes)]
    collected = resampling.DetectionStats(names, truth)
    for start in range(0, images, 16):
        chunk = rows[start:start + 16]
        collected.add_batch({"index": np.asarray([r[0] for r in chunk]), "boxes": np.stack([r[1] for r in chunk]),
                             "scores": np.stack([r[2] for r in chunk]), "labels": np.stack([r[3] for r in chunk])}, None)
    collected.finish()

    def rerun(index):
        copies, detections = {}, []
        for new, image in enumerate(index):
            copies[new] = truth[image]
            _, boxes, scores, labels = rows[image]
            detections += [[new, x0, y0, x1 - x0, y1 - y0, s, c] for (x0, y0, x1, y1), s, c in zip(boxes, scores, labels)]
        return coco_map(copies, list(range(len(index))), np.asarray(detections), names)

    return "COCO mAP, 200 images x 10 boxes", collected, rerun, images, "map"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--draws", type=int, default=200)
    args = parser.parse_args()
    print(f"{'metric':40} {'statistics ms':>14} {'rerun ms':>10} {'ratio':>7}")
    for name, collected, rerun, n, check in (classification(), detection()):
        start = time.perf_counter()
        fast = stats.replicates(collected.compute, n, args.draws)
        ours = (time.perf_counter() - start) / args.draws
        start = time.perf_counter()
        slow = [rerun(index)[check] for index in stats.resamples(n, args.draws)]
        theirs = (time.perf_counter() - start) / args.draws
        assert np.allclose(fast[check], slow, atol=1e-9), f"{name}: the two sides disagree"
        print(f"{name:40} {ours * 1e3:14.2f} {theirs * 1e3:10.2f} {theirs / ours:7.1f}")


if __name__ == "__main__":
    main()
