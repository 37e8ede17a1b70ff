"""Config resolution: precedence, types, unknown keys, redaction."""

from __future__ import annotations

import pytest
import yaml

from hftool.config import RunConfig, builtin_recipes, load_config, to_yaml
from hftool.errors import HftoolError


def test_precedence_defaults_recipe_flags_overrides(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("train:\n  lr: 1.0e-3\n  epochs: 5\n  batch_size: 8\n  warmup_ratio: 0.2\n")
    cfg = load_config(recipe, flags={"train.epochs": 2, "train.batch_size": 16},
                      overrides=["train.batch_size=4"])
    assert cfg.train.lr == 1e-3  # recipe beats default
    assert cfg.train.epochs == 2  # flag beats recipe
    assert cfg.train.batch_size == 4  # override beats flag
    assert cfg.train.warmup_ratio == 0.2  # recipe value untouched
    assert cfg.train.weight_decay == RunConfig().train.weight_decay  # default


def test_flags_that_were_not_given_do_not_override(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("train:\n  lr: 1.0e-3\n")
    assert load_config(recipe, flags={"train.lr": None}).train.lr == 1e-3


@pytest.mark.parametrize("text, key, value", [
    ("train.lr=2e-5", "lr", 2e-5),  # PyYAML reads 2e-5 as a string
    ("train.max_steps=10", "max_steps", 10),
    ("train.group_by_length=false", "group_by_length", False),
    ("train.max_steps=null", "max_steps", None),
    ("train.epochs=1", "epochs", 1.0),
    ("train.mixed_precision=no", "mixed_precision", "no"),  # YAML 1.1 would read a boolean
    ("train.mixed_precision=bf16", "mixed_precision", "bf16"),
    ("train.group_by_length=no", "group_by_length", False),
])
def test_override_values_are_typed(text, key, value):
    assert getattr(load_config(overrides=[text]).train, key) == value


def test_no_in_a_recipe_is_the_string_no(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("train:\n  mixed_precision: no\n")
    assert load_config(recipe).train.mixed_precision == "no"


def test_yaml_floats_written_the_pyyaml_way_still_load(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("train:\n  lr: 2e-5\n")  # a string to PyYAML
    assert load_config(recipe).train.lr == 2e-5


def test_dict_override():
    cfg = load_config(overrides=["model.config_overrides={hidden_dropout_prob: 0.0}"])
    assert cfg.model.config_overrides == {"hidden_dropout_prob": 0.0}


@pytest.mark.parametrize("text, suggestion", [
    ("train.warmup=0.1", "train.warmup_ratio"),
    ("warmup_ratio=0.1", "train.warmup_ratio"),
    ("trian.lr=0.1", "train.lr"),
    ("data.text_col=review", "data.text_column"),
])
def test_unknown_key_names_the_closest(text, suggestion):
    with pytest.raises(HftoolError, match=f"unknown config key .*did you mean '{suggestion}'"):
        load_config(overrides=[text])


def test_unknown_key_in_recipe_names_file(tmp_path):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text("train:\n  learning_rate: 0.1\n")
    with pytest.raises(HftoolError, match=r"train.learning_rate.*bad.yaml"):
        load_config(recipe)


@pytest.mark.parametrize("text, message", [
    ("train.lr=fast", "train.lr .* expects a number"),
    ("train.max_steps=1.5", "train.max_steps .* expects an integer"),
    ("train.mixed_precision=fp8", "not one of: no, bf16, fp16"),
    ("train.batch_size=0", "must be positive"),
    ("data.validation_split=1.5", r"validation_split must be in \[0, 1\)"),
    ("train", "not KEY=VALUE"),
])
def test_bad_values_are_rejected(text, message):
    with pytest.raises(HftoolError, match=message):
        load_config(overrides=[text])


def test_secrets_are_redacted_in_saved_config():
    cfg = load_config(overrides=["model.token=hf_secret123"])
    assert cfg.model.token == "hf_secret123"  # usable in the run
    saved = to_yaml(cfg)
    assert "hf_secret123" not in saved
    assert yaml.safe_load(saved)["model"]["token"] == "***"


def test_every_builtin_recipe_parses():
    recipes = builtin_recipes()
    assert "bert-cls" in recipes
    for name in recipes:
        cfg = load_config(name)
        assert cfg.description, f"{name} needs a description for `hftool recipes`"
        assert cfg.data.train, f"{name} names no training data"
        from hftool.tasks import TASKS

        assert cfg.task in TASKS, f"{name}: unknown task {cfg.task}"
    embedded = {name for name in recipes if load_config(name).data.train.startswith("sample:")}
    assert {"bert-cls", "bert-ner", "gpt2", "vit-cls", "detr", "caption", "seq2seq", "lstm-forecast"} <= embedded


def test_shipped_accelerate_configs_parse():
    from accelerate.commands.config.config_args import load_config_from_file

    from hftool.config import recipes_dir

    paths = sorted((recipes_dir() / "accelerate").glob("*.yaml"))
    kinds = {load_config_from_file(str(p)).distributed_type for p in paths}
    assert {str(k).split(".")[-1] for k in kinds} == {"MULTI_GPU", "FSDP", "DEEPSPEED"}
