"""Images: class-folder datasets, image-path columns, and decoding any image mode to RGB.

Decoding uses torchvision's native decoders (JPEG, PNG incl. 16-bit and palette, GIF, WebP)
straight to a uint8 CHW tensor, and falls back to Pillow for the rest (BMP, TIFF, ...).
Every mode (palette, grey, grey+alpha, RGBA, CMYK, 16-bit) comes out as 8-bit RGB.
"""

from __future__ import annotations

import io
from collections.abc import Iterable
from pathlib import Path

from hftool.errors import HftoolError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp", ".tif", ".tiff")


class ImageDecodeError(HftoolError):
    """An image that cannot be decoded (raised where the decoding happens: a DataLoader worker).

    A DataLoader re-raises a worker's exception as `type(msg)` with the worker's traceback in
    `msg`; keeping only the original last line keeps the CLI's error to one line.
    """

    def __init__(self, message: str):
        marker = f"{type(self).__name__}: "
        if message.startswith("Caught ") and marker in message:
            message = message.rsplit(marker, 1)[1].strip()
        super().__init__(message)


def is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS


def image_files(root: Path) -> list[Path]:
    """Image files under `root` at any depth, sorted (hidden files and folders skipped)."""
    return sorted(p for p in root.rglob("*") if p.is_file() and is_image(p)
                  and not any(part.startswith(".") for part in p.relative_to(root).parts))


def is_image_folder(path: Path) -> bool:
    """A folder of class subfolders holding images (optionally inside train/val/test folders)."""
    return any(p.is_dir() and not p.name.startswith(".") and next(iter(image_files(p)), None)
               for p in path.iterdir())


def _class_folders(root: Path, name: str, train: bool = False) -> tuple[list[str], list[str]]:
    """(paths, class names) of a folder whose subfolders are the classes. In training data an
    empty class folder is an error: its class would silently not exist."""
    stray = next((p for p in sorted(root.iterdir()) if p.is_file() and is_image(p)), None)
    if stray is not None:
        raise HftoolError(f"{stray} is not inside a class folder; {name} needs one subfolder per class "
                          f"({root}/<class>/<image>): move it into one")
    paths, labels = [], []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = image_files(folder)
        if not files and train:
            from hftool.data.checks import Findings

            Findings().add("empty_class_folder", folder=folder, label=folder.name)
        paths += [str(f.resolve()) for f in files]
        labels += [folder.name] * len(files)
    return paths, labels


def read_image_folder(path: Path):
    """`path/<class>/*.jpg` or `path/{train,val,test}/<class>/*.jpg` -> DatasetDict(image, label).

    Without split folders the whole folder is `train` (the data layer then holds out a seeded
    validation part). Image paths are absolute, labels are the class folder names.
    """
    import datasets

    from hftool.data.sources import SPLIT_ALIASES

    folders = [p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")]
    split_folders = {SPLIT_ALIASES[p.name.lower()]: p for p in folders if p.name.lower() in SPLIT_ALIASES}
    roots = split_folders or {"train": path}
    splits = {}
    for split, root in roots.items():
        paths, labels = _class_folders(root, str(path), train=split == "train")
        if paths:
            splits[split] = datasets.Dataset.from_dict({"image": paths, "label": labels})
    if "train" not in splits:
        raise HftoolError(f"{path} has no training images; expected {path}/train/<class>/<image> "
                          f"(or {path}/<class>/<image>)")
    return datasets.DatasetDict(splits)


def check_header(path: str) -> str | None:
    """Why the file at `path` is not an image (missing, empty, unknown format), or None.

    Reads only the header, so checking a whole dataset up front stays cheap; a file whose
    pixel data is damaged passes and is caught when decoded.
    """
    from PIL import Image, UnidentifiedImageError

    file = Path(path)
    if not file.is_file():
        return "no such file"
    try:
        with Image.open(file) as image:
            image.size  # noqa: B018 (the header is parsed lazily)
    except UnidentifiedImageError:
        return "not an image Pillow or torchvision can read"
    except OSError as err:
        return str(err).splitlines()[0] if str(err) else type(err).__name__
    return None


def decode(entry: dict | str | bytes):
    """An image (a path, raw bytes, or a datasets Image dict {bytes, path}) -> uint8 RGB CHW tensor.

    Raises:
        ValueError: the data is not a decodable image (the message says why).
    """
    import torch
    from torchvision.io import ImageReadMode, decode_image

    if isinstance(entry, dict):
        entry = entry.get("bytes") or entry.get("path")
    data = Path(entry).read_bytes() if isinstance(entry, str) else entry
    if not data:
        raise ValueError("empty file")
    try:
        image = decode_image(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB,
                             apply_exif_orientation=True)
    except RuntimeError:  # a format torchvision does not decode natively, or damaged data
        image = _decode_pil(data)
    if image.dtype != torch.uint8:  # 16-bit PNG
        from torchvision.transforms.v2.functional import to_dtype

        image = to_dtype(image, torch.uint8, scale=True)
    return image


def _decode_pil(data: bytes):
    import numpy as np
    import torch
    from PIL import Image, ImageOps

    try:
        with Image.open(io.BytesIO(data)) as image:
            image = ImageOps.exif_transpose(image)
            if image.mode.startswith("I;16") or image.mode == "I":  # 16-bit: scale, do not clip
                array = (np.asarray(image, dtype=np.float32) / 257).clip(0, 255).astype(np.uint8)
                image = Image.fromarray(array)
            array = np.asarray(image.convert("RGB"))
    except Exception as err:  # Pillow raises OSError, SyntaxError, ValueError... for bad data
        raise ValueError(str(err).splitlines()[0] if str(err) else type(err).__name__) from None
    return torch.from_numpy(array.copy()).permute(2, 0, 1)


def resolve_paths(values: Iterable, base: Path | None) -> list[str]:
    """Image paths as absolute strings; relative ones are relative to `base` (the data file's folder)."""
    out = []
    for value in values:
        path = Path(str(value)).expanduser()
        out.append(str(path if path.is_absolute() or base is None else (base / path).resolve()))
    return out


def input_paths(inputs: Iterable[str]) -> list[str]:
    """Prediction inputs -> image paths: folders expand to the images in them (recursively, in
    order); files stay as given (a missing or unreadable one is reported where it is read)."""
    paths = []
    for given in inputs:
        path = Path(given).expanduser()
        if path.is_dir():
            found = image_files(path)
            if not found:
                raise HftoolError(f"{given} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
            paths += [str(p) for p in found]
        else:
            paths.append(given)
    return paths
