"""The task registry: task name -> the class that implements it (imported on first use)."""

from __future__ import annotations

import importlib

# name -> "module:Class". Strings, so `hftool --help` imports no torch.
TASKS = {
    "text-classification": "hftool.tasks.text_classification:TextClassification",
    "token-classification": "hftool.tasks.token_classification:TokenClassification",
    "causal-lm": "hftool.tasks.causal_lm:CausalLM",
    "image-classification": "hftool.tasks.image_classification:ImageClassification",
    "object-detection": "hftool.tasks.object_detection:ObjectDetection",
    "image-captioning": "hftool.tasks.image_captioning:ImageCaptioning",
    "seq2seq": "hftool.tasks.seq2seq:Seq2Seq",
    "time-series-forecasting": "hftool.tasks.time_series_forecasting:TimeSeriesForecasting",
}


def get_task(name: str):
    """An instance of the task registered under `name`."""
    from hftool.errors import HftoolError

    if name not in TASKS:
        raise HftoolError(f"unknown task '{name}'; known tasks: {', '.join(TASKS)}")
    module, _, cls = TASKS[name].partition(":")
    return getattr(importlib.import_module(module), cls)()
