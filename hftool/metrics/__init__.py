"""Offline metrics: `evaluate.Metric` subclasses defined here, so nothing is downloaded.

Every module's `compute()` returns a flat `dict[str, float]`. Instances keep their buffers in
memory (`keep_in_memory=True`), so processes never contend for evaluate's cache files.
"""

from hftool.metrics.classification import Accuracy, ConfusionMatrix, PrecisionRecallF1, TopKAccuracy
from hftool.metrics.detection import CocoMeanAP
from hftool.metrics.perplexity import Perplexity
from hftool.metrics.tagging import Seqeval
from hftool.metrics.text_overlap import TextOverlap

__all__ = ["Accuracy", "CocoMeanAP", "ConfusionMatrix", "Perplexity", "PrecisionRecallF1", "Seqeval", "TextOverlap",
           "TopKAccuracy"]
