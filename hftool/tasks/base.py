"""The task contract. A task says only what differs between tasks; the loop does the rest.

The training loop, `hftool evaluate` and `hftool predict` call these methods and nothing
task-specific, so training, evaluation and inference share one featurisation and cannot drift:

    prepare(cfg, ds, source, labels)  raw rows -> canonical columns, validated (label maps found)
    build(cfg, labels, ...)           model + tokenizer/processor (tiny:<arch> built here)
    features(parts, cfg, ds)          canonical rows -> model inputs (+ `length` for batching)
    train_features(parts, cfg, ds)    the same for the training split (default: features)
    eval_features(parts, cfg, ds)     the same for evaluation data, unless a task scores differently
    collate(parts)                    list of features -> batch of tensors
    metric(parts)                     an evaluate module; compute() -> dict[str, float]
    train_loss(parts, model, batch)   the loss the optimizer minimises (default: model's own)
    param_groups(parts, cfg, model)   the optimizer's parameter groups (default: decay / no decay)
    eval_outputs(parts, out, batch)   model outputs -> tensors to gather for the metric (plus
                                      optional per-example "loss", which makes eval_loss exact)
    eval_generate(parts, model, batch) more tensors for the metric from model.generate (captions,
                                      translations); none by default
    prediction_records(parts, ...)    gathered eval outputs -> one JSON-able dict per example
                                      (eval.save_predictions; default: label names per row)
    resampler(parts)                  per-example statistics the metrics can be recomputed from
                                      for bootstrap resamples (default: the loss only)
    predict(parts, cfg, inputs)       user inputs -> one JSON-able dict per input
    write_reports(run_dir, metrics)   task-specific files beside metrics.json (optional)

A collated batch may carry `meta_keys` for eval_outputs only (e.g. which sentence a window of
a long one belongs to); the loop calls the model with `model_inputs(batch)`, which drops them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hftool.errors import HftoolError


@dataclass
class Parts:
    """What a task builds: the model and what turns raw inputs into its inputs."""

    model: Any
    processor: Any  # tokenizer or image processor; saved beside the model
    labels: list[str] | None = None  # class names, index = class id
    extra: dict = field(default_factory=dict)


def find_column(ds, source: str, configured: str | None, candidates: tuple[str, ...], what: str, key: str) -> str:
    """The column of `ds` to use: `configured` (data.<key>) if set, else the first of `candidates` present."""
    if configured:
        if configured not in ds.column_names:
            raise HftoolError(f"{source} has no column '{configured}' (columns: {', '.join(ds.column_names)}); "
                              f"fix data.{key}")
        return configured
    found = next((c for c in candidates if c in ds.column_names), None)
    if found is None:
        raise HftoolError(f"{source} has no {what} column (columns: {', '.join(ds.column_names)}); "
                          f"set data.{key}=<column>")
    return found


class Task:
    """Base class with the parts most tasks share; see the module docstring for the contract."""

    name: str = ""
    # Metric (without eval_) that picks the best checkpoint unless train.metric_for_best says.
    default_metric: str = "loss"
    # transformers pipeline task name that works on a saved run dir.
    pipeline_task: str = ""
    # Batch keys that are bookkeeping for eval_outputs, not arguments of the model's forward().
    meta_keys: tuple[str, ...] = ()

    def model_inputs(self, batch: dict) -> dict:
        """The batch without meta_keys: what the model is called with."""
        return {k: v for k, v in batch.items() if k not in self.meta_keys} if self.meta_keys else batch

    def prepare(self, cfg, ds, source: str, labels: list[str] | None = None):
        raise NotImplementedError

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

    def collate(self, parts: Parts) -> Callable[[list[dict]], dict]:
        raise NotImplementedError

    def train_loss(self, parts: Parts, model, batch: dict):
        """The training loss of one batch. Tasks that mix examples or soften targets (mixup,
        label smoothing) override this; eval_loss always comes from the model's own loss."""
        return model(**batch).loss

    def param_groups(self, parts: Parts, cfg, model) -> list[dict]:
        """The optimizer's parameter groups. Default: weight decay on weight matrices, none on
        biases and norms, all at train.lr. Tasks override it for per-part rates (a group's "lr"
        wins over train.lr, and the schedule scales every group alike)."""
        decay, no_decay = [], []
        for name, param in model.named_parameters():
            if param.requires_grad:
                (no_decay if param.ndim < 2 or "norm" in name.lower() else decay).append(param)
        return [{"params": decay, "weight_decay": cfg.train.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]

    def metric(self, parts: Parts):
        raise NotImplementedError

    def eval_outputs(self, parts: Parts, outputs, batch) -> dict:
        raise NotImplementedError

    def eval_generate(self, parts: Parts, model, batch) -> dict:
        """Tensors to gather for the metric from what the (unwrapped) model generates for `batch`,
        merged into eval_outputs' dict; {} (no generation) by default. Every process must return
        the same shapes but the batch dimension (pad generated ids to a fixed length), since
        gather_for_metrics concatenates them."""
        return {}

    def predict(self, parts: Parts, cfg, inputs: list[str], batch_size: int) -> list[dict]:
        raise NotImplementedError

    def write_reports(self, run_dir: Path, metrics: dict[str, float]) -> None:
        """Files a finished run leaves beside metrics.json, from its final metrics; none by default."""

    def prediction_records(self, parts: Parts, batches: list[dict], order) -> list[dict]:
        """Per-example evaluation results, sorted by `index` (the example's row in the eval data).

        Args:
            batches: eval_outputs of every batch as gathered numpy arrays (+ per-example `loss`).
            order: eval row of each gathered position (hftool.evaluation.eval_order).

        The default suits tasks whose eval_outputs hold one row per example: `predictions` and
        `references` become `prediction` and `reference` (label names where the task has labels),
        other values are kept as they are.
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
                if key in named:
                    value = [parts.labels[v] for v in value] if isinstance(value, list) else parts.labels[value]
                record[rename.get(key, key)] = round(value, 6) if isinstance(value, float) else value
            records.append(record)
        return sorted(records, key=lambda r: r["index"])

    def resampler(self, parts: Parts):
        """A hftool.metrics.resampling.ExampleStats that evaluation feeds with each gathered batch
        of eval_outputs, from which the metrics are recomputed for any reweighting of the examples
        (`hftool eval-suite`'s bootstrap intervals and paired tests). Default: the loss only."""
        from hftool.metrics.resampling import ExampleStats

        return ExampleStats()

    def format_prediction(self, prediction: dict) -> str:
        """One line for the terminal."""
        return str(prediction)

    def save(self, parts: Parts, run_dir: Path, model=None, state_dict: dict | None = None) -> None:
        """Write the run dir's model files: weights + config (when `model` is given) and the
        processor. The loop calls it with model=None before training (so a resumed tiny model
        reuses its tokenizer) and with the trained model and its state dict at the end."""
        if model is not None:
            model.save_pretrained(str(run_dir), state_dict=state_dict, safe_serialization=True)
        if parts.processor is not None:
            parts.processor.save_pretrained(str(run_dir))
