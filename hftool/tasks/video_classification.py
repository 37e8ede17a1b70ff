"""Video classification: VideoMAE, TimeSformer, ViViT and any AutoModelForVideoClassification; any
timm image model on every frame as timm:<name> (model.temporal pools its features over time).

Videos are probed up front (a file that is not a video, or has no frames, stops the run before
training, or is skipped and counted with data.skip_bad_videos) and decoded lazily, in the
DataLoader workers: only the frames a clip takes, resized while they are converted
(hftool.data.videos). Training takes one random clip per video; evaluation and predict average the
scores of eval.num_clips evenly spaced clips x eval.num_crops crops.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace

from hftool import models
from hftool.config import DataConfig, EvalConfig
from hftool.data import videos
from hftool.data.labels import LABEL_COLUMNS, TOP_K_OPTION, has_labels, label_ids, label_names, ranked, with_top_k
from hftool.errors import HftoolError
from hftool.tasks.base import Options, Parts, Reading, Task, find_column
from hftool.vision import VisionModel

TIMM_PREFIX = "timm:"
TOP_K = 5  # eval_top5_accuracy, reported when there are more classes than this
TINY_FRAMES = 8  # frames per clip of tiny:<arch> when data.num_frames is unset


@dataclass
class VideoClassificationModel(VisionModel):
    choices = {"temporal": ("mean", "transformer")}
    # timm:<name> models: how per-frame features become one. `mean` ignores frame order (fast, and
    # enough when a single frame shows the class); `transformer` (one layer over time, learned
    # time positions) can use the order.
    temporal: str = "mean"


@dataclass
class VideoClassificationData(DataConfig):
    choices = {"short_clips": ("loop", "pad")}
    # Video column (paths relative to the data file, frame folders, or a datasets Video column);
    # None auto-detects video/video_path/clip/path/file/filename/file_name.
    video_column: str | None = None
    # The label column; None auto-detects label/labels/class/... (class folders give `label`).
    label_column: str | None = None
    # Frames per clip; None takes the model's (config.num_frames: 16 for VideoMAE and ViViT
    # checkpoints, 8 for TimeSformer's and tiny:<arch>).
    num_frames: int | None = None
    # Frames between a clip's frames, at the video's average frame rate. 4 is VideoMAE's Kinetics
    # sampling (16 frames span about 2 s at 30 fps).
    frame_stride: float = 4.0
    # Instead of frame_stride: the seconds a clip spans, whatever each video's frame rate. None
    # uses frame_stride.
    clip_seconds: float | None = None
    # A video shorter than a clip: `loop` back to its start, or `pad` by repeating its last frame.
    # Never dropped.
    short_clips: str = "loop"
    # Square side of the model's frames in pixels; None keeps the model's (its processor's).
    # tiny:<arch> and timm:<name> models are built for it; a pretrained video transformer is not.
    image_size: int | None = None
    # Skip videos that cannot be read (not a video, empty, no frames), counted and the first few
    # named, instead of stopping at the first: stopping is the default because a broken file
    # usually means a broken download.
    skip_bad_videos: bool = False
    # Smallest share of the frame area a training crop keeps (one crop for all a clip's frames).
    crop_scale_min: float = 0.3
    # Probability of a horizontal flip in training. 0 where left and right differ (the embedded
    # sample's clockwise turning becomes anticlockwise in a mirror).
    hflip: float = 0.5
    # Shuffle every clip's frames (training and evaluation): a control run showing whether a model
    # uses the frames' order; accuracy should fall to what single frames tell.
    shuffle_frames: bool = False

    def check(self) -> None:
        super().check()
        self.require("num_frames", self.num_frames is None or self.num_frames > 0, "positive (or null: the model's)")
        self.require("frame_stride", self.frame_stride > 0, "positive")
        self.require("clip_seconds", self.clip_seconds is None or self.clip_seconds > 0, "positive (or null)")
        self.require("image_size", self.image_size is None or self.image_size > 0, "positive")
        self.require("crop_scale_min", 0 < self.crop_scale_min <= 1, "in (0, 1]")
        self.require("hflip", 0 <= self.hflip <= 1, "in [0, 1]")


@dataclass
class VideoClassificationEval(EvalConfig):
    choices = {"num_crops": (1, 3)}
    # Evenly spaced clips per video whose scores are averaged (VideoMAE's papers use 5 on
    # Kinetics); 1 takes the middle clip.
    num_clips: int = 1
    # Crops per clip: 1 (centre) or 3 (start, centre and end of the longer side, the frame resized
    # to the crop's shorter side).
    num_crops: int = 1

    def check(self) -> None:
        super().check()
        self.require("num_clips", self.num_clips > 0, "positive")


@dataclass
class VideoClassificationState:
    num_frames: int  # frames per clip the model takes


class VideoClassification(Task):
    name = "video-classification"
    recipe = "video-cls"
    options = Options(model=VideoClassificationModel, data=VideoClassificationData, eval=VideoClassificationEval)
    architectures = ("ForVideoClassification",)
    default_metric = "accuracy"
    pipeline_task = "video-classification"
    predict_options = (TOP_K_OPTION,)
    peft_unsupported = ""

    # ------------------------------------------------------------------------------ data
    def reading(self, cfg) -> Reading:
        return Reading(videos=True)

    def prepare(self, cfg, ds, source, labels=None, require_labels=True):
        """Rows -> columns video (absolute path, or stored bytes), frames, fps (probed) and label
        (class id)."""
        ids = None
        if require_labels or has_labels(ds, cfg.data.label_column):
            column = find_column(ds, source, cfg.data.label_column, LABEL_COLUMNS, "label", "label_column")
            labels = label_names(ds, column, source) if labels is None else labels
            ids = label_ids(ds, column, labels, source)
        rows, kept = videos.video_rows(ds, source, cfg.data.video_column, cfg.data.skip_bad_videos)
        if cfg.data.clip_seconds and 0.0 in rows["fps"]:
            folder = rows["video"][rows["fps"].index(0.0)]
            raise HftoolError(f"{folder} is a folder of frames, which has no frame rate: data.clip_seconds cannot "
                              "place clips in it; use data.frame_stride")
        if ids is not None:
            rows = rows.add_column("label", ids[kept])
        return rows, labels

    def validate_rows(self, cfg, ds, source, findings, labels=None):
        """Missing, empty and unreadable videos; missing/unseen/mixed labels; repeated clips."""
        import datasets

        from hftool.data import validation
        from hftool.data.columns import source_dir

        column = find_column(ds, source, cfg.data.video_column, videos.VIDEO_COLUMNS, "video", "video_column")
        if isinstance(ds.features[column], datasets.Video):
            ds = ds.cast_column(column, datasets.Video(decode=False))
        entries = [videos.entry_path(v, source_dir(ds)) if v else "" for v in ds[column]]
        summary = validation.Summary(rows=len(ds))
        summary.keys = validation.videos(entries, source, findings, summary)
        values = validation.labelled(ds, source, cfg.data.label_column, findings, labels, summary)
        summary.counts["repeated clips"] = validation.duplicates(summary.keys, source, findings, "video", values)
        return summary

    def _transform(self, parts: Parts, cfg, train: bool):
        from hftool import video, vision

        d, e = cfg.data, cfg.eval
        sampling = video.Sampling(parts.state.num_frames, d.frame_stride, d.clip_seconds, d.short_clips, e.num_clips,
                                  e.num_crops, d.shuffle_frames)
        return video.VideoTransform(vision.geometry(parts.processor), sampling, train, d.skip_bad_videos,
                                    d.crop_scale_min, d.hflip)

    def features(self, parts, cfg, ds):
        return ds.with_transform(self._transform(parts, cfg, train=False))

    def train_features(self, parts, cfg, ds):
        return ds.with_transform(self._transform(parts, cfg, train=True))

    def collate(self, parts):
        return collate

    # ----------------------------------------------------------------------------- model
    def build(self, cfg, labels, train_ds=None, model_path=None, run_dir=None) -> Parts:
        from hftool import video

        spec = model_path or cfg.model.name
        label_fields = {} if labels is None else models.label_maps(labels)
        new = labels is not None and model_path is None
        side = cfg.data.image_size if new else None  # a saved model keeps its size
        frames = cfg.data.num_frames
        if models.tiny_arch(spec) is not None:
            arch = models.check_tiny(spec, ("videomae", "timesformer"), self.name)
            model, processor = video.tiny(arch, dict(cfg.model.config_overrides), label_fields, side or 32,
                                          frames or TINY_FRAMES)
        elif spec.startswith(TIMM_PREFIX) and not models.is_local(spec):
            model, processor = _frame_model(cfg, spec, label_fields, side, frames or TINY_FRAMES)
        else:
            model, processor = _pretrained(cfg, spec, label_fields, new, side, frames)
        if labels is None:  # evaluate/predict: the model's own label map
            labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
        return Parts(model, processor, labels, state=VideoClassificationState(model.config.num_frames))

    # --------------------------------------------------------------------------- adapters
    def peft_heads(self, parts):
        """The classifier (VideoMAE, TimeSformer and the frame model name it so), and the frame
        model's transformer over time, new like the classifier (its time positions, a bare
        parameter that peft cannot save apart, stay as initialised in base/)."""
        return ["classifier", "time"]

    def peft_base(self, cfg):
        """timm:<name> is built here (its weights from timm's hub, not a model dir): kept in base/."""
        if cfg.model.name.startswith(TIMM_PREFIX) and not models.is_local(cfg.model.name):
            return None
        return super().peft_base(cfg)

    # --------------------------------------------------------------------------- metrics
    def metric(self, parts, rows):
        from hftool.metrics import Accuracy, PrecisionRecallF1, TopKAccuracy, combine

        n = len(parts.labels)
        modules = [Accuracy(), PrecisionRecallF1(num_classes=n, labels=parts.labels)]
        if n > TOP_K:
            modules.insert(1, TopKAccuracy(k=TOP_K))
        return combine(modules)

    def eval_forward(self, parts, model, batch):
        """Scores of every view (clips x crops) of each video, averaged: log of the mean softmax."""
        return SimpleNamespace(logits=_view_scores(model, batch["pixel_values"]))

    def eval_outputs(self, parts, outputs, batch):
        import torch

        scores, labels = outputs.logits, batch["labels"]
        out = {"predictions": scores.argmax(-1), "references": labels,
               "loss": torch.nn.functional.nll_loss(scores.float(), labels, reduction="none")}
        if scores.shape[-1] > TOP_K:
            out["top_k"] = scores.topk(TOP_K, dim=-1).indices
        return out

    def resampler(self, parts, rows):
        from hftool.metrics.resampling import ClassStats

        return ClassStats(parts.labels, top_k=TOP_K if len(parts.labels) > TOP_K else None, per_label=True)

    def write_reports(self, parts, run_dir, metrics, records):
        """confusion_matrix.png of the final evaluation."""
        from pathlib import Path

        from hftool.reports import plot_confusion

        plot_confusion(records, parts.labels, Path(run_dir) / "confusion_matrix.png")

    def card_usage(self, parts, cfg):
        """pipeline() on a clip's frames: transformers 5.x decodes a path only with torchcodec, which
        needs FFmpeg's libraries, while a (frames, height, width, 3) array always works."""
        from hftool import vision

        frame_model = cfg.model.name.startswith(TIMM_PREFIX)
        height, width = vision.geometry(parts.processor).crop
        return ("```python\nimport numpy as np\nfrom transformers import pipeline\n"
                + ("\nimport hftool.video  # registers hftool's frame model with transformers\n" if frame_model else "")
                + "\nclassifier = pipeline(\"video-classification\", model=\".\")\n"
                f"frames = np.random.default_rng(0).integers(0, 256, ({parts.state.num_frames}, {height}, {width}, 3), "
                "dtype=np.uint8)  # a decoded clip: (frames, height, width, 3)\n"
                "print(classifier(frames))\n```\n\n"
                "With torchcodec installed, the pipeline also takes a path: `classifier(\"clip.mp4\")`.\n")

    # ------------------------------------------------------------------------- inference
    def predict(self, parts, cfg, inputs, batch_size, top_k: int = 1):
        """Video files, frame folders or folders of videos -> {video, label, score[, top_k]} each."""
        import datasets
        import torch

        paths = videos.input_paths(inputs)
        rows, _ = self.prepare(cfg, datasets.Dataset.from_dict({"video": paths}), "input", require_labels=False)
        transform = self._transform(parts, cfg, train=False)
        model, k = parts.model.eval(), min(top_k, len(parts.labels))
        device = next(model.parameters()).device
        entries = list(rows)  # paths and probes only: no frame is decoded here
        results = []
        for start in range(0, len(entries), batch_size):
            chunk = entries[start:start + batch_size]
            done = transform.clips(chunk)
            if not done:
                continue
            with torch.no_grad():
                scores = _view_scores(model, torch.stack([pixels for _, pixels in done]).to(device))
            probabilities, ids = scores.float().exp().topk(k, dim=-1)
            for (i, _), row_scores, row_ids in zip(done, probabilities.tolist(), ids.tolist()):
                results.append({"video": videos.entry_name(chunk[i]["video"]),
                                **ranked(parts.labels, row_ids, row_scores, top_k > 1)})
        return results

    def format_prediction(self, prediction):
        return with_top_k(f"{prediction['label']}\t{prediction['score']:.4f}\t{prediction['video']}", prediction)


def collate(features: list[dict]) -> dict:
    import torch

    batch = {"pixel_values": torch.stack([f["pixel_values"] for f in features])}
    if "labels" in features[0]:
        batch["labels"] = torch.tensor([f["labels"] for f in features], dtype=torch.long)
    return batch


def _view_scores(model, pixels):
    """(B, V, T, 3, H, W) views -> (B, classes) log of the views' mean softmax."""
    import math

    import torch

    logits = model(pixel_values=pixels.flatten(0, 1)).logits.float()
    probabilities = torch.log_softmax(logits, -1).view(*pixels.shape[:2], -1)
    return torch.logsumexp(probabilities, dim=1) - math.log(pixels.shape[1])


def _frame_model(cfg, spec: str, label_fields: dict, side: int | None, frames: int):
    import difflib

    import timm

    from hftool import video

    name = spec[len(TIMM_PREFIX):]
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=3)
        raise HftoolError(f"timm has no model '{name}'" + (f"; did you mean {', '.join(close)}?" if close else
                                                           "; `python -c 'import timm; print(timm.list_models())'` lists them"))
    if not label_fields:
        raise HftoolError(f"{spec} is a model name, not a trained model; pass a run dir written by `hftool finetune`")
    return video.frame_model(name, dict(cfg.model.config_overrides), cfg.model.temporal, label_fields, side, frames,
                             cfg.model.pretrained)


def _pretrained(cfg, spec: str, label_fields: dict, new_head: bool, side: int | None, frames: int | None):
    """A local model dir, run dir or hub id of a video classifier, and its image processor. Its
    frame size and frames per clip are its own: data.image_size and data.num_frames must agree."""
    from transformers import AutoImageProcessor, AutoModelForVideoClassification

    import hftool.video  # noqa: F401 (registers hftool's frame model with the Auto classes)
    from hftool import vision

    _, model = models.pretrained_with_head(cfg, spec, AutoModelForVideoClassification, label_fields, new_head)
    processor = models.load("image processor", AutoImageProcessor, spec, cfg.model.token)
    crop = vision.geometry(processor).crop
    if side and crop != (side, side):
        raise HftoolError(f"data.image_size={side}: {spec} takes {crop[0]}x{crop[1]} frames; leave data.image_size unset")
    if frames and frames != model.config.num_frames:
        raise HftoolError(f"data.num_frames={frames}: {spec} takes clips of {model.config.num_frames} frames; "
                          "leave data.num_frames unset")
    return model, processor
