"""LoRA (model.peft=lora): merging into a plain model dir, and the errors of bad adapter settings.

The contract suite (tests/test_contract.py) trains, reloads, evaluates and resumes every task
with adapters; this file covers what is specific to them.
"""

from __future__ import annotations

import json

import pytest
import torch

from hftool import api
from hftool.config import load_config

TINY = ["train.max_steps=6", "train.batch_size=8", "data.max_train_samples=64", "data.max_eval_samples=16",
        "train.eval_steps=6", "train.logging_steps=2"]
TEXTS = ["the plot was clever and the cast was great", "a dull film", "not very good at all", "what a wonderful ride"]


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    """A tiny bert-cls LoRA run in fp32, with a rate high enough that the adapters move."""
    run = tmp_path_factory.mktemp("lora") / "run"
    cfg = load_config("bert-cls", overrides=[*TINY, "model.peft=lora", "train.mixed_precision=no", "train.lr=5e-3",
                                             f"output_dir={run}"])
    api.finetune(cfg)
    return run


def logits(model, tokenizer) -> torch.Tensor:
    batch = tokenizer(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        return model.eval()(**batch).logits


def test_merged_model_predicts_what_the_adapter_run_predicts(lora_run, tmp_path, cli):
    """fp32 logits within 1e-4, loaded by from_pretrained and pipeline(), with no adapter left."""
    from safetensors.torch import load_file
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

    from hftool.tasks import get_task

    out = tmp_path / "merged"
    result = cli("export", lora_run, "--format", "safetensors", "--merge", "-o", out)
    assert result.code == 0, result.err
    cfg = api.run_config(str(lora_run))
    adapter = get_task(cfg.task).build(cfg, None, model_path=str(lora_run)).model
    merged = AutoModelForSequenceClassification.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    expected = logits(adapter, tokenizer)
    assert torch.allclose(logits(merged, tokenizer), expected, atol=1e-4, rtol=0)
    weights = load_file(out / "model.safetensors")
    assert not any("lora" in key or "modules_to_save" in key for key in weights)
    base = load_file(lora_run / "base" / "model.safetensors")
    query = "bert.encoder.layer.0.attention.self.query.weight"
    assert not torch.allclose(weights[query], base[query])  # the update is in the weight: parity is not trivial
    labels = [merged.config.id2label[i] for i in expected.argmax(-1).tolist()]
    assert [p["label"] for p in pipeline("text-classification", model=str(out))(TEXTS)] == labels


def test_merge_of_a_run_without_adapters_is_an_error(tmp_path, cli):
    run = tmp_path / "full"
    api.finetune(load_config("bert-cls", overrides=[*TINY, "train.max_steps=1", f"output_dir={run}"]))
    result = cli("export", run, "--merge", "-o", tmp_path / "out")
    assert result.code == 2 and "Traceback" not in result.err
    assert "has no adapters to merge" in result.err and "leave out --merge" in result.err
    assert not (tmp_path / "out").exists()


def test_export_never_overwrites(lora_run, tmp_path, cli):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    result = cli("export", lora_run, "--format", "safetensors", "--merge", "-o", out)
    assert result.code == 2 and "already exists and is not empty" in result.err
    assert [p.name for p in out.iterdir()] == ["mine.txt"]


def test_an_adapter_run_without_merge_says_how(lora_run, tmp_path, cli):
    result = cli("export", lora_run, "--format", "safetensors", "-o", tmp_path / "out")
    assert result.code == 2 and "add --merge" in result.err


def test_onnx_export_of_an_adapter_run_merges_it_and_passes_its_parity_check(lora_run, tmp_path):
    manifest = api.export(lora_run, tmp_path / "onnx")
    assert manifest["parity"]["passed"] and (tmp_path / "onnx" / "model.onnx").is_file()
    assert [p["label"] for p in api.predict(str(tmp_path / "onnx"), TEXTS)] == \
        [p["label"] for p in api.predict(str(lora_run), TEXTS)]  # both fp32


def test_evaluate_and_predict_load_the_adapter_run_from_elsewhere(lora_run, tmp_path, monkeypatch):
    """The run dir moved and used from another directory: base/ travels with it."""
    import shutil

    moved = tmp_path / "moved"
    shutil.copytree(lora_run, moved)
    monkeypatch.chdir(tmp_path)
    metrics = json.loads((lora_run / "metrics.json").read_text())
    again = api.evaluate(str(moved))
    assert again["eval_accuracy"] == metrics["eval_accuracy"]
    assert [p["label"] for p in api.predict(str(moved), TEXTS)] == [p["label"] for p in api.predict(str(lora_run), TEXTS)]


def test_overwrite_replaces_a_lora_run_with_its_new_base_and_a_refused_run_leaves_nothing(cli, tmp_path):
    """The base a run builds is written beside the run dir until every check passed: --overwrite
    of an adapter run ends with the new run's base/, and a run stopped before that point leaves
    neither a run dir nor a staged base."""
    from safetensors.torch import load_file

    run = tmp_path / "run"
    assert cli("finetune", "bert-cls", "-o", run, "model.peft=lora", *TINY, "train.max_steps=1").code == 0
    first = load_file(run / "base" / "model.safetensors")
    again = cli("finetune", "bert-cls", "-o", run, "--overwrite", "model.peft=lora", *TINY, "train.max_steps=1",
                "train.seed=7", "model.config_overrides={hidden_size: 48, num_attention_heads: 4}")
    assert again.code == 0, again.err
    second = load_file(run / "base" / "model.safetensors")
    assert any(first[k].shape != second[k].shape for k in first)  # the new base, not the old one
    assert api.evaluate(str(run))["eval_loss"] > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # nothing staged or set aside is left
    refused = tmp_path / "refused"
    result = cli("finetune", "bert-cls", "-o", refused, "model.peft=lora", *TINY, "train.max_steps=1",
                 "peft.target_modules=[nope]")
    assert result.code == 2 and not refused.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_target_modules_that_match_nothing_list_the_candidates(cli, tmp_path):
    result = cli("finetune", "bert-cls", "-o", tmp_path / "run", "model.peft=lora", "peft.target_modules=[nope]", *TINY)
    assert result.code == 2 and "Traceback" not in result.err
    last = result.err.strip().splitlines()[-1]
    assert "no module of BertForSequenceClassification is named 'nope'" in last
    assert "candidates: dense, key, query, value" in last  # the classifier trains in full: no adapter there


def test_target_modules_by_name(cli, tmp_path):
    """`query,value` on the command line: adapters on those only, the banner says so."""
    result = cli("finetune", "bert-cls", "-o", tmp_path / "run", "model.peft=lora", "peft.target_modules=query,value",
                 *TINY, "train.max_steps=1")
    assert result.code == 0, result.err
    assert "adapters: LoRA r=8, alpha=16, dropout=0.05 on query, value; trained in full: classifier" in result.err
    config = json.loads((tmp_path / "run" / "adapter_config.json").read_text())
    assert sorted(config["target_modules"]) == ["query", "value"] and config["base_model_name_or_path"] == "base"


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU error; a GPU runs QLoRA")
def test_qlora_without_cuda_is_one_line_naming_the_fix(cli, tmp_path):
    result = cli("finetune", "bert-cls", "-o", tmp_path / "run", "model.peft=qlora", *TINY)
    assert result.code == 2 and "Traceback" not in result.err
    assert result.err.strip().splitlines()[-1] == (
        "error: model.peft=qlora quantizes the base to 4 bits with bitsandbytes, which needs a CUDA GPU; on this "
        "machine use model.peft=lora")


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU error; a GPU runs QLoRA")
def test_doctor_stops_qlora_without_cuda_and_names_the_fix(cli):
    result = cli("doctor", "chat", "model.peft=qlora", "--json")
    assert result.code == 1
    failed = [c for c in json.loads(result.out)["checks"] if c["status"] == "fail"]
    assert [(c["name"], c["fix"]) for c in failed] == [("adapters", "on this machine use model.peft=lora")]
    assert "needs a CUDA GPU" in failed[0]["message"]


def test_an_adapter_run_as_the_base_of_another_is_an_error(lora_run, cli, tmp_path):
    result = cli("finetune", "bert-cls", "--model", lora_run, "-o", tmp_path / "run", "model.peft=lora", *TINY)
    assert result.code == 2 and "is an adapter run; merge it first" in result.err


def test_lora_on_a_timm_cnn_trains_its_classifier_and_batch_norms_and_reloads(tmp_path):
    """timm:resnet18 has no linear layer but its classifier: adapters go on the convolutions, and
    the batch norms, whose running statistics training changes, are saved with them."""
    run = tmp_path / "resnet"
    _, metrics = api.finetune(load_config("vit-cls", overrides=[
        *TINY, "model.name=timm:resnet18", "model.pretrained=false", "model.peft=lora", "data.image_size=32",
        "train.mixed_precision=no", f"output_dir={run}"]))
    config = json.loads((run / "adapter_config.json").read_text())
    assert "conv1" in config["target_modules"] and "timm_model.fc" in config["modules_to_save"]
    assert "timm_model.layer1.0.bn1" in config["modules_to_save"]
    again = api.evaluate(str(run))
    assert {k: v for k, v in again.items()} == pytest.approx({k: v for k, v in metrics.items() if k.startswith("eval_")})
