"""Image classification: HF ViT and any AutoModelForImageClassification, timm models as timm:<name>.

timm models are wrapped in transformers' TimmWrapperForImageClassification for training, and a
timm run dir is saved in timm's own layout (timm's weight names; a config.json with timm's
pretrained_cfg, which the image processor reads too), which both `timm.create_model` and
TimmWrapper load: evaluate, predict and `pipeline("image-classification")` load it like an HF one.

Images are decoded and transformed lazily (`with_transform`) inside the DataLoader workers, on
uint8 tensors with torchvision's v2 transforms (hftool.vision); nothing is decoded up front.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from hftool import models, vision
from hftool.config import TrainConfig
from hftool.data import images
from hftool.data.labels import TOP_K_OPTION, ranked, with_top_k
from hftool.errors import HftoolError
from hftool.tasks.base import Options, Parts, Task

TIMM_PREFIX = "timm:"
TOP_K = 5  # eval_top5_accuracy, reported when there are more classes than this


@dataclass
class ImageClassificationData(images.ImageData):
    # The label column; None auto-detects label/labels/class/... (class folders give `label`).
    label_column: str | None = None
    # Smallest share of the image area a training crop keeps (RandomResizedCrop). 0.08 is the
    # ImageNet recipe; raise it when the object is small and a crop could miss it.
    crop_scale_min: float = 0.08
    # Probability of a horizontal flip in training (0 for text, digits, or left/right classes).
    hflip: float = 0.5
    # RandAugment magnitude (0-30, 9 is timm's usual); None leaves it off: it pays off in long
    # runs and slows the short ones.
    randaugment: int | None = None

    def check(self) -> None:
        super().check()
        self.require("crop_scale_min", 0 < self.crop_scale_min <= 1, "in (0, 1]")
        self.require("hflip", 0 <= self.hflip <= 1, "in [0, 1]")
        self.require("randaugment", self.randaugment is None or 0 <= self.randaugment <= 30, "in [0, 30]")


@dataclass
class ImageClassificationTrain(TrainConfig):
    # Mixup and CutMix alphas (timm); 0 turns each off. They regularise long runs on small data
    # and slow convergence of short ones.
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    # Label smoothing of the training targets (0.1 is timm's usual); 0 keeps one-hot targets,
    # so the training loss is the plain cross-entropy that eval_loss reports.
    label_smoothing: float = 0.0

    def check(self) -> None:
        super().check()
        self.require("label_smoothing", 0 <= self.label_smoothing < 1, "in [0, 1)")
        self.require("mixup_alpha", self.mixup_alpha >= 0, ">= 0 (0 turns it off)")
        self.require("cutmix_alpha", self.cutmix_alpha >= 0, ">= 0 (0 turns it off)")


@dataclass
class ImageClassificationState:
    timm: bool  # a TimmWrapper model: its processor lives in config.json
    mixup: object | None = None  # timm's Mixup when train.* asks for mixing or smoothing


class ImageClassification(Task):
    name = "image-classification"
    recipe = "vit-cls"
    options = Options(model=vision.VisionModel, data=ImageClassificationData, train=ImageClassificationTrain)
    architectures = ("ForImageClassification",)
    default_metric = "accuracy"
    pipeline_task = "image-classification"
    predict_options = (TOP_K_OPTION,)
    quantizable = True
    peft_unsupported = ""

    # ------------------------------------------------------------------------------ data
    def prepare(self, cfg, ds, source, labels=None, require_labels=True):
        """Rows -> columns image (datasets Image, not decoded) and label (class id); see
        images.image_rows for how paths are read and checked."""
        return images.labelled_rows(ds, source, cfg.data, labels, require_labels)

    def validate_rows(self, cfg, ds, source, findings, labels=None):
        """Missing, empty, unreadable and unusual images; missing/unseen/mixed labels; repeated
        images (the same bytes), and the same image under two labels."""
        from hftool.data import validation

        column = find_column(ds, source, cfg.data.image_column, images.IMAGE_COLUMNS, "image", "image_column")
        summary = validation.Summary(rows=len(ds))
        summary.keys = validation.images(validation.image_entries(ds, column), source, findings, summary)
        values = validation.labelled(ds, source, cfg.data.label_column, findings, labels, summary)
        summary.counts["repeated images"] = validation.duplicates(summary.keys, source, findings, "image", values)
        return summary

    def _transform(self, parts: Parts, cfg, train: bool) -> vision.ImageTransform:
        d = cfg.data
        return vision.ImageTransform(vision.geometry(parts.processor), train, d.skip_bad_images, d.crop_scale_min,
                                     d.hflip, d.randaugment)

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
            model, processor = vision.tiny_vit(dict(cfg.model.config_overrides), label_fields, side or 32)
        elif spec.startswith(TIMM_PREFIX) and not models.is_local(spec):
            model, processor = _timm(cfg, spec, label_fields, side)
        else:
            model, processor = _pretrained(cfg, spec, label_fields, model_path is None, side)
        state = ImageClassificationState(timm=model.config.model_type == "timm_wrapper")
        if labels is None:  # evaluate/predict: the model's own label map
            labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
        else:
            state.mixup = _mixup(cfg.train, len(labels))
        return Parts(model, processor, labels, state=state)

    # --------------------------------------------------------------------------- adapters
    def peft_heads(self, parts):
        """An HF model's `classifier`; a timm model's classifier as its pretrained_cfg names it
        (resnet `fc`, ViT `head`, ConvNeXt `head.fc`)."""
        if not parts.state.timm:
            return ["classifier"]
        names = parts.model.timm_model.pretrained_cfg.get("classifier") or ()
        return [f"timm_model.{name}" for name in ([names] if isinstance(names, str) else names)]

    def peft_base(self, cfg):
        """timm:<name> is built here (its weights from timm's hub, not a model dir): kept in base/."""
        if cfg.model.name.startswith(TIMM_PREFIX) and not models.is_local(cfg.model.name):
            return None
        return super().peft_base(cfg)

    # --------------------------------------------------------------------------- training
    def train_loss(self, parts, model, batch):
        """Cross-entropy on timm's mixup/cutmix-mixed, label-smoothed soft targets when the recipe
        asks for them; otherwise the model's own loss."""
        mix = parts.state.mixup
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
    def metric(self, parts, rows):
        from hftool.metrics import Accuracy, PrecisionRecallF1, TopKAccuracy, combine

        n = len(parts.labels)
        modules = [Accuracy(), PrecisionRecallF1(num_classes=n)]
        if n > TOP_K:
            modules.insert(1, TopKAccuracy(k=TOP_K))
        return combine(modules)

    def eval_outputs(self, parts, outputs, batch):
        logits = outputs.logits
        out = {"predictions": logits.argmax(-1), "references": batch["labels"]}
        if logits.shape[-1] > TOP_K:
            out["top_k"] = logits.topk(TOP_K, dim=-1).indices
        return out

    def resampler(self, parts, rows):
        from hftool.metrics.resampling import ClassStats

        return ClassStats(parts.labels, top_k=TOP_K if len(parts.labels) > TOP_K else None)

    def write_reports(self, parts, run_dir, metrics, records):
        """confusion_matrix.png of the final evaluation."""
        from hftool.reports import plot_confusion

        plot_confusion(records, parts.labels, Path(run_dir) / "confusion_matrix.png")

    # ------------------------------------------------------------------------- inference
    def predict(self, parts, cfg, inputs, batch_size, top_k: int = 1):
        """Image files or folders (searched recursively) -> {image, label, score[, top_k]} each."""
        import datasets
        import torch

        paths = images.input_paths(inputs)
        rows, _ = self.prepare(cfg, datasets.Dataset.from_dict({"image": paths}), "input", require_labels=False)
        transform = self._transform(parts, cfg, train=False)
        model, k = parts.model.eval(), min(top_k, len(parts.labels))
        device = next(model.parameters()).device
        entries = list(rows["image"])  # paths only: no pixels are read here
        results = []
        for start in range(0, len(entries), batch_size):
            chunk = entries[start:start + batch_size]
            done = transform.images(chunk)
            if not done:
                continue
            with torch.no_grad():
                logits = model(pixel_values=torch.stack([pixels for _, pixels in done]).to(device)).logits
            scores, ids = torch.softmax(logits.float(), dim=-1).topk(k, dim=-1)
            for (i, _), row_scores, row_ids in zip(done, scores.tolist(), ids.tolist()):
                results.append({"image": chunk[i]["path"], **ranked(parts.labels, row_ids, row_scores, top_k > 1)})
        return results

    def format_prediction(self, prediction):
        return with_top_k(f"{prediction['label']}\t{prediction['score']:.4f}\t{prediction['image']}", prediction)

    def onnx_graphs(self, parts, cfg, batch):
        """model.onnx: pixel_values (batch x 3 x the processor's crop) -> logits; HF and timm models alike."""
        from hftool.export import model_graph

        return [model_graph(parts.model, batch, {"pixel_values": {0: "batch"}}, ["logits"])]

    # ------------------------------------------------------------------------------ save
    def save(self, parts, run_dir, model=None, state_dict=None):
        """Weights + config; the processor (a timm model's lives in config.json). A timm model is
        saved as timm saves one, which transformers' TimmWrapper loads as well."""
        if model is not None and parts.state.timm:
            _save_timm(model, Path(run_dir), state_dict)
        elif model is not None:
            model.save_pretrained(str(run_dir), state_dict=state_dict, safe_serialization=True)
        if not parts.state.timm:
            parts.processor.save_pretrained(str(run_dir))

    def card_metadata(self, parts, cfg):
        """A timm run is timm's (library_name timm); timm:<name> started from timm's Hub weights."""
        meta = super().card_metadata(parts, cfg)
        if not parts.state.timm:
            return meta
        if cfg.model.name.startswith(TIMM_PREFIX):
            from timm.models import get_pretrained_cfg

            hub_id = get_pretrained_cfg(cfg.model.name[len(TIMM_PREFIX):]).hf_hub_id
            meta["base_model"] = [hub_id] if cfg.model.pretrained and hub_id else []
        return {**meta, "library_name": "timm"}

    def card_usage(self, parts, cfg):
        """timm's two loaders for a timm run (a folder; the weights file into a model built by name),
        and transformers' pipeline for every run."""
        pipe = ('```python\nfrom transformers import pipeline\n\nclassifier = pipeline("image-classification", '
                'model=".")\nprint(classifier("image.png"))\n```\n')
        if not parts.state.timm:
            return pipe
        config = parts.model.config
        args = "".join(f", {k}={v!r}" for k, v in (config.model_args or {}).items())
        return ("```python\nimport timm\nimport torch\nfrom PIL import Image\n"
                "from timm.data import create_transform, resolve_data_config\n\n"
                'model = timm.create_model("local-dir:.", pretrained=True).eval()  # from the Hub: "hf-hub:<id>"\n'
                "transform = create_transform(**resolve_data_config(model=model))\nwith torch.no_grad():\n"
                '    probs = model(transform(Image.open("image.png").convert("RGB"))[None]).softmax(-1)[0]\n'
                'print(model.pretrained_cfg["label_names"][int(probs.argmax())], float(probs.max()))\n```\n\n'
                "The weights file alone loads into a model built by name:\n\n"
                f'```python\nimport timm\n\nmodel = timm.create_model("{config.architecture}", pretrained=True{args}, '
                f'pretrained_cfg_overlay=dict(file="model.safetensors", num_classes={config.num_labels}))\n'
                "print(model.num_classes)\n```\n\nand transformers loads the folder too:\n\n" + pipe)


def collate(features: list[dict]) -> dict:
    import torch

    batch = {"pixel_values": torch.stack([f["pixel_values"] for f in features])}
    if "labels" in features[0]:
        batch["labels"] = torch.tensor([f["labels"] for f in features], dtype=torch.long)
    return batch


# pretrained_cfg keys that point at the weights a timm model started from (ImageNet's, say): a
# run's config.json describes its own weights, so they go (the card's base_model keeps the origin).
WEIGHT_SOURCE = ("url", "file", "hf_hub_id", "hf_hub_filename", "source", "state_dict", "tag")


def _save_timm(model, run_dir: Path, state_dict: dict | None) -> None:
    """A TimmWrapper model as timm saves one: model.safetensors under timm's own key names (the
    wrapper adds its `timm_model.` prefix back when it loads), and a config.json that
    `timm.create_model("local-dir:RUN", pretrained=True)` and TimmWrapper both read: num_classes
    and label names, this run's input size, mean and std, model_args a dict."""
    import copy

    from safetensors.torch import save_file

    prefix = f"{model.base_model_prefix}."
    state = model.state_dict() if state_dict is None else state_dict
    save_file({k.removeprefix(prefix): v.contiguous() for k, v in state.items()}, str(run_dir / "model.safetensors"),
              metadata={"format": "pt"})
    config = copy.deepcopy(model.config)
    config.model_args = dict(config.model_args or {})
    config.pretrained_cfg = {**{k: v for k, v in config.pretrained_cfg.items() if k not in WEIGHT_SOURCE},
                             "num_classes": config.num_labels}
    config.save_pretrained(str(run_dir))


def _mixup(t, num_classes: int):
    """timm's Mixup (which also smooths labels) when train.* asks for any of it, else None."""
    if t.mixup_alpha == 0 and t.cutmix_alpha == 0 and t.label_smoothing == 0:
        return None
    from timm.data import Mixup

    mixer = Mixup(mixup_alpha=t.mixup_alpha, cutmix_alpha=t.cutmix_alpha, label_smoothing=t.label_smoothing,
                  num_classes=num_classes)
    mixer.mixup_enabled = t.mixup_alpha > 0 or t.cutmix_alpha > 0  # off: smoothing only
    return mixer


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
    """A local model dir, run dir or hub id (HF or timm format) and its image processor, resized
    to `side` when asked."""
    from transformers import AutoConfig, AutoModelForImageClassification

    overrides = dict(cfg.model.config_overrides)
    if overrides:
        saved = models.load("model", AutoConfig, spec, cfg.model.token)
        if saved.model_type == "timm_wrapper":  # timm constructor arguments, as for timm:<name>
            model_cfg = dataclasses.replace(cfg.model, config_overrides={"model_args": {**(saved.model_args or {}),
                                                                                        **overrides}})
            cfg = dataclasses.replace(cfg, model=model_cfg)
    config, model, processor = vision.pretrained(cfg, spec, AutoModelForImageClassification, label_fields, new_head)
    if side and vision.geometry(processor).crop != (side, side):
        if config.model_type == "timm_wrapper":
            from transformers import TimmWrapperImageProcessor

            config.pretrained_cfg = {**config.pretrained_cfg, "input_size": (3, side, side)}
            processor = TimmWrapperImageProcessor(pretrained_cfg=config.pretrained_cfg, architecture=config.architecture)
        else:
            processor = vision.resized_processor(processor, side)
        if config.model_type == "vit":
            vision.resize_vit_positions(model, side)
        vision.check_input_size(model, side, spec)
    return model, processor
