"""Classification metrics: accuracy, top-k accuracy, precision/recall/F1 (macro, micro, weighted), confusion matrix."""

from __future__ import annotations

import datasets
import evaluate
import numpy as np

_FEATURES = datasets.Features({"predictions": datasets.Value("int64"), "references": datasets.Value("int64")})


class Accuracy(evaluate.Metric):
    """Fraction of predictions equal to the references."""

    def __init__(self, **kwargs):
        super().__init__(keep_in_memory=True, **kwargs)

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description="Fraction of examples whose predicted class equals the reference.",
            citation="", inputs_description="predictions, references: class ids", features=_FEATURES,
        )

    def _compute(self, predictions, references) -> dict[str, float]:
        predictions, references = np.asarray(predictions), np.asarray(references)
        return {"accuracy": float((predictions == references).mean()) if len(references) else 0.0}


class PrecisionRecallF1(evaluate.Metric):
    """Precision, recall and F1 averaged three ways.

    macro: unweighted mean over classes (a rare class counts as much as a common one); micro:
    from pooled counts (equals accuracy for single-label data); weighted: mean weighted by each
    class's support. Classes are those seen in references or predictions, or `num_classes` when
    given; a class with no predicted (or no true) example scores 0 precision (recall), as
    scikit-learn does with zero_division=0. With `labels` (class names, index = class id) each
    class's own precision, recall and F1 come too, as `<label>_precision`, `<label>_recall`,
    `<label>_f1`.
    """

    def __init__(self, num_classes: int | None = None, labels: list[str] | None = None, **kwargs):
        super().__init__(keep_in_memory=True, **kwargs)
        self.num_classes = num_classes
        self.labels = labels

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description="Precision, recall and F1, macro/micro/weighted averaged.",
            citation="", inputs_description="predictions, references: class ids", features=_FEATURES,
        )

    def _compute(self, predictions, references) -> dict[str, float]:
        predictions, references = np.asarray(predictions, dtype=np.int64), np.asarray(references, dtype=np.int64)
        seen = np.union1d(predictions, references)
        k = max(self.num_classes or 0, int(seen.max()) + 1 if len(seen) else 1)
        confusion = np.bincount(references * k + predictions, minlength=k * k).reshape(k, k)
        return scores_from_confusion(confusion, np.arange(k) if self.num_classes else seen, self.labels)


def scores_from_confusion(confusion: np.ndarray, classes: np.ndarray, labels: list[str] | None = None) -> dict[str, float]:
    """precision/recall/f1 _macro, _weighted and _micro over `classes` from a (possibly weighted)
    confusion matrix, rows: references, and each named class's own (`<label>_f1`, ...). Shared
    with the bootstrap (hftool.metrics.resampling)."""
    precision, recall, f1, support = per_class(confusion)
    true_pos = np.diag(confusion).astype(float)
    result = {}
    for name, values in (("precision", precision), ("recall", recall), ("f1", f1)):
        result[f"{name}_macro"] = float(values[classes].mean())
        total = support[classes].sum()
        result[f"{name}_weighted"] = float((values[classes] * support[classes]).sum() / total) if total else 0.0
    pooled_tp, pooled = true_pos[classes].sum(), support[classes].sum()
    micro = float(pooled_tp / pooled) if pooled else 0.0  # single-label: micro P = R = F1
    result.update(precision_micro=micro, recall_micro=micro, f1_micro=micro)
    k = len(confusion)
    for i, label in enumerate(labels or []):
        for name, values in (("precision", precision), ("recall", recall), ("f1", f1)):
            result[f"{label}_{name}"] = float(values[i]) if i < k else 0.0
    return result


def per_class(confusion: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Precision, recall, F1 and support of each class (0 where undefined, as zero_division=0)."""
    true_pos = np.diag(confusion).astype(float)
    predicted = confusion.sum(axis=0).astype(float)
    support = confusion.sum(axis=1).astype(float)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(predicted > 0, true_pos / predicted, 0.0)
        recall = np.where(support > 0, true_pos / support, 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    return precision, recall, f1, support


class TopKAccuracy(evaluate.Metric):
    """Fraction of examples whose reference is among the `k` highest-scored classes.

    Inputs: `top_k`, the k best class ids per example (best first), and `references`. The input
    is not called `predictions` so that it can be combined with Accuracy in one evaluate.combine.
    """

    def __init__(self, k: int = 5, **kwargs):
        super().__init__(keep_in_memory=True, **kwargs)
        self.k = k

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description="Top-k accuracy: the reference is among the k best-scored classes.",
            citation="", inputs_description="top_k: the k best class ids per example; references: class ids",
            features=datasets.Features({"top_k": datasets.Sequence(datasets.Value("int64")),
                                        "references": datasets.Value("int64")}),
        )

    def _compute(self, top_k, references) -> dict[str, float]:
        hits = [ref in row[: self.k] for row, ref in zip(top_k, references)]
        return {f"top{self.k}_accuracy": float(np.mean(hits)) if hits else 0.0}
