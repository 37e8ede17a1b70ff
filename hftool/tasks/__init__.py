"""The task registry: task name -> the class that implements it.

Adding a task is one module beside these and one line here. Task modules import no heavy library
at import time (see hftool/tasks/base.py), so reading the registry is cheap: the CLI builds its
per-task options from it at start-up.
"""

from __future__ import annotations

from hftool.errors import HftoolError
from hftool.tasks.base import Task
from hftool.tasks.causal_lm import CausalLM
from hftool.tasks.gan import Gan
from hftool.tasks.image_captioning import ImageCaptioning
from hftool.tasks.image_classification import ImageClassification
from hftool.tasks.image_gpt import ImageGPT
from hftool.tasks.object_detection import ObjectDetection
from hftool.tasks.seq2seq import Seq2Seq
from hftool.tasks.text_classification import TextClassification
from hftool.tasks.time_series_forecasting import TimeSeriesForecasting
from hftool.tasks.token_classification import TokenClassification
from hftool.tasks.video_classification import VideoClassification

TASKS: dict[str, type[Task]] = {task.name: task for task in (
    TextClassification,
    TokenClassification,
    CausalLM,
    ImageClassification,
    ObjectDetection,
    ImageCaptioning,
    Seq2Seq,
    TimeSeriesForecasting,
    ImageGPT,
    Gan,
    VideoClassification,
)}


def task_class(name: str) -> type[Task]:
    if name not in TASKS:
        raise HftoolError(f"unknown task '{name}'; known tasks: {', '.join(TASKS)}")
    return TASKS[name]


def get_task(name: str) -> Task:
    """An instance of the task registered under `name`."""
    return task_class(name)()


def task_of_architectures(architectures: list[str]) -> str | None:
    """The task whose declared architecture suffixes match a config.json's `architectures`."""
    return next((task.name for arch in architectures for task in TASKS.values()
                 if any(arch.endswith(suffix) for suffix in task.architectures)), None)
