"""Image generation, shared by the generative image tasks (igpt, gan): their options, the rows they
read, per-image seeded randomness, and the images that evaluation and `hftool generate` write.

Every generated image has its own seed: (seed, the image's number) for `hftool generate`, (the
run's seed, the evaluation row) in evaluation. An image is then the same whatever the batch size
or process count, so `generate --seed` is reproducible and `evaluate` reproduces a run's metrics.
Imports nothing heavy at import time (task modules import it).
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from hftool import logs
from hftool.config import EvalConfig, ModelConfig, Option
from hftool.data import images
from hftool.errors import HftoolError

# `hftool generate` options every image generator takes.
NUM_IMAGES_OPTION = Option("num_images", int, "Image generators: how many images (default 16).", min=1)
LABEL_OPTION = Option("label", str, "Conditional image generators: the class of every image, by name or id "
                                    "(default: each class in turn).")
DEFAULT_NUM_IMAGES = 16


@dataclass
class GenerativeImageModel(ModelConfig):
    """model.* options of image generators."""

    # Condition on the class: `auto` when the training data has labels (class folders or a label
    # column), `true` (labels required), or `false` (ignore them).
    conditional: str = "auto"

    def check(self) -> None:
        super().check()
        self.conditional = str(self.conditional).lower()  # YAML reads `true` as a boolean
        self.require("conditional", self.conditional in ("auto", "true", "false"), "auto, true or false")


@dataclass
class GenerativeImageData(images.ImageData):
    """data.* options of image generators (data.image_size: the side of the square images they
    make; None: the model's, or for a new model the training images' shorter side)."""

    # The label column; None auto-detects label/labels/class/... (class folders and idx label
    # files give `label`). Data without labels trains an unconditional model.
    label_column: str | None = None


@dataclass
class SampleEval(EvalConfig):
    """eval.* options of image generators."""

    # Features for FID/KID and, for conditional models, eval_class_accuracy: an hftool
    # image-classification run dir trained on the same kind of images (eval_fid_<its name>), or a
    # local Inception weights file (the standard eval_fid; needs torch-fidelity). None: no
    # sample metrics (generating an image per evaluation row costs time).
    features: str | None = None
    # Images in the sample grid each evaluation writes (samples/step-N.png, and samples.png): a
    # conditional model's grid has a column per class.
    grid_images: int = 16

    def check(self) -> None:
        super().check()
        self.require("grid_images", self.grid_images > 0, "positive")


def prepare(cfg, ds, source: str, labels: list[str] | None):
    """Rows -> image (+ label where the rows have labels). `labels` are a conditional model's
    classes (every row then needs one of them), else None."""
    from hftool.data.labels import has_labels

    required = labels is not None or cfg.model.conditional == "true"
    if required and not has_labels(ds, cfg.data.label_column):
        what = "model.conditional=true needs" if labels is None else "this model is conditional: it needs"
        raise HftoolError(f"{source} has no label column (columns: {', '.join(ds.column_names)}); {what} a class "
                          "for every image (class folders, a label column or data.label_column)")
    return images.labelled_rows(ds, source, cfg.data, labels, require_labels=required)


def conditional(cfg, labels: list[str] | None) -> bool:
    """Whether a new model is conditioned on the class (model.conditional and the data's labels)."""
    return cfg.model.conditional == "true" or (cfg.model.conditional == "auto" and labels is not None)


def data_mode(rows, source: str) -> str:
    """"L" when every training image is greyscale (the model makes greyscale images), else "RGB"."""
    return images.image_mode(rows["image"], source)


def image_side(cfg, rows) -> int:
    """data.image_size, else the first training image's shorter side."""
    if cfg.data.image_size:
        return cfg.data.image_size
    first = images.decode(rows[0]["image"], "L")
    side = int(min(first.shape[1:]))
    logs.info(f"data.image_size not set: generating {side}x{side} images (the first training image's shorter side)")
    return side


def geometry(side: int, channels: int):
    """Resize the shorter side to `side`, centre-crop a square, scale to [-1, 1]: what generators
    are trained on and make."""
    from hftool.vision import Geometry

    return Geometry(side, (side, side), (0.5,) * channels, (0.5,) * channels, "bilinear")


def to_uint8(images_):
    """Images in [-1, 1] -> uint8 (what a PNG of them holds)."""
    import torch

    return ((images_.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def seeds(seed: int, numbers) -> list[int]:
    """One seed per image: the same (seed, number) always gives the same image."""
    return [(seed * 1_000_003 + int(n)) % 2**63 for n in numbers]


def generators(seed: int, numbers):
    import torch

    return [torch.Generator().manual_seed(s) for s in seeds(seed, numbers)]


def image_labels(labels: list[str] | None, count: int, given: str | None) -> list[int] | None:
    """The class of each of `count` images: `given` (a class name, or an id) for all, else each
    class in turn. None for an unconditional model (where `given` is an error)."""
    if labels is None:
        if given is not None:
            raise HftoolError("--label: this model is not conditional (it was trained without classes); leave it out")
        return None
    if given is None:
        return [i % len(labels) for i in range(count)]
    if given in labels:
        return [labels.index(given)] * count
    if given.isdigit() and int(given) < len(labels):
        return [int(given)] * count
    shown = ", ".join(labels[:20]) + (", ..." if len(labels) > 20 else "")
    raise HftoolError(f"--label {given!r} is not a class of this model ({shown}); pass one of them, or its id "
                      f"0-{len(labels) - 1}")


def columns(count: int, labels: list[str] | None) -> int:
    """Grid columns: a conditional model's classes (each class in turn fills a row), else a square."""
    return min(count, len(labels)) if labels else math.ceil(math.sqrt(count))


def grid_count(requested: int, labels: list[str] | None) -> int:
    """Images in an evaluation grid: `requested`, rounded up to whole rows of classes."""
    return math.ceil(requested / len(labels)) * len(labels) if labels else requested


def write_grid(images_, path: Path, labels: list[str] | None) -> None:
    """uint8 images [N, C, H, W] as one grid PNG (atomically)."""
    from hftool.outputs import write_png
    from hftool.vision import image_grid

    path.parent.mkdir(parents=True, exist_ok=True)
    write_png(path, image_grid(images_, columns(len(images_), labels)))


def write_evaluation_grid(images_, run_dir: Path, step: int, labels: list[str] | None) -> None:
    """A training evaluation's samples: samples/step-N.png, and samples.png (the latest, which the
    model card shows)."""
    from hftool.outputs import atomic_write_bytes

    path = Path(run_dir) / "samples" / f"step-{step:07d}.png"
    write_grid(images_, path, labels)
    atomic_write_bytes(Path(run_dir) / "samples.png", path.read_bytes())


def write_samples(images_, output: str | Path | None, labels: list[str] | None, classes: list[int] | None) -> list[dict]:
    """What an image generator's `generate` returns: one {"image"[, "label"]} per image. With
    `output` (samples.png) the grid is written there and image i beside it as samples-<i>.png,
    and "image" is that path; without, "image" is a PIL image (library use)."""
    from PIL import Image

    from hftool.outputs import write_png

    named = [{"label": labels[c]} for c in classes] if classes is not None else [{} for _ in images_]
    if output is None:
        return [{"image": Image.fromarray(image.permute(1, 2, 0).squeeze(2).cpu().numpy()), **name}
                for image, name in zip(images_, named)]
    output = Path(output).expanduser()
    write_grid(images_, output, labels)
    results = []
    for i, (image, name) in enumerate(zip(images_, named)):
        path = output.with_name(f"{output.stem}-{i}{output.suffix}")
        write_png(path, image)
        results.append({"image": str(path), **name})
    return results


def check_generate(prompts: list[str], on_text, count: int | None, output: str | Path | None) -> int:
    """Reject what an image generator cannot do, before it runs; the number of images to make."""
    if output is not None and Path(output).suffix.lower() != ".png":
        raise HftoolError(f"--output {output}: image generators write PNG files; name it samples.png (or any .png)")
    if prompts:
        raise HftoolError("image generators take no --prompt/--prompts-file; use --num-images and --label (igpt also "
                          "takes --prompt-image)")
    if on_text is not None:
        raise HftoolError("--stream prints text as it is generated; image generators write files: leave it out")
    return count or DEFAULT_NUM_IMAGES


def format_images(results: list[dict]) -> str:
    """One line per generated image: its file (and class)."""
    return "\n".join("\t".join(str(r[k]) for k in ("image", "label") if k in r) for r in results)


def unwrapped(model):
    """The model inside a DistributedDataParallel wrapper (evaluation on several processes)."""
    return getattr(model, "module", model)


def autocast(precision: str, device):
    """The run's autocast (runtime.inference_precision of train.mixed_precision) around everything
    evaluation runs: the networks that are not the loop's prepared model (a discriminator, an
    EMA, a feature model) then compute in the same precision in training and in `hftool evaluate`."""
    import torch

    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


@contextmanager
def evaluating(*modules):
    """Run `modules` in eval mode (batch norm on its running statistics), then restore their modes."""
    modes = [m.training for m in modules]
    for m in modules:
        m.eval()
    try:
        yield
    finally:
        for m, mode in zip(modules, modes):
            m.train(mode)


# The model card's command (from inside the run dir: -o samples.png would replace the run's own grid).
CARD_GENERATE = "hftool generate . --num-images 16 --seed 0 -o generated.png\n"
CARD_GRID = "Samples of the final model (the last evaluation's grid; each evaluation's is in `samples/`):\n\n![samples](samples.png)\n\n"
