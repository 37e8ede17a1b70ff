"""hftool export beyond the contract suite: every bad request is one line and exit 2, a parity
failure exits 1 and keeps the files, int8 quantisation reports what it costs, timm models export,
and onnxruntime decoding refuses what it cannot do."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from hftool import api
from hftool.config import load_config
from hftool.errors import HftoolError
from tests.test_contract import TINY, TwoPlayer, assert_same_predictions
from tests.test_image_classification import RESNET_SIZE, finetune_args, image_folder  # noqa: F401 (a fixture)


@pytest.fixture(scope="module")
def bert_run(tmp_path_factory) -> Path:
    """The contract suite's few-step bert-cls run."""
    run = tmp_path_factory.mktemp("bert") / "run"
    api.finetune(load_config("bert-cls", overrides=[*TINY, f"output_dir={run}"]))
    return run


def last_line(result) -> str:
    assert "Traceback" not in result.err, result.err[-3000:]
    return result.err.strip().splitlines()[-1]


def test_bad_requests_are_one_line_errors_that_write_nothing(cli, bert_run, tmp_path):
    out = tmp_path / "onnx"
    for args, message in ((["--format", "tflite"], "unknown --format 'tflite'; choose one of: onnx, safetensors"),
                          (["--format", "safetensors"], "add --merge"),
                          (["--quantize", "int4"], "unknown --quantize 'int4'"),
                          (["--atol", "0"], "--atol must be positive")):
        result = cli("export", bert_run, "-o", out, *args)
        assert result.code == 2 and message in last_line(result), result.err[-2000:]
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_a_run_without_weights_or_config_is_refused(cli, bert_run, tmp_path):
    unfinished = tmp_path / "unfinished"
    shutil.copytree(bert_run, unfinished, ignore=shutil.ignore_patterns("model.safetensors", "checkpoints"))
    result = cli("export", unfinished, "-o", tmp_path / "a")
    assert result.code == 2 and "has no model weights (model.safetensors)" in last_line(result)
    (unfinished / "config.yaml").unlink()
    result = cli("export", unfinished, "-o", tmp_path / "b")
    assert result.code == 2 and "not an hftool run dir (no config.yaml)" in last_line(result)


def test_an_existing_output_is_replaced_only_with_overwrite_and_only_if_it_is_an_export(cli, bert_run, tmp_path):
    out = tmp_path / "onnx"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    result = cli("export", bert_run, "-o", out)
    assert result.code == 2 and "already exists" in last_line(result) and "--overwrite" in last_line(result)
    result = cli("export", bert_run, "-o", out, "--overwrite")
    assert result.code == 2 and "not an hftool export" in last_line(result)
    assert (out / "notes.txt").read_text() == "mine"
    (out / "notes.txt").unlink()
    assert cli("export", bert_run, "-o", out).code == 0
    first = json.loads((out / "export.json").read_text())
    result = cli("export", bert_run, "-o", out, "--overwrite", "--examples", "4")
    assert result.code == 0, result.err[-2000:]
    again = json.loads((out / "export.json").read_text())
    assert first["parity"]["examples"] > 4 and again["parity"]["examples"] == 4
    assert json.loads(result.out)["parity"] == again["parity"]
    assert [p.name for p in tmp_path.iterdir()] == ["onnx"]  # no staging folder left behind


@torch.library.custom_op("hftest::twist", mutates_args=())
def twist(x: torch.Tensor) -> torch.Tensor:
    return x.flip(-1)


@twist.register_fake
def _(x):
    return torch.empty_like(x)


def test_an_operator_onnx_cannot_express_is_named_with_a_hint(cli, bert_run, tmp_path, monkeypatch):
    from hftool.export import Forward, Graph
    from hftool.tasks.text_classification import TextClassification

    def graphs(self, parts, cfg, batch):
        module = Forward(parts.model, ["input_ids", "attention_mask"], ["logits"],
                         post=lambda out, given: (twist(out["logits"]),))
        inputs = {k: batch[k] for k in ("input_ids", "attention_mask")}
        return [Graph("model", module, inputs, ["logits"], {k: {0: "batch", 1: "sequence"} for k in inputs})]

    monkeypatch.setattr(TextClassification, "onnx_graphs", graphs)
    result = cli("export", bert_run, "-o", tmp_path / "onnx")
    line = last_line(result)
    assert result.code == 2 and "ONNX export of model.onnx failed: operator hftest.twist.default" in line, result.err
    assert "hint:" in line and len(result.err.strip().splitlines()) < 20  # not the exporter's graph dumps
    assert list(tmp_path.iterdir()) == []


def test_a_parity_failure_exits_1_and_keeps_the_export_for_inspection(cli, bert_run, tmp_path, monkeypatch):
    """The exported graph computes the logits; the PyTorch side then adds 1 to them."""
    import hftool.export

    exported = hftool.export._export_graph

    def then_shift(graph, path):
        exported(graph, path)
        graph.module.post = lambda out, given: (out["logits"] + 1,)

    monkeypatch.setattr(hftool.export, "_export_graph", then_shift)
    out = tmp_path / "onnx"
    result = cli("export", bert_run, "-o", out)
    assert result.code == 1
    assert "parity check failed: model.logits differs by up to 1" in last_line(result) and str(out) in last_line(result)
    manifest = json.loads((out / "export.json").read_text())
    assert not manifest["parity"]["passed"] and (out / "model.onnx").is_file()
    assert manifest["parity"]["outputs"][0]["max_abs"] == pytest.approx(1.0, abs=1e-5)


def test_a_task_without_an_export_says_so(cli, monkeypatch, tmp_path):
    from hftool.tasks import TASKS

    monkeypatch.setitem(TASKS, TwoPlayer.name, TwoPlayer)
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("task: two-player\ndata: {train: line.csv}\n")
    result = cli("export", run, "-o", tmp_path / "onnx")
    assert result.code == 2 and last_line(result) == "error: two-player models are not exportable to ONNX yet"


def test_quantize_is_for_classifiers(cli, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("task: object-detection\n")
    result = cli("export", run, "-o", tmp_path / "onnx", "--quantize", "dynamic-int8")
    assert result.code == 2 and "--quantize dynamic-int8 is for text and image classifiers" in last_line(result)


def test_dynamic_int8_reports_the_validation_metrics_it_costs_and_predict_runs_it(cli, bert_run, tmp_path):
    out = tmp_path / "onnx"
    result = cli("export", bert_run, "-o", out, "--quantize", "dynamic-int8")
    assert result.code == 0, result.err[-3000:]
    report = json.loads(result.out)["quantization"]
    assert report["method"] == "dynamic-int8" and (out / report["file"]).is_file() and (out / "model.onnx").is_file()
    assert report["size_mb"]["int8"] < report["size_mb"]["fp32"]
    metrics = report["metrics"]
    assert metrics["onnx"]["eval_accuracy"] == pytest.approx(metrics["pytorch"]["eval_accuracy"])
    assert 0 <= metrics["onnx_int8"]["eval_accuracy"] <= 1
    assert "dynamic int8 on" in result.err and "eval_accuracy" in result.err
    assert json.loads((out / "export.json").read_text())["graphs"]["model"] == "model.int8.onnx"
    predictions = api.predict(str(out), ["a wonderful film", "a dull film"])
    assert all(p["label"] in ("positive", "negative") for p in predictions)


def test_a_timm_classifier_exports_and_predicts_as_the_run(image_folder, tmp_path, cli):
    run = tmp_path / "run"
    result = cli(*finetune_args(image_folder, run, "--model", "timm:resnet18", "model.pretrained=false", RESNET_SIZE,
                                steps=2))
    assert result.code == 0, result.err[-2000:]
    manifest = api.export(run, tmp_path / "onnx")
    assert manifest["parity"]["passed"] and manifest["signatures"]["model"]["inputs"]["pixel_values"] == ["batch", 3, 32, 32]
    inputs = [str(p) for p in sorted((image_folder / "val").rglob("*.png"))[:4]]
    assert_same_predictions(api.predict(str(tmp_path / "onnx"), inputs),
                            api.predict(str(run), inputs, overrides=["train.mixed_precision=no"]))


def test_onnxruntime_decoding_refuses_what_it_cannot_do():
    from transformers import GenerationConfig, GPT2Config

    from hftool.export import OnnxModel

    model = OnnxModel({}, GPT2Config(), GenerationConfig(num_beams=3))
    with pytest.raises(HftoolError, match=r"beam search \(num_beams=3\) does not run on an ONNX export"):
        model.generate(input_ids=torch.ones(1, 2, dtype=torch.long))
    with pytest.raises(HftoolError, match="repetition_penalty=1.3 is not applied on an ONNX export"):
        model.generate(input_ids=torch.ones(1, 2, dtype=torch.long), num_beams=1, repetition_penalty=1.3)
