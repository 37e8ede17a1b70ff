"""Split names as data ships them, normalised to train, validation and test.

A leaf module: the readers (sources, images, detection, parallel) all name splits, and
importing it from each keeps the data layer free of import cycles.
"""

SPLIT_ALIASES = {
    "train": "train", "training": "train",
    "validation": "validation", "valid": "validation", "val": "validation", "dev": "validation", "eval": "validation",
    "test": "test", "testing": "test",
}
