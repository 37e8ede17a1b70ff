"""The task contract. A task says only what differs between tasks; the loop does the rest.

A task is one module in hftool/tasks/ with one `Task` subclass, registered by one line in
hftool/tasks/__init__.py. It imports this module and the shared layers (hftool.data,
hftool.metrics, hftool.models, hftool.vision, ...), never another task. Task modules import no
torch, transformers or datasets at import time (inside the hooks only), so the CLI can read every
task's declarations at start-up and `hftool --help` stays fast.

Declarations (class attributes):

    name                 the task name recipes use (`task: text-classification`)
    recipe               its embedded-default recipe (`hftool finetune <recipe>` runs offline)
    options              Options: the task's config sections (subclasses of config.ModelConfig,
                         DataConfig, TrainConfig, EvalConfig with its own fields and checks)
    architectures        suffixes of config.json `architectures` that load as this task
    pipeline_task        the transformers pipeline that loads a run dir ("" for none)
    default_metric       picks the best checkpoint unless train.metric_for_best says
    meta_keys            batch keys for eval_outputs only, never passed to the model
    predict_options      Options `hftool predict` adds for this task (--top-k, --threshold, ...)
    generate_options     Options `hftool generate` takes for this task; empty: no generation
    generation_separator between a prompt and its generated text on the terminal
    inputs_optional      `predict RUN` with no inputs is meaningful (a forecast from the run's data)
    prompts_optional     `generate RUN` with no prompts is meaningful (an image generator's samples)
    exact_eval_loss      eval_loss does not depend on batching or process count (False: a batch mean)
    writes_output        predict and generate write --output themselves (a forecast's CSV and PNG,
                         generated images), not the CLI
    peft_unsupported     why model.peft=lora|qlora cannot work for this task; "" where it can
    quantizable          `hftool export --quantize dynamic-int8` applies (the classifiers)
    streams              data.streaming=true works (stream_features; prepare takes a chunk of rows)

Hooks, in the order a run calls them (`parts` is what `build` returned):

    reading(cfg) -> Reading                      how the data layer reads this task's sources
    validate_rows(cfg, ds, source, findings, labels) -> Summary
                                                 `hftool validate`: every raw row checked, each
                                                 problem reported to `findings` with its row
    model_specs(cfg) -> [str]                    the model specs a run loads (hftool doctor)
    prepare(cfg, ds, source, labels, require_labels) -> (rows, labels)
                                                 raw rows -> canonical columns, validated; labels
                                                 (class names) found in the training data
    build(cfg, labels, train_ds, model_path, run_dir) -> Parts
                                                 model + tokenizer/processor + typed state
    train_features / eval_features / features(parts, cfg, rows) -> Dataset
                                                 canonical rows -> model inputs (+ `length` for
                                                 length-grouped batches); `features` is what
                                                 predict uses, and the other two default to it
    stream_labels(cfg, chunks, source) -> labels  data.streaming=true: label names from one pass
                                                 (tasks whose labels are not one column's values)
    stream_features(parts, cfg, groups) -> iterator of dicts
                                                 data.streaming=true: model inputs, one dict per
                                                 example, from prepared rows arriving a small
                                                 Dataset at a time (tasks with `streams`)
    collate(parts) -> callable                   list of features -> batch of tensors
    updates(parts, cfg) -> [Update]              the models the loop trains, each with its
                                                 optimizer's parameter groups (one by default)
    checkpointed(parts) -> [object]              more state the loop moves to the device, saves and
                                                 resumes with the models (an EMA of weights)
    train_step(parts, batch, step) -> {"loss", ...}
                                                 one micro-batch: losses, step.backward(loss),
                                                 step.update(name); default: train_loss + update
    train_loss(parts, model, batch)              the default step's loss (the model's own)
    param_groups(parts, cfg, model)              decay / no decay groups of one model
    metric(parts, rows) -> evaluate module       compute() -> dict[str, float]; `rows` are the
                                                 prepared evaluation rows (ground truth)
    eval_forward(parts, model, batch)            outputs of one evaluation batch (model(**inputs))
    eval_outputs(parts, outputs, batch) -> dict  tensors to gather for the metric (+ optional
                                                 per-example "loss", which makes eval_loss exact)
    eval_generate(parts, model, batch) -> dict   more tensors from model.generate (captions)
    prediction_records(parts, batches, order, rows) -> [dict]
                                                 gathered eval outputs -> one dict per example
    peft_heads(parts) -> [str]                   with model.peft=lora: the new head modules, which
                                                 train in full and are saved with the adapters
    peft_base(cfg) -> str | None                 where an adapter run's base loads from again; None:
                                                 the run built it, and keeps its weights in base/
    evaluated(parts, model, run_dir, step)       after each evaluation in training (main process):
                                                 files of the model at that step (sample grids)
    resampler(parts, rows) -> ExampleStats       per-example statistics the metrics are recomputed
                                                 from for bootstrap resamples (`hftool eval-suite`;
                                                 default: the loss only)
    save(parts, run_dir, model, state_dict)      the run dir's model files
    write_reports(parts, run_dir, metrics, records)
                                                 task files beside metrics.json, from the final
                                                 evaluation (records: prediction_records)
    card_metadata(parts, cfg) -> dict            the model card's library_name, pipeline_tag,
                                                 base_model (Hub ids) and model (words) for this run
    card_usage(parts, cfg) -> str                the model card's "Use" section (markdown); its
                                                 first ```python block runs as written in the run dir
    predict(parts, cfg, inputs, batch_size, **options) -> [dict]
                                                 user inputs -> one JSON-able dict per input
    format_prediction(prediction) -> str         one terminal line
    generate(parts, cfg, prompts, on_text, **options) -> [dict]
                                                 `hftool generate`: prompts -> generated outputs
    format_generation(results) -> str            what `hftool generate` prints
    onnx_graphs(parts, cfg, batch) -> [hftool.export.Graph]
                                                 `hftool export`: the graphs to export, traced on
                                                 `batch`; default: not exportable yet
    onnx_feed(parts, batch) -> dict              a collated batch -> the graphs' inputs (or
                                                 generate's, for tasks that export a decoder)

A collated batch may carry `meta_keys` for eval_outputs only (e.g. which sentence a window of a
long one belongs to); the loop calls the model with `model_inputs(batch)`, which drops them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

from hftool import models
from hftool.config import DataConfig, EvalConfig, ModelConfig, Option, TrainConfig
from hftool.data.columns import find_column
from hftool.errors import HftoolError

S = TypeVar("S")


@dataclass(frozen=True)
class Options:
    """A task's config sections: what `model.*`, `data.*`, `train.*` and `eval.*` hold for it."""

    model: type[ModelConfig] = ModelConfig
    data: type[DataConfig] = DataConfig
    train: type[TrainConfig] = TrainConfig
    eval: type[EvalConfig] = EvalConfig


@dataclass(frozen=True)
class Reading:
    """How the shared data layer reads a task's sources (the task's data options decide)."""

    txt_unit: str = "line"  # a .txt file's rows: a line each, or a paragraph each
    langs: tuple[str | None, str | None] = (None, None)  # parallel `{split}.{lang}` folders
    holdout: str = "random"  # random rows (seeded), or `tail`: the end of the data in file order
    history: int = 0  # with holdout=tail: rows before the held-out ones that validation reads
    videos: bool = False  # a folder of class folders holds videos (clips or frame folders), not images


@dataclass
class Parts(Generic[S]):
    """What a task builds: the model, what turns raw inputs into its inputs, and its state."""

    model: Any
    processor: Any  # tokenizer or image processor; saved beside the model
    labels: list[str] | None = None  # class names, index = class id
    state: S | None = None  # the task's own typed state (a dataclass of its module)


@dataclass
class Update:
    """A model the loop trains: it gets its own AdamW and schedule, is prepared, checkpointed and
    resumed by the loop. `lr` and `betas` override train.lr and AdamW's defaults (a GAN's)."""

    name: str
    model: Any
    param_groups: list[dict]
    lr: float | None = None
    betas: tuple[float, float] = (0.9, 0.999)


class Step:
    """What `train_step` works with: the prepared models by name, and the loop's update rules.

    Between accumulation boundaries `update` changes nothing (Accelerate's prepared optimizers
    and schedulers skip), so a task's step is written as if every micro-batch were a step."""

    def __init__(self, accelerator, models: dict[str, Any], optimizers: dict[str, Any], schedulers: dict[str, Any],
                 max_grad_norm: float):
        self.accelerator, self.models = accelerator, models
        self._optimizers, self._schedulers, self._max_grad_norm = optimizers, schedulers, max_grad_norm
        # Optimizer steps done before this micro-batch (the loop's global step, restored on resume):
        # what a task that updates its models on different steps counts by.
        self.number = 0

    @property
    def at_boundary(self) -> bool:
        """Whether `update` steps the optimizers at this micro-batch (the last of an accumulation window)."""
        return self.accelerator.sync_gradients

    def backward(self, loss, **kwargs) -> None:
        """Backpropagate `loss`; kwargs go to Tensor.backward (`inputs=`: only these get gradients)."""
        self.accelerator.backward(loss, **kwargs)

    def update(self, name: str) -> None:
        """Clip, step, schedule and zero the gradients of model `name`."""
        if self.accelerator.sync_gradients and self._max_grad_norm > 0:
            self.accelerator.clip_grad_norm_(self.models[name].parameters(), self._max_grad_norm)
        self._optimizers[name].step()
        self._schedulers[name].step()
        self._optimizers[name].zero_grad(set_to_none=True)

    def learning_rate(self) -> float:
        """The first model's current learning rate (for the log)."""
        return next(iter(self._schedulers.values())).get_last_lr()[0]


class Task:
    """Base class with the parts most tasks share; see the module docstring for the contract."""

    name: str = ""
    recipe: str = ""
    options: Options = Options()
    architectures: tuple[str, ...] = ()
    pipeline_task: str = ""
    default_metric: str = "loss"
    meta_keys: tuple[str, ...] = ()
    predict_options: tuple[Option, ...] = ()
    generate_options: tuple[Option, ...] = ()
    inputs_optional: bool = False
    prompts_optional: bool = False
    writes_output: bool = False  # predict/generate write --output themselves (a forecast's CSV + PNG), not the CLI's JSONL
    generation_separator: str = ""  # between a prompt and its generated text on the terminal
    # eval_loss is exact whatever the batching (per-example losses); False where the model's loss
    # is normalised over a batch and cannot be split by example (DETR's, over the batch's boxes).
    exact_eval_loss: bool = True
    # model.peft=lora|qlora (hftool.adapters): "" where the task trains adapters (peft_heads names
    # what else trains), else why it cannot, which the error gives.
    peft_unsupported: str = "it does not say which of its modules are new heads (Task.peft_heads)"
    quantizable: bool = False  # `hftool export --quantize dynamic-int8` applies
    streams: bool = False  # data.streaming=true reads the training data as a stream (hftool/data/streaming.py)

    def model_inputs(self, batch: dict) -> dict:
        """The batch without meta_keys: what the model is called with."""
        return {k: v for k, v in batch.items() if k not in self.meta_keys} if self.meta_keys else batch

    # ------------------------------------------------------------------------------ data
    def reading(self, cfg) -> Reading:
        return Reading()

    def validate_rows(self, cfg, ds, source: str, findings, labels: list[str] | None = None):
        """`hftool validate`: check every raw row of one split, reporting each problem to
        `findings` (hftool.data.checks.Findings, collecting) with its row, and describe the split
        (hftool.data.validation.Summary). `labels`: the training split's classes (None when `ds`
        is the training split). The task's reader (prepare) runs after this hook and reports the
        first error the hook missed, so the default (count the rows) is safe for any task."""
        from hftool.data.validation import Summary

        return Summary(rows=len(ds))

    def model_specs(self, cfg) -> list[str]:
        """The model specs a run loads (`hftool doctor` checks each resolves offline)."""
        return [cfg.model.name]

    def prepare(self, cfg, ds, source: str, labels: list[str] | None = None, require_labels: bool = True):
        raise NotImplementedError

    def label_set(self, cfg, ds, source: str) -> list[str] | None:
        """The labels of all the training rows, before a validation hold-out (the run's label map
        comes from them): prepare's second value. A task whose prepare writes its rows out
        overrides it, so the whole data is not copied only to read its labels."""
        return self.prepare(cfg, ds, source)[1]

    def build(self, cfg, labels: list[str] | None, train_ds=None, model_path: str | None = None,
              run_dir: Path | None = None) -> Parts:
        raise NotImplementedError

    def features(self, parts: Parts, cfg, ds):
        raise NotImplementedError

    def train_features(self, parts: Parts, cfg, ds):
        """Features of the training split. Tasks with training-only augmentation (random crops,
        flips) override this; evaluation and prediction always use `features`."""
        return self.features(parts, cfg, ds)

    def eval_features(self, parts: Parts, cfg, ds):
        """Model inputs for evaluation (training, `hftool evaluate`). The training features unless
        the task scores differently, e.g. a language model's overlapping strided windows."""
        return self.features(parts, cfg, ds)

    def stream_labels(self, cfg, chunks, source: str) -> list[str] | None:
        """data.streaming=true: the label names of every training row, from one pass over
        `chunks` ((first row, Dataset of raw rows) each), for a task whose labels are not one
        column's values (tags of a sentence). None: the default pass, which keeps the distinct
        values of the label column (hftool/data/streaming.py)."""
        return None

    def stream_features(self, parts: Parts, cfg, groups):
        """data.streaming=true: the training examples (dicts of model inputs) of a stream of
        prepared rows, which arrive a small Dataset at a time. Default: each group's
        train_features; a task that joins rows (packing) carries what is left to the next group."""
        for rows in groups:
            yield from self.train_features(parts, cfg, rows)

    def collate(self, parts: Parts) -> Callable[[list[dict]], dict]:
        raise NotImplementedError

    # -------------------------------------------------------------------------- training
    def updates(self, parts: Parts, cfg) -> list[Update]:
        """The models the loop trains; one, `parts.model`, unless the task owns its step."""
        return [Update("model", parts.model, self.param_groups(parts, cfg, parts.model))]

    def train_step(self, parts: Parts, batch: dict, step: Step) -> dict:
        """One micro-batch. Returns the losses to log ("loss" is the one the log and the NaN
        check follow); a task with several models updates each in its own order."""
        loss = self.train_loss(parts, step.models["model"], self.model_inputs(batch))
        step.backward(loss)
        step.update("model")
        return {"loss": loss}

    def train_loss(self, parts: Parts, model, batch: dict):
        """The training loss of one batch. Tasks that mix examples or soften targets (mixup,
        label smoothing) override this; eval_loss always comes from the model's own loss."""
        return model(**batch).loss

    def checkpointed(self, parts: Parts) -> list:
        """State besides the trained models that changes in training and must resume exactly (an
        EMA of a model's weights): objects with state_dict()/load_state_dict(). The loop moves
        modules to its device and saves and restores them with every checkpoint; none by default."""
        return []

    def param_groups(self, parts: Parts, cfg, model) -> list[dict]:
        """The optimizer's parameter groups. Default: weight decay on weight matrices, none on
        biases and norms, all at train.lr. Tasks override it for per-part rates (a group's "lr"
        wins over train.lr, and the schedule scales every group alike)."""
        decay, no_decay = [], []
        for name, param in model.named_parameters():
            if param.requires_grad:
                (no_decay if param.ndim < 2 or "norm" in name.lower() else decay).append(param)
        return [{"params": decay, "weight_decay": cfg.train.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]

    # ------------------------------------------------------------------------ evaluation
    def metric(self, parts: Parts, rows):
        raise NotImplementedError

    def eval_forward(self, parts: Parts, model, batch: dict):
        """The outputs of one evaluation batch (eval_outputs reads them)."""
        return model(**self.model_inputs(batch))

    def eval_outputs(self, parts: Parts, outputs, batch) -> dict:
        raise NotImplementedError

    def eval_generate(self, parts: Parts, model, batch) -> dict:
        """Tensors to gather for the metric from what the (unwrapped) model generates for `batch`,
        merged into eval_outputs' dict; {} (no generation) by default. Every process must return
        the same shapes but the batch dimension (pad generated ids to a fixed length), since
        gather_for_metrics concatenates them."""
        return {}

    def prediction_records(self, parts: Parts, batches: list[dict], order, rows) -> list[dict]:
        """Per-example evaluation results, sorted by `index` (the example's row in the eval data).

        Args:
            batches: eval_outputs of every batch as gathered numpy arrays (+ per-example `loss`).
            order: eval row of each gathered position (hftool.evaluation.eval_order).
            rows: the prepared evaluation rows.

        The default suits tasks whose eval_outputs hold one row per example: `predictions` and
        `references` become `prediction` and `reference` (class ids become label names), other
        values are kept as they are.
        """
        import numpy as np

        if not batches:
            return []
        columns = {key: np.concatenate([b[key] for b in batches]) for key in batches[0]}
        rename = {"predictions": "prediction", "references": "reference"}
        named = {"predictions", "references", "top_k"} if parts.labels else set()
        records = []
        for row in range(len(next(iter(columns.values())))):
            record = {"index": int(order[row]) if order is not None else row}
            for key, values in columns.items():
                value = values[row].tolist()
                if key in named and isinstance(value, int):
                    value = parts.labels[value]
                elif key in named and isinstance(value, list) and all(isinstance(v, int) for v in value):
                    value = [parts.labels[v] for v in value]
                record[rename.get(key, key)] = round(value, 6) if isinstance(value, float) else value
            records.append(record)
        return sorted(records, key=lambda r: r["index"])

    # ---------------------------------------------------------------------------- adapters
    def peft_heads(self, parts: Parts) -> list[str]:
        """The modules the task adds to a pretrained model (a classifier, a box head): with
        model.peft=lora they train in full beside the adapters and are saved with them. Names as
        peft's modules_to_save reads them: a module's name or a dotted suffix of it
        (hftool.adapters.present keeps those the model has). None by default."""
        return []

    def peft_base(self, cfg) -> str | None:
        """Where an adapter run's frozen base loads from again: model.name when the run loaded it
        from a model dir or the hub (a dir as an absolute path). None when the run built the base
        itself (tiny:<arch>, model.pretrained=false): the run dir then keeps its weights in base/."""
        spec = cfg.model.name
        if models.tiny_arch(spec) is not None or not getattr(cfg.model, "pretrained", True):
            return None
        return str(Path(spec).expanduser().resolve()) if models.is_local(spec) else spec

    def evaluated(self, parts: Parts, model, run_dir: Path, step: int) -> None:
        """Called on the main process after each evaluation during training, with the (unwrapped)
        model evaluated and the step it is at: files that show the model at that step (a
        generator's sample grid). Nothing by default; `hftool evaluate` does not call it."""

    def resampler(self, parts: Parts, rows):
        """A hftool.metrics.resampling.ExampleStats that evaluation feeds with each gathered batch
        of eval_outputs, from which the metrics are recomputed for any reweighting of the examples
        (`hftool eval-suite`'s bootstrap intervals and paired tests); `rows` as metric's. Default:
        the loss only."""
        from hftool.metrics.resampling import ExampleStats

        return ExampleStats()

    # ---------------------------------------------------------------------------- saving
    def save(self, parts: Parts, run_dir: Path, model=None, state_dict: dict | None = None) -> None:
        """Write the run dir's model files: weights + config (when `model` is given) and the
        processor. The loop calls it with model=None before training (so a resumed tiny model
        reuses its tokenizer) and with the trained (first) model and its state dict at the end;
        a task with several models saves the others from `parts`."""
        if model is not None:
            model.save_pretrained(str(run_dir), state_dict=state_dict, safe_serialization=True)
        if parts.processor is not None:
            parts.processor.save_pretrained(str(run_dir))

    def write_reports(self, parts: Parts, run_dir: Path, metrics: dict[str, float], records: list[dict]) -> None:
        """Files a finished run leaves beside metrics.json, from its final evaluation's metrics and
        per-example records (prediction_records); none by default."""

    def card_metadata(self, parts: Parts, cfg) -> dict:
        """What the model card says about the model: `library_name` (what loads the run dir),
        `pipeline_tag` (the Hub's task), `base_model` (the Hub ids its weights started from; none
        for a model trained from scratch) and `model` (the spec it was built from, in words)."""
        from hftool.reports import model_origin

        pretrained = getattr(cfg.model, "pretrained", True)  # vision models may start from random weights
        return {"library_name": "transformers", "pipeline_tag": self.pipeline_task or self.name,
                "base_model": model_origin(cfg.model.name) if pretrained else [], "model": f"`{cfg.model.name}`"}

    def card_usage(self, parts: Parts, cfg) -> str:
        """The model card's "Use" section (markdown): how to load the run dir outside hftool. Its
        first ```python block must run as written from inside the run dir, with `image.png` there
        for image tasks (tests/test_clients.py runs it on every task's run)."""
        return ("```python\nfrom transformers import pipeline\n\n"
                f"pipe = pipeline(\"{self.pipeline_task}\", model=\".\")\n```\n")

    # ------------------------------------------------------------------------- inference
    def predict(self, parts: Parts, cfg, inputs: list[str], batch_size: int, **options) -> list[dict]:
        raise NotImplementedError

    def format_prediction(self, prediction: dict) -> str:
        """One line for the terminal."""
        return str(prediction)

    def generate(self, parts: Parts, cfg, prompts: list[str], on_text=None, **options) -> list[dict]:
        """What `hftool generate` makes from `prompts`, with the task's generate_options (and seed,
        batch_size); only tasks that declare generate_options have it."""
        raise NotImplementedError

    def format_generation(self, results: list[dict]) -> str:
        """What `hftool generate` prints: each prompt with its generated text."""
        return "\n\n".join(r["prompt"] + self.generation_separator + r["generated_text"] for r in results)

    # ---------------------------------------------------------------------------- export
    def onnx_graphs(self, parts: Parts, cfg, batch: dict) -> list:
        """The ONNX graphs `hftool export` writes (hftool.export.Graph: a PyTorch module, example
        inputs, output names, dynamic axes), traced on `batch`: two collated examples. A graph
        named `model` is a forward pass (`model(**inputs)` on the export); `decoder` (with
        `encoder`) is what generate decodes with. A task that cannot be exported keeps this
        default, or overrides it to raise the reason."""
        raise HftoolError(f"{self.name} models are not exportable to ONNX yet")

    def onnx_feed(self, parts: Parts, batch: dict) -> dict:
        """A collated batch as the exported graphs' inputs, for the parity check (the inputs of
        generate, for tasks that export a decoder). Default: the model inputs but the labels."""
        return {k: v for k, v in self.model_inputs(batch).items() if k != "labels"}


# Re-exported: what a task module needs from the shared layers to declare itself.
__all__ = ["Option", "Options", "Parts", "Reading", "Step", "Task", "Update", "find_column"]
