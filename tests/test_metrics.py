"""Offline metric modules against scikit-learn's reference implementations."""

from __future__ import annotations

import numpy as np
import pytest

from hftool.metrics import Accuracy, PrecisionRecallF1


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_precision_recall_f1_match_sklearn(seed):
    from sklearn.metrics import accuracy_score, precision_recall_fscore_support

    rng = np.random.default_rng(seed)
    refs = rng.integers(0, 4, 200)
    preds = np.where(rng.random(200) < 0.6, refs, rng.integers(0, 4, 200))
    preds[preds == 3] = 2  # class 3 never predicted: zero_division matters
    metric = PrecisionRecallF1(num_classes=4)
    for start in range(0, 200, 64):  # batches, as the eval loop adds them
        metric.add_batch(predictions=preds[start:start + 64], references=refs[start:start + 64])
    result = metric.compute()
    for average in ("macro", "micro", "weighted"):
        p, r, f, _ = precision_recall_fscore_support(refs, preds, average=average, zero_division=0, labels=range(4))
        assert result[f"precision_{average}"] == pytest.approx(p)
        assert result[f"recall_{average}"] == pytest.approx(r)
        assert result[f"f1_{average}"] == pytest.approx(f)
    assert Accuracy().compute(predictions=preds, references=refs)["accuracy"] == pytest.approx(accuracy_score(refs, preds))


def test_compute_returns_flat_floats():
    result = PrecisionRecallF1().compute(predictions=[0, 1, 1], references=[0, 1, 0])
    assert all(isinstance(v, float) for v in result.values())
    assert result["f1_macro"] == pytest.approx((2 / 3 + 2 / 3) / 2)


def test_metrics_work_offline_without_hub_modules(monkeypatch):
    import evaluate

    def no_hub(*args, **kwargs):
        raise AssertionError("evaluate.load would reach for the hub")

    monkeypatch.setattr(evaluate, "load", no_hub)
    combined = evaluate.combine([Accuracy(), PrecisionRecallF1(num_classes=2)])
    combined.add_batch(predictions=[1, 0], references=[1, 1])
    assert combined.compute()["accuracy"] == 0.5
