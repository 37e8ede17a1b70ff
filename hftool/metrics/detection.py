"""COCO mean average precision through pycocotools, as an evaluate module.

Predictions arrive as fixed-size rows, one per image: the image's index in the evaluation data,
its K best boxes (xyxy, pixels of the original image), their scores and class ids, padding
marked by a negative score. Fixed shapes are what let every process's batches be gathered with
`gather_for_metrics`, which drops the duplicates that uneven sharding adds; the ground truth
never travels: the metric holds it, keyed by the same index, so no image is scored twice.
"""

from __future__ import annotations

import contextlib
import io

import datasets
import evaluate
import numpy as np

# pycocotools' summary order (COCOeval.stats) -> hftool's metric names.
STATS = ("map", "map_50", "map_75", "map_small", "map_medium", "map_large", "mar_1", "mar_10", "mar_100",
         "mar_small", "mar_medium", "mar_large")
SCORE_SEEN = 0.5  # the default threshold of `hftool predict`: a box below it is not shown to users


class CocoMeanAP(evaluate.Metric):
    """mAP@[.5:.95], mAP@.5, mAP@.75, by object size, AR@1/10/100, and AP per class (`ap_<name>`).

    Args:
        truth: index -> {"boxes": xyxy pixel boxes, "classes": class ids, "crowd": 0/1, "area": areas}.
        labels: Class names, index = class id.
    """

    def __init__(self, truth: dict[int, dict], labels: list[str], **kwargs):
        super().__init__(keep_in_memory=True, **kwargs)
        self.truth = truth
        self.labels = labels
        self.boxes_seen = 0  # predictions scored at least SCORE_SEEN, for the "no box" warning

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description="COCO-style detection mAP (pycocotools).", citation="",
            inputs_description="index: image index; boxes: K xyxy boxes; scores: K scores (<0 = padding); labels: K class ids",
            features=datasets.Features({"index": datasets.Value("int64"),
                                        "boxes": datasets.Sequence(datasets.Sequence(datasets.Value("float32"))),
                                        "scores": datasets.Sequence(datasets.Value("float32")),
                                        "labels": datasets.Sequence(datasets.Value("int64"))}))

    def _compute(self, index, boxes, scores, labels) -> dict[str, float]:
        detections = []
        for image, rows, row_scores, row_labels in zip(index, boxes, scores, labels):
            for (x0, y0, x1, y1), score, label in zip(rows, row_scores, row_labels):
                if score >= 0:
                    detections.append([image, x0, y0, x1 - x0, y1 - y0, score, label])
        self.boxes_seen = sum(1 for d in detections if d[5] >= SCORE_SEEN)
        if not self.boxes_seen:
            from hftool import logs

            logs.warn(f"the model predicts no box at all (none scores {SCORE_SEEN} or more) on the {len(set(index))} "
                      "evaluation images, so `hftool predict` would show none; it needs more training (steps, lr)")
        return coco_map(self.truth, sorted(set(int(i) for i in index)), np.asarray(detections, dtype=np.float64),
                        self.labels)


def coco_ground_truth(truth: dict[int, dict], images: list[int], num_classes: int):
    """A pycocotools COCO object for `images` (indices into `truth`)."""
    from pycocotools.coco import COCO

    annotations = []
    for image in images:
        t = truth[image]
        for (x0, y0, x1, y1), label, crowd, area in zip(t["boxes"], t["classes"], t["crowd"], t["area"]):
            annotations.append({"id": len(annotations) + 1, "image_id": image, "category_id": int(label),
                                "bbox": [x0, y0, x1 - x0, y1 - y0], "area": float(area), "iscrowd": int(crowd)})
    coco = COCO()
    coco.dataset = {"images": [{"id": i} for i in images], "annotations": annotations,
                    "categories": [{"id": c} for c in range(num_classes)]}
    with contextlib.redirect_stdout(io.StringIO()):  # "creating index..."
        coco.createIndex()
    return coco


def coco_map(truth: dict[int, dict], images: list[int], detections: np.ndarray, labels: list[str]) -> dict[str, float]:
    """COCOeval (bbox) of `detections` (rows: image, x, y, w, h, score, class) on `images`.

    Sizes with no ground truth score -1, as pycocotools reports them.
    """
    from pycocotools.cocoeval import COCOeval

    results = {name: 0.0 for name in STATS} | {f"ap_{name}": 0.0 for name in labels}
    if not images:
        return results
    gt = coco_ground_truth(truth, images, len(labels))
    if len(detections) == 0:  # loadRes cannot take an empty list; nothing found scores 0
        return results
    with contextlib.redirect_stdout(io.StringIO()):
        dt = gt.loadRes(detections)
        evaluator = COCOeval(gt, dt, "bbox")
        evaluator.params.imgIds = images
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    results.update({name: float(value) for name, value in zip(STATS, evaluator.stats)})
    precision = evaluator.eval["precision"]  # [IoU thresholds, recall points, classes, areas, max dets]
    for c, name in enumerate(labels):
        values = precision[:, :, c, 0, -1]
        values = values[values > -1]
        results[f"ap_{name}"] = float(values.mean()) if values.size else -1.0  # -1: the class never occurs
    return results
