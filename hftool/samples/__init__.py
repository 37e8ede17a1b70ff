"""Small datasets hftool makes itself, so every recipe runs offline with no arguments.

`sample:<name>` in a data spec loads one. Each is generated deterministically: the train,
validation and test parts use different seeds, so evaluation never sees training sentences.
"""

from __future__ import annotations

import importlib

from hftool.errors import HftoolError

# name -> module under hftool.samples with a `load()` returning a DatasetDict
SAMPLES = {"sentiment": "sentiment", "ner": "ner", "tales": "tales", "shapes": "shapes", "boxes": "boxes",
           "seasonal": "seasonal", "captions": "captions",
           "translation": "translation", "chat": "chat", "sprites": "sprites", "motion": "motion"}


def load_sample(name: str):
    if name not in SAMPLES:
        raise HftoolError(f"unknown sample 'sample:{name}'; available: {', '.join('sample:' + s for s in SAMPLES)}")
    return importlib.import_module(f"hftool.samples.{SAMPLES[name]}").load()


def disjoint_splits(sizes: dict, generate, identities):
    """A DatasetDict of generated splits that share no example.

    Args:
        sizes: split -> (rows, seed).
        generate: (rows, seed, exclude) -> columns (a dict of lists), skipping rows whose
            identity is in `exclude`.
        identities: columns -> the identities of their rows (texts, token tuples, ...).
    """
    import datasets

    splits, seen = {}, set()
    for split, (n, seed) in sizes.items():
        columns = generate(n, seed, exclude=seen)
        seen |= set(identities(columns))
        splits[split] = datasets.Dataset.from_dict(columns)
    return datasets.DatasetDict(splits)
