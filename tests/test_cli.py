"""The CLI surface: help, recipes, dry runs, and every bad input -> one line, exit 2, nothing lost."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import REPO

COMMANDS = ["finetune", "evaluate", "predict", "export", "recipes"]


@pytest.mark.parametrize("command", ["", *COMMANDS])
def test_help_for_every_command(cli, command):
    result = cli(*filter(None, [command]), "--help")
    assert result.code == 0
    assert "Usage" in result.out


def test_help_imports_no_torch():
    """`hftool --help` stays fast because torch/transformers are imported only inside commands."""
    code = ("import sys; from hftool.cli import app; "
            "heavy = [m for m in ('torch', 'transformers', 'datasets', 'accelerate') if m in sys.modules]; "
            "print(','.join(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.strip() == ""


def test_python_dash_m_hftool():
    out = subprocess.run([sys.executable, "-m", "hftool", "recipes"], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0 and "bert-cls" in out.stdout


def test_recipes_list_and_show(cli):
    listing = cli("recipes")
    lines = listing.out.strip().splitlines()
    assert any(line.startswith("bert-cls ") for line in lines)
    shown = cli("recipes", "bert-cls")
    assert shown.out.startswith("#") and "hftool finetune bert-cls" in shown.out


def test_dry_run_prints_resolved_config_with_overrides_anywhere(cli):
    import yaml

    result = cli("finetune", "train.warmup_ratio=0.3", "bert-cls", "--epochs", "2", "--dry-run", "data.max_length=32")
    assert result.code == 0
    cfg = yaml.safe_load(result.out)
    assert cfg["train"]["warmup_ratio"] == 0.3 and cfg["train"]["epochs"] == 2 and cfg["data"]["max_length"] == 32


def one_line_error(result, *fragments):
    assert result.code == 2, result
    assert "Traceback" not in result.err
    lines = result.err.strip().splitlines()
    assert lines[-1].startswith("error: ")
    for fragment in fragments:
        assert fragment in lines[-1], lines[-1]


def test_unknown_recipe(cli):
    one_line_error(cli("finetune", "bert-clss"), "unknown recipe 'bert-clss'", "did you mean 'bert-cls'")


def test_unknown_key(cli):
    one_line_error(cli("finetune", "bert-cls", "train.warmup=0.1", "--dry-run"), "did you mean 'train.warmup_ratio'")


def test_missing_data_file(cli, tmp_path):
    one_line_error(cli("finetune", "bert-cls", "--data", tmp_path / "nope.csv", "-o", tmp_path / "run"),
                   "nope.csv does not exist")
    assert not (tmp_path / "run").exists()


def test_missing_column(cli, tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("body,label\ngood,pos\nbad,neg\n")
    one_line_error(cli("finetune", "bert-cls", "--data", path, "-o", tmp_path / "run"),
                   "t.csv has no text column", "data.text_column")
    one_line_error(cli("finetune", "bert-cls", "--data", path, "data.text_column=body", "data.label_column=stars",
                       "-o", tmp_path / "run"), "no column 'stars'", "data.label_column")


def test_unknown_label_in_eval_data(cli, sentiment_csv, tmp_path):
    val = tmp_path / "val_bad.csv"
    val.write_text("text,label\nfine film,positive\nso so,neutral\n")
    one_line_error(cli("finetune", "bert-cls", "--data", sentiment_csv["train"], "--eval-data", val,
                       "-o", tmp_path / "run"), "val_bad.csv row 2", "'neutral'", "positive")


def test_empty_dataset(cli, tmp_path):
    path = tmp_path / "empty.csv"
    path.write_text("text,label\n")
    one_line_error(cli("finetune", "bert-cls", "--data", path, "-o", tmp_path / "run"), "empty.csv", "no rows")


def test_existing_output_dir_is_never_overwritten(cli, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "precious.txt").write_text("keep me")
    one_line_error(cli("finetune", "bert-cls", "-o", run), "already exists", "--overwrite", "--resume")
    # --overwrite only ever deletes an hftool run
    one_line_error(cli("finetune", "bert-cls", "-o", run, "--overwrite"), "not an hftool run")
    assert (run / "precious.txt").read_text() == "keep me"


def test_hub_recipe_fails_fast_offline_saying_what_to_pass(cli, tmp_path):
    result = cli("finetune", "bert-cls-sst2", "-o", tmp_path / "run")
    one_line_error(result, "bert-base-uncased", "local model directory")  # before any data is read
    result = cli("finetune", "bert-cls-sst2", "--model", "tiny:bert", "-o", tmp_path / "run2")
    one_line_error(result, "glue:sst2", "pass a local file or folder")
    assert not (tmp_path / "run").exists() and not (tmp_path / "run2").exists()


def test_predict_and_evaluate_on_a_missing_model(cli, tmp_path):
    one_line_error(cli("predict", tmp_path / "nothing", "some text"), "does not exist")
    one_line_error(cli("evaluate", tmp_path / "nothing"), "not a model or run directory")


def test_bad_predict_input_file(cli, tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_text('{"text": "ok"}\n{"txt": "oops"}\n')
    one_line_error(cli("predict", tmp_path, "--file", path), "in.jsonl:2", "\"text\"")


def test_command_line_in_model_card_masks_secrets(monkeypatch):
    from hftool.cli import _command_line

    monkeypatch.setattr(sys, "argv", ["hftool", "finetune", "bert-cls", "model.token=hf_abc"])
    assert _command_line() == "hftool finetune bert-cls model.token=***"


def test_override_detection():
    from hftool.config import is_override

    assert is_override("train.lr=3e-5") and is_override("task=text-classification")
    assert not is_override("a=b is a sentence") and not is_override("x = 1") and not is_override("hello")


def test_mixed_precision_auto_picks_bf16_only_where_it_is_native(cli, tmp_path, monkeypatch):
    import torch

    from hftool import runtime

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for native, expected in ((True, "bf16"), (False, "no")):
        monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda native=native: native)
        assert runtime.resolve_mixed_precision("auto") == expected
    assert runtime.resolve_mixed_precision("no") == "no" and runtime.resolve_mixed_precision("bf16") == "bf16"
    monkeypatch.undo()

    # One process, two precisions (library use): Accelerate's process-wide state is reset between them.
    assert runtime.make_accelerator().mixed_precision == "no"
    assert runtime.make_accelerator(mixed_precision="bf16").mixed_precision == "bf16"

    # End to end on this machine: the banner says what `auto` became.
    result = cli("finetune", "bert-cls", "--max-steps", "2", "--mixed-precision", "auto", "-o", tmp_path / "run")
    assert result.code == 0, result.err
    if not torch.cuda.is_available():
        want = "bf16 autocast" if runtime.cpu_has_native_bf16() else "fp32"
        assert f"precision: {want} (train.mixed_precision=auto)" in result.err
