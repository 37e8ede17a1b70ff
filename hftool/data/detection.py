"""Object-detection data: COCO JSON, Pascal VOC XML and YOLO (Ultralytics) readers, and box checks.

Every reader gives rows in the layout of the hub's detection datasets (cppe-5 and others):
`image`, `image_id`, `width`, `height` and `objects` = {bbox, category, iscrowd, area} lists,
with COCO boxes (x, y, width, height in pixels) and `category` a ClassLabel. A COCO file's
sparse category ids (1..90 for COCO itself) become contiguous class ids; the original ids are
kept in the dataset's info (see `category_ids`) so predictions can name them again.

Image paths stay as written in the file; the task resolves them against `data.images_dir` (or
the JSON file's folder, searching its subfolders when the images are not right there).
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from pathlib import Path

from hftool import logs
from hftool.data.splits import SPLIT_ALIASES
from hftool.errors import HftoolError

INFO_TAG = "hftool-detection"  # marks the info of datasets read here (boxes are COCO xywh)


def is_coco(loaded) -> bool:
    return isinstance(loaded, dict) and "images" in loaded and "annotations" in loaded


def _features(names: list[str]):
    import datasets

    return datasets.Features({
        "image": datasets.Value("string"), "image_id": datasets.Value("int64"),
        "width": datasets.Value("int64"), "height": datasets.Value("int64"),
        "objects": {"bbox": datasets.Sequence(datasets.Sequence(datasets.Value("float32"), length=4)),
                    "category": datasets.Sequence(datasets.ClassLabel(names=names)),
                    "iscrowd": datasets.Sequence(datasets.Value("int64")),
                    "area": datasets.Sequence(datasets.Value("float32"))}})


def _dataset(rows, names: list[str], category_ids: list[int] | None):
    """Rows (a dict of Python columns, or a pyarrow table of them) as an in-memory Dataset."""
    import datasets

    from hftool.data.tables import in_memory

    features = _features(names)
    if isinstance(rows, dict):
        ds = datasets.Dataset.from_dict(rows, features=features)
    else:
        ds = in_memory(rows.cast(features.arrow_schema), features)
    ds.info.description = json.dumps({INFO_TAG: True, "category_ids": category_ids})
    return ds


def category_ids(ds) -> list[int] | None:
    """The original COCO category id of each class id, for a dataset read from COCO JSON."""
    try:
        info = json.loads(ds.info.description or "{}")
    except json.JSONDecodeError:
        return None
    return info.get("category_ids") if isinstance(info, dict) else None


def read_by_hftool(ds) -> bool:
    try:
        return bool(json.loads(ds.info.description or "{}").get(INFO_TAG))
    except (json.JSONDecodeError, AttributeError):
        return False


def _number(value, where: str, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise HftoolError(f"{where}: {what} must be a number, got {value!r}; fix the annotation")
    return float(value)


def read_coco(path: Path, categories, images: Iterable, annotations: Iterable):
    """A COCO instances file's "categories" list and its "images" and "annotations" (iterables:
    ijson's stream of the file, or the parsed document's lists) -> Dataset, one row per image
    (images without objects included: they teach the model what background is).

    Keeps ids, classes and boxes in flat arrays, not a dict per image, and builds the Arrow
    columns from those arrays, not Python rows: an image or annotation is dropped as soon as it
    is read.
    """
    from array import array

    import numpy as np
    import pyarrow as pa

    if not isinstance(categories, list) or not categories:
        raise HftoolError(f"{path}: a COCO file needs a non-empty \"categories\" list of {{\"id\", \"name\"}}")
    try:
        categories = sorted(({"id": int(c["id"]), "name": str(c["name"])} for c in categories), key=lambda c: c["id"])
    except (KeyError, TypeError, ValueError):
        raise HftoolError(f"{path}: every entry of \"categories\" needs an integer \"id\" and a \"name\"") from None
    names = [c["name"] for c in categories]
    if len(set(names)) != len(names):
        raise HftoolError(f"{path}: two categories share a name ({', '.join(n for n in names if names.count(n) > 1)}); "
                          "make the names unique")
    class_of = {c["id"]: i for i, c in enumerate(categories)}
    files, ids, widths, heights = [], array("q"), array("q"), array("q")
    row_of = {}
    for n, image in enumerate(images):
        if not isinstance(image, dict) or "id" not in image or not image.get("file_name"):
            raise HftoolError(f"{path}: images[{n}] needs an \"id\" and a \"file_name\"")
        row_of[image["id"]] = n
        files.append(str(image["file_name"]))
        ids.append(int(image["id"]))
        widths.append(int(image.get("width") or 0))
        heights.append(int(image.get("height") or 0))
    owners, classes, crowds, areas, boxes = array("q"), array("q"), array("q"), array("d"), array("d")
    for n, ann in enumerate(annotations):
        where = f"{path}: annotation {ann.get('id', f'#{n}') if isinstance(ann, dict) else f'#{n}'}"
        if not isinstance(ann, dict):
            raise HftoolError(f"{where} is not an object")
        if ann.get("image_id") not in row_of:
            raise HftoolError(f"{where} refers to image_id {ann.get('image_id')!r}, which is not in \"images\"; "
                              "fix the id or remove the annotation")
        if ann.get("category_id") not in class_of:
            raise HftoolError(f"{where} has category_id {ann.get('category_id')!r}, which is not in \"categories\" "
                              f"(ids: {', '.join(str(i) for i in class_of)}); fix the id or add the category")
        bbox = ann.get("bbox")
        if not isinstance(bbox, list) or len(bbox) != 4:
            raise HftoolError(f"{where} needs a \"bbox\" [x, y, width, height], got {bbox!r}")
        bbox = [_number(v, where, "bbox") for v in bbox]
        owners.append(row_of[ann["image_id"]])
        classes.append(class_of[ann["category_id"]])
        crowds.append(int(ann.get("iscrowd") or 0))
        areas.append(float(ann.get("area") or bbox[2] * bbox[3]))
        boxes.extend(bbox)
    # Each image's objects in file order: a stable sort by image row, cut by counts into lists.
    order = np.argsort(np.frombuffer(owners, np.int64), kind="stable")
    offsets = pa.array(np.concatenate(([0], np.cumsum(np.bincount(np.frombuffer(owners, np.int64), minlength=len(files))))),
                       pa.int32())

    def lists(values: np.ndarray, size: int | None = None):
        values = pa.array(values[order] if size is None else values.reshape(-1, size)[order].ravel())
        return pa.ListArray.from_arrays(offsets, values if size is None else pa.FixedSizeListArray.from_arrays(values, size))

    objects = pa.StructArray.from_arrays(
        [lists(np.frombuffer(boxes, np.float64).astype(np.float32), 4), lists(np.frombuffer(classes, np.int64)),
         lists(np.frombuffer(crowds, np.int64)), lists(np.frombuffer(areas, np.float64).astype(np.float32))],
        names=["bbox", "category", "iscrowd", "area"])
    table = pa.table({"image": pa.array(files, pa.string()), "image_id": np.frombuffer(ids, np.int64),
                      "width": np.frombuffer(widths, np.int64), "height": np.frombuffer(heights, np.int64),
                      "objects": objects})
    return _dataset(table, names, [c["id"] for c in categories])


def is_voc(path: Path) -> bool:
    return (path / "Annotations").is_dir() and any((path / "Annotations").glob("*.xml"))


def _voc_object(obj, where: str) -> tuple[str, list[float]]:
    name = (obj.findtext("name") or "").strip()
    box = obj.find("bndbox")
    if not name or box is None:
        raise HftoolError(f"{where}: an <object> needs a <name> and a <bndbox>")
    try:
        x0, y0, x1, y1 = (float(box.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax"))
    except (TypeError, ValueError):
        raise HftoolError(f"{where}: <bndbox> of '{name}' needs numeric xmin, ymin, xmax, ymax") from None
    return name, [x0, y0, x1 - x0, y1 - y0]


def read_voc(path: Path):
    """A Pascal VOC folder (Annotations/*.xml, JPEGImages/, optional ImageSets/Main/{train,val,
    test}.txt) -> DatasetDict. Without ImageSets every annotated image is `train`."""
    import datasets

    parsed, names = {}, set()
    for xml in sorted((path / "Annotations").glob("*.xml")):
        try:
            root = ET.parse(xml).getroot()
        except ET.ParseError as err:
            raise HftoolError(f"{xml}: not valid XML ({err}); fix or remove the file") from None
        file_name = (root.findtext("filename") or "").strip() or f"{xml.stem}.jpg"
        if not Path(file_name).suffix:  # some VOC exports leave out the extension
            file_name += ".jpg"
        size = root.find("size")
        width = int(float(size.findtext("width") or 0)) if size is not None else 0
        height = int(float(size.findtext("height") or 0)) if size is not None else 0
        objects = [_voc_object(obj, str(xml)) for obj in root.iter("object")]
        crowd = [int((obj.findtext("difficult") or "0").strip() or 0) for obj in root.iter("object")]
        names.update(name for name, _ in objects)
        parsed[xml.stem] = (str((path / "JPEGImages" / file_name).resolve()), width, height, objects, crowd)
    names = sorted(names)
    class_of = {name: i for i, name in enumerate(names)}
    sets = path / "ImageSets" / "Main"
    split_files = {SPLIT_ALIASES[p.stem]: p for p in sets.glob("*.txt") if p.stem in SPLIT_ALIASES} if sets.is_dir() else {}
    if "train" not in split_files:
        split_files = {}
    stems = {split: [line.split()[0] for line in file.read_text().splitlines() if line.strip()]
             for split, file in split_files.items()} or {"train": list(parsed)}
    out = {}
    for split, ids in stems.items():
        rows = {"image": [], "image_id": [], "width": [], "height": [], "objects": []}
        for n, stem in enumerate(ids):
            if stem not in parsed:
                raise HftoolError(f"{split_files[split]}: '{stem}' has no Annotations/{stem}.xml; fix the list")
            image, width, height, objects, difficult = parsed[stem]
            rows["image"].append(image)
            rows["image_id"].append(n + 1)
            rows["width"].append(width)
            rows["height"].append(height)
            # VOC's "difficult" objects are scored as COCO scores crowds: neither found nor missed.
            rows["objects"].append({"bbox": [b for _, b in objects], "category": [class_of[c] for c, _ in objects],
                                    "iscrowd": difficult, "area": [b[2] * b[3] for _, b in objects]})
        out[split] = _dataset(rows, names, None)
    logs.info(f"{path}: Pascal VOC, {len(parsed)} annotated images, classes {', '.join(names)}; splits "
              + ", ".join(f"{s} {len(d)}" for s, d in out.items()))
    return datasets.DatasetDict(out)


YOLO_CONFIGS = ("data.yaml", "dataset.yaml")


def is_yolo(path: Path) -> bool:
    """Ultralytics' layout: images/ beside labels/ (per split inside both), or a data.yaml."""
    return (path / "images").is_dir() and (path / "labels").is_dir() or any((path / n).is_file() for n in YOLO_CONFIGS)


def _yolo_names(root: Path, config: dict) -> list[str]:
    """Class names from data.yaml's `names` (a list, or a mapping id -> name), else classes.txt."""
    names = config.get("names")
    if isinstance(names, dict):
        try:
            ids = sorted(int(i) for i in names)
        except (TypeError, ValueError):
            raise HftoolError(f"{root}: data.yaml `names` must map class ids (0, 1, ...) to names") from None
        if ids != list(range(len(ids))):
            raise HftoolError(f"{root}: data.yaml `names` must number the classes 0..{len(ids) - 1} without gaps")
        return [str(names[i] if i in names else names[str(i)]) for i in ids]
    if isinstance(names, list) and names:
        return [str(n) for n in names]
    classes = root / "classes.txt"
    if classes.is_file():
        return [line.strip() for line in classes.read_text(encoding="utf-8").splitlines() if line.strip()]
    raise HftoolError(f"{root}: YOLO data needs class names: a data.yaml with `names:` or a classes.txt (one per line)")


def _yolo_splits(root: Path, config: dict) -> dict[str, Path]:
    """split -> image folder: data.yaml's train/val/test entries, else images/<split> folders,
    else images/ itself as the training split."""
    base = root / str(config.get("path") or ".")
    if not base.is_dir():
        base = root  # data.yaml files often carry the absolute path of the machine they were made on
    found = {}
    for key, split in (("train", "train"), ("val", "validation"), ("test", "test")):
        entry = config.get(key)
        if isinstance(entry, str) and entry:
            folder = (base / entry) if not Path(entry).is_absolute() else Path(entry)
            if not folder.is_dir():
                raise HftoolError(f"{root}: data.yaml `{key}: {entry}` is not a folder ({folder}); fix the path")
            found[split] = folder
    if found:
        return found
    images = root / "images"
    folders = {SPLIT_ALIASES[p.name.lower()]: p for p in images.iterdir() if p.is_dir() and p.name.lower() in SPLIT_ALIASES}
    return folders or {"train": images}


def _label_folder(images: Path) -> Path:
    """Ultralytics' rule: the labels of .../images/<split>/ are in .../labels/<split>/."""
    parts = list(images.parts)
    if "images" not in parts:
        raise HftoolError(f"{images}: YOLO image folders live under an `images/` folder, with labels under `labels/`")
    at = len(parts) - 1 - parts[::-1].index("images")
    return Path(*parts[:at], "labels", *parts[at + 1:])


def read_yolo(root: Path, config_file: Path | None = None):
    """YOLO (Ultralytics) detection data -> DatasetDict, in the layout of the other readers.

    Label files hold `class cx cy w h` lines, normalised to the image; they become COCO boxes in
    pixels (headers are read for the image sizes). An image without a label file is background.
    A label file without an image is reported, as is a line that is not five numbers (error)."""
    import datasets
    import yaml
    from PIL import Image

    from hftool.data.images import image_files

    config_file = config_file or next((root / n for n in YOLO_CONFIGS if (root / n).is_file()), None)
    config = {}
    if config_file is not None:
        try:
            config = yaml.safe_load(config_file.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as err:
            raise HftoolError(f"{config_file}: not valid YAML ({err}); fix the file") from None
        if not isinstance(config, dict):
            raise HftoolError(f"{config_file}: expected a mapping with `names:` and `train:`")
    names = _yolo_names(root, config)
    out, orphans = {}, []
    for split, folder in _yolo_splits(root, config).items():
        labels = _label_folder(folder)
        rows = {"image": [], "image_id": [], "width": [], "height": [], "objects": []}
        files = image_files(folder)
        stems = {f.stem for f in files}
        if labels.is_dir():
            orphans += [p for p in sorted(labels.glob("*.txt")) if p.stem not in stems]
        for n, image in enumerate(files):
            try:
                with Image.open(image) as opened:
                    width, height = opened.size
            except OSError as err:
                raise HftoolError(f"{image}: not an image Pillow can read ({err}); fix or remove it") from None
            objects = {"bbox": [], "category": [], "iscrowd": [], "area": []}
            label_file = labels / f"{image.stem}.txt"
            if label_file.is_file():
                for number, line in enumerate(label_file.read_text(encoding="utf-8").splitlines(), 1):
                    if not line.strip():
                        continue
                    fields = line.split()
                    try:
                        if len(fields) != 5 or not float(fields[0]).is_integer():
                            raise ValueError
                        cls, (cx, cy, w, h) = int(float(fields[0])), map(float, fields[1:5])
                    except (ValueError, IndexError):
                        raise HftoolError(f"{label_file}:{number}: expected `class cx cy w h` (5 numbers, box "
                                          f"normalised to the image), got {line.strip()!r}") from None
                    if not 0 <= cls < len(names):
                        raise HftoolError(f"{label_file}:{number}: class {cls} is not one of the {len(names)} "
                                          "classes in the names; fix the line or the names")
                    box = [(cx - w / 2) * width, (cy - h / 2) * height, w * width, h * height]
                    objects["bbox"].append(box)
                    objects["category"].append(cls)
                    objects["iscrowd"].append(0)
                    objects["area"].append(box[2] * box[3])
            rows["image"].append(str(image.resolve()))
            rows["image_id"].append(n + 1)
            rows["width"].append(width)
            rows["height"].append(height)
            rows["objects"].append(objects)
        if not files:
            raise HftoolError(f"{folder}: no images in this YOLO {split} folder")
        out[split] = _dataset(rows, names, None)
    if orphans:
        logs.warn(f"{root}: {len(orphans)} label file(s) have no image and were left out (first: {orphans[0]})")
    logs.info(f"{root}: YOLO detection data, {len(names)} classes; splits "
              + ", ".join(f"{s} {len(d)} images" for s, d in out.items()))
    return datasets.DatasetDict(out)


def to_xyxy(box: list[float], fmt: str, normalized: bool, width: int, height: int) -> list[float]:
    """A box in `fmt` (xywh or xyxy), absolute or normalised to [0, 1] -> absolute xyxy."""
    x0, y0, a, b = box
    x1, y1 = (x0 + a, y0 + b) if fmt == "xywh" else (a, b)
    if normalized:
        x0, x1, y0, y1 = x0 * width, x1 * width, y0 * height, y1 * height
    return [x0, y0, x1, y1]


class BoxCheck:
    """Clips boxes to the image and drops degenerate ones, counting both for one message."""

    MIN_SIDE = 1.0  # pixels: a thinner box has no pixels to learn from, and COCO's IoU on it is noise

    def __init__(self):
        self.clipped = 0
        self.dropped = 0
        self.total = 0
        self.example = ""

    def __call__(self, box: list[float], width: int, height: int, where: str) -> list[float] | None:
        self.total += 1
        x0, y0, x1, y1 = box
        if x1 - x0 < self.MIN_SIDE or y1 - y0 < self.MIN_SIDE:  # empty or negative size: no clip can fix it
            self.dropped += 1
            self.example = self.example or f"{where} {[round(v, 1) for v in box]}"
            return None
        clipped = [min(max(x0, 0.0), width), min(max(y0, 0.0), height), min(max(x1, 0.0), width),
                   min(max(y1, 0.0), height)]
        if clipped != box:
            if clipped[2] - clipped[0] < self.MIN_SIDE or clipped[3] - clipped[1] < self.MIN_SIDE:  # outside the image
                self.dropped += 1
                self.example = self.example or f"{where} {[round(v, 1) for v in box]}"
                return None
            self.clipped += 1
        return clipped

    def report(self, source: str) -> None:
        if self.clipped or self.dropped:
            logs.warn(f"{source}: of {self.total} boxes, {self.clipped} reached outside the image and were clipped, "
                      f"{self.dropped} were empty, inverted or outside it and were dropped"
                      + (f" (first: {self.example})" if self.example else "")
                      + "; check data.box_format if most boxes are affected")
