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


def test_per_class_scores_match_sklearn_and_come_only_with_label_names():
    from sklearn.metrics import precision_recall_fscore_support

    rng = np.random.default_rng(3)
    refs = rng.integers(0, 3, 120)
    preds = np.where(rng.random(120) < 0.7, refs, rng.integers(0, 3, 120))
    preds[preds == 2] = 1  # class 2 never predicted: its precision is 0
    names = ["cat", "dog", "no bird"]
    result = PrecisionRecallF1(num_classes=3, labels=names).compute(predictions=preds, references=refs)
    p, r, f, _ = precision_recall_fscore_support(refs, preds, average=None, zero_division=0, labels=range(3))
    for i, name in enumerate(names):
        assert (result[f"{name}_precision"], result[f"{name}_recall"], result[f"{name}_f1"]) == pytest.approx((p[i], r[i], f[i]))
    assert not any(k.endswith("_precision") for k in PrecisionRecallF1(num_classes=3).compute(
        predictions=preds, references=refs))  # other tasks' metrics are unchanged


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


def _run_python(code: str) -> list[str]:
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.split()


def test_cli_process_imports_evaluate_without_its_evaluator():
    """In the hftool command's process evaluate loads without transformers.pipelines/scipy.stats
    (seconds per run); the metrics still compute and both modules stay importable."""
    out = _run_python(
        "import sys, hftool; hftool._cli_process = True\n"
        "from hftool.metrics import Accuracy, PrecisionRecallF1, combine\n"
        "scores = combine([Accuracy(), PrecisionRecallF1(num_classes=2)]).compute(predictions=[1, 0, 1, 1], "
        "references=[1, 1, 1, 0])\n"
        "print(scores['accuracy'], scores['f1_macro'] > 0)\n"
        "print('transformers.pipelines' in sys.modules, 'scipy.stats' in sys.modules, 'seqeval' in sys.modules)\n"
        "from transformers import pipeline\nimport scipy.stats\nprint(callable(pipeline))\n")
    assert out == ["0.5", "True", "False", "False", "False", "True"]


def test_library_use_keeps_evaluates_evaluator():
    out = _run_python("import sys\nfrom hftool.metrics import Accuracy\n"
                      "print(sys.modules['evaluate.evaluator.base'].TRANSFORMERS_AVAILABLE)\n")
    assert out == ["True"]


def test_unknown_metric_name_is_an_attribute_error():
    import hftool.metrics

    with pytest.raises(AttributeError, match="NoSuchMetric"):
        hftool.metrics.NoSuchMetric  # noqa: B018
    assert "Seqeval" in dir(hftool.metrics)
