"""Images, the model side of the image layer (hftool.data.images is the data side): the
resize, crop and normalisation a model's image processor applies, the transforms that apply them
to uint8 tensors in DataLoader workers, and the image models hftool builds or loads.

Every image task (classification, detection, captioning, video) takes its transforms and
processors from here, so training, evaluation, `predict` and `pipeline()` agree on the pixels.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from hftool import models
from hftool.config import ModelConfig
from hftool.data import images
from hftool.errors import HftoolError

DEFAULT_CROP_PCT = 0.875  # eval crop of processors hftool writes: the ImageNet-standard 224 of 256


@dataclass
class VisionModel(ModelConfig):
    """model.* options of tasks with image models."""

    # Start from pretrained weights (hub ids, timm:<name>). false builds the architecture with
    # random weights: offline timm runs, or small images where ImageNet features help little.
    pretrained: bool = True


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
    costs more than it saves, many times over on a busy machine (benchmarks/README.md). DataLoader
    workers are single-threaded already; this covers num_workers=0 and predict, where the
    transforms run in the main process."""
    import torch

    threads = torch.get_num_threads()
    if threads > 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if threads > 1:
            torch.set_num_threads(threads)


class ImageTransform:
    """Decode (any mode -> RGB uint8, or greyscale with image_mode="L") and transform a batch of datasets
    Image dicts: a random
    resized crop and flips in training, the processor's resize and centre crop otherwise.

    A class rather than a closure so DataLoader workers can pickle it where processes spawn.
    Other columns of the batch pass through (a caption's labels, an example's index); `label`
    becomes `labels`.
    """

    def __init__(self, geometry: Geometry, train: bool, skip_bad: bool, crop_scale_min: float = 0.08,
                 hflip: float = 0.5, randaugment: int | None = None, image_mode: str = "RGB"):
        import torch
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
        self.skip_bad, self.image_mode = skip_bad, image_mode

    def image(self, entry):
        """One image -> a normalised float tensor (ValueError/OSError for an unreadable one)."""
        return self.pipeline(images.decode(entry, self.image_mode))

    def images(self, entries) -> list:
        """(position, tensor) of the entries that decode (images.readable's rule)."""
        with one_thread():
            return images.readable(entries, self.image, self.skip_bad)

    def __call__(self, batch: dict) -> dict:
        if "image" not in batch:  # a column read on its own, e.g. the loop's `length`
            return batch
        done = self.images(batch["image"])
        out = {"pixel_values": [pixels for _, pixels in done]}
        for key, values in batch.items():
            if key != "image":
                out["labels" if key == "label" else key] = [values[i] for i, _ in done]
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


def resized_processor(processor, side: int):
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


def resize_vit_positions(model, side: int) -> None:
    """Resample a ViT's position embeddings for side x side inputs (bicubic, as ViT itself does when
    asked to interpolate), so the saved model takes that size natively."""
    embeddings = model.vit.embeddings
    patches = embeddings.patch_embeddings
    count = (side // patches.patch_size[0]) * (side // patches.patch_size[1])
    dim = embeddings.position_embeddings.shape[-1]
    import torch

    with torch.no_grad():
        table = embeddings.interpolate_pos_encoding(torch.zeros(1, count + 1, dim), side, side)
    embeddings.position_embeddings = torch.nn.Parameter(table.contiguous())
    patches.image_size, patches.num_patches, embeddings.image_size = (side, side), count, (side, side)
    model.config.image_size = side


def check_input_size(model, side: int, spec: str) -> None:
    """Fail before training when the model cannot take side x side inputs."""
    import torch

    try:
        with torch.no_grad():
            model.eval()(pixel_values=torch.zeros(1, 3, side, side))
    except (RuntimeError, ValueError) as err:
        raise HftoolError(f"model {spec} does not take {side}x{side} inputs ({str(err).splitlines()[0]}); "
                          "leave data.image_size unset or pick another size") from None
    finally:
        model.train()


def tiny_vit(config_overrides: dict, label_fields: dict, side: int):
    """A 4-layer ViT of width 96 on side x side inputs in an 8x8 grid of patches, and its processor."""
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    sizes = dict(image_size=side, patch_size=max(1, side // 8), hidden_size=96, num_hidden_layers=4,
                 num_attention_heads=4, intermediate_size=192)
    models.check_config_overrides(ViTConfig(), config_overrides)
    config = ViTConfig(**(sizes | label_fields | config_overrides))
    processor = ViTImageProcessor(size={"shortest_edge": math.floor(side / DEFAULT_CROP_PCT)}, do_center_crop=True,
                                  crop_size={"height": side, "width": side}, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    return ViTForImageClassification(config), processor


def pretrained(cfg, spec: str, auto_model, fields: dict, new_head: bool):
    """A local model dir, run dir or hub id and its image processor; a new label set gets a new
    head (models.pretrained_with_head). Returns (config, model, processor)."""
    from transformers import AutoImageProcessor

    config, model = models.pretrained_with_head(cfg, spec, auto_model, fields, new_head)
    return config, model, models.load("image processor", AutoImageProcessor, spec, cfg.model.token)


def image_grid(batch, columns: int, cell: int = 48):
    """uint8 images [N, C, H, W] -> one uint8 image [C, H', W'], `columns` to a row, 2 px apart on
    black. Small images are enlarged (nearest neighbour, a whole multiple) to at least `cell` px,
    so a grid of 16 px samples can be looked at; the pixels themselves are not smoothed."""
    import torch
    from torchvision.utils import make_grid

    scale = max(1, -(-cell // max(batch.shape[-2:])))
    if scale > 1:
        batch = batch.repeat_interleave(scale, dim=-2).repeat_interleave(scale, dim=-1)
    grid = make_grid(batch.to(torch.uint8), nrow=columns, padding=2, pad_value=0)
    return grid[:1] if batch.shape[1] == 1 else grid  # make_grid turns one channel into three
