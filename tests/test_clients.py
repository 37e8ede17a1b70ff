"""Runs in the tools users load them with: model-card metadata, the forecaster through
transformers' Auto classes, and hftool itself as a wheel. (Every task's card and README row is
checked on its run in test_contract.py; timm runs in test_image_classification.py.)"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.conftest import REPO


def python(code: str, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    """`code` in a fresh interpreter that imports this checkout's hftool."""
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", **env})


# -------------------------------------------------------------------------------- model cards
def test_the_card_names_a_hub_base_model_and_hub_datasets(tmp_path):
    """bert-cls-sst2's card: base_model and datasets are the Hub ids it was trained from, and the
    model-index names the dataset's config and the split the metrics are on."""
    from huggingface_hub import ModelCard

    from hftool.config import load_config
    from hftool.reports import collect_provenance, model_card
    from hftool.tasks import get_task

    cfg = load_config("bert-cls-sst2")
    provenance = collect_provenance(cfg, {"train": "glue:sst2 [train]", "validation": "glue:sst2 [validation]"},
                                    "hftool finetune bert-cls-sst2", "no")
    metrics = {"eval_loss": 0.25, "eval_accuracy": 0.91, "train_loss": 0.2}
    card = ModelCard(model_card(tmp_path / "sst2", cfg, get_task(cfg.task), None, metrics, provenance, "bert-cls-sst2"))
    data = card.data
    assert (data.base_model, data.datasets, data.library_name, data.pipeline_tag) == \
           ("bert-base-uncased", ["glue"], "transformers", "text-classification")
    assert [(r.dataset_type, r.dataset_config, r.dataset_split, r.metric_type, r.metric_value) for r in data.eval_results] \
        == [("glue", "sst2", "validation", "loss", 0.25), ("glue", "sst2", "validation", "accuracy", 0.91)]


def test_model_origin_knows_hub_ids_the_hf_cache_and_run_dirs(tmp_path):
    from hftool.reports import model_origin

    cached = tmp_path / "hub" / "models--google--vit-base-patch16-224" / "snapshots" / "0123abc"
    cached.mkdir(parents=True)
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("task: text-classification\n")
    (run / "README.md").write_text("---\nbase_model: google/vit-base-patch16-224\n---\n# a run\n")
    plain = tmp_path / "my-model"
    plain.mkdir()
    assert model_origin("bert-base-uncased") == ["bert-base-uncased"]
    assert model_origin("openai-community/gpt2") == ["openai-community/gpt2"]
    assert model_origin(str(cached)) == ["google/vit-base-patch16-224"]
    assert model_origin(str(run)) == ["google/vit-base-patch16-224"]  # fine-tuned further: the same lineage
    assert model_origin(str(plain)) == model_origin("tiny:bert") == model_origin("timm:resnet18") == []


# ------------------------------------------------------------------------------ the forecaster
@pytest.fixture(scope="module")
def forecaster_dir(tmp_path_factory) -> Path:
    from hftool.forecaster import ForecasterConfig, TimeSeriesForecaster

    path = tmp_path_factory.mktemp("forecaster")
    TimeSeriesForecaster(ForecasterConfig(hidden_size=8, context_length=5)).save_pretrained(path)
    return path


LOAD = ("from transformers import AutoModel; "
        "print(type(AutoModel.from_pretrained({path!r}, trust_remote_code=False)).__name__)")


@pytest.mark.parametrize("imports", ["import hftool, sys; assert 'torch' not in sys.modules", "import transformers, hftool"])
def test_import_hftool_lets_transformers_load_a_forecaster(forecaster_dir, tmp_path, imports):
    """Before transformers (hftool alone stays free of torch) or after it."""
    done = python(f"{imports}; {LOAD.format(path=str(forecaster_dir))}", tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "TimeSeriesForecaster"


def test_without_hftool_transformers_does_not_know_the_forecaster(forecaster_dir, tmp_path):
    """So the card's `import hftool` is needed (and no remote code stands in for it)."""
    done = python(LOAD.format(path=str(forecaster_dir)), tmp_path)
    assert done.returncode != 0 and "hftool_forecaster" in done.stderr


# ---------------------------------------------------------------------------------- packaging
def build_wheel(tmp_path: Path) -> tuple[Path, str]:
    """`pip wheel` of a copy of the sources (a build writes build/ and *.egg-info beside them),
    with the installed setuptools; returns the wheel and the build's output."""
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, source / name)
    for name in ("hftool", "recipes"):
        shutil.copytree(REPO / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}  # its own "byte-compiling" notes
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", ".", "--no-deps", "--no-build-isolation", "-v",
                           "-w", str(tmp_path / "dist")], cwd=source, capture_output=True, text=True, timeout=600,
                          env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return next((tmp_path / "dist").glob("hftool-*.whl")), done.stdout + done.stderr


def test_the_wheel_ships_every_recipe_and_accelerate_config_and_builds_without_warnings(tmp_path):
    wheel, output = build_wheel(tmp_path)
    warnings = [line for line in output.splitlines() if "warn" in line.lower()]
    assert not warnings, "\n".join(warnings)
    names = set(zipfile.ZipFile(wheel).namelist())
    recipes = {f"hftool/recipes/{p.relative_to(REPO / 'recipes')}" for p in (REPO / "recipes").rglob("*.yaml")}
    assert any("accelerate/" in name for name in recipes) and recipes <= names, sorted(recipes - names)
    metadata = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert "License-Expression: Apache-2.0" in metadata


@pytest.mark.slow
def test_hftool_installed_from_the_wheel_finetunes_a_builtin_recipe(tmp_path):
    """A non-editable install (the wheel's files, nothing of this checkout on the path) runs
    `hftool finetune bert-cls` and lists the accelerate configs beside its recipes."""
    wheel, _ = build_wheel(tmp_path)
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--target", str(site), str(wheel)],
                   check=True, capture_output=True, timeout=600)
    work = tmp_path / "work"
    work.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-m", "hftool", "finetune", "bert-cls", "--max-steps", "2", "-o", "run"],
                          cwd=work, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (work / "run" / "metrics.json").is_file()
    where = subprocess.run([sys.executable, "-c", "import hftool.config as c; print(c.recipes_dir())"], cwd=work,
                           capture_output=True, text=True, env=env, check=True).stdout.strip()
    assert Path(where).is_relative_to(site) and (Path(where) / "accelerate" / "fsdp.yaml").is_file()
