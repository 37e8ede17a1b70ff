"""Object detection: DETR and any AutoModelForObjectDetection (conditional DETR, YOLOS, ...).

Rows from any source (COCO JSON, VOC XML, JSONL, hub datasets with an `objects` column, the
embedded sample) become one canonical form in `prepare`: an image, its size, and absolute xyxy
boxes with contiguous class ids and crowd flags. Images are decoded and transformed in the
DataLoader workers with torchvision's v2 transforms, which move the boxes with the pixels
(tv_tensors.BoundingBoxes); the collator pads a batch to its largest image and says which
pixels are real in `pixel_mask`.

Targets are what DETR's loss wants: class ids and (cx, cy, w, h) boxes in fractions of the
unpadded image, crowd objects left out. Evaluation keeps each image's K best boxes in fixed-size
tensors (see hftool.metrics.detection) so they gather across processes without duplicates.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from hftool import logs, models, vision
from hftool.config import Option, TrainConfig
from hftool.data import images
from hftool.data.detection import BoxCheck, category_ids, read_by_hftool, to_xyxy
from hftool.errors import HftoolError
from hftool.outputs import atomic_path, check_output
from hftool.tasks.base import Options, Parts, Task, find_column

OBJECT_COLUMNS = ("objects", "annotations", "objects_list")
MAX_DETECTIONS = 100  # boxes per image scored by COCO's AP (maxDets=100)
REPORT = "per_class_ap.tsv"


@dataclass
class DetectionData(images.ImageData):
    choices = {"box_format": ("xywh", "xyxy")}
    # The objects column; None auto-detects objects/annotations/objects_list.
    label_column: str | None = None
    # Folder the images of a COCO JSON file are in (file_name is relative to it). None looks
    # beside the JSON file, then in the folders below it and beside it (COCO's annotations/ next
    # to train2017/).
    images_dir: str | None = None
    # How JSONL and hub boxes are written: xywh (COCO: x, y, width, height) or xyxy (Pascal VOC
    # corners). COCO JSON and VOC XML files say it themselves.
    box_format: str = "xywh"
    # Boxes in [0, 1] fractions of the image size rather than pixels.
    box_normalized: bool = False
    # Probability of a horizontal flip in training; boxes move with the pixels.
    hflip: float = 0.5
    # Strength of the training colour jitter (brightness, contrast, saturation; hue a quarter of
    # it); 0 leaves colours alone, which keeps short runs fast.
    color_jitter: float = 0.0

    def check(self) -> None:
        super().check()
        self.require("hflip", 0 <= self.hflip <= 1, "in [0, 1]")
        self.require("color_jitter", 0 <= self.color_jitter <= 1, "in [0, 1]")


@dataclass
class DetectionTrain(TrainConfig):
    # Learning rate of the vision backbone; None trains it at `lr`. DETR fine-tunes its
    # pretrained ResNet ten times slower than the transformer (1e-5 vs 1e-4).
    backbone_lr: float | None = None

    def check(self) -> None:
        super().check()
        self.require("backbone_lr", self.backbone_lr is None or self.backbone_lr >= 0, ">= 0")


@dataclass
class DetectionState:
    category_ids: list[int] | None  # COCO's own id of each class (predict gives them back), else None


def _truth(rows) -> dict[int, dict]:
    """Each evaluation image's objects by its row (the `index` its batches carry)."""
    columns = rows.select_columns(["boxes", "classes", "crowd", "area"]).to_dict()
    return {i: {k: columns[k][i] for k in columns} for i in range(len(rows))}


class Geometry:
    """The resize, normalisation and input limits taken from the model's image processor."""

    def __init__(self, processor):
        size = processor.size
        get = (lambda k: size.get(k)) if isinstance(size, dict) else (lambda k: getattr(size, k, None))
        self.shortest = get("shortest_edge") or get("height") or 800
        self.longest = get("longest_edge") or max(get("height") or 0, get("width") or 0) or 1333
        normalise = getattr(processor, "do_normalize", True)
        self.mean = list(processor.image_mean) if normalise else [0.0, 0.0, 0.0]
        self.std = list(processor.image_std) if normalise else [1.0, 1.0, 1.0]

    def resized(self, height: int, width: int) -> tuple[int, int]:
        """(height, width) with the shorter side `shortest` unless that makes the longer one exceed `longest`."""
        scale = min(self.shortest / min(height, width), self.longest / max(height, width))
        return max(1, round(height * scale)), max(1, round(width * scale))


class DetectionTransform:
    """Decode, resize (and in training flip and jitter) a batch of rows, boxes moving with the image.

    A class rather than a closure so DataLoader workers can pickle it where processes spawn.
    """

    def __init__(self, geometry: Geometry, train: bool, hflip: float = 0.5, jitter: float = 0.0,
                 skip_bad: bool = False):
        import torch
        from torchvision.transforms import v2

        self.geometry, self.skip_bad = geometry, skip_bad
        steps = []
        if train and hflip > 0:
            steps.append(v2.RandomHorizontalFlip(hflip))
        if train and jitter > 0:
            steps.append(v2.ColorJitter(brightness=jitter, contrast=jitter, saturation=jitter, hue=min(0.5, jitter / 4)))
        self.augment = v2.Compose(steps) if steps else None
        self.normalise = v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize(geometry.mean, geometry.std)])

    def apply(self, image, boxes: list[list[float]]):
        """uint8 CHW image + absolute xyxy boxes -> (normalised float image, moved xyxy boxes)."""
        import torch
        from torchvision import tv_tensors
        from torchvision.transforms.v2 import functional as F

        height, width = image.shape[-2:]
        pixels = tv_tensors.Image(image)
        box_tensor = tv_tensors.BoundingBoxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                                              format="XYXY", canvas_size=(height, width))
        size = list(self.geometry.resized(height, width))
        pixels, box_tensor = F.resize(pixels, size, antialias=True), F.resize(box_tensor, size)
        if self.augment is not None:
            pixels, box_tensor = self.augment(pixels, box_tensor)
        return self.normalise(pixels).as_subclass(torch.Tensor), box_tensor.as_subclass(torch.Tensor)

    def __call__(self, batch: dict) -> dict:
        import torch

        with vision.one_thread():
            decoded = images.readable(batch["image"], images.decode, self.skip_bad)
            out = {"pixel_values": [], "labels": [], "orig_size": []}
            if "index" in batch:
                out["index"] = []
            for i, image in decoded:
                keep = [not c for c in batch["crowd"][i]]  # crowds are no target: COCO only ignores them
                boxes = [b for b, k in zip(batch["boxes"][i], keep) if k]
                pixels, moved = self.apply(image, boxes)
                height, width = pixels.shape[-2:]
                cx, cy = (moved[:, 0] + moved[:, 2]) / 2 / width, (moved[:, 1] + moved[:, 3]) / 2 / height
                w, h = (moved[:, 2] - moved[:, 0]) / width, (moved[:, 3] - moved[:, 1]) / height
                classes = [c for c, k in zip(batch["classes"][i], keep) if k]
                out["pixel_values"].append(pixels)
                out["labels"].append({"class_labels": torch.tensor(classes, dtype=torch.long),
                                      "boxes": torch.stack([cx, cy, w, h], dim=-1)})
                out["orig_size"].append(torch.tensor(image.shape[-2:]))
                if "index" in batch:
                    out["index"].append(batch["index"][i])
        return out


def collate(features: list[dict]) -> dict:
    """Pad images to the batch's largest height and width (bottom and right); pixel_mask marks real pixels."""
    import torch

    height = max(f["pixel_values"].shape[1] for f in features)
    width = max(f["pixel_values"].shape[2] for f in features)
    pixels = torch.zeros(len(features), 3, height, width)
    mask = torch.zeros(len(features), height, width, dtype=torch.long)
    for n, f in enumerate(features):
        _, h, w = f["pixel_values"].shape
        pixels[n, :, :h, :w] = f["pixel_values"]
        mask[n, :h, :w] = 1
    batch = {"pixel_values": pixels, "pixel_mask": mask, "labels": [f["labels"] for f in features],
             "orig_size": torch.stack([f["orig_size"] for f in features])}
    if "index" in features[0]:
        batch["index"] = torch.tensor([f["index"] for f in features], dtype=torch.long)
    return batch


def _objects(value, row: int, source: str) -> tuple[list, list, list, list]:
    """An `objects` cell -> (boxes, categories, crowd flags, areas); a list of per-object dicts or a dict of lists."""
    if value is None:
        return [], [], [], []
    if isinstance(value, list):  # JSONL: [{"bbox": [...], "category": ...}, ...]
        if not all(isinstance(o, dict) and "bbox" in o and "category" in o for o in value):
            raise HftoolError(f"{source} row {row}: every object needs a \"bbox\" and a \"category\"")
        value = {k: [o.get(k) for o in value] for k in ("bbox", "category", "iscrowd", "area")}
    if not isinstance(value, dict) or "bbox" not in value or "category" not in value:
        raise HftoolError(f"{source} row {row}: objects must hold \"bbox\" and \"category\" "
                          "(e.g. {\"bbox\": [[x, y, w, h]], \"category\": [\"cat\"]})")
    boxes, categories = list(value["bbox"] or []), list(value["category"] or [])
    if len(boxes) != len(categories):
        raise HftoolError(f"{source} row {row}: {len(boxes)} boxes but {len(categories)} categories; give one each")
    for box in boxes:
        if not isinstance(box, (list, tuple)) or len(box) != 4 or not all(isinstance(v, (int, float)) for v in box):
            raise HftoolError(f"{source} row {row}: a bbox must be 4 numbers, got {box!r}")
    crowd = [int(c or 0) for c in (value.get("iscrowd") or [0] * len(boxes))]
    area = [a for a in (value.get("area") or [None] * len(boxes))]
    return boxes, categories, crowd, area


def _find_images_dir(first: str, base: Path) -> Path | None:
    """The folder below or beside `base` holding `first` (COCO's annotations/ next to train2017/)."""
    for root in (base, base.parent):
        for depth in ("*", "*/*"):
            for folder in sorted(root.glob(depth)):
                if folder.is_dir() and (folder / first).is_file():
                    return folder
    return None


def _image_size(entry) -> tuple[int, int]:
    """(width, height) from the image header."""
    import io

    from PIL import Image

    source = io.BytesIO(entry["bytes"]) if isinstance(entry, dict) and entry.get("bytes") else (
        entry["path"] if isinstance(entry, dict) else entry)
    with Image.open(source) as image:
        return image.size


class ObjectDetection(Task):
    name = "object-detection"
    recipe = "detr"
    options = Options(model=vision.VisionModel, data=DetectionData, train=DetectionTrain)
    architectures = ("ForObjectDetection",)
    default_metric = "map"
    pipeline_task = "object-detection"
    meta_keys = ("index", "orig_size")
    # DETR's loss is normalised by the boxes of the whole batch (and of every process): eval_loss is
    # the mean of batch losses, so it moves with the batch size; mAP does not.
    exact_eval_loss = False
    peft_unsupported = ""
    predict_options = (
        Option("threshold", float, "Object detection: lowest score of a box shown (default 0.5)."),
        Option("draw", Path, "Object detection: write PNGs with the boxes drawn into this folder."),
    )

    # ------------------------------------------------------------------------------ data
    def prepare(self, cfg, ds, source, labels=None, require_labels=True):
        """Rows -> image, width, height, boxes (xyxy pixels), classes, crowd, area; (rows, class names)."""
        import datasets

        from hftool.data.columns import source_dir

        column = find_column(ds, source, cfg.data.image_column, images.IMAGE_COLUMNS, "image", "image_column")
        image_type = datasets.Image(decode=False)
        feature = ds.features[column]
        if isinstance(feature, datasets.Image) or isinstance(feature, dict) and {"bytes", "path"} <= set(feature):
            entries = list(ds.cast_column(column, image_type)[column])
        elif isinstance(feature, datasets.Value) and feature.dtype in ("string", "large_string"):
            entries = [{"bytes": None, "path": p} for p in self._image_paths(cfg, ds, column, source, source_dir(ds))]
        else:
            raise HftoolError(f"{source}: column '{column}' holds {feature}, not image paths or images; "
                              "set data.image_column to the column with the images")
        if not require_labels and not any(c in ds.column_names for c in (cfg.data.label_column, *OBJECT_COLUMNS) if c):
            sizes = [_image_size(e) for e in entries]
            return datasets.Dataset.from_dict({"image": entries, "width": [w for w, _ in sizes],
                                               "height": [h for _, h in sizes], "boxes": [[]] * len(entries),
                                               "classes": [[]] * len(entries), "crowd": [[]] * len(entries),
                                               "area": [[]] * len(entries)}).cast_column("image", image_type), labels
        objects_column = find_column(ds, source, cfg.data.label_column, OBJECT_COLUMNS, "objects", "label_column")
        category = ds.features[objects_column]
        category = getattr(category, "feature", category)  # Sequence({...}) (cppe-5) or {...: Sequence}
        category = category.get("category") if isinstance(category, dict) else None
        category = getattr(category, "feature", category)
        names = getattr(category, "names", None)  # a ClassLabel: ids name themselves
        cells = [_objects(v, n + 1, source) for n, v in enumerate(ds[objects_column])]
        if names is not None:
            cells = [(b, [names[c] for c in cats], crowd, area) for b, cats, crowd, area in cells]
        else:
            cells = [(b, [str(c) for c in cats], crowd, area) for b, cats, crowd, area in cells]
        if labels is None:
            found = {c for _, cats, _, _ in cells for c in cats}
            labels = list(names) if names is not None else sorted(found, key=lambda s: (not s.isdigit(), s.zfill(12)))
            if not labels:
                raise HftoolError(f"{source}: no object has a category; detection data needs labelled boxes")
        class_of = {name: i for i, name in enumerate(labels)}
        native = read_by_hftool(ds)  # COCO / VOC readers: absolute xywh whatever data.box_format says
        fmt, normalized = ("xywh", False) if native else (cfg.data.box_format, cfg.data.box_normalized)
        widths = ds["width"] if "width" in ds.column_names else [0] * len(ds)
        heights = ds["height"] if "height" in ds.column_names else [0] * len(ds)
        check = BoxCheck()
        rows = {"width": [], "height": [], "boxes": [], "classes": [], "crowd": [], "area": []}
        for n, ((boxes, cats, crowd, area), entry, width, height) in enumerate(zip(cells, entries, widths, heights)):
            if not width or not height:
                width, height = _image_size(entry)
            kept = {"boxes": [], "classes": [], "crowd": [], "area": []}
            for box, cat, is_crowd, a in zip(boxes, cats, crowd, area):
                if cat not in class_of:
                    raise HftoolError(f"{source} row {n + 1}: category {cat!r} is not one the model knows "
                                      f"({', '.join(labels[:20])}{', ...' if len(labels) > 20 else ''}); "
                                      "fix the row or add the class to the training data")
                xyxy = check(to_xyxy([float(v) for v in box], fmt, normalized, width, height), width, height,
                             f"row {n + 1}")
                if xyxy is None:
                    continue
                kept["boxes"].append(xyxy)
                kept["classes"].append(class_of[cat])
                kept["crowd"].append(is_crowd)
                kept["area"].append(float(a) if a else (xyxy[2] - xyxy[0]) * (xyxy[3] - xyxy[1]))
            rows["width"].append(width)
            rows["height"].append(height)
            for key, value in kept.items():
                rows[key].append(value)
        check.report(source)
        out = datasets.Dataset.from_dict({"image": entries, **rows}).cast_column("image", image_type)
        out.info.description = ds.info.description  # COCO category ids travel with the rows
        return out, labels

    def validate_rows(self, cfg, ds, source, findings, labels=None):
        """Images as image tasks check them; boxes outside the image or of no size, categories
        the training data lacks, duplicate image ids; images without boxes are counted."""
        import datasets

        from hftool.data import validation
        from hftool.data.columns import source_dir

        column = find_column(ds, source, cfg.data.image_column, images.IMAGE_COLUMNS, "image", "image_column")
        entries = validation.image_entries(ds, column)
        if isinstance(ds.features[column], datasets.Value):
            try:  # COCO's images/ beside annotations/, data.images_dir: found as the reader finds them
                entries = [{"bytes": None, "path": p} for p in self._image_paths(cfg, ds, column, source, source_dir(ds))]
            except HftoolError:
                pass  # a missing file: reported per row below
        summary = validation.Summary(rows=len(ds))
        summary.keys = validation.images(entries, source, findings, summary)
        if "image_id" in ds.column_names:
            first: dict = {}
            for row, image_id in enumerate(ds["image_id"], 1):
                if image_id in first:
                    findings.add("duplicate_image_id", source=source, row=row, image_id=image_id, first=first[image_id])
                first.setdefault(image_id, row)
        objects_column = next((c for c in (cfg.data.label_column, *OBJECT_COLUMNS) if c and c in ds.column_names), None)
        if objects_column is None:
            return summary
        category = ds.features[objects_column]
        category = getattr(category, "feature", category)
        category = category.get("category") if isinstance(category, dict) else None
        names = getattr(getattr(category, "feature", category), "names", None)
        native = read_by_hftool(ds)
        fmt, normalized = ("xywh", False) if native else (cfg.data.box_format, cfg.data.box_normalized)
        sizes = zip(ds["width"] if "width" in ds.column_names else [0] * len(ds),
                    ds["height"] if "height" in ds.column_names else [0] * len(ds))
        counts, per_image, empty = {}, summary.values.setdefault("boxes per image", []), 0
        for row, (value, entry, key, (width, height)) in enumerate(zip(ds[objects_column], entries, summary.keys, sizes), 1):
            try:
                boxes, cats, _, _ = _objects(value, row, source)
            except HftoolError:
                continue  # a malformed cell: the reader reports it
            if (not width or not height) and key:
                width, height = _image_size(entry)
            per_image.append(len(boxes))
            empty += not boxes
            for box, cat in zip(boxes, cats):
                cat = names[cat] if names is not None else str(cat)
                counts[cat] = counts.get(cat, 0) + 1
                if labels is not None and cat not in labels:
                    findings.add("unknown_category", source=source, row=row, label=cat)
                shown = [round(float(v), 1) for v in box]
                x0, y0, x1, y1 = to_xyxy([float(v) for v in box], fmt, normalized, width, height)
                if x1 <= x0 or y1 <= y0:
                    findings.add("box_empty", source=source, row=row, box=shown)
                elif width and height and (x0 < -1 or y0 < -1 or x1 > width + 1 or y1 > height + 1):  # 1 px: rounding
                    findings.add("box_outside_image", source=source, row=row, box=shown, width=width, height=height)
        summary.classes = dict(sorted(counts.items(), key=lambda kv: -kv[1]))
        summary.counts["images without boxes"] = empty
        return summary

    def _image_paths(self, cfg, ds, column: str, source: str, base: Path | None) -> list[str]:
        """Absolute image paths; every file is checked to exist before anything runs."""
        values = ["" if v is None else str(v) for v in ds[column]]
        if cfg.data.images_dir:
            base = Path(cfg.data.images_dir).expanduser().resolve()
            if not base.is_dir():
                raise HftoolError(f"data.images_dir={cfg.data.images_dir} is not a folder; pass the folder the images are in")
        elif base is not None and values and read_by_hftool(ds) and not Path(values[0]).is_absolute() \
                and not (base / values[0]).is_file():
            found = _find_images_dir(values[0], base)
            if found is not None:
                logs.info(f"{source}: images found in {found} (set data.images_dir to choose another folder)")
                base = found
        paths = images.resolve_paths(values, base)
        for n, (path, value) in enumerate(zip(paths, values)):
            if not value:
                raise HftoolError(f"{source} row {n + 1}: no image path in column '{column}'")
            if not Path(path).is_file():
                raise HftoolError(f"{path}: image file not found ({source} row {n + 1}); set data.images_dir to the "
                                  "folder that holds the images, or fix the path")
        return paths

    def _transform(self, parts: Parts, cfg, train: bool) -> DetectionTransform:
        d = cfg.data
        return DetectionTransform(Geometry(parts.processor), train, d.hflip, d.color_jitter, d.skip_bad_images)

    def features(self, parts, cfg, ds):
        return ds.with_transform(self._transform(parts, cfg, train=False))

    def train_features(self, parts, cfg, ds):
        return ds.with_transform(self._transform(parts, cfg, train=True))

    def eval_features(self, parts, cfg, ds):
        """Evaluation rows carry their index: the metric's ground truth is the row of that index."""
        return ds.add_column("index", list(range(len(ds)))).with_transform(self._transform(parts, cfg, train=False))

    def collate(self, parts):
        return collate

    # ----------------------------------------------------------------------------- model
    def build(self, cfg, labels, train_ds=None, model_path=None, run_dir=None) -> Parts:
        spec = model_path or cfg.model.name
        fields = {}
        if labels is not None and model_path is None:
            fields = models.label_maps(labels)
            ids = category_ids(train_ds) if train_ds is not None else None
            fields["category_ids"] = ids  # COCO's own ids, given back by predict; None for other data
        side = cfg.data.image_size if model_path is None else None  # a saved model keeps its size
        if models.tiny_arch(spec) is not None:
            models.check_tiny(spec, ("detr",), self.name)
            model, processor = _tiny_detr(cfg, fields, side or 96)
        else:
            model, processor = _pretrained(cfg, spec, fields, model_path is None, side)
        config = model.config
        if labels is None:
            labels = [config.id2label[i] for i in range(config.num_labels)]
        return Parts(model, processor, labels, state=DetectionState(getattr(config, "category_ids", None)))

    def peft_heads(self, parts):
        return ["class_labels_classifier", "bbox_predictor"]  # DETR, conditional DETR, YOLOS

    def param_groups(self, parts, cfg, model):
        """The default groups, each split in two when train.backbone_lr gives the backbone its own rate."""
        groups = super().param_groups(parts, cfg, model)
        if cfg.train.backbone_lr is None:
            return groups
        backbone = {id(p) for n, p in model.named_parameters() if "backbone" in n}
        if not backbone:
            raise HftoolError(f"train.backbone_lr: {type(model).__name__} has no parameters named 'backbone'; "
                              "leave train.backbone_lr unset")
        split = []
        for group in groups:
            rest = [p for p in group["params"] if id(p) not in backbone]
            ours = [p for p in group["params"] if id(p) in backbone]
            split += [{**group, "params": rest}, {**group, "params": ours, "lr": cfg.train.backbone_lr}]
        return [g for g in split if g["params"]]

    # --------------------------------------------------------------------------- metrics
    def metric(self, parts, rows):
        from hftool.metrics import CocoMeanAP

        return CocoMeanAP(_truth(rows), parts.labels)

    def resampler(self, parts, rows):
        from hftool.metrics.resampling import DetectionStats

        return DetectionStats(parts.labels, _truth(rows))

    def _detections(self, parts, outputs, sizes, threshold: float) -> list[dict]:
        """The processor's post-processing: per image, scores, class ids and xyxy boxes in pixels of `sizes`.
        An ONNX export did it in its graph (`scores` are among its outputs): only the threshold is left."""
        if "scores" in outputs:
            return [{"scores": s[s > threshold], "labels": c[s > threshold], "boxes": b[s > threshold]}
                    for s, c, b in zip(outputs["scores"], outputs["labels"], outputs["boxes"])]
        return parts.processor.post_process_object_detection(outputs, threshold=threshold, target_sizes=sizes)

    def eval_forward(self, parts, model, batch):
        """An ONNX export (`hftool evaluate EXPORT_DIR`) also takes the images' sizes: its boxes come out in pixels."""
        from hftool.export import OnnxModel

        return model(**(self.onnx_feed(parts, batch) if isinstance(model, OnnxModel) else self.model_inputs(batch)))

    def eval_outputs(self, parts, outputs, batch):
        """Each image's best K boxes (K = MAX_DETECTIONS), fixed-size: padding has score -1."""
        import torch

        found = self._detections(parts, outputs, batch["orig_size"], threshold=-1.0)
        n, k = len(found), MAX_DETECTIONS
        device = batch["pixel_values"].device
        boxes = torch.zeros(n, k, 4, device=device)
        scores = torch.full((n, k), -1.0, device=device)
        labels = torch.zeros(n, k, dtype=torch.long, device=device)
        for i, f in enumerate(found):
            order = f["scores"].argsort(descending=True)[:k]
            m = len(order)
            boxes[i, :m], scores[i, :m], labels[i, :m] = f["boxes"][order], f["scores"][order], f["labels"][order]
        return {"index": batch["index"], "boxes": boxes, "scores": scores, "labels": labels}

    def prediction_records(self, parts, batches, order, rows):
        """Per image (eval.save_predictions): its scored boxes, best first, xyxy pixels, label names."""
        records = []
        for b in batches:
            for index, boxes, scores, labels in zip(b["index"], b["boxes"], b["scores"], b["labels"]):
                objects = [{"label": parts.labels[int(c)], "score": round(float(s), 4),
                            "box": [round(float(v), 1) for v in box]}
                           for box, s, c in zip(boxes, scores, labels) if s >= 0]  # -1: padding
                records.append({"index": int(index), "objects": objects})
        return sorted(records, key=lambda r: r["index"])

    # ------------------------------------------------------------------------- inference
    def predict(self, parts, cfg, inputs, batch_size, threshold: float = 0.5, draw: str | None = None):
        """Image files or folders -> {image, objects: [{label, score, box (xyxy pixels)[, category_id]}]}."""
        import datasets
        import torch

        paths = []
        for given in images.input_paths(inputs):
            path = Path(given).expanduser()
            if not path.is_file():
                raise HftoolError(f"{given}: image file not found; check the path")
            paths.append(str(path.resolve()))
        rows, _ = self.prepare(cfg, datasets.Dataset.from_dict({"image": paths}), "input", parts.labels,
                               require_labels=False)
        features = self.features(parts, cfg, rows)
        model = parts.model.eval()
        device = next(model.parameters()).device
        ids = parts.state.category_ids
        from hftool.export import OnnxModel

        results = []
        for start in range(0, len(features), batch_size):
            batch = collate([features[i] for i in range(start, min(start + batch_size, len(features)))])
            feed = self.onnx_feed(parts, batch) if isinstance(model, OnnxModel) else {
                "pixel_values": batch["pixel_values"], "pixel_mask": batch["pixel_mask"]}
            with torch.no_grad():
                outputs = model(**{k: v.to(device) for k, v in feed.items()})
            for offset, found in enumerate(self._detections(parts, outputs, batch["orig_size"], threshold)):
                order = found["scores"].argsort(descending=True)
                objects = []
                for j in order.tolist():
                    label = int(found["labels"][j])
                    box = [round(float(v), 2) for v in found["boxes"][j]]
                    objects.append({"label": parts.labels[label], "score": round(float(found["scores"][j]), 4),
                                    "box": box, **({"category_id": ids[label]} if ids else {})})
                results.append({"image": paths[start + offset], "objects": objects})
        if draw:
            targets = [Path(draw) / f"{n:04d}-{Path(result['image']).stem}.png" for n, result in enumerate(results)]
            for target in targets:  # all of them before the first is written
                check_output(target, what="--draw")
            for result, target in zip(results, targets):
                draw_boxes(result, target)
        return results

    def card_usage(self, parts, cfg):
        return ('```python\nfrom transformers import pipeline\n\ndetector = pipeline("object-detection", model=".")\n'
                'print(detector("image.png", threshold=0.5))\n```\n')

    def format_prediction(self, prediction):
        found = "; ".join(f"{o['label']} {o['score']:.3f} [{', '.join(f'{v:.0f}' for v in o['box'])}]"
                          for o in prediction["objects"])
        return f"{prediction['image']}\t{found or '(no boxes)'}"

    # ---------------------------------------------------------------------------- export
    def onnx_graphs(self, parts, cfg, batch):
        """model.onnx: pixel_values + pixel_mask (batch x height x width, padded as the collator pads) and
        target_sizes (each image's (height, width)) -> scores, labels, boxes: per query, as
        post_process_object_detection gives them before its threshold, boxes xyxy in pixels."""
        from hftool.export import Forward, Graph

        kind = type(parts.processor).__name__
        if not kind.startswith(("Detr", "Yolos")):
            raise HftoolError(f"ONNX export puts DETR's post-processing (softmax over classes) in the graph; "
                              f"{kind} post-processes otherwise: not exportable yet")
        names, outputs = ["pixel_values", "pixel_mask", "target_sizes"], ["scores", "labels", "boxes"]
        module = Forward(parts.model, names, outputs, post=boxes_in_pixels, model_inputs=names[:2])
        inputs = self.onnx_feed(parts, batch)
        axes = {"pixel_values": {0: "batch", 2: "height", 3: "width"}, "pixel_mask": {0: "batch", 1: "height", 2: "width"},
                "target_sizes": {0: "batch"}}
        return [Graph("model", module, inputs, outputs, axes)]

    def onnx_feed(self, parts, batch):
        return {"pixel_values": batch["pixel_values"], "pixel_mask": batch["pixel_mask"], "target_sizes": batch["orig_size"]}

    def write_reports(self, parts, run_dir, metrics, records):
        """per_class_ap.tsv: AP@[.5:.95] per class from the final evaluation (-1: no such object there)."""
        lines = ["class\tap"] + [f"{k[len('eval_ap_'):]}\t{v:.4f}" for k, v in metrics.items() if k.startswith("eval_ap_")]
        (Path(run_dir) / REPORT).write_text("\n".join(lines) + "\n", encoding="utf-8")


def boxes_in_pixels(outputs, inputs: dict) -> tuple:
    """DETR's post-processing inside the exported graph, as DetrImageProcessor.post_process_object_detection
    computes it: per query, its most likely class but "no object", that probability, and its box
    as xyxy in pixels of `target_sizes` (height, width)."""
    import torch

    scores, labels = outputs.logits.softmax(-1)[..., :-1].max(-1)
    cx, cy, w, h = outputs.pred_boxes.unbind(-1)
    boxes = torch.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], dim=-1)
    height, width = inputs["target_sizes"].unbind(-1)
    scale = torch.stack([width, height, width, height], dim=-1).to(boxes.dtype)
    return scores, labels, boxes * scale[:, None, :]


def draw_boxes(prediction: dict, path: Path) -> None:
    """The image with its predicted boxes, label names and scores drawn on it, as a PNG."""
    from PIL import Image, ImageDraw

    palette = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#bfef45"]
    image = Image.fromarray(images.decode(prediction["image"]).permute(1, 2, 0).numpy())
    pen = ImageDraw.Draw(image)
    width = max(1, round(max(image.size) / 300))
    for obj in prediction["objects"]:
        colour = palette[hash(obj["label"]) % len(palette)]
        pen.rectangle(obj["box"], outline=colour, width=width)
        pen.text((obj["box"][0] + 2, obj["box"][1] + 1), f"{obj['label']} {obj['score']:.2f}", fill=colour)
    with atomic_path(path) as tmp:
        image.save(tmp)


def _tiny_detr(cfg, fields: dict, side: int):
    """A DETR of width 64 (2+2 layers, 10 queries, auxiliary losses) on a 2-stage ResNet (stride 8, random init), and
    its processor: images resized so their longer side is `side`. Every backbone weight trains:
    DETR freezes a pretrained ResNet's first stage, which for random weights would only add noise."""
    from transformers import DetrConfig, DetrForObjectDetection, DetrImageProcessor, ResNetConfig

    backbone = ResNetConfig(embedding_size=16, hidden_sizes=[32, 64], depths=[1, 1], layer_type="basic",
                            out_features=["stage2"])
    sizes = dict(d_model=64, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4, decoder_attention_heads=4,
                 encoder_ffn_dim=128, decoder_ffn_dim=128, num_queries=10, dropout=0.0,
                 auxiliary_loss=True)  # a loss after every decoder layer, as DETR trains: it learns faster
    overrides = dict(cfg.model.config_overrides)
    models.check_config_overrides(DetrConfig(use_timm_backbone=False, backbone_config=backbone), overrides)
    config = DetrConfig(use_timm_backbone=False, backbone_config=backbone, use_pretrained_backbone=False,
                        **(sizes | fields | overrides))
    model = DetrForObjectDetection(config)
    for param in model.model.backbone.parameters():
        param.requires_grad_(True)
    processor = DetrImageProcessor(size={"shortest_edge": side, "longest_edge": side}, image_mean=[0.5] * 3,
                                   image_std=[0.5] * 3)
    return model, processor


def _pretrained(cfg, spec: str, fields: dict, new_head: bool, side: int | None):
    """A local model dir, run dir or hub id and its image processor; a new label set gets a new head."""
    from transformers import AutoModelForObjectDetection

    _, model, processor = vision.pretrained(cfg, spec, AutoModelForObjectDetection, fields, new_head)
    if side:  # the longer side becomes `side`: small images train much faster than DETR's 800-1333
        settings = processor.to_dict()
        settings["size"] = {"shortest_edge": side, "longest_edge": side}
        processor = type(processor).from_dict(settings)
    return model, processor
