"""Offline metrics: `evaluate.Metric` subclasses defined here, so nothing is downloaded.

Every module's `compute()` returns a flat `dict[str, float]`. Instances keep their buffers in
memory (`keep_in_memory=True`), so processes never contend for evaluate's cache files.

The classes load on first use (`from hftool.metrics import Accuracy` imports the classification
module only), so a text classifier's run does not import seqeval, pycocotools or sacrebleu.
"""

from __future__ import annotations

import importlib
import sys

import hftool

_WHERE = {"Accuracy": "classification", "PrecisionRecallF1": "classification",
          "TopKAccuracy": "classification", "CocoMeanAP": "detection", "GeneratedCaptions": "captioning", "Perplexity": "perplexity",
          "BitsPerDim": "perplexity", "GeneratedExactMatch": "exact_match", "LinearProbe": "probe",
          "SampleQuality": "samples", "ClassAccuracy": "samples", "Mean": "samples", "Seqeval": "tagging",
          "TextOverlap": "text_overlap"}
__all__ = sorted([*_WHERE, "combine"])

# Imported by evaluate's package but used only by its Evaluator, which hftool never calls:
# transformers.pipelines (and through it torchvision) and scipy.stats (for bootstrapping).
_EVALUATOR_ONLY = ("transformers.pipelines", "scipy.stats")


def _import_evaluate_without_evaluator() -> None:
    """Import `evaluate` with its Evaluator's imports hidden, in the `hftool` command's process.

    Only there (`hftool._cli_process`), where nothing uses `evaluate.evaluator`: it then reports
    transformers as missing. Library users get the plain import. The hidden modules stay
    importable afterwards.
    """
    if "evaluate" in sys.modules or not hftool._cli_process:
        return
    hidden = [name for name in _EVALUATOR_ONLY if name not in sys.modules]
    for name in hidden:
        sys.modules[name] = None  # importing a None entry raises ImportError, which evaluate handles
    try:
        import evaluate  # noqa: F401
    finally:
        for name in hidden:
            if sys.modules.get(name, ...) is None:
                del sys.modules[name]


_import_evaluate_without_evaluator()


def combine(modules: list):
    """`evaluate.combine`: several metric modules computed as one."""
    import evaluate

    return evaluate.combine(modules)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module 'hftool.metrics' has no attribute {name!r}")
    return getattr(importlib.import_module(f"hftool.metrics.{_WHERE[name]}"), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *_WHERE])
