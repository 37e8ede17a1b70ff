"""How good a generator's images are: FID and KID (torchmetrics) in the feature space of a model
the user names, the same distances between two halves of the real images (the floor to read them
against), and, for conditional generators, how often a classifier sees the class that was asked for.

Features come from `eval.features`: a local Inception weights file (the standard FID, `eval_fid`;
needs torch-fidelity) or an hftool image-classification run dir (`eval_fid_<name>`, the run dir's
name lowercased with other characters made `_`), whose features are the input of its classifier
head. Offline there are no Inception weights, and a classifier trained on the same data measures
what matters for it (digits for MNIST) with a fraction of the compute.

Each evaluation batch's features are computed where the batch runs and gathered like any output,
so every example counts once whatever the process count; torchmetrics then gets them through an
identity extractor (`_Given`), and its statistics are those of exactly the evaluation images.
"""

from __future__ import annotations

import math
import re
import warnings
from pathlib import Path

import datasets
import evaluate
import numpy as np
import torch

from hftool.errors import HftoolError

INCEPTION_FEATURES = "2048"  # the pool3 features the standard FID uses


def feature_suffix(spec: str) -> str:
    """The metric names' suffix for `eval.features`: "" for Inception weights, else `_<name>`."""
    path = Path(spec).expanduser()
    return "" if path.is_file() else "_" + re.sub(r"[^a-z0-9]", "_", path.resolve().name.lower())


class FeatureModel(torch.nn.Module):
    """uint8 images [B, C, H, W] (1 or 3 channels) -> (features [B, D], class logits [B, K] or None)."""

    def __init__(self, network: torch.nn.Module, transform=None, classes: list[str] | None = None, suffix: str = ""):
        super().__init__()
        self.network, self.transform, self.classes = network.eval().requires_grad_(False), transform, classes
        self.suffix = suffix  # of the metric names: eval_fid<suffix>
        self._captured: list[torch.Tensor] = []
        if transform is not None:  # a classifier: the features are what its head classifies
            head = [m for m in network.modules() if isinstance(m, torch.nn.Linear)][-1]
            head.register_forward_hook(lambda module, inputs, output: self._captured.append(inputs[0]))

    @classmethod
    def load(cls, spec: str, token: str | None = None) -> FeatureModel:
        path = Path(spec).expanduser()
        if path.is_file():
            return cls._inception(path)
        if not (path / "config.json").is_file():
            raise HftoolError(f"eval.features={spec}: not an Inception weights file or a model dir; pass an hftool "
                              "image-classification run dir (e.g. a vit-cls run on the same data) or a local "
                              "pt_inception-2015-12-05 weights file")
        import json

        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
        architectures = config.get("architectures") or []
        # A timm run's config.json is timm's own (no "architectures"); TimmWrapper loads it as a classifier.
        timm = config.get("model_type") == "timm_wrapper"
        if not timm and not any(a.endswith("ForImageClassification") for a in architectures):
            raise HftoolError(f"eval.features={spec} holds a {', '.join(architectures) or 'model'}, not an image "
                              "classifier; pass a vit-cls run dir trained on the same kind of images")
        from transformers import AutoImageProcessor, AutoModelForImageClassification

        from hftool import models, vision

        network = models.load("model", AutoModelForImageClassification, str(path), token)
        processor = models.load("image processor", AutoImageProcessor, str(path), token)
        transform = vision.ImageTransform(vision.geometry(processor), train=False, skip_bad=False).pipeline
        classes = [network.config.id2label[i] for i in range(network.config.num_labels)]
        return cls(network, transform, classes, feature_suffix(spec))

    @classmethod
    def _inception(cls, path: Path) -> FeatureModel:
        try:
            import torch_fidelity  # noqa: F401 (torchmetrics' Inception is torch-fidelity's)
        except ImportError:
            raise HftoolError(f"eval.features={path} (Inception weights) needs torch-fidelity: pip install "
                              "torch-fidelity (or hftool[fid])") from None
        from torchmetrics.image.fid import NoTrainInceptionV3

        try:
            network = NoTrainInceptionV3(name="inception-v3-compat", features_list=[INCEPTION_FEATURES],
                                         feature_extractor_weights_path=str(path))
        except Exception as err:  # noqa: BLE001 (torch.load / load_state_dict: a file of other weights)
            raise HftoolError(f"eval.features={path}: not Inception weights torch-fidelity can load "
                              f"({str(err).splitlines()[0]})") from None
        return cls(network)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        if images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)
        if self.transform is None:  # Inception resizes and scales uint8 images itself
            return self.network(images).float(), None
        self._captured.clear()
        logits = self.network(pixel_values=self.transform(images)).logits
        return self._captured[0].flatten(1).float(), logits.float()

    def class_map(self, labels: list[str]) -> torch.Tensor | None:
        """For each of the classifier's classes, the id of the same class name in `labels` (-1: none);
        None for Inception, whose classes are not the data's (no eval_class_accuracy then)."""
        if self.classes is None:
            return None
        missing = [name for name in labels if name not in self.classes]
        if missing:
            raise HftoolError(f"eval.features: the classifier does not know class '{missing[0]}' of this data (it "
                              f"knows {', '.join(self.classes)}); train it on the same classes")
        ids = {name: i for i, name in enumerate(labels)}
        return torch.tensor([ids.get(name, -1) for name in self.classes])


def sample_outputs(features: FeatureModel, class_map: torch.Tensor | None, real, fake) -> dict:
    """An evaluation batch's outputs for the sample metrics: features of the real and generated
    uint8 images and, with `class_map` (FeatureModel.class_map), each generated image's class."""
    features = features.to(real.device)
    out = {"real_features": features(real)[0]}
    out["fake_features"], logits = features(fake)
    if class_map is not None:
        out["sample_class"] = class_map.to(logits.device)[logits.argmax(-1)]
    return out


def sample_metrics(features: FeatureModel | None, conditional: bool) -> list:
    """The metric modules for `sample_outputs`: none without a feature model."""
    if features is None:
        return []
    return [SampleQuality(suffix=features.suffix), *([ClassAccuracy()] if conditional else [])]


class _Given(torch.nn.Module):
    """Features that are already computed, handed to torchmetrics as they are."""

    def __init__(self, width: int):
        super().__init__()
        self.num_features = width

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features


class SampleQuality(evaluate.Metric):
    """FID and KID of generated images against real ones, and the same between two halves of the
    real ones (`_floor`), in one feature space.

    Inputs, per evaluation example: `index` (its row), `real_features` (of the real image) and
    `fake_features` (of an image generated for that row: same class, seeded by the row). With N
    rows, the first N/2 rows' generated images are compared with the last N/2 rows' real images,
    and so are the first N/2 rows' real images, for the floor: both distances come from the same
    number of images (FID falls as samples grow, so sizes must match for the floor to mean
    anything).
    """

    def __init__(self, suffix: str = "", **kwargs):
        super().__init__(keep_in_memory=True, **kwargs)
        self.suffix = suffix

    def _info(self) -> evaluate.MetricInfo:
        vector = datasets.Sequence(datasets.Value("float32"))
        return evaluate.MetricInfo(
            description="FID and KID of generated images, and their real-vs-real floor.", citation="",
            inputs_description="index: the evaluation row; real_features, fake_features: feature vectors",
            features=datasets.Features({"index": datasets.Value("int64"), "real_features": vector,
                                        "fake_features": vector}))

    def _compute(self, index, real_features, fake_features) -> dict[str, float]:
        from torchmetrics.image.fid import FrechetInceptionDistance
        from torchmetrics.image.kid import KernelInceptionDistance

        order = np.argsort(np.asarray(index), kind="stable")
        real = torch.tensor(np.asarray(real_features, dtype=np.float64)[order])
        fake = torch.tensor(np.asarray(fake_features, dtype=np.float64)[order])
        half = len(order) // 2
        if half < 2:
            raise HftoolError(f"FID needs at least 4 evaluation images (two halves of 2), got {len(order)}; "
                              "evaluate on more data")
        first, second = slice(0, half), slice(len(order) - half, len(order))
        out = {}
        for name, compared in (("", fake[first]), ("_floor", real[first])):
            fid = FrechetInceptionDistance(feature=_Given(real.shape[1]))
            fid.update(real[second], real=True)
            fid.update(compared, real=False)
            out[f"fid{self.suffix}{name}"] = float(fid.compute())
            with warnings.catch_warnings():  # that it keeps every feature: these are the evaluation's, kept already
                warnings.simplefilter("ignore", UserWarning)
                kid = KernelInceptionDistance(feature=_Given(real.shape[1]), subsets=100, subset_size=min(1000, half))
            kid.update(real[second], real=True)
            kid.update(compared, real=False)
            with torch.random.fork_rng(devices=[]):  # KID draws subsets with torch's global generator
                torch.manual_seed(0)
                out[f"kid{self.suffix}{name}"] = float(kid.compute()[0])
        return {k: v if math.isfinite(v) else math.nan for k, v in out.items()}


class ClassAccuracy(evaluate.Metric):
    """Fraction of generated images a classifier assigns the class they were generated for."""

    def __init__(self, **kwargs):
        super().__init__(keep_in_memory=True, **kwargs)

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description="Class accuracy of conditional samples.", citation="",
            inputs_description="sample_class: the classifier's class of a sample; requested_class: the class asked for",
            features=datasets.Features({"sample_class": datasets.Value("int64"),
                                        "requested_class": datasets.Value("int64")}))

    def _compute(self, sample_class, requested_class) -> dict[str, float]:
        hits = np.asarray(sample_class) == np.asarray(requested_class)
        return {"class_accuracy": float(hits.mean()) if len(hits) else math.nan}


class Mean(evaluate.Metric):
    """The mean of a per-example value (a generator's loss on each evaluation sample)."""

    def __init__(self, name: str, **kwargs):
        self.value = name  # before super().__init__, which reads _info
        super().__init__(keep_in_memory=True, **kwargs)

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(description=f"Mean of {self.value}.", citation="", inputs_description=self.value,
                                   features=datasets.Features({self.value: datasets.Value("float64")}))

    def _compute(self, **values) -> dict[str, float]:
        return {self.value: float(np.mean(values[self.value], dtype=np.float64))}
