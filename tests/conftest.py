"""Shared test setup: offline always, tiny data, and a way to run the CLI in-process."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import contextlib
import re
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


def evaluate_in_processes(run: Path, out: Path, processes: int) -> tuple[dict, list[dict]]:
    """`hftool evaluate RUN -b 3 eval.save_predictions=true` under torch.distributed.run with
    `processes` processes: (metrics, prediction records)."""
    import json
    import subprocess

    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes), "--standalone",
               "-m", "hftool", "evaluate", str(run), "-b", "3", "-o", str(out), "eval.save_predictions=true"]
    done = subprocess.run(command, cwd=REPO, env={**os.environ, "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    predictions = out.with_name(out.stem + ".predictions.jsonl")
    return json.loads(out.read_text()), [json.loads(line) for line in predictions.read_text().splitlines()]


PYTHON_BLOCK = re.compile(r"```python\n(.*?)```", re.S)
# What transformers and timm print when a saved model does not hold every weight it should.
LOAD_WARNINGS = re.compile(r"newly initiali[sz]ed|\bMISSING\b|\bUNEXPECTED\b|unexpected keys|missing keys", re.I)


def run_card_snippets(run_dir: Path, workdir: Path) -> list[str]:
    """Run each ```python block of a run's model card as its own script, as a user would: from a
    copy of the run dir (the snippets load "."), with an `image.png` there (what image tasks'
    snippets read), in a fresh interpreter. Returns their outputs; fails on an error, no output,
    or a load warning."""
    import shutil
    import subprocess

    from PIL import Image

    copy = workdir / "card-run"
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("checkpoints", "logs"))
    Image.new("RGB", (72, 56), (200, 40, 40)).save(copy / "image.png")
    blocks = PYTHON_BLOCK.findall((copy / "README.md").read_text(encoding="utf-8"))
    assert blocks, "the model card has no python block"
    outputs = []
    for block in blocks:
        done = subprocess.run([sys.executable, "-c", block], cwd=copy, capture_output=True, text=True, timeout=600,
                              env={**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"})
        assert done.returncode == 0, f"{block}\n{done.stderr[-3000:]}"
        assert done.stdout.strip(), block
        assert not LOAD_WARNINGS.search(done.stderr), f"{block}\n{done.stderr[-3000:]}"
        outputs.append(done.stdout)
    return outputs


def readme_clients() -> dict[str, tuple[str, list[str]]]:
    """The README's "Models/outputs" table: recipe -> (library_name, the code that loads RUN)."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text.split("### Models/outputs", 1)[1].split("\n#", 1)[0]
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in section.splitlines()
            if line.startswith("| `")]
    return {recipe.strip("`"): (library, re.findall(r"`([^`]+)`", code)) for recipe, library, code in rows}


def client_namespace(run: Path) -> dict:
    """What the README's loading code names: the clients, and RUN."""
    import timm
    from transformers import (AutoModel, AutoModelForSeq2SeqLM, ImageGPTForCausalImageModeling,
                              ImageGPTImageProcessor, pipeline)

    return {"timm": timm, "AutoModel": AutoModel, "AutoModelForSeq2SeqLM": AutoModelForSeq2SeqLM,
            "ImageGPTForCausalImageModeling": ImageGPTForCausalImageModeling,
            "ImageGPTImageProcessor": ImageGPTImageProcessor, "pipeline": pipeline, "RUN": str(run)}
