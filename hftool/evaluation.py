"""Evaluation and batched inference, shared by training, `hftool evaluate` and `hftool predict`."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from tqdm.auto import tqdm


def eval_loader(features, collate: Callable, batch_size: int, num_workers: int = 0):
    """Batches in length order (little padding); gather_for_metrics drops the duplicates that
    sharding adds to the last batch, so every example is scored exactly once."""
    from torch.utils.data import DataLoader

    if "length" in features.column_names:
        import numpy as np

        features = features.select(np.argsort(features["length"], kind="stable"))
    return DataLoader(features, batch_size=batch_size, shuffle=False, collate_fn=collate,
                      num_workers=num_workers, generator=torch.Generator())


def evaluate_model(accelerator, model, loader, task, parts, prefix: str = "eval") -> dict[str, float]:
    """Loss and the task's metrics over `loader`, exact across processes.

    Returns:
        Flat `{f"{prefix}_{name}": value}`, e.g. eval_loss, eval_accuracy.
    """
    metric = task.metric(parts)
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=accelerator.device)
    count = torch.zeros((), dtype=torch.float64, device=accelerator.device)
    progress = tqdm(loader, desc="Evaluating", leave=False, disable=not accelerator.is_local_main_process)
    for batch in progress:
        with torch.no_grad():
            outputs, values = task.eval_step(parts, model, batch)  # a forward pass; generation too for seq2seq
        if "loss" not in values and getattr(outputs, "loss", None) is not None:
            # Tasks that can give per-example losses do (exact whatever the batching); else the
            # batch mean stands for each of its examples.
            values["loss"] = outputs.loss.detach().reshape(1).repeat(batch_size_of(batch))
        gathered = accelerator.gather_for_metrics(values)  # duplicates from uneven sharding dropped
        if "loss" in gathered:
            losses = gathered.pop("loss").double()
            loss_sum += losses.sum()
            count += losses.numel()
        metric.add_batch(**{k: v.cpu().numpy() for k, v in gathered.items()})
    if was_training:
        model.train()
    results = {f"{prefix}_{k}": float(v) for k, v in metric.compute().items()}
    if count > 0:
        results = {f"{prefix}_loss": float(loss_sum / count), **results}
    return results


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
