"""The task contract, checked for every registered task on its embedded-default recipe, made tiny.

A new task gets these checks by registering: its recipe trains a few steps on the first rows of
its own sample, and each check below runs on that. Per-task test files keep only what is
specific to their task. `TwoPlayer` (below) is a task that owns its step, with two models and
two optimizers: the loop must checkpoint and resume both exactly.

Every task that trains adapters (Task.peft_unsupported empty) runs the training checks a second
time with model.peft=lora: one step, metrics, evaluate reproducing the run, exact resume.
"""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from hftool import api
from hftool.config import load_config, new_config, valid_keys
from hftool.tasks import TASKS, get_task
from hftool.tasks.base import Parts, Task, Update
from tests.conftest import REPO, client_namespace, evaluate_in_processes, readme_clients, run_card_snippets

# A few steps on the first rows of the recipe's own data: every hook runs, nothing takes long.
TINY = ["train.max_steps=4", "train.batch_size=4", "train.eval_batch_size=8", "data.max_train_samples=48",
        "data.max_eval_samples=12", "train.logging_steps=1", "train.eval_steps=4", "train.save_steps=2",
        "eval.save_predictions=true"]


# ------------------------------------------------------------------------- a task owning its step
@dataclass
class TwoPlayerState:
    other: torch.nn.Module  # the second model; the loop trains it, save() writes it


class Affine(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(1, 1))

    def forward(self, x):
        return x @ self.weight


class TwoPlayer(Task):
    """y = a(x) + b(x): `a` and `b` take turns, each with its own AdamW (b with GAN-style betas)."""

    name = "two-player"
    default_metric = "loss"

    def prepare(self, cfg, ds, source, labels=None, require_labels=True):
        return ds.select_columns(["x", "y"]), None

    def build(self, cfg, labels, train_ds=None, model_path=None, run_dir=None):
        a, b = Affine(), Affine()
        if model_path is not None:
            saved = torch.load(Path(model_path) / "players.pt")
            a.load_state_dict(saved["a"])
            b.load_state_dict(saved["b"])
        return Parts(a, None, state=TwoPlayerState(b))

    def features(self, parts, cfg, ds):
        return ds

    def collate(self, parts):
        def collate(rows):
            return {k: torch.tensor([[r[k]] for r in rows], dtype=torch.float32) for k in ("x", "y")}
        return collate

    def updates(self, parts, cfg):
        return [Update("a", parts.model, [{"params": list(parts.model.parameters())}]),
                Update("b", parts.state.other, [{"params": list(parts.state.other.parameters())}], lr=cfg.train.lr / 2,
                       betas=(0.5, 0.999))]

    def train_step(self, parts, batch, step):
        a, b, x, y = step.models["a"], step.models["b"], batch["x"], batch["y"]
        loss_a = ((a(x) + b(x).detach() - y) ** 2).mean()
        step.backward(loss_a)
        step.update("a")
        loss_b = ((a(x).detach() + b(x) - y) ** 2).mean()
        step.backward(loss_b)
        step.update("b")
        return {"loss": loss_b, "loss_a": loss_a}

    def eval_forward(self, parts, model, batch):
        return model(batch["x"]) + parts.state.other(batch["x"])

    def eval_outputs(self, parts, outputs, batch):
        return {"loss": ((outputs - batch["y"]) ** 2).squeeze(-1)}

    def metric(self, parts, rows):
        return _NoMetric()

    def prediction_records(self, parts, batches, order, rows):
        return [{"index": i, "loss": float(v)} for i, v in enumerate(x for b in batches for x in b["loss"])]

    def save(self, parts, run_dir, model=None, state_dict=None):
        if model is not None:
            torch.save({"a": model.state_dict(), "b": parts.state.other.state_dict()}, Path(run_dir) / "players.pt")

    def card_usage(self, parts, cfg):
        return "a test task\n"


class _NoMetric:
    """The loop's metric contract with nothing to compute: eval_loss is the score."""

    def add_batch(self, **_):
        pass

    def compute(self):
        return {}


@pytest.fixture
def two_player(monkeypatch, tmp_path):
    """TwoPlayer registered, and a recipe for it on 64 rows of y = 3x + 1."""
    import csv

    monkeypatch.setitem(TASKS, TwoPlayer.name, TwoPlayer)
    data = tmp_path / "line.csv"
    generator = torch.Generator().manual_seed(0)
    xs = torch.rand(64, generator=generator).tolist()
    with open(data, "w", newline="") as f:
        csv.writer(f).writerows([("x", "y"), *((x, 3 * x + 1) for x in xs)])
    recipe = tmp_path / "two-player.yaml"
    recipe.write_text(f"task: two-player\ndata: {{train: {data}}}\ntrain: {{lr: 0.05, epochs: 1}}\n")
    return recipe


# ------------------------------------------------------------------------------------ helpers
def recipe_of(name: str) -> str:
    return TASKS[name].recipe


def finetune(recipe: str, run: Path, *overrides: str, resume: bool = False, stop_at: int | None = None):
    """api.finetune on the recipe made tiny; with `stop_at`, a SIGTERM arrives at that step."""
    from hftool.training import Trainer, TrainingStopped

    cfg = load_config(recipe, overrides=[*TINY, *overrides, f"output_dir={run}"])
    if stop_at is None:
        return api.finetune(cfg, resume=resume)
    after_step = Trainer._after_step

    def interrupted(self, end_of_epoch):
        done = after_step(self, end_of_epoch)
        if self.state.global_step == stop_at:
            self.stop_signal = signal.SIGTERM
        return done

    Trainer._after_step = interrupted
    try:
        with pytest.raises(TrainingStopped):
            api.finetune(cfg)
    finally:
        Trainer._after_step = after_step


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """(name, peft) -> (run dir, metrics) of each task's tiny run, trained on first use."""
    done: dict[tuple[str, str], tuple[Path, dict]] = {}

    def get(name: str, peft: str = "none") -> tuple[Path, dict]:
        if (name, peft) not in done:
            done[name, peft] = finetune(recipe_of(name), tmp_path_factory.mktemp(name) / "run", f"model.peft={peft}")
        return done[name, peft]

    return get


def eval_metrics(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if k.startswith("eval_")}


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


NAMES = list(TASKS)
LORA = [name for name in NAMES if not TASKS[name].peft_unsupported]
# Each task in full, and each that trains adapters again with model.peft=lora.
VARIANTS = [pytest.param(name, "none", id=name) for name in NAMES] + [
    pytest.param(name, "lora", id=f"{name}-lora") for name in LORA]


# -------------------------------------------------------------------------------- the checks
def test_task_modules_import_no_heavy_library():
    """The CLI reads every task's declarations at start-up; `hftool --help` must stay fast."""
    code = "import sys, hftool.tasks; print([m for m in ('torch', 'transformers', 'datasets') if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.strip() == "[]"


def test_no_task_module_imports_another():
    import re

    for path in (REPO / "hftool" / "tasks").glob("*.py"):
        if path.name in ("__init__.py", "base.py"):
            continue
        imported = set(re.findall(r"hftool\.tasks\.(\w+)", path.read_text(encoding="utf-8")))
        assert imported <= {"base"}, f"{path.name} imports {imported - {'base'}}"


@pytest.mark.parametrize("name", NAMES)
def test_dry_run_prints_every_key_of_the_tasks_options(cli, name):
    import yaml

    result = cli("finetune", recipe_of(name), "--dry-run")
    assert result.code == 0, result.err

    def keys(mapping, prefix=""):
        out = []
        for key, value in mapping.items():
            nested = isinstance(value, dict) and key in ("model", "data", "train", "eval", "peft") and not prefix
            out += keys(value, f"{key}.") if nested else [prefix + key]
        return out

    assert keys(yaml.safe_load(result.out)) == valid_keys(new_config(name))


@pytest.mark.parametrize("name, peft", VARIANTS)
def test_one_optimizer_step_changes_every_parameter_that_gets_a_gradient(name, peft, tmp_path):
    """And nothing else: a parameter missing from the optimizer, or a frozen one that moves, fails.
    (A parameter whose gradient is exactly 0 may keep its value: DETR's first decoder layer starts
    from zero queries, and a LoRA adapter's first matrix gets none while the second is zero.)"""
    from hftool.training import Trainer

    cfg = load_config(recipe_of(name), overrides=[*TINY, "train.max_steps=1", f"model.peft={peft}"])
    trainer = Trainer(cfg, tmp_path / "run")
    trainer.setup()
    named = {(m, n): p for m, model in trainer.models.items() for n, p in model.named_parameters()}
    before = {key: p.detach().clone() for key, p in named.items()}
    graded = set()
    for key, p in named.items():
        if p.requires_grad:
            p.register_post_accumulate_grad_hook(lambda p, key=key: graded.add(key) if p.grad.any() else None)
    trainer.train()
    changed = {key for key, p in named.items() if not torch.equal(before[key], p.detach())}
    assert graded and graded <= changed, sorted(graded - changed)
    assert all(named[key].requires_grad for key in changed)


@pytest.mark.parametrize("name, peft", VARIANTS)
def test_metrics_are_present_and_finite(runs, name, peft):
    run, metrics = runs(name, peft)
    saved = json.loads((run / "metrics.json").read_text())
    assert saved == pytest.approx(metrics)
    task = TASKS[name]
    assert f"eval_{task.default_metric}" in saved and "eval_loss" in saved
    assert all(isinstance(v, (int, float)) and math.isfinite(v) for v in saved.values()), saved


@pytest.mark.parametrize("name, peft", VARIANTS)
def test_evaluate_reproduces_metrics_json_and_the_reloaded_model_predicts_the_same(runs, name, peft, tmp_path):
    """The run dir reloaded: the same metrics, and the same prediction for every example."""
    run, metrics = runs(name, peft)
    out = tmp_path / "again.json"
    again = api.evaluate(str(run), overrides=["eval.save_predictions=true"], output=out)
    assert eval_metrics(again) == pytest.approx(eval_metrics(metrics), rel=1e-5, abs=1e-7)
    assert read_jsonl(api.predictions_path(out)) == read_jsonl(run / "predictions.jsonl")


@pytest.mark.parametrize("name, peft", VARIANTS)
def test_resume_after_a_stop_matches_an_unbroken_run(runs, name, peft, tmp_path):
    """Stopped mid-epoch at step 2 (as SIGTERM stops it), resumed: the same model and metrics."""
    run, metrics = runs(name, peft)
    broken = tmp_path / "broken"
    finetune(recipe_of(name), broken, f"model.peft={peft}", stop_at=2)
    assert not (broken / "metrics.json").exists()
    _, resumed = finetune(recipe_of(name), broken, f"model.peft={peft}", resume=True)
    assert eval_metrics(resumed) == pytest.approx(eval_metrics(metrics), rel=1e-6, abs=1e-7)
    assert read_jsonl(broken / "predictions.jsonl") == read_jsonl(run / "predictions.jsonl")


@pytest.mark.parametrize("name", LORA)
def test_an_adapter_run_saves_the_adapters_and_heads_not_the_model(runs, name):
    """adapter_config.json + adapter_model.safetensors beside config.json; the tiny base the run
    built in base/; checkpoints without the frozen base; the banner's figures in the model card."""
    from safetensors import safe_open

    run, _ = runs(name, "lora")
    assert (run / "adapter_config.json").is_file() and (run / "config.json").is_file()
    assert not (run / "model.safetensors").exists() and (run / "base" / "model.safetensors").is_file()
    with safe_open(str(run / "adapter_model.safetensors"), "pt") as saved:
        keys = list(saved.keys())
    assert any("lora_A" in key for key in keys)
    heads = json.loads((run / "adapter_config.json").read_text())["modules_to_save"] or []
    assert all(any(f".{head}." in key for key in keys) for head in heads), (heads, keys)
    checkpoint = sorted((run / "checkpoints").iterdir())[-1] / "model.safetensors"
    assert checkpoint.stat().st_size < (run / "base" / "model.safetensors").stat().st_size / 2
    provenance = json.loads((run / "provenance.json").read_text())["parameters"]
    assert 0 < provenance["trainable"] < provenance["total"] / 2 and provenance["adapters"].startswith("LoRA r=8")
    card = (run / "README.md").read_text()
    assert f"Trainable parameters: {provenance['trainable']:,} of {provenance['total']:,}" in card


@pytest.mark.parametrize("name", LORA)
def test_an_adapter_runs_card_python_merges_it_and_predicts_offline(runs, name, tmp_path):
    """The card of an adapter run says peft, and its python, run as written from inside (a copy
    of) the run dir, writes the merged folder and loads it from there."""
    from huggingface_hub import ModelCard

    run, _ = runs(name, "lora")
    assert ModelCard.load(run / "README.md").data.library_name == "peft"
    run_card_snippets(run, tmp_path)
    assert (tmp_path / "card-run" / "merged" / "config.json").is_file()
    assert not (tmp_path / "card-run" / "merged" / "adapter_config.json").exists()  # a plain model folder


@pytest.mark.parametrize("name", sorted(set(NAMES) - set(LORA)))
def test_a_task_without_adapters_says_so_in_one_line(cli, name, tmp_path):
    result = cli("finetune", recipe_of(name), "-o", tmp_path / "run", "model.peft=lora", *TINY)
    assert result.code == 2 and "Traceback" not in result.err
    assert f"model.peft=lora: {name} cannot train adapters" in result.err and "model.peft=none" in result.err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("name", NAMES)
def test_two_process_evaluation_equals_one_process(runs, name, tmp_path):
    run, _ = runs(name)
    outputs = {processes: evaluate_in_processes(run, tmp_path / f"{processes}.json", processes) for processes in (1, 2)}
    if not TASKS[name].exact_eval_loss:  # a mean of batch losses: the batches differ
        for metrics, _ in outputs.values():
            metrics.pop("eval_loss")
    assert outputs[2][0] == pytest.approx(outputs[1][0], rel=1e-5, abs=1e-7)
    assert outputs[2][1] == outputs[1][1]  # every example once, in data order


@pytest.mark.parametrize("name", NAMES)
def test_per_example_statistics_recompute_the_metrics(runs, name):
    """What `hftool eval-suite` resamples for its intervals: the task's resampler, fed batch by
    batch and counting every example once, gives the metrics the task's metric computes."""
    from hftool.data import load_splits
    from hftool.evaluation import eval_loader, eval_order, evaluate_model
    from hftool.runtime import inference_accelerator

    run, _ = runs(name)
    cfg, task = api.run_config(str(run)), get_task(name)
    splits, sources = load_splits(cfg.data, task.reading(cfg), cfg.train.seed, cfg.model.token)
    parts = task.build(cfg, None, model_path=str(run))
    rows, _ = task.prepare(cfg, splits["validation"], sources["validation"], parts.labels)
    features = task.eval_features(parts, cfg, rows)
    accelerator = inference_accelerator(cfg.train.mixed_precision)
    loader = accelerator.prepare(eval_loader(features, task.collate(parts), 3))  # several batches
    stats = task.resampler(parts, rows)
    metrics = evaluate_model(accelerator, accelerator.prepare(parts.model), loader, task, parts, rows, stats=stats,
                             order=eval_order(features))
    again = stats.compute()
    shared = sorted(again.keys() & {k.removeprefix("eval_") for k in metrics})
    assert task.default_metric in shared and len(stats) in (len(rows), len(features)), shared  # examples or blocks
    assert {k: again[k] for k in shared} == pytest.approx({k: metrics[f"eval_{k}"] for k in shared}, rel=1e-5, abs=1e-7)


@pytest.mark.parametrize("name", NAMES)
def test_a_malformed_row_is_one_line_naming_the_row(cli, name, tmp_path):
    """The recipe's own rows as JSONL (images as files beside it), row 3's first column empty."""
    from hftool.data import load_source

    cfg = load_config(recipe_of(name))
    rows = load_source(cfg.data.train)["train"].select(range(8))
    records = []
    for n, row in enumerate(rows):
        record = {}
        for key, value in row.items():
            if isinstance(value, dict) and "bytes" in value:  # an image stored in the data: a file beside it
                path = tmp_path / f"{n}.png"
                path.write_bytes(value["bytes"])
                value = path.name
            record[key] = value
        records.append(record)
    records[2][next(iter(records[2]))] = None
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r, default=str) + "\n" for r in records), encoding="utf-8")
    result = cli("finetune", recipe_of(name), "--data", data, "-o", tmp_path / "run", *TINY)
    assert result.code == 2, result.err[-2000:]
    last = result.err.strip().splitlines()[-1]
    assert last.startswith("error: ") and "Traceback" not in result.err
    assert "row 3" in last or "line 3" in last, last


# ----------------------------------------------------------------------------------- export
EXPORTABLE = [name for name in NAMES if TASKS[name].onnx_graphs is not Task.onnx_graphs]


def predict_inputs(name: str, tmp_path: Path) -> list[str]:
    """Three inputs for `predict` from the recipe's own validation data: image files, or texts."""
    from hftool.data import load_source

    if TASKS[name].inputs_optional:
        return []  # a forecast from the end of the run's own series
    rows = load_source(load_config(recipe_of(name)).data.train)["validation"].select(range(3))
    if "image" in rows.column_names:
        paths = [tmp_path / f"{n}.png" for n in range(3)]
        for path, image in zip(paths, rows["image"]):
            path.write_bytes(image["bytes"])
        return [str(p) for p in paths]
    column = next(c for c in rows.column_names if isinstance(rows[0][c], (str, list)))
    return [" ".join(v) if isinstance(v, list) else v[:60] for v in rows[column]]  # words of NER rows joined


def assert_same_predictions(got, expected, where: str = "prediction") -> None:
    """The same labels, texts and tokens; numbers within the parity tolerance plus predict's
    rounding (scores to 4 decimals, boxes to 0.01 pixel); boxes overlapping at IoU > 0.99."""
    if isinstance(expected, dict):
        assert got.keys() == expected.keys(), where
        for key in expected:
            if key == "box":
                assert iou(got[key], expected[key]) > 0.99 or got[key] == pytest.approx(expected[key], abs=0.02), where
            assert_same_predictions(got[key], expected[key], f"{where}.{key}")
    elif isinstance(expected, list):
        assert len(got) == len(expected), where
        for n, (a, b) in enumerate(zip(got, expected)):
            assert_same_predictions(a, b, f"{where}[{n}]")
    elif isinstance(expected, float):
        assert got == pytest.approx(expected, abs=0.02 if ".box" in where else 2e-4), where
    else:
        assert got == expected, where


def iou(a: list[float], b: list[float]) -> float:
    width, height = min(a[2], b[2]) - max(a[0], b[0]), min(a[3], b[3]) - max(a[1], b[1])
    inter = max(0.0, width) * max(0.0, height)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


@pytest.mark.parametrize("name", EXPORTABLE)
def test_the_onnx_export_passes_its_parity_check_and_predicts_as_the_run(runs, name, tmp_path):
    """Exported, checked against PyTorch on the run's validation examples, and then predict (and
    evaluate, for one-pass graphs) on the export give what they give on the run in fp32."""
    run, _ = runs(name)
    out = tmp_path / "onnx"
    manifest = api.export(run, out)
    assert manifest["parity"]["passed"] and manifest["parity"]["examples"] > 0, manifest["parity"]
    assert json.loads((out / "export.json").read_text()) == manifest
    assert not list(out.glob("*.safetensors")) and not list(out.glob("*.bin"))  # graphs, no PyTorch weights
    inputs = predict_inputs(name, tmp_path)
    threshold = {"threshold": 0.0} if any(o.name == "threshold" for o in TASKS[name].predict_options) else {}
    torch.manual_seed(0)  # a sampling language model draws the same numbers on both sides
    expected = api.predict(str(run), inputs, overrides=["train.mixed_precision=no"], **threshold)
    torch.manual_seed(0)
    assert_same_predictions(api.predict(str(out), inputs, **threshold), expected)
    if "model" in manifest["graphs"]:
        # The graphs compute no loss: eval_loss is there only where the task computes it from the outputs.
        again = eval_metrics(api.evaluate(str(out)))
        reference = eval_metrics(api.evaluate(str(run), overrides=["train.mixed_precision=no"]))
        assert f"eval_{TASKS[name].default_metric}" in again
        assert again == pytest.approx({k: v for k, v in reference.items() if k in again}, abs=1e-4)


# ------------------------------------------------------------------ loading a run in other tools
@pytest.mark.parametrize("name", NAMES)
def test_model_card_metadata_is_what_the_hub_reads(runs, name):
    """The card's YAML through huggingface_hub, offline: library, task, tags, no base model (tiny
    models start from scratch), and every final eval metric as a model-index result on the data
    and split it was computed on; the model-index converts back to the same results."""
    from huggingface_hub import ModelCard
    from huggingface_hub.repocard_data import model_index_to_eval_results

    run, metrics = runs(name)
    data = ModelCard.load(run / "README.md").data
    assert data.library_name and data.pipeline_tag and {"hftool", name} <= set(data.tags)
    assert data.base_model is None and data.datasets is None  # a tiny model on an embedded sample
    assert {r.metric_name: r.metric_value for r in data.eval_results} == pytest.approx(eval_metrics(metrics))
    sample = load_config(recipe_of(name)).data.train
    assert {(r.task_type, r.dataset_name, r.dataset_split) for r in data.eval_results} == \
           {(data.pipeline_tag, sample, "validation")}
    assert model_index_to_eval_results(data.to_dict()["model-index"]) == (run.name, data.eval_results)


@pytest.mark.parametrize("name", NAMES)
def test_model_card_python_runs_as_written(runs, name, tmp_path):
    """Each python block of the card, in a fresh interpreter from inside the run dir: no error,
    some output, and no weight the saved model lacks ("newly initialized")."""
    run, _ = runs(name)
    run_card_snippets(run, tmp_path)


@pytest.mark.parametrize("name", NAMES)
def test_readme_names_the_client_that_loads_each_run(runs, name):
    """Every task's recipe has a row; its library is the card's library_name and its code loads the run."""
    from huggingface_hub import ModelCard

    run, _ = runs(name)
    library, commands = readme_clients()[recipe_of(name)]
    assert library == ModelCard.load(run / "README.md").data.library_name
    assert commands
    for command in commands:
        assert eval(command, client_namespace(run)) is not None, command


# ------------------------------------------------------------------------ the task-owned step
def test_a_task_owning_its_step_trains_two_models_and_resumes_them_exactly(two_player, tmp_path):
    run, metrics = finetune(str(two_player), tmp_path / "unbroken", "train.max_steps=10", "train.eval_steps=5",
                            "data.max_eval_samples=null", "data.max_train_samples=null")
    log = read_jsonl(run / "log.jsonl")
    assert all("loss_a" in r for r in log if r["type"] == "train")  # the task's other loss is logged
    evals = [r["eval_loss"] for r in log if r["type"] == "eval"]
    assert evals[-1] < evals[0]
    broken = tmp_path / "broken"
    finetune(str(two_player), broken, "train.max_steps=10", "train.eval_steps=5", "data.max_eval_samples=null",
             "data.max_train_samples=null", stop_at=3)
    _, resumed = finetune(str(two_player), broken, "train.max_steps=10", "train.eval_steps=5",
                          "data.max_eval_samples=null", "data.max_train_samples=null", resume=True)
    assert resumed["eval_loss"] == metrics["eval_loss"]
    unbroken, again = (torch.load(path / "players.pt") for path in (run, broken))
    for player in ("a", "b"):
        assert torch.equal(unbroken[player]["weight"], again[player]["weight"])
    state = torch.load(sorted((broken / "checkpoints").iterdir())[-1] / "optimizer_1.bin", weights_only=False)
    assert state["param_groups"][0]["betas"] == (0.5, 0.999)  # b's own optimizer was checkpointed
