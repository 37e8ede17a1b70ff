"""Image classification: HF ViT and any AutoModelForImageClassification, timm models as timm:<name>.

timm models are wrapped in transformers' TimmWrapperForImageClassification, so a timm run dir
is an HF model dir like any other (config.json carries timm's pretrained_cfg, which is what its
image processor reads): evaluate, predict and `pipeline("image-classification")` load it alike.

Images are decoded and transformed lazily (`with_transform`) inside the DataLoader workers, on
uint8 tensors with torchvision's v2 transforms; nothing is decoded up front.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from hftool import logs, models
from hftool.data import images
from hftool.errors import HftoolError
from hftool.tasks.base import Parts, Task
from hftool.tasks.base import find_column
from hftool.data.labels import label_names
from hftool.tasks.text_classification import LABEL_COLUMNS

IMAGE_COLUMNS = ("image", "img", "image_path", "path", "file", "filename", "file_name", "image_file")
TIMM_PREFIX = "timm:"
TOP_K = 5  # eval_top5_accuracy, reported when there are more classes than this
DEFAULT_CROP_PCT = 0.875  # eval crop of processors hftool writes: the ImageNet-standard 224 of 256


@dataclass
class Geometry:
    """What the transforms take from the model's processor: sizes, normalisation, resampling."""

    resize: int | tuple[int, int]  # eval resize: shorter side, or (height, width)
    crop: tuple[int, int]  # model input (height, width): eval centre crop, training crop
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str  # nearest | bilinear | bicubic


@contextmanager
def one_thread() -> Iterator[None]:
    """Run per-image tensor ops on one thread. On one small image, waking torch's other threads
    costs more than it saves: with 2 threads on a busy 2-core machine a crop + to_dtype took
    ~20 ms instead of ~1. DataLoader workers are single-threaded already; this covers
    num_workers=0 and predict, where the transforms run in the main process."""
    threads = torch.get_num_threads()
    if threads > 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if threads > 1:
            torch.set_num_threads(threads)


class ImageTransform:
    """Decode (any mode -> RGB uint8) and transform a batch of datasets Image dicts.

    A class rather than a closure so DataLoader workers can pickle it where processes spawn.
    """

    def __init__(self, geometry: Geometry, train: bool, skip_bad: bool, crop_scale_min: float = 0.08,
                 hflip: float = 0.5, randaugment: int | None = None):
        from torchvision.transforms import InterpolationMode, v2

        mode = InterpolationMode(geometry.interpolation)
        if train:
            steps = [v2.RandomResizedCrop(geometry.crop, scale=(crop_scale_min, 1.0), interpolation=mode, antialias=True)]
            if hflip > 0:
                steps.append(v2.RandomHorizontalFlip(hflip))
            if randaugment is not None:  # 31 bins: magnitudes 0-30 mean what they mean in timm
                steps.append(v2.RandAugment(magnitude=randaugment, num_magnitude_bins=31, interpolation=mode))
        else:
            steps = [v2.Resize(geometry.resize, interpolation=mode, antialias=True), v2.CenterCrop(geometry.crop)]
        steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(geometry.mean), list(geometry.std))]
        self.pipeline = v2.Compose(steps)
        self.skip_bad = skip_bad

    def image(self, entry: dict) -> torch.Tensor:
        """One image -> normalised float tensor. Raises ImageDecodeError naming the file."""
        try:
            return self.pipeline(images.decode(entry))
        except (ValueError, OSError) as err:
            raise images.ImageDecodeError(f"{_name(entry)}: cannot be decoded ({err}); remove the file or pass "
                                          "data.skip_bad_images=true") from None

    def __call__(self, batch: dict) -> dict:
        with one_thread():
            return self._apply(batch)

    def _apply(self, batch: dict) -> dict:
        pixels, kept = [], []
        for i, entry in enumerate(batch["image"]):
            try:
                pixels.append(self.image(entry))
            except images.ImageDecodeError as err:
                if not self.skip_bad:
                    raise
                logs.warn(f"data.skip_bad_images: skipping {str(err).split('; ')[0]}")  # the batch is one shorter
                continue
            kept.append(i)
        out = {"pixel_values": pixels}
        if "label" in batch:
            out["labels"] = [batch["label"][i] for i in kept]
        return out


def _name(entry: dict) -> str:
    return entry.get("path") or "an image stored in the data"


def _label_ids(ds, column: str, names: list[str], source: str) -> list[int]:
    """Class ids of `column` against `names`; a missing or unknown label is an error naming the row."""
    feature = ds.features[column]
    ids = {name: i for i, name in enumerate(names)}
    out = []
    for row, value in enumerate(ds[column], 1):
        if hasattr(feature, "names") and value is not None and value >= 0:  # datasets.ClassLabel
            value = feature.names[value]
        key = "" if value is None else str(value)
        if key not in ids:
            if key == "":
                raise HftoolError(f"{source} row {row}: no label in column '{column}'; every row needs one")
            raise HftoolError(f"{source} row {row}: label {value!r} is not one the model was trained on "
                              f"({', '.join(names)}); fix the row or add the class to the training data")
        out.append(ids[key])
    return out


def _interpolation(value) -> str:
    """timm's name or a PIL resampling id -> a torchvision interpolation name."""
    if isinstance(value, str):
        return value if value in ("nearest", "bilinear", "bicubic") else "bicubic"
    return {0: "nearest", 2: "bilinear"}.get(int(value), "bicubic")  # lanczos etc.: bicubic is closest


def _size(size, key: str):
    return size.get(key) if isinstance(size, dict) else getattr(size, key, None)


def geometry(processor) -> Geometry:
    """The eval resize/crop, normalisation and resampling the model's processor applies."""
    if hasattr(processor, "data_config"):  # TimmWrapperImageProcessor: timm's eval transform
        config = processor.data_config
        height, width = config["input_size"][1:]
        crop_pct = config.get("crop_pct") or DEFAULT_CROP_PCT
        resize = math.floor(height / crop_pct) if height == width else (math.floor(height / crop_pct),
                                                                         math.floor(width / crop_pct))
        return Geometry(resize, (height, width), tuple(config["mean"]), tuple(config["std"]),
                        _interpolation(config.get("interpolation", "bicubic")))
    size, shortest = processor.size, _size(processor.size, "shortest_edge")
    crop = getattr(processor, "crop_size", None) if getattr(processor, "do_center_crop", False) else None
    crop_pct = getattr(processor, "crop_pct", None)
    if shortest and crop_pct:  # ConvNext: resize to shortest / crop_pct, then crop shortest
        resize, crop_hw = math.floor(shortest / crop_pct), (shortest, shortest)
    else:
        resize = shortest or (_size(size, "height"), _size(size, "width"))
        # No crop after a shorter-side resize would leave sizes unequal: crop a square then.
        crop_hw = (_size(crop, "height"), _size(crop, "width")) if crop else (
            (shortest, shortest) if shortest else resize)
    normalise = getattr(processor, "do_normalize", True)
    mean = tuple(processor.image_mean) if normalise else (0.0, 0.0, 0.0)
    std = tuple(processor.image_std) if normalise else (1.0, 1.0, 1.0)
    return Geometry(resize, crop_hw, mean, std, _interpolation(getattr(processor, "resample", 3)))


def _resized_processor(processor, side: int):
    """`processor` with its model input scaled to side x side, resize and crop in proportion."""
    settings = processor.to_dict()
    old = geometry(processor)
    if _size(processor.size, "shortest_edge"):
        scale = side / old.crop[0]
        settings["size"] = {"shortest_edge": round(_size(processor.size, "shortest_edge") * scale)}
    else:
        settings["size"] = {"height": side, "width": side}
    if settings.get("crop_size"):
        settings["crop_size"] = {"height": side, "width": side}
    return type(processor).from_dict(settings)


def _resize_vit_positions(model, side: int) -> None:
    """Resample a ViT's position embeddings for side x side inputs (bicubic, as ViT itself does when
    asked to interpolate), so the saved model takes that size natively."""
    embeddings = model.vit.embeddings
    patches = embeddings.patch_embeddings
    count = (side // patches.patch_size[0]) * (side // patches.patch_size[1])
    dim = embeddings.position_embeddings.shape[-1]
    with torch.no_grad():
        table = embeddings.interpolate_pos_encoding(torch.zeros(1, count + 1, dim), side, side)
    embeddings.position_embeddings = torch.nn.Parameter(table.contiguous())
    patches.image_size, patches.num_patches, embeddings.image_size = (side, side), count, (side, side)
    model.config.image_size = side


def _check_input_size(model, side: int, spec: str) -> None:
    """Fail before training when the model cannot take side x side inputs."""
    try:
        with torch.no_grad():
            model.eval()(pixel_values=torch.zeros(1, 3, side, side))
    except (RuntimeError, ValueError) as err:
        raise HftoolError(f"model {spec} does not take {side}x{side} inputs ({str(err).splitlines()[0]}); "
                          "leave data.image_size unset or pick another size") from None
    finally:
        model.train()


def plot_confusion(matrix, labels: list[str], path: Path) -> None:
    """Counts per (reference, prediction) as a heat map; numbers written in when they fit."""
    import matplotlib
    import numpy as np

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    n = len(labels)
    side = min(3 + 0.45 * n, 20)
    fig, ax = plt.subplots(figsize=(side, side))
    ax.imshow(matrix, cmap="Blues")
    if n <= 40:
        ax.set_xticks(range(n), labels, rotation=90)
        ax.set_yticks(range(n), labels)
    if n <= 20:
        threshold = matrix.max() / 2
        for (row, col), value in np.ndenumerate(matrix):
            ax.text(col, row, str(value), ha="center", va="center", color="white" if value > threshold else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"confusion matrix ({int(matrix.sum())} examples)")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


class ImageClassification(Task):
    name = "image-classification"
    default_metric = "accuracy"
    pipeline_task = "image-classification"

    # ------------------------------------------------------------------------------ data
    def prepare(self, cfg, ds, source, labels=None, require_labels=True):
        """Rows -> columns image (datasets Image, not decoded) and label (class id).

        Image paths are read relative to the data file; every one is checked (header only) so a
        missing or non-image file stops the run before training, or is skipped with
        data.skip_bad_images=true.
        """
        import datasets

        from hftool.data.sources import source_dir

        column = find_column(ds, source, cfg.data.image_column, IMAGE_COLUMNS, "image", "image_column")
        feature = ds.features[column]
        label_column = None
        if require_labels or any(c in ds.column_names for c in (cfg.data.label_column, *LABEL_COLUMNS) if c):
            label_column = find_column(ds, source, cfg.data.label_column, LABEL_COLUMNS, "label", "label_column")
            labels = label_names(ds, label_column, source) if labels is None else labels
            if not labels:
                raise HftoolError(f"{source}: the label column '{label_column}' is empty; every row needs a label")
        ids = _label_ids(ds, label_column, labels, source) if label_column else None
        image_type = datasets.Image(decode=False)
        keep = None
        if isinstance(feature, datasets.Image) or isinstance(feature, dict) and {"bytes", "path"} <= set(feature):
            rows = ds.select_columns([column]).cast_column(column, image_type)
            rows = rows if column == "image" else rows.rename_column(column, "image")
        elif isinstance(feature, datasets.Value) and feature.dtype in ("string", "large_string"):
            paths = images.resolve_paths(("" if v is None else v for v in ds[column]), source_dir(ds))
            keep = self._check_images(paths, ds[column], source, column, cfg.data.skip_bad_images)
            rows = datasets.Dataset.from_dict({"image": [paths[i] for i in keep]}).cast_column("image", image_type)
        else:
            raise HftoolError(f"{source}: column '{column}' holds {feature}, not image paths or images; "
                              "set data.image_column to the column with the images")
        if ids is not None:
            rows = rows.add_column("label", ids if keep is None else [ids[i] for i in keep])
        return rows, labels

    def _check_images(self, paths: list[str], given: list, source: str, column: str, skip: bool) -> list[int]:
        """Indices of the readable images; an unreadable one is an error unless `skip`."""
        kept, bad = [], []
        for i, (path, value) in enumerate(zip(paths, given)):
            reason = "no image path" if not value else images.check_header(path)
            if reason is None:
                kept.append(i)
                continue
            if not skip:
                raise HftoolError(f"{path if value else f'{source} row {i + 1}'}: {reason} ({source}, column "
                                  f"'{column}'); fix or remove it, or pass data.skip_bad_images=true")
            bad.append(f"{path}: {reason}")
        if bad:
            shown = "; ".join(bad[:3]) + ("; ..." if len(bad) > 3 else "")
            logs.warn(f"data.skip_bad_images: skipped {len(bad)} of {len(paths)} images in {source} ({shown})")
        if not kept:
            raise HftoolError(f"{source}: none of the {len(paths)} images can be read; check the paths in column '{column}'")
        return kept

    def _transform(self, parts: Parts, cfg, train: bool) -> ImageTransform:
        d = cfg.data
        return ImageTransform(geometry(parts.processor), train, d.skip_bad_images, d.crop_scale_min, d.hflip, d.randaugment)

    def features(self, parts, cfg, ds):
        return ds.with_transform(self._transform(parts, cfg, train=False))

    def train_features(self, parts, cfg, ds):
        return ds.with_transform(self._transform(parts, cfg, train=True))

    def collate(self, parts):
        return collate

    # ----------------------------------------------------------------------------- model
    def build(self, cfg, labels, train_ds=None, model_path=None, run_dir=None) -> Parts:
        spec = model_path or cfg.model.name
        label_fields = {} if labels is None else models.label_maps(labels)
        side = cfg.data.image_size if labels is not None and model_path is None else None  # a saved model keeps its size
        if models.tiny_arch(spec) is not None:
            models.check_tiny(spec, ("vit",), self.name)
            model, processor = _tiny_vit(cfg, label_fields, side or 32)
        elif spec.startswith(TIMM_PREFIX) and not models.is_local(spec):
            model, processor = _timm(cfg, spec, label_fields, side)
        else:
            model, processor = _pretrained(cfg, spec, label_fields, model_path is None, side)
        extra = {"timm": model.config.model_type == "timm_wrapper"}
        if labels is None:  # evaluate/predict: the model's own label map
            labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
        else:
            extra["mixup"] = _mixup(cfg.train, len(labels))
        return Parts(model, processor, labels, extra=extra)

    # --------------------------------------------------------------------------- training
    def train_loss(self, parts, model, batch):
        """Cross-entropy on timm's mixup/cutmix-mixed, label-smoothed soft targets when the recipe
        asks for them; otherwise the model's own loss."""
        mix = parts.extra.get("mixup")
        if mix is None:
            return model(**batch).loss
        from timm.data.mixup import mixup_target
        from timm.loss import SoftTargetCrossEntropy

        pixels, labels = batch["pixel_values"], batch["labels"]
        if mix.mixup_enabled and len(labels) % 2 == 0:
            pixels, targets = mix(pixels, labels)
        else:  # smoothing only; or a short odd last batch, which timm cannot mix (it pairs x[i] with x[-1-i])
            targets = mixup_target(labels, mix.num_classes, smoothing=mix.label_smoothing)
        return SoftTargetCrossEntropy()(model(pixel_values=pixels).logits.float(), targets)

    # --------------------------------------------------------------------------- metrics
    def metric(self, parts):
        from hftool.metrics import Accuracy, ConfusionMatrix, PrecisionRecallF1, TopKAccuracy, combine

        n = len(parts.labels)
        confusion = parts.extra["confusion"] = ConfusionMatrix(num_classes=n)  # drawn by save()
        modules = [Accuracy(), PrecisionRecallF1(num_classes=n), confusion]
        if n > TOP_K:
            modules.insert(1, TopKAccuracy(k=TOP_K))
        return combine(modules)

    def eval_outputs(self, parts, outputs, batch):
        logits = outputs.logits
        out = {"predictions": logits.argmax(-1), "references": batch["labels"]}
        if logits.shape[-1] > TOP_K:
            out["top_k"] = logits.topk(TOP_K, dim=-1).indices
        return out

    # ------------------------------------------------------------------------- inference
    def predict(self, parts, cfg, inputs, batch_size, top_k: int = 1):
        """Image files or folders (searched recursively) -> {image, label, score[, top_k]} each."""
        import datasets

        paths = images.input_paths(inputs)
        rows, _ = self.prepare(cfg, datasets.Dataset.from_dict({"image": paths}), "input", require_labels=False)
        transform = self._transform(parts, cfg, train=False)
        model, k = parts.model.eval(), min(top_k, len(parts.labels))
        device = next(model.parameters()).device
        results = []
        entries = list(rows["image"])  # paths only: no pixels are read here
        for start in range(0, len(entries), batch_size):
            chunk, pixels = [], []
            with one_thread():
                for entry in entries[start:start + batch_size]:
                    try:
                        pixels.append(transform.image(entry))
                        chunk.append(entry["path"])
                    except images.ImageDecodeError as err:
                        if not cfg.data.skip_bad_images:
                            raise
                        logs.warn(f"data.skip_bad_images: skipping {str(err).split('; ')[0]}")
            if not pixels:
                continue
            with torch.no_grad():
                logits = model(pixel_values=torch.stack(pixels).to(device)).logits
            scores, ids = torch.softmax(logits.float(), dim=-1).topk(k, dim=-1)
            for path, row_scores, row_ids in zip(chunk, scores.tolist(), ids.tolist()):
                best = [{"label": parts.labels[i], "score": round(s, 6)} for i, s in zip(row_ids, row_scores)]
                results.append({"image": path, **best[0], **({"top_k": best} if top_k > 1 else {})})
        return results

    def format_prediction(self, prediction):
        line = f"{prediction['label']}\t{prediction['score']:.4f}\t{prediction['image']}"
        if "top_k" in prediction:
            line += "\t" + ", ".join(f"{p['label']} {p['score']:.3f}" for p in prediction["top_k"])
        return line

    # ------------------------------------------------------------------------------ save
    def save(self, parts, run_dir, model=None, state_dict=None):
        """Weights + config; the processor (a timm model's lives in config.json); and, with the
        final model, the confusion matrix of its last evaluation."""
        if model is not None:
            model.save_pretrained(str(run_dir), state_dict=state_dict, safe_serialization=True)
            confusion = parts.extra.get("confusion")
            if confusion is not None and confusion.matrix is not None:
                plot_confusion(confusion.matrix, parts.labels, Path(run_dir) / "confusion_matrix.png")
        if not parts.extra.get("timm"):
            parts.processor.save_pretrained(str(run_dir))


def collate(features: list[dict]) -> dict[str, torch.Tensor]:
    batch = {"pixel_values": torch.stack([f["pixel_values"] for f in features])}
    if "labels" in features[0]:
        batch["labels"] = torch.tensor([f["labels"] for f in features], dtype=torch.long)
    return batch


def _mixup(t, num_classes: int):
    """timm's Mixup (which also smooths labels) when train.* asks for any of it, else None."""
    if t.mixup_alpha == 0 and t.cutmix_alpha == 0 and t.label_smoothing == 0:
        return None
    from timm.data import Mixup

    mixer = Mixup(mixup_alpha=t.mixup_alpha, cutmix_alpha=t.cutmix_alpha, label_smoothing=t.label_smoothing,
                  num_classes=num_classes)
    mixer.mixup_enabled = t.mixup_alpha > 0 or t.cutmix_alpha > 0  # off: smoothing only
    return mixer


def _tiny_vit(cfg, label_fields: dict, side: int):
    """A 4-layer ViT of width 96 on side x side inputs in an 8x8 grid of patches, and its processor."""
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    sizes = dict(image_size=side, patch_size=max(1, side // 8), hidden_size=96, num_hidden_layers=4,
                 num_attention_heads=4, intermediate_size=192)
    config = ViTConfig(**(sizes | label_fields | cfg.model.config_overrides))
    processor = ViTImageProcessor(size={"shortest_edge": math.floor(side / DEFAULT_CROP_PCT)}, do_center_crop=True,
                                  crop_size={"height": side, "width": side}, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    return ViTForImageClassification(config), processor


def _timm(cfg, spec: str, label_fields: dict, side: int | None):
    """timm:<name> -> TimmWrapperForImageClassification (+ its processor), pretrained or from scratch."""
    import difflib

    import timm
    from timm.models import get_pretrained_cfg
    from transformers import TimmWrapperConfig, TimmWrapperForImageClassification, TimmWrapperImageProcessor

    name = spec[len(TIMM_PREFIX):]
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=3)
        raise HftoolError(f"timm has no model '{name}'" + (f"; did you mean {', '.join(close)}?" if close else
                                                           "; `python -c 'import timm; print(timm.list_models())'` lists them"))
    if not label_fields:
        raise HftoolError(f"{spec} is a model name, not a trained model; pass a run dir written by `hftool finetune`")
    try:
        pretrained_cfg = get_pretrained_cfg(name).to_dict()
    except (RuntimeError, AttributeError):  # an unknown tag (resnet18.nope) or no default config
        raise HftoolError(f"timm has no pretrained config '{name}'; use the architecture name (e.g. "
                          f"{name.split('.')[0]})") from None
    model_args = dict(cfg.model.config_overrides)  # timm constructor arguments: drop_rate, drop_path_rate, ...
    if side and pretrained_cfg.get("fixed_input_size"):
        model_args["img_size"] = side  # ViT-like: built for that size (position embeddings resampled)
    if side:
        pretrained_cfg["input_size"] = (3, side, side)
    config = TimmWrapperConfig(architecture=name, model_args=model_args or None, pretrained_cfg=pretrained_cfg,
                               **label_fields)
    model = TimmWrapperForImageClassification(config)
    if cfg.model.pretrained:
        from hftool.hub import from_hub

        model.timm_model = from_hub(
            "model", spec, "model.pretrained=false (random weights) or a local timm model folder (--model path)",
            lambda: timm.create_model(name, pretrained=True, num_classes=config.num_labels, **model_args))
    return model, TimmWrapperImageProcessor(pretrained_cfg=pretrained_cfg, architecture=name)


def _pretrained(cfg, spec: str, label_fields: dict, new_head: bool, side: int | None):
    """A local model dir, run dir or hub id (HF or timm format) and its image processor."""
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    token = cfg.model.token
    config, model = models.pretrained_with_head(cfg, spec, AutoModelForImageClassification, label_fields, new_head)
    processor = models.load("image processor", AutoImageProcessor, spec, token)
    if side and geometry(processor).crop != (side, side):
        if config.model_type == "timm_wrapper":
            from transformers import TimmWrapperImageProcessor

            config.pretrained_cfg = {**config.pretrained_cfg, "input_size": (3, side, side)}
            processor = TimmWrapperImageProcessor(pretrained_cfg=config.pretrained_cfg, architecture=config.architecture)
        else:
            processor = _resized_processor(processor, side)
        if config.model_type == "vit":
            _resize_vit_positions(model, side)
        _check_input_size(model, side, spec)
    return model, processor
