"""Videos, the model side of the video layer (hftool.data.videos is the data side): the clip
transform that runs in DataLoader workers, the tiny video transformers hftool builds, and a frame
model that turns any timm image model into a video classifier.

The frame model (`timm:<name>` with model.temporal=mean|transformer) is a transformers
PreTrainedModel defined here and registered with the Auto classes when this module is imported, so
its run dir saves and loads like any HF model; outside hftool, `import hftool.video` before
`pipeline("video-classification", model=run_dir)` registers it (no remote code is involved).
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass
from typing import Any

import torch
from huggingface_hub.dataclasses import strict
from transformers import (AutoConfig, AutoModelForVideoClassification, PreTrainedConfig, PreTrainedModel)
from transformers.modeling_outputs import ImageClassifierOutput

from hftool import models, vision
from hftool.data import videos

DEFAULT_CROP_PCT = vision.DEFAULT_CROP_PCT


# -------------------------------------------------------------------------------- clips -> tensors
@dataclass
class Sampling:
    """How clips are taken from a video (the data.* and eval.* options that say it)."""

    num_frames: int
    frame_stride: float  # in frames of the video's average rate
    clip_seconds: float | None  # instead of frame_stride: the clip covers this many seconds
    short_clips: str  # loop | pad
    num_clips: int = 1  # evaluation: evenly spaced clips per video, averaged
    num_crops: int = 1  # evaluation: 1 (centre) or 3 (start, centre, end of the longer side)
    shuffle_frames: bool = False  # shuffle each clip's frames (a check that a model uses their order)

    def stride(self, fps: float) -> float:
        return self.clip_seconds * fps / self.num_frames if self.clip_seconds else self.frame_stride


class VideoTransform:
    """Rows (video, frames, fps[, label]) -> `pixel_values`: decoded in the DataLoader worker,
    resized while decoding, then cropped and normalised on uint8 tensors.

    Training takes one clip at a random start with one random resized crop (and flip) for all of
    its frames: (T, 3, H, W). Evaluation takes num_clips x num_crops views: (V, T, 3, H, W), whose
    scores the task averages. Randomness comes from torch's generator, which the loop seeds per
    batch (data.batching.SeededLoading), so a resumed run draws the same clips.
    A class rather than a closure so DataLoader workers can pickle it where processes spawn.
    """

    def __init__(self, geometry: vision.Geometry, sampling: Sampling, train: bool, skip_bad: bool,
                 crop_scale_min: float = 0.08, hflip: float = 0.5):
        from torchvision.transforms import InterpolationMode, v2

        self.geometry, self.sampling, self.train, self.skip_bad = geometry, sampling, train, skip_bad
        mode = InterpolationMode(geometry.interpolation)
        normalise = [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(geometry.mean), list(geometry.std))]
        if train:
            steps = [v2.RandomResizedCrop(geometry.crop, scale=(crop_scale_min, 1.0), interpolation=mode, antialias=True)]
            if hflip > 0:
                steps.append(v2.RandomHorizontalFlip(hflip))
            self.pipeline = v2.Compose(steps + normalise)
        elif sampling.num_crops == 1:
            self.pipeline = v2.Compose([v2.CenterCrop(geometry.crop), *normalise])
        else:
            self.pipeline = v2.Compose(normalise)
        # The shorter side frames are decoded at: the eval resize (three crops: the crop itself).
        crop_short = min(geometry.crop)
        self.short = crop_short if not train and sampling.num_crops > 1 else geometry.resize

    def clip(self, row: dict):
        """One row -> its pixel values (ValueError/OSError for a video that does not decode)."""
        s, frames, fps = self.sampling, row["frames"], row["fps"]
        stride = s.stride(fps)
        room = videos.clip_span(frames, s.num_frames, stride)
        starts = [float(torch.rand(()) * room)] if self.train else videos.eval_starts(frames, s.num_frames, stride,
                                                                                         s.num_clips)
        positions = [p for start in starts for p in videos.clip_positions(frames, s.num_frames, stride, start,
                                                                           s.short_clips)]
        pixels = videos.decode(row["video"], positions, fps or 1.0, self.short, self.geometry.interpolation)
        clips = pixels.view(len(starts), s.num_frames, *pixels.shape[1:])
        if s.shuffle_frames:
            # Evaluation shuffles the same way every time (seeded by the video), so scores reproduce.
            seed = None if self.train else zlib.crc32(videos.entry_name(row["video"]).encode())
            generator = None if seed is None else torch.Generator().manual_seed(seed)
            clips = torch.stack([c[torch.randperm(s.num_frames, generator=generator)] for c in clips])
        if self.train:
            return self.pipeline(clips[0])
        views = [self.pipeline(c) for c in clips] if s.num_crops == 1 else [
            self.pipeline(crop) for c in clips for crop in _three_crops(c, self.geometry.crop)]
        return torch.stack(views)

    def clips(self, rows: list[dict]) -> list:
        """(position, pixel values) of the rows whose videos decode (videos.readable's rule)."""
        with vision.one_thread():
            return videos.readable([{**row, "path": videos.entry_name(row["video"])} for row in rows], self.clip,
                                   self.skip_bad)

    def __call__(self, batch: dict) -> dict:
        if "video" not in batch:  # a column read on its own
            return batch
        rows = [dict(zip(batch, values)) for values in zip(*batch.values())]
        done = self.clips(rows)
        out = {"pixel_values": [pixels for _, pixels in done]}
        for key, values in batch.items():
            if key not in ("video", "frames", "fps"):
                out["labels" if key == "label" else key] = [values[i] for i, _ in done]
        return out


def _three_crops(clip, crop: tuple[int, int]) -> list:
    """Crops at the start, centre and end of the longer side (the VideoMAE paper's 3 crops)."""
    height, width = clip.shape[-2:]
    h, w = crop
    if width - w >= height - h:
        return [clip[..., (height - h) // 2:(height - h) // 2 + h, x:x + w] for x in (0, (width - w) // 2, width - w)]
    return [clip[..., y:y + h, (width - w) // 2:(width - w) // 2 + w] for y in (0, (height - h) // 2, height - h)]


# ---------------------------------------------------------------------------------- tiny models
def _processor(side: int, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)):
    """An image processor for side x side frames: shorter side resized to side / 0.875, centre crop.
    VideoMAEImageProcessor is what pipeline("video-classification") runs for these models."""
    from transformers import VideoMAEImageProcessor

    return VideoMAEImageProcessor(size={"shortest_edge": math.floor(side / DEFAULT_CROP_PCT)}, do_center_crop=True,
                                  crop_size={"height": side, "width": side}, image_mean=list(mean),
                                  image_std=list(std))


def tiny(arch: str, config_overrides: dict, label_fields: dict, side: int, num_frames: int):
    """tiny:videomae (4 layers of width 96 on 8x8-pixel patches of frame pairs) or tiny:timesformer
    (the same sizes, divided space-time attention), and their processor."""
    from transformers import (TimesformerConfig, TimesformerForVideoClassification, VideoMAEConfig,
                              VideoMAEForVideoClassification)

    sizes = dict(image_size=side, patch_size=max(1, side // 4), num_frames=num_frames, hidden_size=96,
                 num_hidden_layers=4, num_attention_heads=4, intermediate_size=192)
    config_class, model_class = {"videomae": (VideoMAEConfig, VideoMAEForVideoClassification),
                                 "timesformer": (TimesformerConfig, TimesformerForVideoClassification)}[arch]
    models.check_config_overrides(config_class(), config_overrides)
    config = config_class(**(sizes | label_fields | config_overrides))
    return model_class(config), _processor(side)


# ------------------------------------------------------------------------------ the frame model
@strict
class FrameModelConfig(PreTrainedConfig):
    r"""
    architecture (`str`): the timm image model applied to every frame.
    model_args (`dict`, *optional*): timm.create_model keyword arguments (drop_rate, ...).
    temporal (`str`): how frame features become one: `mean` (order-blind) or `transformer`.
    num_frames (`int`): frames per clip (the transformer's time positions).
    temporal_layers (`int`): transformer layers over time.
    """

    model_type = "hftool_frame_model"

    architecture: str = "resnet18"
    model_args: dict[str, Any] | None = None
    temporal: str = "mean"
    num_frames: int = 8
    temporal_layers: int = 1
    initializer_range: float = 0.02


class FrameModelForVideoClassification(PreTrainedModel):
    """A timm image model on every frame, its features pooled over time (a mean, or a transformer
    over time with learned time positions, then a mean), and a linear classifier."""

    config_class = FrameModelConfig
    base_model_prefix = "backbone"
    main_input_name = "pixel_values"
    input_modalities = ("video",)

    def __init__(self, config: FrameModelConfig):
        super().__init__(config)
        import timm

        self.backbone = timm.create_model(config.architecture, pretrained=False, num_classes=0,
                                          **(config.model_args or {}))
        width = self.backbone.num_features
        if config.temporal == "transformer":
            heads = next(h for h in (8, 4, 2, 1) if width % h == 0)
            layer = torch.nn.TransformerEncoderLayer(width, heads, dim_feedforward=2 * width, dropout=0.0,
                                                     batch_first=True, norm_first=True)
            self.time = torch.nn.TransformerEncoder(layer, config.temporal_layers, enable_nested_tensor=False)
            self.time_positions = torch.nn.Parameter(torch.zeros(1, config.num_frames, width))
        self.classifier = torch.nn.Linear(width, config.num_labels)
        self.post_init()

    def _init_weights(self, module) -> None:
        # Only hftool's own parts: timm initialised its model as it should be (a blanket normal
        # init would undo its convolution and norm-layer schemes).
        if module is self.classifier:
            torch.nn.init.normal_(module.weight, std=self.config.initializer_range)
            torch.nn.init.zeros_(module.bias)
        elif module is self:
            if hasattr(self, "time_positions"):
                torch.nn.init.normal_(self.time_positions, std=self.config.initializer_range)

    def forward(self, pixel_values, labels=None, **kwargs):
        batch, frames = pixel_values.shape[:2]
        features = self.backbone(pixel_values.flatten(0, 1)).view(batch, frames, -1)
        if self.config.temporal == "transformer":
            if frames != self.time_positions.shape[1]:
                raise ValueError(f"the model was built for {self.time_positions.shape[1]} frames, got {frames}")
            features = self.time(features + self.time_positions)
        logits = self.classifier(features.mean(1))
        loss = torch.nn.functional.cross_entropy(logits.float(), labels) if labels is not None else None
        return ImageClassifierOutput(loss=loss, logits=logits)


AutoConfig.register(FrameModelConfig.model_type, FrameModelConfig)
AutoModelForVideoClassification.register(FrameModelConfig, FrameModelForVideoClassification)


def frame_model(name: str, model_args: dict, temporal: str, label_fields: dict, side: int | None, num_frames: int,
                pretrained: bool):
    """timm:<name> as a FrameModelForVideoClassification (+ a processor with timm's normalisation
    and input size), random or with timm's pretrained weights."""
    from timm.models import get_pretrained_cfg

    pretrained_cfg = get_pretrained_cfg(name).to_dict()
    side = side or pretrained_cfg["input_size"][-1]
    if side and pretrained_cfg.get("fixed_input_size"):
        model_args = {**model_args, "img_size": side}  # ViT-like: built for that size
    config = FrameModelConfig(architecture=name, model_args=model_args or None, temporal=temporal,
                              num_frames=num_frames, **label_fields)
    model = FrameModelForVideoClassification(config)
    if pretrained:
        import timm

        from hftool.hub import from_hub

        weights = from_hub("model", f"timm:{name}", "model.pretrained=false (random weights)",
                           lambda: timm.create_model(name, pretrained=True, num_classes=0, **model_args).state_dict())
        model.backbone.load_state_dict(weights)
    return model, _processor(side, pretrained_cfg["mean"], pretrained_cfg["std"])
