"""Evaluation and batched inference, shared by training, `hftool evaluate` and `hftool predict`."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import torch
from tqdm.auto import tqdm


def eval_order(features):
    """The order evaluation visits `features` in: by length (little padding), else as given.
    Position k of the gathered outputs is row eval_order(features)[k] of `features`."""
    from hftool.data.batching import lengths_of

    return np.argsort(lengths_of(features), kind="stable")  # all ones without a length column: as given


def eval_loader(features, collate: Callable, batch_size: int, num_workers: int = 0):
    """Batches in eval_order; gather_for_metrics drops the duplicates that sharding adds to the
    last batch, so every example is scored exactly once."""
    from torch.utils.data import DataLoader

    if "length" in features.column_names:
        features = features.select(eval_order(features))
    return DataLoader(features, batch_size=batch_size, shuffle=False, collate_fn=collate,
                      num_workers=num_workers, generator=torch.Generator())


def evaluate_model(accelerator, model, loader, task, parts, rows, prefix: str = "eval",
                   batches: list | None = None, stats=None, order=None) -> dict[str, float]:
    """Loss and the task's metrics over `loader`, exact across processes.

    Args:
        rows: The prepared evaluation rows the loader's features were made from (the metric's
            ground truth, for tasks that score against more than the batch carries).
        batches: If a list, it receives every batch's gathered outputs as numpy arrays (with the
            per-example `loss`), for task.prediction_records: per-example results.
        stats: A task.resampler(parts, rows) to feed each gathered batch to (per-example
            statistics for bootstrap intervals, a batch at a time); finished here.
        order: eval_order of the loader's features, mapping gathered rows back to dataset rows
            (for `stats`).

    Returns:
        Flat `{f"{prefix}_{name}": value}`, e.g. eval_loss, eval_accuracy.
    """
    metric = task.metric(parts, rows)
    was_training = model.training
    model.eval()
    loss_sum, count, seen = 0.0, 0, 0
    progress = tqdm(loader, desc="Evaluating", leave=False, disable=not accelerator.is_local_main_process)
    keeping = batches is not None or stats is not None
    for number, batch in enumerate(progress):
        if keeping and number % 16 == 15:
            release_freed_memory()
        with torch.no_grad():
            outputs = task.eval_forward(parts, model, batch)
        values = task.eval_outputs(parts, outputs, batch)
        # Generative tasks score what the model writes, not only the teacher-forced loss.
        values.update(task.eval_generate(parts, accelerator.unwrap_model(model), batch))
        if "loss" not in values and getattr(outputs, "loss", None) is not None:
            # Tasks that can give per-example losses do (exact whatever the batching); else the
            # batch mean stands for each of its examples.
            values["loss"] = outputs.loss.detach().reshape(1).repeat(batch_size_of(batch))
        gathered = accelerator.gather_for_metrics(values)  # duplicates from uneven sharding dropped
        losses = gathered.pop("loss").double().cpu().numpy() if "loss" in gathered else None
        if losses is not None:
            loss_sum += float(losses.sum())
            count += losses.size
        arrays = {k: v.cpu().numpy() for k, v in gathered.items()}
        metric.add_batch(**arrays)
        if stats is not None:
            size = len(next(iter(arrays.values()))) if arrays else len(losses)
            stats.add_batch(arrays if losses is None else {**arrays, "loss": losses},
                            np.arange(seen, seen + size) if order is None else order[seen:seen + size])
            seen += size
        if batches is not None:
            batches.append(arrays if losses is None else {**arrays, "loss": losses})
    if stats is not None:
        stats.finish()
    if was_training:
        model.train()
    results = {f"{prefix}_{k}": float(v) for k, v in metric.compute().items()}
    if count > 0:
        results = {f"{prefix}_loss": float(loss_sum / count), **results}
    return results


def release_freed_memory() -> None:
    """Hand glibc's free heap pages back to the OS (malloc_trim; nothing elsewhere).

    Each batch frees its activations while small per-example records and statistics made in the
    same step stay: they pin the heap above the freed space, which glibc then keeps, so peak
    memory grew with the number of examples. Trimming every few batches keeps it flat, at the cost
    of one walk over the free lists each time."""
    global _malloc_trim
    if _malloc_trim is None:
        import ctypes

        _malloc_trim = getattr(ctypes.CDLL(None), "malloc_trim", False)
    if _malloc_trim:
        _malloc_trim(0)


_malloc_trim = None  # libc's malloc_trim once looked up; False where the C library has none


def batch_size_of(batch: dict) -> int:
    value = next(v for v in batch.values() if isinstance(v, torch.Tensor))
    return value.shape[0]


def run_batches(model, features, collate: Callable, batch_size: int) -> Iterator[tuple[dict, object]]:
    """Inference in input order on the model's device: yields (batch, outputs)."""
    device = next(model.parameters()).device
    model.eval()
    columns = [c for c in features.column_names if c != "length"]
    for start in range(0, len(features), batch_size):
        rows = features.select(range(start, min(start + batch_size, len(features)))).select_columns(columns)
        batch = {k: v.to(device) for k, v in collate(list(rows)).items()}
        with torch.no_grad():
            yield batch, model(**batch)
