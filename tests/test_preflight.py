"""Preflight: `hftool doctor` names what a run is missing before it starts, and YOLO-format
detection data reads as it ships."""

from __future__ import annotations

import json
import shutil

import pytest

from tests.conftest import sentiment_rows


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A complete local model folder (weights, config, tokenizer), as save_pretrained writes one."""
    from transformers import BertForSequenceClassification

    from hftool import models

    root = tmp_path_factory.mktemp("model") / "bert"
    tokenizer = models.train_wordpiece([r["text"] for r in sentiment_rows(50, 1)], 300)
    model = BertForSequenceClassification(models.tiny_bert_config(tokenizer, {}, **models.label_maps(["neg", "pos"])))
    model.save_pretrained(root)
    tokenizer.save_pretrained(root)
    return root


@pytest.fixture
def data_csv(tmp_path):
    import csv

    path = tmp_path / "train.csv"
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=["text", "label"])
        writer.writeheader()
        writer.writerows(sentiment_rows(20, 2))
    return path


def doctor(cli, *args):
    result = cli("doctor", *args, "--json")
    return result.code, json.loads(result.out) if result.out.strip().startswith("{") else result


def by_name(found: dict) -> dict:
    return {c["name"]: c for c in found["checks"]}


def test_doctor_passes_on_a_complete_setup_and_reports_the_machine(cli, model_dir, data_csv, tmp_path):
    code, found = doctor(cli, "bert-cls", "--model", model_dir, "--data", data_csv, "-o", tmp_path / "run")
    assert code == 0 and found["ok"], found
    checks = by_name(found)
    assert {"versions", "device", "precision", "accelerate config", "disk", "data.train"} <= set(checks)
    assert "transformers" in checks["versions"]["message"]
    assert checks[f"model {model_dir}"]["status"] == "ok"
    assert "free at" in checks["disk"]["message"] and "need about" in checks["disk"]["message"]


@pytest.mark.parametrize("hide, check, words", [
    ("model.safetensors", "model", "no weights"),
    ("tokenizer", "tokenizer/processor", "no tokenizer or image processor files"),
    ("data", "data.train", "does not exist"),
])
def test_doctor_names_what_is_missing_and_the_fix(cli, model_dir, data_csv, tmp_path, hide, check, words):
    model = tmp_path / "model"
    shutil.copytree(model_dir, model)
    if hide == "tokenizer":
        for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
            (model / name).unlink(missing_ok=True)
    elif hide == "data":
        data_csv.unlink()
    else:
        (model / hide).unlink()
    code, found = doctor(cli, "bert-cls", "--model", model, "--data", data_csv)
    assert code == 1 and not found["ok"]
    failed = [c for c in found["checks"] if c["status"] == "fail"]
    assert len(failed) == 1 and failed[0]["name"].startswith(check) and words in failed[0]["message"], failed
    assert failed[0]["fix"]


def test_doctor_names_an_uncached_hub_model_with_the_command_to_fetch_it(cli, data_csv):
    result = cli("doctor", "bert-cls", "--model", "someone/not-cached", "--data", data_csv)
    assert result.code == 1
    assert "FAIL  model someone/not-cached" in result.out and "hf download someone/not-cached" in result.out


def test_doctor_without_a_recipe_checks_the_machine_only(cli):
    result = cli("doctor")
    assert result.code == 0 and "precision: train.mixed_precision=auto" in result.out
    assert "model" not in result.out


# ------------------------------------------------------------------------------------ YOLO
def write_yolo(root, with_yaml: bool = True):
    """images/train, images/val and labels/ beside them; one image without labels (background),
    one label file without an image."""
    from PIL import Image

    boxes = {"a": ["0 0.5 0.5 0.5 0.25"], "b": ["1 0.25 0.25 0.1 0.2", "0 0.75 0.5 0.2 0.2"], "c": None}
    for split, stems in (("train", ["a", "b", "c"]), ("val", ["a"])):
        (root / "images" / split).mkdir(parents=True)
        (root / "labels" / split).mkdir(parents=True)
        for stem in stems:
            Image.new("RGB", (80, 40), "white").save(root / "images" / split / f"{stem}.jpg")
            if boxes[stem] is not None:
                (root / "labels" / split / f"{stem}.txt").write_text("\n".join(boxes[stem]) + "\n")
    (root / "labels" / "train" / "orphan.txt").write_text("0 0.5 0.5 0.1 0.1\n")
    if with_yaml:
        (root / "data.yaml").write_text("path: /somewhere/else\ntrain: images/train\nval: images/val\n"
                                        "names: {0: cat, 1: dog}\n")
    else:
        (root / "classes.txt").write_text("cat\ndog\n")
    return root


@pytest.mark.parametrize("with_yaml", [True, False])
def test_yolo_folder_reads_boxes_in_pixels_background_and_reports_orphans(tmp_path, capsys, with_yaml):
    from hftool.data import load_source

    root = write_yolo(tmp_path / "yolo", with_yaml)
    splits = load_source(str(root))
    assert set(splits) == {"train", "validation"}
    train = splits["train"]
    names = train.features["objects"]["category"].feature.names
    assert names == ["cat", "dog"]
    rows = {r["image"].rsplit("/", 1)[1]: r for r in train}
    assert rows["a.jpg"]["objects"]["bbox"] == [pytest.approx([20, 15, 40, 10])]  # cx .5 cy .5 w .5 h .25 of 80x40
    assert rows["b.jpg"]["objects"]["category"] == [1, 0]
    assert rows["c.jpg"]["objects"]["bbox"] == []  # no label file: background
    assert "1 label file(s) have no image" in capsys.readouterr().err


def test_yolo_data_yaml_path_and_bad_lines_are_named(tmp_path, cli):
    from hftool.data import load_source
    from hftool.errors import HftoolError

    root = write_yolo(tmp_path / "yolo")
    assert len(load_source(str(root / "data.yaml"))["train"]) == 3
    (root / "labels" / "train" / "b.txt").write_text("1 0.25 0.25 0.1\n")
    with pytest.raises(HftoolError, match=r"b\.txt:1: expected `class cx cy w h`"):
        load_source(str(root))
    (root / "labels" / "train" / "b.txt").write_text("7 0.25 0.25 0.1 0.1\n")
    result = cli("finetune", "detr", "--data", root, "--max-steps", "1", "-o", tmp_path / "run")
    assert result.code == 2 and "b.txt:1: class 7 is not one of the 2 classes" in result.err


def test_detr_trains_and_evaluates_on_yolo_data(tmp_path, cli):
    root = write_yolo(tmp_path / "yolo")
    run = tmp_path / "run"
    result = cli("finetune", "detr", "--data", root, "--max-steps", "2", "-o", run, "train.batch_size=2")
    assert result.code == 0, result.err
    result = cli("evaluate", run, "--data", root / "data.yaml", "--split", "validation", "-o", tmp_path / "m.json")
    assert result.code == 0, result.err
    assert "eval_map" in json.loads((tmp_path / "m.json").read_text())


# ------------------------------------------------------------------- the micro-batch planner
def test_cpu_planner_picks_the_largest_divisor_under_the_budget(tmp_path, monkeypatch):
    """A fake machine where a step of n examples peaks at 1 GB + 100 MB x n."""
    from hftool import planner
    from hftool.errors import HftoolError

    monkeypatch.setattr(planner, "CLEAR_REFS", tmp_path / "clear_refs")
    (tmp_path / "clear_refs").write_text("")
    steps = []
    monkeypatch.setattr(planner, "_peak_rss", lambda: 10**9 + 10**8 * steps[-1])
    assert planner.candidates(16) == [16, 8, 4, 2, 1]
    assert planner._plan_cpu(steps.append, planner.candidates(16), budget=int(1.45e9)) == 4
    assert steps == [1, 1, 2, 4, 8]  # a warm-up pass, then measured smallest first until 8 went over
    assert planner._plan_cpu(steps.append, planner.candidates(12), budget=10**10) == 12
    # the optimizer's state counts: 200 MB of it leaves room for 2, not 4
    assert planner._plan_cpu(steps.append, planner.candidates(16), budget=int(1.45e9), reserve=2 * 10**8) == 2
    with pytest.raises(HftoolError, match="one example per step already peaks"):
        planner._plan_cpu(steps.append, [4, 2, 1], budget=10**9)


def test_auto_micro_batch_trains_exactly_as_the_same_global_batch_set_by_hand(cli, tmp_path, monkeypatch):
    import yaml

    from hftool import planner

    monkeypatch.setattr(planner, "_plan_cpu", lambda step, sizes, budget, reserve: 4)  # as if 16 and 8 did not fit
    common = ("finetune", "bert-cls", "--max-steps", "4", "data.max_train_samples=64", "data.max_eval_samples=32",
              "train.logging_steps=1")
    auto = cli(*common, "-o", tmp_path / "auto", "--batch-size", "16", "train.micro_batch_size=auto")
    assert auto.code == 0, auto.err
    assert "train.micro_batch_size=auto: 4 per process x 4 accumulation" in auto.err
    assert "batch: 4 per device x 4 accumulation x 1 processes = 16 effective (train.micro_batch_size=auto)" in auto.err
    saved = yaml.safe_load((tmp_path / "auto" / "config.yaml").read_text())["train"]
    assert (saved["batch_size"], saved["gradient_accumulation_steps"], saved["micro_batch_size"]) == (4, 4, "auto")
    hand = cli(*common, "-o", tmp_path / "hand", "--batch-size", "4", "train.gradient_accumulation_steps=4")
    assert hand.code == 0, hand.err
    got, want = json.loads(auto.out), json.loads(hand.out)
    got.pop("train_runtime"), want.pop("train_runtime")
    assert got == pytest.approx(want, rel=1e-6, abs=1e-7)
