"""bert-cls end to end, and the loop behaviours the reference scripts get wrong."""

from __future__ import annotations

import json
import os

import pytest
import torch

from hftool import api
from hftool.config import load_config
from tests.conftest import environment_at_each_step, sentiment_rows


def write_csv(path, rows):
    import csv

    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=["text", "label"])
        writer.writeheader()
        writer.writerows(rows)
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    return {"train": write_csv(root / "train.csv", sentiment_rows(160, 10)),
            "val": write_csv(root / "val.csv", sentiment_rows(37, 11))}  # 37: no batch size divides it


@pytest.fixture(scope="module")
def run(tmp_path_factory, data):
    """One short training run shared by the read-only tests below."""
    out = tmp_path_factory.mktemp("runs") / "run"
    cfg = load_config("bert-cls", overrides=[
        f"data.train={data['train']}", f"data.eval={data['val']}", f"output_dir={out}",
        "train.max_steps=12", "train.eval_steps=6", "train.batch_size=16", "train.logging_steps=3",
        "eval.save_predictions=true"])
    run_dir, metrics = api.finetune(cfg, recipe="bert-cls", command="hftool finetune bert-cls ...")
    return run_dir, metrics


def test_run_dir_has_every_artifact(run):
    run_dir, metrics = run
    for name in ("config.json", "model.safetensors", "tokenizer.json", "config.yaml", "metrics.json", "log.jsonl",
                 "curves.svg", "README.md", "provenance.json"):
        assert (run_dir / name).is_file(), name
    saved = json.loads((run_dir / "metrics.json").read_text())
    assert saved == metrics
    assert {"eval_loss", "eval_accuracy", "eval_f1_macro", "eval_f1_micro", "eval_f1_weighted"} <= set(saved)
    records = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["type"] == "eval"] == [6, 12]
    assert [r["step"] for r in records if r["type"] == "train"] == [3, 6, 9, 12]
    card = (run_dir / "README.md").read_text()
    assert "eval_accuracy" in card and "hftool finetune bert-cls" in card
    provenance = json.loads((run_dir / "provenance.json").read_text())
    assert provenance["packages"]["torch"] and len(provenance["data"]["train"]["sha256"]) == 64
    from hftool.runtime import resolve_mixed_precision

    # what train.mixed_precision=auto (the default) became on this machine
    assert provenance["precision"] == {"no": "fp32"}.get(resolve_mixed_precision("auto"), "bf16")


def test_curves_show_loss_metric_for_best_and_headline_metrics_once_with_readable_ticks(run):
    import xml.etree.ElementTree as ET

    run_dir, metrics = run
    svg = ET.parse(run_dir / "curves.svg").getroot()
    ns = "{http://www.w3.org/2000/svg}"
    texts = list(svg.iter(f"{ns}text"))
    titles = [t.text for t in texts if t.get("font-weight") == "bold"]
    # micro P/R/F1 equal accuracy for a single-label classifier: drawn once, named under its title
    assert titles == ["loss", "eval_accuracy (metric_for_best)", "eval_f1_macro"]
    subtitle = texts[[t.text for t in texts].index(titles[1]) + 1].text
    assert {"f1_micro", "precision_micro", "recall_micro"} <= set(subtitle.removeprefix("= ").split(", "))
    lines = {p.get("data-label"): p.get("points").split() for p in svg.iter(f"{ns}polyline")}
    assert len(lines["train loss"]) == 4 and len(lines["eval loss"]) == 2 and len(lines["eval_accuracy"]) == 2
    # SVG's y grows downwards: the larger of the two logged train losses is drawn higher.
    records = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if r["type"] == "train"]
    ys = [float(p.split(",")[1]) for p in lines["train loss"]]
    assert sorted(range(4), key=lambda i: losses[i]) == sorted(range(4), key=lambda i: -ys[i])
    # round ticks with gridlines: the loss axis is labelled at three or more evenly spaced values
    ticks = [float(t.text) for t in texts if t.get("text-anchor") == "end" and float(t.get("x")) < 100
             and float(t.get("y")) < 290 and t.text.replace(".", "").replace("-", "").isdigit()]  # the first panel
    assert len(ticks) >= 3 and len({round(b - a, 9) for a, b in zip(ticks, ticks[1:])}) == 1
    grid = [line for line in svg.iter(f"{ns}line") if line.get("stroke") == "#e3e3e3"]
    assert len(grid) >= 3 * len(titles)


def test_saved_predictions_are_the_scored_examples_in_data_order(run, data, cli, tmp_path):
    import csv

    run_dir, metrics = run
    records = [json.loads(line) for line in (run_dir / "predictions.jsonl").read_text().splitlines()]
    with open(data["val"], encoding="utf-8") as f:
        labels = [row["label"] for row in csv.DictReader(f)]
    assert [r["index"] for r in records] == list(range(len(labels)))
    assert [r["reference"] for r in records] == labels  # rows map back through the length sort
    assert sum(r["prediction"] == r["reference"] for r in records) / len(records) == pytest.approx(metrics["eval_accuracy"])
    assert sum(r["loss"] for r in records) / len(records) == pytest.approx(metrics["eval_loss"], abs=1e-5)
    # `hftool evaluate` writes them beside its --output, and needs one
    result = cli("evaluate", run_dir, "--data", data["val"], "-o", tmp_path / "test.json", "eval.save_predictions=true")
    assert result.code == 0, result.err
    again = [json.loads(line) for line in (tmp_path / "test.predictions.jsonl").read_text().splitlines()]
    assert [(r["index"], r["prediction"]) for r in again] == [(r["index"], r["prediction"]) for r in records]
    result = cli("evaluate", run_dir, "--data", data["val"], "eval.save_predictions=true")
    assert result.code == 2 and "needs --output" in result.err


def test_pipeline_loads_the_run_dir_and_returns_label_names(run):
    from transformers import pipeline

    run_dir, _ = run
    out = pipeline("text-classification", model=str(run_dir), device="cpu")(["the plot was wonderful"])
    assert out[0]["label"] in {"negative", "positive"}


def test_evaluate_reproduces_metrics_json(run, data, cli, tmp_path):
    run_dir, metrics = run
    out = tmp_path / "m.json"
    result = cli("evaluate", run_dir, "--data", data["val"], "--output", out, "--batch-size", "5")
    assert result.code == 0, result.err
    scored = json.loads(out.read_text())
    assert json.loads(result.out) == scored
    # Another batch size pads differently: fp32 sums agree to rounding; in bf16 autocast (the
    # default on CPUs with native bf16) a last-bit difference can round an activation the other way.
    bf16 = json.loads((run_dir / "provenance.json").read_text())["precision"] == "bf16"
    for key, value in metrics.items():
        if key.startswith("eval_"):
            assert scored[key] == pytest.approx(value, rel=1e-4 if bf16 else 0, abs=1e-6), key
    # with no --data, a run dir re-scores its own validation data
    assert api.evaluate(str(run_dir))["eval_accuracy"] == pytest.approx(metrics["eval_accuracy"], abs=1e-6)


def test_predict_prints_label_names_and_writes_jsonl(run, cli, tmp_path):
    run_dir, _ = run
    inputs = tmp_path / "in.txt"
    inputs.write_text("a dull film\n\nthe ending was superb\n")
    out = tmp_path / "p.jsonl"
    result = cli("predict", run_dir, "the cast was wonderful", "--file", inputs, "--output", out)
    assert result.code == 0, result.err
    lines = result.out.strip().splitlines()
    assert len(lines) == 3 and all(line.split("\t")[0] in {"negative", "positive"} for line in lines)
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["text"] for r in records] == ["the cast was wonderful", "a dull film", "the ending was superb"]
    assert all(0.5 <= r["score"] <= 1 for r in records)


def test_best_checkpoint_is_the_saved_model_and_reloads_identically(run):
    from safetensors.torch import load_file
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    run_dir, _ = run
    state = json.loads(sorted((run_dir / "checkpoints").glob("step-*"))[-1].joinpath("trainer_state.json").read_text())
    best = run_dir / "checkpoints" / f"step-{state['best_step']:07d}"
    saved, checkpoint = load_file(run_dir / "model.safetensors"), load_file(best / "model.safetensors")
    assert saved.keys() == checkpoint.keys()
    assert all(torch.equal(saved[k], checkpoint[k]) for k in saved)
    tokenizer = AutoTokenizer.from_pretrained(run_dir)
    batch = tokenizer(["the plot was not clever", "a superb film"], return_tensors="pt", padding=True)
    model = AutoModelForSequenceClassification.from_pretrained(run_dir).eval()
    again = AutoModelForSequenceClassification.from_pretrained(run_dir).eval()
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, again(**batch).logits)
    predicted = api.predict(str(run_dir), ["the plot was not clever", "a superb film"])
    expected = model(**batch).logits.softmax(-1).max(-1)
    assert [p["label"] for p in predicted] == [model.config.id2label[i] for i in expected.indices.tolist()]


def trainer_for(data, tmp_path, *overrides):
    from hftool.training import Trainer

    cfg = load_config("bert-cls", overrides=[f"data.train={data['train']}", f"data.eval={data['val']}",
                                             "train.batch_size=8", *overrides])
    trainer = Trainer(cfg, tmp_path / "run")
    trainer.setup()
    return trainer


def test_text_training_caps_the_cpu_kernel_caches_while_it_runs_and_keeps_a_users_value(data, tmp_path,
                                                                                         monkeypatch):
    """Dynamically padded batches change shape nearly every step: uncapped, oneDNN's kernel
    caches grow for the whole run (benchmarks/README.md)."""
    from hftool.training import KERNEL_CACHE_VARIABLES

    primitives, lru = KERNEL_CACHE_VARIABLES
    monkeypatch.delenv(primitives, raising=False)
    monkeypatch.setenv(lru, "500")
    trainer = trainer_for(data, tmp_path, "train.max_steps=2")
    with environment_at_each_step(trainer.task, KERNEL_CACHE_VARIABLES) as seen:
        trainer.train()
    assert seen == [{primitives: "32", lru: "500"}] * 2
    assert primitives not in os.environ and os.environ[lru] == "500"  # processes started later get the defaults


def test_accumulation_steps_the_optimizer_after_every_nth_micro_batch(data, tmp_path):
    """Not after the first micro-batch (`step % n == 0` on 0), and once at a short epoch's end."""
    trainer = trainer_for(data, tmp_path, "train.gradient_accumulation_steps=3", "train.epochs=1")
    seen = []
    inner = trainer.optimizers["model"].optimizer
    original = inner.step

    def recording_step(*args, **kwargs):
        seen.append(trainer.state.batches_in_epoch + 1)  # counted after the step returns
        return original(*args, **kwargs)

    inner.step = recording_step
    trainer.train()
    # 160 rows / batch 8 = 20 micro-batches: steps after 3, 6, ..., 18 and the last (20)
    assert seen == [3, 6, 9, 12, 15, 18, 20]
    assert trainer.state.global_step == 7


def test_checkpoints_are_saved_once_per_save_point_not_per_micro_batch(data, tmp_path, monkeypatch):
    from hftool.training import Trainer

    saves = []
    real = Trainer.save_checkpoint
    monkeypatch.setattr(Trainer, "save_checkpoint", lambda self: saves.append(self.state.global_step) or real(self))
    trainer = trainer_for(data, tmp_path, "train.gradient_accumulation_steps=2", "train.save_steps=2",
                          "train.max_steps=6", "train.eval_steps=3", "train.save_total_limit=10")
    trainer.train()
    assert saves == [2, 3, 4, 6]
    names = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert names == ["step-0000002", "step-0000003", "step-0000004", "step-0000006"]


def test_old_checkpoints_rotate_but_the_best_stays(data, tmp_path):
    trainer = trainer_for(data, tmp_path, "train.max_steps=8", "train.eval_steps=2", "train.save_total_limit=1",
                          "train.metric_for_best=loss")
    trainer.train()
    names = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    best = f"step-{trainer.state.best_step:07d}"
    assert best in names and "step-0000008" in names and len(names) == len({best, "step-0000008"})


def test_early_stopping(data, tmp_path):
    trainer = trainer_for(data, tmp_path, "train.max_steps=40", "train.eval_steps=1",
                          "train.early_stopping_patience=2", "train.lr=0.0")  # nothing can improve
    trainer.train()
    assert trainer.state.global_step == 3  # best at 1, two evaluations without improvement


def test_tracker_config_and_outputs_never_contain_the_token(data, tmp_path):
    pytest.importorskip("tensorboard")
    secret = "hf_DoNotLeakThisToken"
    trainer = trainer_for(data, tmp_path, "train.max_steps=2", "train.tracking=tensorboard", f"model.token={secret}")
    trainer.train()
    trainer.finish()
    files = [p for p in (tmp_path / "run").rglob("*") if p.is_file()]
    assert any("events.out.tfevents" in p.name for p in files)  # the tracker really wrote
    for path in files:
        assert secret.encode() not in path.read_bytes(), path


def test_trackers_write_beside_the_model_with_train_and_eval_prefixes(data, tmp_path):
    """TensorBoard writes into RUN/logs/tensorboard (or train.logging_dir), never among the
    model's files, and every scalar is train/... or eval/..."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    trainer = trainer_for(data, tmp_path, "train.max_steps=4", "train.eval_steps=2", "train.logging_steps=2",
                          "train.tracking=tensorboard")
    trainer.train()
    trainer.finish()
    run, logs = tmp_path / "run", tmp_path / "run" / "logs" / "tensorboard"
    events = list(run.rglob("events.out.tfevents*"))
    assert events and all(p.is_relative_to(logs) for p in events)
    tags = set(EventAccumulator(str(logs)).Reload().Tags()["scalars"])
    assert {"train/loss", "train/lr", "eval/loss", "eval/accuracy"} <= tags
    assert all(tag.startswith(("train/", "eval/")) and "eval_" not in tag for tag in tags), tags

    elsewhere = tmp_path / "tensorboard"
    trainer = trainer_for(data, tmp_path / "other", "train.max_steps=2", "train.tracking=tensorboard",
                          f"train.logging_dir={elsewhere}")
    trainer.train()
    trainer.finish()
    assert list(elsewhere.rglob("events.out.tfevents*")) and not (tmp_path / "other" / "run" / "logs").exists()


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_every_file_a_run_writes_has_the_mode_the_umask_gives(data, tmp_path, umask):
    """Weights included (safetensors writes 0600 files), in the run dir and its checkpoints, so a
    colleague or a serving container running as another user can read them."""
    previous = os.umask(umask)
    try:
        trainer = trainer_for(data, tmp_path, "train.max_steps=2", "train.save_steps=1", "train.tracking=tensorboard")
        trainer.train()
        trainer.finish()
    finally:
        os.umask(previous)
    run = tmp_path / "run"
    modes = {str(p.relative_to(run)): p.stat().st_mode & 0o777 for p in run.rglob("*")}
    assert "model.safetensors" in modes and "checkpoints/step-0000001/model.safetensors" in modes
    wrong = {name: oct(mode) for name, mode in modes.items()
             if mode != (0o777 if (run / name).is_dir() else 0o666) & ~umask}
    assert not wrong


def test_resume_refuses_a_different_setup(data, tmp_path):
    from hftool.errors import HftoolError
    from hftool.training import Trainer

    trainer = trainer_for(data, tmp_path, "train.max_steps=2", "train.save_steps=1")
    trainer.train()
    cfg = load_config("bert-cls", overrides=[f"data.train={data['train']}", f"data.eval={data['val']}",
                                             "train.batch_size=8", "train.gradient_accumulation_steps=2"])
    resumed = Trainer(cfg, tmp_path / "run", resume=True)
    with pytest.raises(HftoolError, match="gradient_accumulation_steps 1 -> 2"):
        resumed.setup()


@pytest.mark.slow
def test_embedded_default_learns(cli, tmp_path):
    """`hftool finetune bert-cls` alone beats the majority class (0.5) clearly."""
    result = cli("finetune", "bert-cls", "-o", tmp_path / "run")
    assert result.code == 0, result.err
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["eval_accuracy"] >= 0.70


def test_nan_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(data, tmp_path):
    from safetensors.torch import load_file

    from hftool.errors import HftoolError

    trainer = trainer_for(data, tmp_path, "train.max_steps=10", "train.save_steps=2", "train.logging_steps=5")
    calls = {"n": 0}

    def poison(module, args, output):
        calls["n"] += 1
        if calls["n"] == 3:
            output.loss = output.loss * float("nan")
        return output

    trainer.model.register_forward_hook(poison)
    with pytest.raises(HftoolError, match=r"NaN/inf at step 3; lower train.lr.*step-0000002"):
        trainer.train()
    checkpoints = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert checkpoints == ["step-0000002"]
    weights = load_file(tmp_path / "run" / "checkpoints" / "step-0000002" / "model.safetensors")
    assert all(torch.isfinite(w).all() for w in weights.values())


def test_tokenized_features_are_cached_beside_the_data_and_made_again_when_it_changes(data, tmp_path, monkeypatch):
    import shutil

    from hftool.data import tables

    monkeypatch.setattr(tables, "cache_dir", lambda: tmp_path / "cache")
    files = {"train": shutil.copy(data["train"], tmp_path / "train.csv"), "val": data["val"]}

    def features_file():
        features = trainer_for(files, tmp_path).train_features
        path = features.cache_files[0]["filename"]
        return path, os.stat(path).st_mtime_ns, features["input_ids"][:5]

    first, made, ids = features_file()
    assert first.startswith(str(tmp_path / "cache"))
    assert features_file() == (first, made, ids)  # the second run maps the same file, not a new one
    rows = sentiment_rows(160, 10)
    rows[0]["text"] = "a different first row"
    write_csv(files["train"], rows)
    assert features_file()[0] != first
