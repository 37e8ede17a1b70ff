"""Linear probe: how well a logistic regression on a model's features predicts the class.

Image GPT's headline measure of what a generative model learned (Chen et al., 2020). The probe is
fitted and scored on the evaluation examples by stratified 5-fold cross-validation (scikit-learn),
so `hftool evaluate` reproduces it from the evaluation data alone.
"""

from __future__ import annotations

import math

import datasets
import evaluate
import numpy as np

FOLDS = 5


class LinearProbe(evaluate.Metric):
    """Cross-validated accuracy of a logistic regression from `probe_features` to `labels`."""

    def __init__(self, seed: int = 0, **kwargs):
        super().__init__(keep_in_memory=True, **kwargs)
        self.seed = seed

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description="Linear-probe accuracy (logistic regression, stratified k-fold cross-validation).",
            citation="", inputs_description="probe_features: a feature vector per example; labels: class ids",
            features=datasets.Features({"probe_features": datasets.Sequence(datasets.Value("float32")),
                                        "labels": datasets.Value("int64")}))

    def _compute(self, probe_features, labels) -> dict[str, float]:
        from sklearn.linear_model import LogisticRegression
        from sklearn.model_selection import StratifiedKFold, cross_val_score
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        features, labels = np.asarray(probe_features, dtype=np.float64), np.asarray(labels)
        folds = min(FOLDS, int(np.bincount(labels).min(initial=len(labels))) if len(labels) else 0)
        if folds < 2 or len(np.unique(labels)) < 2:  # cross-validation needs two of each class, and two classes
            return {"probe_accuracy": math.nan}
        probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
        scores = cross_val_score(probe, features, labels, cv=StratifiedKFold(folds, shuffle=True, random_state=self.seed))
        return {"probe_accuracy": float(scores.mean())}
