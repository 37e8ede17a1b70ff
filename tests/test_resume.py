"""Kill a run mid-way (SIGKILL), resume it, and get what an unbroken run gets."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import REPO, sentiment_rows
from tests.test_bert_cls import write_csv


def command(data, out, *extra, recipe="bert-cls"):
    # gpt2: the embedded sample in 64-token blocks, a tokenizer trained at the start (a resumed
    # run must reuse the saved one, not train another)
    source = (["--data", str(data["train"]), "--eval-data", str(data["val"])] if recipe == "bert-cls"
              else ["data.block_size=64"])
    return [sys.executable, "-m", "hftool", "finetune", recipe, *source, "-o", str(out), "--max-steps", "30",
            "--batch-size", "8", "train.eval_steps=10", "train.save_steps=4", "train.logging_steps=2", *extra]


def eval_records(run_dir):
    records = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    return [r for r in records if r["type"] == "eval"], [(r["step"], r["loss"]) for r in records if r["type"] == "train"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume-data")
    # 100 rows / batch 8: 13 batches an epoch, so the kill lands mid-epoch in epoch 0 or 1
    return {"train": write_csv(root / "train.csv", sentiment_rows(100, 20)),
            "val": write_csv(root / "val.csv", sentiment_rows(30, 21))}


@pytest.mark.parametrize("recipe", ["bert-cls", "gpt2"])
def test_sigkill_then_resume_matches_an_unbroken_run(data, tmp_path, recipe):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    unbroken = tmp_path / "unbroken"
    subprocess.run(command(data, unbroken, recipe=recipe), cwd=REPO, env=env, check=True, capture_output=True)

    broken = tmp_path / "broken"
    process = subprocess.Popen(command(data, broken, recipe=recipe), cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    target = broken / "checkpoints" / "step-0000016"  # mid-epoch (epoch 1, batch 3)
    deadline = time.time() + 240
    while not target.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (broken / "metrics.json").exists(), "the run finished before it could be killed"

    resumed = subprocess.run(command(data, broken, "--resume", recipe=recipe), cwd=REPO, env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from step-" in resumed.stderr

    expected = json.loads((unbroken / "metrics.json").read_text())
    got = json.loads((broken / "metrics.json").read_text())
    for key, value in expected.items():
        if key.startswith("eval_"):
            assert got[key] == pytest.approx(value, abs=1e-6), key
    (_, losses_a), (evals_b, losses_b) = eval_records(unbroken), eval_records(broken)
    assert [e["step"] for e in evals_b] == [10, 20, 30]  # no duplicate records from the killed part
    assert [s for s, _ in losses_b] == [s for s, _ in losses_a]
    assert [loss for _, loss in losses_b] == pytest.approx([loss for _, loss in losses_a], abs=1e-6)


def test_resume_without_a_checkpoint_starts_fresh_with_a_warning(data, tmp_path, cli):
    from hftool.runs import write_marker

    run = tmp_path / "run"
    write_marker(run)  # a run's first file
    (run / "checkpoints" / ".tmp-step-0000004").mkdir(parents=True)  # a save killed half-way
    result = cli("finetune", "bert-cls", "--data", data["train"], "--eval-data", data["val"], "-o", run,
                 "--max-steps", "2", "--resume")
    assert result.code == 0, result.err
    assert "no complete checkpoint" in result.err
    assert (run / "metrics.json").is_file()
    assert not (run / "checkpoints" / ".tmp-step-0000004").exists()  # cleaned by the next save


@pytest.mark.parametrize("processes", [1, 2])
def test_sigterm_saves_a_checkpoint_and_says_how_to_resume(data, tmp_path, processes):
    """With 2 processes the signal goes to the launcher, which passes it on: both stop at the same
    step, one checkpoint, one message, the launcher exits 128 + SIGTERM too."""
    run = tmp_path / "run"
    process = subprocess.Popen(command(data, run, "train.save_steps=1000", "train.eval_steps=1000",
                                       "--num-processes", str(processes), "--max-steps", "400"), cwd=REPO,
                               env={**os.environ, "PYTHONUNBUFFERED": "1"}, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    log = run / "log.jsonl"
    deadline = time.time() + 240
    while not (log.exists() and log.read_text().count("\n") >= 2) and process.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGTERM, err
    assert err.count("error: stopped by SIGTERM") == 1 and "Traceback" not in err, err[-3000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: stopped by SIGTERM at step") and "--resume" in last
    step = int(last.split("at step ")[1].split(";")[0])
    assert (run / "checkpoints" / f"step-{step:07d}" / "trainer_state.json").is_file()
    assert not (run / "metrics.json").exists()
