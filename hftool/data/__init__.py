"""Shared data plumbing: sources -> train/validation splits, batching, padding."""

from __future__ import annotations

from pathlib import Path

from typing import TYPE_CHECKING

from hftool import logs
from hftool.config import DataConfig
from hftool.data.encoding import read_text
from hftool.data.sources import describe, load_source, read_file, read_inputs
from hftool.errors import HftoolError

if TYPE_CHECKING:
    from hftool.tasks.base import Reading

__all__ = ["describe", "load_eval_split", "load_source", "load_splits", "read_file", "read_inputs", "read_text"]


def _one_file(spec: str) -> bool:
    return Path(spec).expanduser().is_file()


def load_splits(data: DataConfig, reading: Reading, seed: int, token: str | None = None) -> tuple[dict, dict[str, str]]:
    """Training and validation data for a run, and a readable name for each (for messages).

    Returns ({"train", "validation"[, "full"]}, names): "full" is the training source before
    a hold-out was taken from it, where there was one.

    Validation comes from `data.eval`, else the source's own validation split, else a hold-out of
    `data.validation_split` of the training data (announced): seeded random rows, or the end of
    the data (reading.holdout), so every run has one. data.max_train_samples and
    data.max_eval_samples then keep the first rows of each.
    """
    splits, names = _splits(data, reading, seed, token)
    # Validation's first reading.history rows are context its first examples read (time series).
    for split, limit in (("train", data.max_train_samples),
                         ("validation", data.max_eval_samples and data.max_eval_samples + reading.history)):
        if limit is not None and limit < len(splits[split]):
            splits[split] = splits[split].select(range(limit))
            names[split] = f"{names[split]} (first {limit} rows)"
    return splits, names


def _splits(data: DataConfig, reading: Reading, seed: int, token: str | None) -> tuple[dict, dict[str, str]]:
    if not data.train:
        raise HftoolError("no training data: pass --data FILE (or set data.train in the recipe)")
    langs = reading.langs
    source = load_source(data.train, data.encoding, token, reading.txt_unit, langs, reading.videos)
    whole = _one_file(data.train)
    if "train" not in source:
        raise HftoolError(f"{data.train} has no train split (splits: {', '.join(source)}); pass the training data with --data")
    splits = {"train": source["train"]}
    names = {"train": describe(data.train, "train", whole)}
    if len(splits["train"]) == 0:
        raise HftoolError(f"{names['train']} has no rows; training data needs at least one example")
    if data.eval:
        eval_source = load_source(data.eval, data.encoding, token, reading.txt_unit, langs, reading.videos)
        eval_name = next((s for s in ("validation", "test", "train") if s in eval_source), None)
        splits["validation"] = eval_source[eval_name]
        names["validation"] = describe(data.eval, eval_name, _one_file(data.eval))
    elif "validation" in source:
        splits["validation"] = source["validation"]
        names["validation"] = describe(data.train, "validation", whole)
    else:
        n = len(splits["train"])
        if n < 2:
            raise HftoolError(f"{names['train']} has {n} rows: too few to hold out validation data; pass --eval-data")
        if data.validation_split <= 0:
            raise HftoolError(f"{names['train']} has no validation split and data.validation_split is 0; pass --eval-data")
        held_out = max(1, round(n * data.validation_split))
        # "full" lets label maps come from all the rows: a rare class that lands only in the
        # held-out part is still a class of the data, not an unknown label.
        splits["full"] = splits["train"]
        if reading.holdout == "tail":  # time series: the end of the file, in file order
            return _hold_out_tail(splits, names, held_out, reading.history, data.validation_split)
        parts = splits["train"].train_test_split(test_size=held_out, seed=seed, shuffle=True)
        splits["train"], splits["validation"] = parts["train"], parts["test"]
        names["validation"] = f"{names['train']} (held-out {held_out} rows)"
        logs.info(f"no validation data given: holding out {held_out} of {n} training rows (seed {seed}, "
                  f"data.validation_split={data.validation_split}); pass --eval-data to use your own")
    for split, ds in splits.items():
        if len(ds) == 0 and split in names:
            raise HftoolError(f"{names[split]} has no rows; {split} data needs at least one example")
    return splits, names


def _hold_out_tail(splits: dict, names: dict, held_out: int, history: int, fraction: float) -> tuple[dict, dict]:
    """Validation = the last `held_out` rows, preceded by `history` rows that its first windows
    read (never scored); training = every row before the held-out ones."""
    full, n = splits["full"], len(splits["full"])
    if held_out >= n:
        raise HftoolError(f"{names['train']} has {n} rows: too few to hold out {held_out}; lower data.validation_split")
    history = min(history, n - held_out)
    splits["train"] = full.select(range(n - held_out))
    splits["validation"] = full.select(range(n - held_out - history, n))
    names["validation"] = f"{names['train']} (last {held_out} rows, after {history} rows of history)"
    logs.info(f"no validation data given: holding out the last {held_out} of {n} rows (data.holdout=tail, "
              f"data.validation_split={fraction}); pass --eval-data to use your own")
    return splits, names


def load_eval_split(spec: str, split: str | None, encoding: str | None, reading: Reading, token: str | None = None):
    """The split `hftool evaluate` scores: `split`, else test, else validation, else the only one."""
    source = load_source(spec, encoding, token, reading.txt_unit, reading.langs, reading.videos)
    if split is None:
        split = next((s for s in ("test", "validation") if s in source), None) or next(iter(source))
    if split not in source:
        raise HftoolError(f"{spec} has no split '{split}' (splits: {', '.join(source)}); pass --split with one of them")
    ds = source[split]
    name = describe(spec, split, _one_file(spec))
    if len(ds) == 0:
        raise HftoolError(f"{name} has no rows; evaluation needs at least one example")
    return ds, name
