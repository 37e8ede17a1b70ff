"""Batching: length-grouped batch order and dynamic padding."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler


def lengths_of(features) -> np.ndarray:
    """The `length` column of a features Dataset as one integer array (ones where it has none)."""
    if "length" not in features.column_names:
        return np.ones(len(features), dtype=np.int64)
    from hftool.data.columns import column_values

    return column_values(features, "length").to_numpy()


class LengthGroupedBatches(Sampler[list[int]]):
    """Batches of similar-length examples in a seeded random order.

    Examples are shuffled and cut into mega-batches of `mega` batches; each mega-batch is sorted
    longest first and chunked, and the batches follow in that order. On small data the mega-batch
    shrinks so there are at least four (Trainer's rule): sorting nearly the whole dataset at once
    makes every batch hold one narrow band of lengths, which on real data often means one class
    or template per batch, and cost accuracy (benchmarks/README.md).

    The batch holding the longest example goes first, so an out-of-memory shows up at step 1,
    not hours in. The order depends only on (seed, epoch): set `epoch` before iterating, and a
    resumed run sees exactly the batches the interrupted one would have.

    Every batch is full: when the data does not divide into batches, the short batch is topped up
    with other examples of the same epoch (seeded), so each example is seen at least once per
    epoch. Accelerate splits a global batch across processes and would otherwise drop a short
    batch that is not the last one, or pad the last with duplicates only a multi-process run sees;
    full batches make N processes train exactly as one does.
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int, group_by_length: bool = True,
                 mega: int = 50):
        # One integer array, whatever the number of rows: a Python list of a million ints costs
        # ~40 MB and sorting it by a key function costs seconds at the first step.
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.batch_size = batch_size
        self.seed = seed
        self.group_by_length = group_by_length
        self.mega = mega
        self.epoch = 0

    def __len__(self) -> int:
        return math.ceil(len(self.lengths) / self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(len(self.lengths), generator=generator).numpy()
        if self.group_by_length:
            mega = max(1, min(self.mega, len(order) // (self.batch_size * 4)))
            # Each mega-batch sorted longest first, stably (ties keep the shuffled order): one
            # lexsort on (mega-batch number, -length) does all of them at once.
            order_in_mega = np.arange(len(order)) // (self.batch_size * mega)
            grouped = order[np.lexsort((-self.lengths[order], order_in_mega))]
        else:
            grouped = order
        batches = self._top_up([grouped[i:i + self.batch_size] for i in range(0, len(grouped), self.batch_size)], order)
        if self.group_by_length:
            longest = int(np.argmax([self.lengths[batch].max() for batch in batches]))  # the first of the longest
            yield batches[longest].tolist()
            yield from (batch.tolist() for b, batch in enumerate(batches) if b != longest)
        else:
            yield from (batch.tolist() for batch in batches)

    def _top_up(self, batches: list[np.ndarray], order: np.ndarray) -> list[np.ndarray]:
        """Fill the last (short) batch with the first examples of `order` it does not hold."""
        missing = self.batch_size - len(batches[-1]) if batches else 0
        if missing:
            held = batches[-1]
            head = order[: len(held) + missing]  # holds at least `missing` rows the batch does not
            extra = head[~np.isin(head, held)][:missing]
            while len(extra) < missing:  # fewer examples than one batch: repeat them
                extra = np.concatenate([extra, held[: missing - len(extra)]])
            batches[-1] = np.concatenate([held, extra])
        return batches


class SeededLoading(Dataset):
    """Training batches loaded under a seed of their own: the run's seed, the epoch and the batch's
    first row. Random augmentations (crops, flips) then depend only on the batch, never on which
    DataLoader worker loads it or on how far ahead the loader reads (Accelerate prefetches one
    batch), so a resumed run augments every batch as the unbroken run did.

    The epoch travels in the indices: `EpochKeys` offsets each batch's rows by epoch x rows.
    """

    def __init__(self, dataset, seed: int):
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitems__(self, keys: list[int]) -> list[dict]:
        n = len(self.dataset)
        epoch, rows = keys[0] // n, [key % n for key in keys]
        with torch.random.fork_rng(devices=[]):  # the caller's random state stays as it was
            torch.manual_seed((self.seed * 1_000_003 + epoch) * 1_000_003 + rows[0])
            return self.dataset.__getitems__(rows)

    def __getitem__(self, key: int) -> dict:
        return self.__getitems__([key])[0]


class EpochKeys(Sampler[list[int]]):
    """The batches of `sampler` (a LengthGroupedBatches) with each row offset by epoch x rows, for
    SeededLoading. `epoch` and `batch_size` are the wrapped sampler's."""

    def __init__(self, sampler: LengthGroupedBatches):
        self.sampler = sampler
        self.batch_size = sampler.batch_size

    @property
    def epoch(self) -> int:
        return self.sampler.epoch

    @epoch.setter
    def epoch(self, value: int) -> None:
        self.sampler.epoch = value

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self) -> Iterator[list[int]]:
        offset = self.sampler.epoch * len(self.sampler.lengths)
        return ([offset + i for i in batch] for batch in self.sampler)


def pad_collate(pad_values: dict[str, int | float], default_pad: int = 0) -> Callable[[list[dict]], dict]:
    """Collate lists of dicts into tensors, right-padding list-valued fields to the batch's longest.

    Args:
        pad_values: Padding value per key, e.g. {"input_ids": tokenizer.pad_token_id, "labels": -100}.
        default_pad: Padding for other list-valued keys (attention_mask, token_type_ids: 0).
    """

    def collate(features: list[dict]) -> dict[str, torch.Tensor]:
        batch = {}
        for key in features[0]:
            values = [f[key] for f in features]
            if isinstance(values[0], (list, tuple)):
                width = max(len(v) for v in values)
                pad = pad_values.get(key, default_pad)
                dtype = torch.float32 if isinstance(pad, float) else torch.long
                out = torch.full((len(values), width), pad, dtype=dtype)
                for row, value in enumerate(values):
                    out[row, : len(value)] = torch.as_tensor(value, dtype=dtype)
                batch[key] = out
            elif isinstance(values[0], torch.Tensor):
                batch[key] = torch.stack(values)
            else:
                batch[key] = torch.as_tensor(values)
        return batch

    return collate
