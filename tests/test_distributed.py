"""Two CPU processes (gloo, through torchrun) give what one process gives."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO, sentiment_rows
from tests.test_bert_cls import write_csv

NO_DROPOUT = "model.config_overrides={hidden_dropout_prob: 0.0, attention_probs_dropout_prob: 0.0}"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("dist-data")
    # 100 train rows: a global batch of 16 leaves a short batch each epoch (topped up, not dropped)
    return {"train": write_csv(root / "train.csv", sentiment_rows(100, 30)),
            "val": write_csv(root / "val.csv", sentiment_rows(37, 31))}  # 37: uneven across 2 processes


def hftool(*args, launcher=(), check=True):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    command = [*launcher, *(["-m", "hftool"] if launcher else [sys.executable, "-m", "hftool"]), *map(str, args)]
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    if check:
        assert result.returncode == 0, result.stderr[-3000:]
    return result


def finetune(data, out, batch_size, *extra):
    # fp32: 2 x 8 and 1 x 16 agree to float rounding, which bf16 autocast (the default where the
    # CPU has it) would widen to bf16 rounding of the activations.
    return hftool("finetune", "bert-cls", "--data", data["train"], "--eval-data", data["val"], "-o", out,
                  "--max-steps", "8", "--batch-size", batch_size, "train.eval_steps=4", "train.logging_steps=2",
                  "--mixed-precision", "no", NO_DROPOUT, *extra)


@pytest.fixture(scope="module")
def runs(data, tmp_path_factory):
    root = tmp_path_factory.mktemp("dist-runs")
    finetune(data, root / "one", 16)
    finetune(data, root / "two", 8, "--num-processes", 2)  # same global batch: 2 x 8
    return root / "one", root / "two"


def test_two_processes_train_to_the_same_metrics(runs):
    one, two = runs
    m1, m2 = (json.loads((run / "metrics.json").read_text()) for run in runs)
    for key, value in m1.items():
        if key.startswith("eval_"):
            assert m2[key] == pytest.approx(value, abs=1e-5), key
    losses = [[r["loss"] for r in map(json.loads, (run / "log.jsonl").read_text().splitlines()) if r["type"] == "train"]
              for run in runs]
    assert losses[1] == pytest.approx(losses[0], abs=1e-5)


def test_only_the_main_process_writes(runs):
    one, two = runs
    files = [sorted(p.relative_to(run).as_posix() for p in run.rglob("*") if "checkpoints" not in p.parts)
             for run in runs]
    assert files[0] == files[1]
    records = (two / "log.jsonl").read_text().splitlines()
    assert len(records) == len(set(records)) == len((one / "log.jsonl").read_text().splitlines())
    # each process keeps its own random state in a checkpoint, so a resume restores both
    assert {p.name for p in (two / "checkpoints" / "step-0000008").iterdir()} >= {"random_states_0.pkl",
                                                                                 "random_states_1.pkl"}


TORCHRUN_2 = (sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone")


def test_two_processes_train_ner_to_the_same_metrics(tmp_path):
    """A second task, with windows and per-token labels: 2 x 4 == 1 x 8 within 1e-5."""
    args = ("--max-steps", "6", "train.eval_steps=6", "train.logging_steps=2", NO_DROPOUT)
    hftool("finetune", "bert-ner", "-o", tmp_path / "one", "--batch-size", 8, *args)
    hftool("finetune", "bert-ner", "-o", tmp_path / "two", "--batch-size", 4, "--num-processes", 2, *args)
    m1, m2 = (json.loads((tmp_path / run / "metrics.json").read_text()) for run in ("one", "two"))
    assert m1["eval_f1"] is not None and m2.keys() == m1.keys()
    for key, value in m1.items():
        if key.startswith("eval_"):
            assert m2[key] == pytest.approx(value, abs=1e-5), key


def test_a_process_that_fails_ends_the_run_with_its_error(tmp_path):
    """One process meets a damaged image (only its share of a batch holds it): the run stops, no
    hang, with that process's one-line error and exit code, and no launcher traceback."""
    from PIL import Image

    for name, colour in (("red", (220, 30, 30)), ("blue", (30, 30, 220))):
        (tmp_path / "images" / name).mkdir(parents=True)
        for i in range(12):
            Image.new("RGB", (32, 32), colour).save(tmp_path / "images" / name / f"{i}.png")
    damaged = tmp_path / "images" / "red" / "0.png"
    damaged.write_bytes(damaged.read_bytes()[:60])  # the header passes the up-front check; the pixels do not
    result = hftool("finetune", "vit-cls", "--data", tmp_path / "images", "-o", tmp_path / "run", "--batch-size", 2,
                    "--max-steps", 20, "--num-processes", 2, "data.validation_split=0.25", check=False)
    assert result.returncode == 2, result.stderr[-3000:]
    assert f"error: {damaged}: cannot be decoded" in result.stderr
    assert "process 1 failed" in result.stderr or "process 0 failed" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "run" / "metrics.json").exists()


def test_two_processes_train_lora_to_the_same_adapters(data, tmp_path):
    """model.peft=lora under DDP: 2 x 8 == 1 x 16 within 1e-5, metrics and adapter weights."""
    from safetensors.torch import load_file

    lora = ("model.peft=lora", "peft.dropout=0.0")
    finetune(data, tmp_path / "one", 16, *lora)
    finetune(data, tmp_path / "two", 8, "--num-processes", 2, *lora)
    m1, m2 = (json.loads((tmp_path / run / "metrics.json").read_text()) for run in ("one", "two"))
    for key, value in m1.items():
        if key.startswith("eval_"):
            assert m2[key] == pytest.approx(value, abs=1e-5), key
    w1, w2 = (load_file(tmp_path / run / "adapter_model.safetensors") for run in ("one", "two"))
    assert w1.keys() == w2.keys() and any("lora_B" in key for key in w1)
    for key in w1:
        assert (w1[key] - w2[key]).abs().max() < 1e-5, key
