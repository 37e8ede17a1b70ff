"""Shared test setup: offline always, tiny data, and a way to run the CLI in-process."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import contextlib
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@dataclass
class Result:
    code: int
    out: str
    err: str


@pytest.fixture
def cli(capsys, monkeypatch):
    """Run `hftool ARGS...` in this process (torch stays imported between tests)."""
    from hftool.cli import main

    def run(*args: str) -> Result:
        monkeypatch.setattr(sys, "argv", ["hftool", *map(str, args)])
        capsys.readouterr()
        reattach_log_handlers()
        code = 0
        try:
            main()
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
        captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)

    return run


def reattach_log_handlers() -> None:
    """Point log handlers whose stream is closed at the current stderr. Libraries (transformers,
    datasets, huggingface_hub) create their handler on first use, bound to that moment's stderr:
    in a test, an earlier test's captured stream, closed since; logging to it would print a
    "Logging error" traceback into this test's stderr."""
    import logging

    for logger in [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]:
        for handler in getattr(logger, "handlers", ()):
            if type(handler) is logging.StreamHandler and getattr(handler.stream, "closed", False):
                handler.stream = sys.stderr
                if "flush" in vars(handler):  # transformers binds flush to the stream it started with
                    handler.flush = sys.stderr.flush


@contextlib.contextmanager
def environment_at_each_step(task, names):
    """Yield a list that gets, at every training step of `task`, the values of the environment
    variables `names` (None when unset)."""
    seen = []
    original = task.train_loss

    def recording(*args, **kwargs):
        seen.append({name: os.environ.get(name) for name in names})
        return original(*args, **kwargs)

    task.train_loss = recording
    try:
        yield seen
    finally:
        del task.train_loss


def sentiment_rows(n: int, seed: int) -> list[dict]:
    from hftool.samples.sentiment import generate

    rows = generate(n, seed)
    return [{"text": t, "label": l} for t, l in zip(rows["text"], rows["label"])]


@pytest.fixture
def sentiment_csv(tmp_path):
    """train.csv (160 rows) and val.csv (40 rows) of the embedded sentiment generator."""
    import csv

    paths = {}
    for name, n, seed in (("train", 160, 10), ("val", 40, 11)):
        path = tmp_path / f"{name}.csv"
        with open(path, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=["text", "label"])
            writer.writeheader()
            writer.writerows(sentiment_rows(n, seed))
        paths[name] = path
    return paths
