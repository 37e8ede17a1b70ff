"""MNIST-style idx files: `*-idx3-ubyte[.gz]` images with `*-idx1-ubyte[.gz]` labels, read as they ship.

An idx file is a 4-byte magic number (two zero bytes, a type code, the number of dimensions), one
big-endian uint32 per dimension, then the values in row-major order. Images become rows of PNG
bytes (greyscale, as stored) and labels an integer column, like any other image source.

Written here rather than taken from a package: the format is a dozen lines, and the readers that
exist (torchvision's MNIST dataset, python-mnist) want their own folder layout and file names.
"""

from __future__ import annotations

import gzip
import re
from pathlib import Path

from hftool.errors import HftoolError

IMAGES = re.compile(r"^(?P<prefix>.*?)(?P<sep>[-_.]?)idx3-ubyte(\.gz)?$")
UBYTE = 0x08  # the only type code MNIST, Fashion-MNIST and KMNIST use


def is_idx(path: Path) -> bool:
    return "idx1-ubyte" in path.name or "idx3-ubyte" in path.name


def is_idx_folder(path: Path) -> bool:
    return any(p.is_file() and IMAGES.match(p.name) for p in path.iterdir())


def _read_bytes(path: Path) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (OSError, EOFError) as err:  # a truncated gzip stream raises EOFError
        raise HftoolError(f"{path}: cannot be read ({str(err).splitlines()[0] or type(err).__name__}); "
                          "download the file again") from None


def read_array(path: Path, ndim: int):
    """The values of an idx file of unsigned bytes with `ndim` dimensions, checked against its header."""
    import numpy as np

    data = _read_bytes(path)
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise HftoolError(f"{path}: not an idx file (its first bytes are not an idx magic number)")
    if data[2] != UBYTE or data[3] != ndim:
        raise HftoolError(f"{path}: an idx file of type 0x{data[2]:02x} with {data[3]} dimensions; expected unsigned "
                          f"bytes (0x08) with {ndim} ({'images' if ndim == 3 else 'labels'})")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise HftoolError(f"{path}: the idx header is cut short; download the file again")
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    expected = int(np.prod(dims))
    if len(data) - header != expected:
        shape = " x ".join(map(str, dims))
        raise HftoolError(f"{path}: the idx header says {shape} = {expected} values, but the file holds "
                          f"{len(data) - header}; the file is truncated or damaged: download it again")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def labels_file(images: Path) -> Path | None:
    """The labels beside an images file: `train-images-idx3-ubyte` -> `train-labels-idx1-ubyte`."""
    name = images.name.replace("idx3-ubyte", "idx1-ubyte")
    candidates = [name.replace("images", "labels"), name]
    for candidate in candidates:
        for suffix in ("", ".gz"):
            path = images.with_name(candidate.removesuffix(".gz") + suffix)
            if path.is_file() and path != images:
                return path
    return None


def read_idx(images: Path):
    """One images file (and its labels file, when there is one) -> Dataset(image[, label])."""
    import datasets
    import numpy as np

    pixels = read_array(images, 3)
    columns = {"image": [_png(image) for image in pixels]}
    labels = labels_file(images)
    if labels is not None:
        values = read_array(labels, 1)
        if len(values) != len(pixels):
            raise HftoolError(f"{labels} holds {len(values)} labels for the {len(pixels)} images of {images}; "
                              "use the labels file that belongs to the images")
        columns["label"] = values.astype(np.int64).tolist()
    features = datasets.Features({"image": datasets.Image(decode=False),
                                  **({"label": datasets.Value("int64")} if labels is not None else {})})
    return datasets.Dataset.from_dict(columns, features=features)


def _png(image) -> dict:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG", compress_level=1)  # level 1: 5x faster, as small here
    return {"bytes": buffer.getvalue(), "path": None}


def read_idx_folder(path: Path):
    """A folder of idx files -> DatasetDict: `train-*` and `t10k-*`/`test-*` pairs become those
    splits; a folder with one pair (any names) is `train`."""
    import datasets

    from hftool.data.splits import SPLIT_ALIASES

    found = sorted(p for p in path.iterdir() if p.is_file() and IMAGES.match(p.name))
    if len(found) == 1:
        return datasets.DatasetDict(train=read_idx(found[0]))
    splits = {}
    for images in found:
        prefix = IMAGES.match(images.name).group("prefix").split("-")[0].lower()
        split = "test" if prefix == "t10k" else SPLIT_ALIASES.get(prefix)
        if split is None:
            raise HftoolError(f"{path} holds several idx image files; name them train-... and t10k-... (or test-...) "
                              f"so each has a split: {images.name} has none")
        if split in splits:
            raise HftoolError(f"{path} has two {split} idx image files; keep one")
        splits[split] = read_idx(images)
    if "train" not in splits:
        raise HftoolError(f"{path} has no train-*-idx3-ubyte file; pass the folder with the training images")
    return datasets.DatasetDict(splits)
