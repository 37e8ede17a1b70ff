"""Images, the data side of the image layer (hftool.vision is the model side): class-folder
datasets, the image column of any source, header checks and decoding any image mode to RGB, with
one rule for unreadable images in every image task.

Pillow decodes every format to a uint8 CHW tensor. Every mode (palette, grey, grey+alpha, RGBA,
CMYK, 16-bit) comes out as 8-bit RGB, EXIF orientation applied (or as 8-bit greyscale, for models
of grey images: `image_mode` tells which a dataset is).
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from hftool import logs
from hftool.config import DataConfig
from hftool.data.splits import SPLIT_ALIASES
from hftool.errors import HftoolError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp", ".tif", ".tiff")
# Column names found without data.image_column.
IMAGE_COLUMNS = ("image", "img", "image_path", "path", "file", "filename", "file_name", "image_file")
T = TypeVar("T")


@dataclass
class ImageData(DataConfig):
    """data.* options every image task has."""

    # Image column (paths relative to the data file, or a hub Image feature); None auto-detects
    # image/img/image_path/path/file/filename/file_name.
    image_column: str | None = None
    # Square side of the model's input in pixels; None keeps the model's own (its processor's or
    # timm's input size). Small images (CIFAR's 32) train much faster at their own size.
    image_size: int | None = None
    # Drop unreadable images (counted, first few named) instead of stopping at the first one:
    # stopping is the default because a broken file usually means a broken download.
    skip_bad_images: bool = False

    def check(self) -> None:
        super().check()
        self.require("image_size", self.image_size is None or self.image_size > 0, "positive")


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
    """A folder of images: in class subfolders (optionally inside train/val/test folders), or
    directly inside it (images without labels, for image generation)."""
    return any(p.is_dir() and not p.name.startswith(".") and next(iter(image_files(p)), None)
               for p in path.iterdir()) or any(p.is_file() and is_image(p) for p in path.iterdir())


def _class_folders(root: Path, name: str, train: bool = False) -> tuple[list[str], list[str] | None]:
    """(paths, class names) of a folder whose subfolders are the classes; (paths, None) of a
    folder that holds its images directly, with no class folders. In training data an empty
    class folder is an error: its class would silently not exist."""
    stray = next((p for p in sorted(root.iterdir()) if p.is_file() and is_image(p)), None)
    # Each folder's paths become strings before the next is listed: a Path object costs ~10x its string.
    found = {p: [str(f.resolve()) for f in image_files(p)] for p in sorted(root.iterdir())
             if p.is_dir() and not p.name.startswith(".")}
    folders = {folder: files for folder, files in found.items() if files}
    if stray is not None and not folders:
        return [str(f.resolve()) for f in image_files(root)], None
    if stray is not None:
        raise HftoolError(f"{stray} is not inside a class folder; {name} needs one subfolder per class "
                          f"({root}/<class>/<image>): move it into one")
    paths, labels = [], []
    for folder, files in found.items():
        if not files and train:
            from hftool.data.checks import Findings

            Findings().add("empty_class_folder", folder=folder, label=folder.name, items="images")
    for folder, files in folders.items():
        paths += files
        labels += [folder.name] * len(files)
    return paths, labels


def read_image_folder(path: Path):
    """`path/<class>/*.jpg` or `path/{train,val,test}/<class>/*.jpg` -> DatasetDict(image, label);
    `path/*.jpg` (or `path/{train,val,test}/*.jpg`) -> DatasetDict(image), images without labels.

    Without split folders the whole folder is `train` (the data layer then holds out a seeded
    validation part). Image paths are absolute, labels are the class folder names.
    """
    import datasets

    folders = [p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")]
    split_folders = {SPLIT_ALIASES[p.name.lower()]: p for p in folders if p.name.lower() in SPLIT_ALIASES}
    roots = split_folders or {"train": path}
    splits = {}
    for split, root in roots.items():
        paths, labels = _class_folders(root, str(path), train=split == "train")
        if paths:
            splits[split] = datasets.Dataset.from_dict({"image": paths, **({"label": labels} if labels else {})})
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


def decode(entry: dict | str | bytes, mode: str = "RGB"):
    """An image (a path, raw bytes, or a datasets Image dict {bytes, path}) -> uint8 CHW tensor in
    `mode`: RGB (3 channels) or L (1 channel, greyscale).

    Pillow decodes every format (torchvision's own decoders are deprecated in favour of
    torchcodec, and warn at every call); this is the only place images are decoded.

    Raises:
        ValueError: the data is not a decodable image (the message says why).
    """
    if isinstance(entry, dict):
        entry = entry.get("bytes") or entry.get("path")
    data = Path(entry).read_bytes() if isinstance(entry, str) else entry
    if not data:
        raise ValueError("empty file")
    return _decode_pil(data, mode)


def _decode_pil(data: bytes, mode: str = "RGB"):
    import numpy as np
    import torch
    from PIL import Image, ImageOps

    try:
        with Image.open(io.BytesIO(data)) as image:
            image = ImageOps.exif_transpose(image)
            if image.mode.startswith("I;16") or image.mode == "I":  # 16-bit: scale, do not clip
                array = (np.asarray(image, dtype=np.float32) / 257).clip(0, 255).astype(np.uint8)
                image = Image.fromarray(array)
            array = np.asarray(image.convert(mode))
    except Exception as err:  # Pillow raises OSError, SyntaxError, ValueError... for bad data
        raise ValueError(str(err).splitlines()[0] if str(err) else type(err).__name__) from None
    if array.ndim == 2:  # L: one channel
        array = array[:, :, None]
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


def image_rows(ds, source: str, configured: str | None, skip_bad: bool):
    """The image column of `ds` as one `image` column of undecoded datasets Images.

    A column of paths is read relative to the data file, and every file's header is checked so
    a missing or non-image file stops the run before training (or is skipped and counted with
    `skip_bad`). Returns (rows, kept): `kept` are the row indices still there, None when the
    column holds images (nothing is dropped then; a damaged one is caught when decoded).
    """
    import datasets
    import pyarrow as pa

    from hftool.data.columns import find_column, source_dir
    from hftool.data.tables import column_parts, in_memory

    column = find_column(ds, source, configured, IMAGE_COLUMNS, "image", "image_column")
    feature = ds.features[column]
    image_type = datasets.Image(decode=False)
    if isinstance(feature, datasets.Image) or isinstance(feature, dict) and {"bytes", "path"} <= set(feature):
        rows = ds.select_columns([column]).cast_column(column, image_type)
        return (rows if column == "image" else rows.rename_column(column, "image")), None
    if not (isinstance(feature, datasets.Value) and feature.dtype in ("string", "large_string")):
        raise HftoolError(f"{source}: column '{column}' holds {feature}, not image paths or images; "
                          "set data.image_column to the column with the images")
    base, kept, chunks, bad = source_dir(ds), [], [], []
    # A part of the rows at a time (Arrow reads, not a formatted row at a time): the Python strings
    # of every path, twice (given and resolved), would grow with the data.
    for start, part in column_parts(ds, [column]):
        given = part.column(0).to_pylist()
        paths = resolve_paths(("" if v is None else v for v in given), base)
        readable_here = _checked(paths, given, source, column, skip_bad, None, "images", "skip_bad_images", start, bad)
        kept += readable_here
        chunks.append(pa.array([paths[i - start] for i in readable_here], pa.string()))
    _report(bad, len(ds), kept, source, column, "images", "skip_bad_images")
    rows = in_memory(pa.table({"image": pa.chunked_array(chunks, pa.string())}))
    return rows.cast_column("image", image_type), kept


def labelled_rows(ds, source: str, data: ImageData, labels: list[str] | None = None, require_labels: bool = True):
    """Rows -> columns image (datasets Image, not decoded) and, where the rows have labels (or
    `require_labels`), label (class id). Returns (rows, labels): the class names are `labels`
    when given (a trained model's), else those of the rows' label column.

    `data` needs image_column, label_column and skip_bad_images; paths are read and checked as
    image_rows does."""
    from hftool.data.columns import find_column
    from hftool.data.labels import LABEL_COLUMNS, has_labels, label_ids, label_names

    ids = None
    if require_labels or has_labels(ds, data.label_column):
        column = find_column(ds, source, data.label_column, LABEL_COLUMNS, "label", "label_column")
        labels = label_names(ds, column, source) if labels is None else labels
        ids = label_ids(ds, column, labels, source)
    rows, kept = image_rows(ds, source, data.image_column, data.skip_bad_images)
    if ids is not None:
        rows = rows.add_column("label", ids if kept is None else ids[kept])
    return rows, labels


# Pillow modes of greyscale images (grey+alpha included: the alpha is dropped either way).
GREY_MODES = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F")


def image_mode(entries: Iterable, source: str) -> str:
    """"L" when every image is greyscale, else "RGB". A mix of the two is trained in colour, with a
    note. Reads only the headers; an unreadable image counts for neither (decoding reports it)."""
    from PIL import Image

    grey = colour = 0
    for entry in entries:
        data = entry.get("bytes") or entry.get("path") if isinstance(entry, dict) else entry
        try:
            with Image.open(io.BytesIO(data) if isinstance(data, bytes) else data) as image:
                grey, colour = (grey + 1, colour) if image.mode in GREY_MODES else (grey, colour + 1)
        except Exception:  # noqa: BLE001 (Pillow raises many kinds for a bad file; decode names it later)
            continue
    if grey and colour:
        logs.info(f"{source} mixes {grey} greyscale and {colour} colour images: all are read as RGB")
    return "L" if grey and not colour else "RGB"


def check_images(paths: list[str], given: list, source: str, column: str, skip_bad: bool,
                 check: Callable[[int], str | None] | None = None, noun: str = "images",
                 key: str = "skip_bad_images") -> list[int]:
    """Indices of the readable images (header checks); an unreadable one is an error naming it
    unless `skip_bad`, which skips it and reports the count and the first few.

    Other media (videos) use the same rule and wording: `check(i)` says why row i cannot be read
    (None: it can), `noun` and `key` (the data.* option that skips) name them in messages."""
    bad: list[str] = []
    kept = _checked(paths, given, source, column, skip_bad, check, noun, key, 0, bad)
    _report(bad, len(paths), kept, source, column, noun, key)
    return kept


def _checked(paths: list[str], given: list, source: str, column: str, skip_bad: bool,
             check: Callable[[int], str | None] | None, noun: str, key: str, offset: int, bad: list[str]) -> list[int]:
    """check_images for rows `offset`, `offset + 1`, ...: their readable indices; skipped ones
    are added to `bad`."""
    kept = []
    for i, (path, value) in enumerate(zip(paths, given), offset):
        reason = f"no {noun[:-1]} path" if not value else check(i) if check else check_header(path)
        if reason is None:
            kept.append(i)
            continue
        if not skip_bad:
            raise HftoolError(f"{path if value else f'{source} row {i + 1}'}: {reason} ({source}, column "
                              f"'{column}'); fix or remove it, or pass data.{key}=true")
        bad.append(f"{path if value else f'row {i + 1}'}: {reason}")
    return kept


def _report(bad: list[str], total: int, kept: list[int], source: str, column: str, noun: str, key: str) -> None:
    """The skipped rows' warning, or the error when none is left."""
    if bad:
        shown = "; ".join(bad[:3]) + ("; ..." if len(bad) > 3 else "")
        logs.warn(f"data.{key}: skipped {len(bad)} of {total} {noun} in {source} ({shown})")
    if not kept:
        raise HftoolError(f"{source}: none of the {total} {noun} can be read; check the paths in column '{column}'")


def entry_name(entry) -> str:
    """How messages name an image entry: its path, else that it is stored in the data."""
    path = entry.get("path") if isinstance(entry, dict) else entry if isinstance(entry, str) else None
    return path or "an image stored in the data"


def readable(entries: Iterable, load: Callable[[object], T], skip_bad: bool,
             key: str = "skip_bad_images") -> list[tuple[int, T]]:
    """(position, load(entry)) for every entry that decodes. One that does not stops with an
    ImageDecodeError naming it, or with `skip_bad` is skipped with a warning (the batch is then
    one shorter). Every image task decodes through this, in training, evaluation and predict;
    video tasks too, with `key` their data.* option that skips."""
    out = []
    for i, entry in enumerate(entries):
        try:
            out.append((i, load(entry)))
        except (ValueError, OSError) as err:
            message = f"{entry_name(entry)}: cannot be decoded ({err})"
            if not skip_bad:
                raise ImageDecodeError(f"{message}; remove the file or pass data.{key}=true") from None
            logs.warn(f"data.{key}: skipping {message}")
    return out
