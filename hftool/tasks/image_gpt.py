"""Image GPT: a GPT decoder that models an image as a sequence of colour-cluster tokens, each
predicted from the ones before (Chen et al., 2020), on transformers' ImageGPTForCausalImageModeling.

Pixels are quantised to the nearest of `data.num_clusters` colours that k-means (scikit-learn)
fits on the training pixels; the clusters are saved with an ImageGPTImageProcessor, which turns
any image into the model's tokens when the run dir is reloaded. A sequence starts with the
start-of-image token (the vocabulary's last), or for a class-conditional model with the class's
token: token ids are [0, K) the clusters, [K, K + classes) the classes, then the start token.

Evaluation reports eval_bits_per_dim (the exact token-weighted NLL per pixel token, in bits; the
start or class token is an input, never scored) and eval_perplexity; optionally a linear probe of
a middle layer's features (eval_probe_accuracy), and FID/KID of samples (eval.features).
Sampling draws each image's Gumbel noise from that image's own seed, so a sample does not depend
on batching.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hftool import imagegen, logs, models
from hftool.config import Option
from hftool.data import images
from hftool.errors import HftoolError
from hftool.tasks.base import Options, Parts, Task

GREY_CLUSTERS, COLOUR_CLUSTERS = 16, 512  # data.num_clusters=None: 16 grey levels; Image GPT's 512 colours
KMEANS_IMAGES, KMEANS_PIXELS = 2000, 100_000  # k-means sees at most these (seeded samples): enough for 512 centres
PROMPT_IMAGE_OPTION = Option("prompt_image", Path, "igpt: complete the lower half of this image from its upper half "
                                                   "(--num-images completions).")


@dataclass
class ImageGPTData(imagegen.GenerativeImageData):
    # Colour clusters, the pixel tokens' vocabulary, fitted by k-means on the training pixels;
    # None: 16 for greyscale data, 512 (Image GPT's) for colour. A saved model keeps its own.
    num_clusters: int | None = None

    def check(self) -> None:
        super().check()
        self.require("num_clusters", self.num_clusters is None or self.num_clusters >= 2, "at least 2")


@dataclass
class ImageGPTEval(imagegen.SampleEval):
    # Fit a logistic regression on the mean-pooled features of layer eval.probe_layer against
    # the labels (stratified 5-fold cross-validation on the evaluation rows): eval_probe_accuracy.
    # Needs labelled data and an unconditional model, whose class token would give the class away.
    linear_probe: bool = False
    # The layer the probe reads: 0 the embeddings, n_layer the last block; None the middle one,
    # where Image GPT found the most linearly separable features.
    probe_layer: int | None = None


@dataclass
class ImageGPTState:
    mode: str  # L (greyscale) or RGB: what the model's images are
    side: int  # image side in pixels; a sequence is side * side tokens
    clusters: Any  # [K, 3] tensor in [-1, 1]: the processor's clusters
    conditional: bool
    seed: int  # evaluation noise seed (train.seed)
    grid_images: int
    precision: str  # evaluation's autocast: runtime.inference_precision(train.mixed_precision)
    probe_layer: int | None = None  # None: no linear probe
    features: Any | None = None  # hftool.metrics.samples.FeatureModel (eval.features)
    class_map: Any | None = None


class ImageGPT(Task):
    name = "image-gpt"
    recipe = "igpt"
    options = Options(model=imagegen.GenerativeImageModel, data=ImageGPTData, eval=ImageGPTEval)
    architectures = ("ForCausalImageModeling",)
    default_metric = "bits_per_dim"
    meta_keys = ("index",)
    generate_options = (imagegen.NUM_IMAGES_OPTION, imagegen.LABEL_OPTION, PROMPT_IMAGE_OPTION)
    prompts_optional = True
    writes_output = True

    # ------------------------------------------------------------------------------ data
    def prepare(self, cfg, ds, source, labels=None, require_labels=True):
        return imagegen.prepare(cfg, ds, source, labels)

    def features(self, parts, cfg, ds):
        """Rows -> input_ids (the image's side * side cluster tokens), label, index; quantised once,
        up front, by the run's ImageGPTImageProcessor."""
        processor, skip_bad = parts.processor, cfg.data.skip_bad_images

        def quantise(batch):
            done = images.readable(batch["image"], images.decode, skip_bad)
            ids = processor(images=[pixels for _, pixels in done], return_tensors="pt")["input_ids"] if done else []
            out = {"input_ids": [row.tolist() for row in ids]}
            for key, values in batch.items():
                if key != "image":
                    out[key] = [values[i] for i, _ in done]
            return out

        import uuid

        from datasets.fingerprint import get_temporary_cache_files_directory

        ds = ds.add_column("index", list(range(len(ds))))
        # Into a file mapped from disk, not memory (2 KB an image at 16 px); a file of this process's
        # own, deleted at exit: the ids follow the image files' contents, which no cache key here covers.
        name = uuid.uuid4().hex
        return ds.map(quantise, batched=True, batch_size=256, remove_columns=["image"], desc="Quantising",
                      cache_file_name=str(Path(get_temporary_cache_files_directory()) / f"quantised-{name}.arrow"),
                      new_fingerprint=name)

    def collate(self, parts):
        config = parts.model.config
        return _Collate(_start_token(config), config.num_clusters if parts.state.conditional else None)

    # ----------------------------------------------------------------------------- model
    def build(self, cfg, labels, train_ds=None, model_path=None, run_dir=None) -> Parts:
        from transformers import ImageGPTForCausalImageModeling, ImageGPTImageProcessor

        spec = model_path or cfg.model.name
        if models.tiny_arch(spec) is not None:
            models.check_tiny(spec, ("imagegpt",), self.name)
            mode = imagegen.data_mode(train_ds, "the training data")
            side = imagegen.image_side(cfg, train_ds)
            saved = Path(run_dir) / "preprocessor_config.json" if run_dir is not None else None
            if saved is not None and saved.is_file():  # a resumed run: its clusters, as its checkpoint knows them
                processor = ImageGPTImageProcessor.from_pretrained(str(run_dir))
            else:
                processor = _processor(side, None)
                processor.clusters = _kmeans(processor, train_ds, mode, cfg.data.num_clusters, cfg.train.seed,
                                             cfg.data.skip_bad_images)
            labels = labels if imagegen.conditional(cfg, labels) else None
            model = ImageGPTForCausalImageModeling(_tiny_config(cfg, processor, side, mode, labels))
        else:
            model = models.load("model", ImageGPTForCausalImageModeling, spec, cfg.model.token)
            processor = models.load("image processor", ImageGPTImageProcessor, spec, cfg.model.token)
            config = model.config
            conditional = bool(getattr(config, "conditional", False))
            if model_path is None and cfg.model.conditional == "true" and not conditional:
                raise HftoolError(f"model.conditional=true: {spec} was trained without class tokens; train a new "
                                  "tiny:imagegpt, or set model.conditional=false")
            labels = [config.id2label[i] for i in range(config.num_labels)] if conditional else None
            mode = "L" if getattr(config, "image_channels", 3) == 1 else "RGB"
            side = int(round(config.n_positions ** 0.5))
        from hftool.runtime import inference_precision

        state = ImageGPTState(mode, side, _clusters(processor), labels is not None, cfg.train.seed,
                              cfg.eval.grid_images, inference_precision(cfg.train.mixed_precision))
        if cfg.eval.linear_probe:
            if state.conditional:
                raise HftoolError("eval.linear_probe: this model is conditional, so its class token gives the class "
                                  "away to the probe; set model.conditional=false to probe an unconditional model")
            layers = model.config.n_layer
            state.probe_layer = layers // 2 if cfg.eval.probe_layer is None else cfg.eval.probe_layer
            if not 0 <= state.probe_layer <= layers:
                raise HftoolError(f"eval.probe_layer={state.probe_layer}: the model has layers 0 (embeddings) to {layers}")
        if cfg.eval.features:
            from hftool.metrics.samples import FeatureModel

            state.features = FeatureModel.load(cfg.eval.features, cfg.model.token)
            if labels:
                state.class_map = state.features.class_map(labels)
        return Parts(model, processor, labels, state=state)

    # -------------------------------------------------------------------------- training
    def train_loss(self, parts, model, batch):
        import torch.nn.functional as F

        logits = model(input_ids=batch["input_ids"]).logits
        return F.cross_entropy(logits.flatten(0, 1).float(), batch["targets"].flatten())

    # --------------------------------------------------------------------------- metrics
    def eval_forward(self, parts, model, batch):
        """Next-token logits (and the probe layer's features); with eval.features, one sample per
        row (from its start or class token and its row's noise) and the sample-metric outputs."""
        state = parts.state
        probe = state.probe_layer is not None
        outputs = model(input_ids=batch["input_ids"], output_hidden_states=probe)
        out = {"logits": outputs.logits}
        if probe:
            out["probe_features"] = outputs.hidden_states[state.probe_layer].float().mean(1)
        if state.features is not None:
            from hftool.metrics.samples import sample_outputs

            device = batch["input_ids"].device
            with imagegen.autocast(state.precision, device):
                samples = _sample(parts, imagegen.unwrapped(model), batch["input_ids"][:, :1],
                                  imagegen.generators(state.seed, batch["index"].tolist()))
                out.update(sample_outputs(state.features, state.class_map, _pixels(parts, batch["targets"]),
                                          _pixels(parts, samples)))
        return out

    def eval_outputs(self, parts, outputs, batch):
        """Per row: the summed loss of its pixel tokens and their count (pooled by the metric)."""
        import torch.nn.functional as F

        targets = batch["targets"]
        losses = F.cross_entropy(outputs.pop("logits").float().transpose(1, 2), targets, reduction="none")
        loss_sum = losses.sum(1).double()
        out = {"loss_sum": loss_sum, "tokens": _token_counts(targets), "loss": loss_sum / targets.shape[1],
               "index": batch["index"], **outputs}
        if "probe_features" in out:
            if "labels" not in batch:
                raise HftoolError("eval.linear_probe needs labelled evaluation data (class folders or a label column)")
            out["labels"] = batch["labels"]
        if parts.state.class_map is not None:
            out["requested_class"] = batch["labels"]
        return out

    def metric(self, parts, rows):
        from hftool.metrics import BitsPerDim, LinearProbe, combine
        from hftool.metrics.samples import sample_metrics

        state = parts.state
        probe = [LinearProbe(seed=state.seed)] if state.probe_layer is not None else []
        return combine([BitsPerDim(), *probe, *sample_metrics(state.features, state.class_map is not None)])

    def resampler(self, parts, rows):
        from hftool.metrics.resampling import BitsPerDimStats

        return BitsPerDimStats()

    def prediction_records(self, parts, batches, order, rows):
        """Per evaluation row: its loss (nats per token) and bits per pixel token."""
        import math

        import numpy as np

        if not batches:
            return []
        index, loss = (np.concatenate([b[k] for b in batches]) for k in ("index", "loss"))
        return sorted(({"index": int(i), "loss": round(float(v), 6), "bits_per_dim": round(float(v) / math.log(2), 6)}
                       for i, v in zip(index, loss)), key=lambda r: r["index"])

    def evaluated(self, parts, model, run_dir, step):
        import torch

        state = parts.state
        count = imagegen.grid_count(state.grid_images, parts.labels)
        classes = imagegen.image_labels(parts.labels, count, None)
        starts = _starts(model.config, classes, count, torch.zeros(0, dtype=torch.long))
        imagegen.write_evaluation_grid(self._images(parts, model, starts, range(count), state.seed, count), run_dir,
                                       step, parts.labels)

    def _images(self, parts, model, starts, numbers, seed: int, batch_size: int):
        """uint8 images sampled from each row of `starts` (start token + prompt tokens), image n
        seeded by (seed, n), `batch_size` at a time."""
        import torch

        numbers, device = list(numbers), next(model.parameters()).device
        out = []
        with imagegen.evaluating(model), torch.no_grad():
            for first in range(0, len(numbers), batch_size):
                rows = starts[first:first + batch_size].to(device)
                tokens = _sample(parts, model, rows, imagegen.generators(seed, numbers[first:first + batch_size]))
                out.append(_pixels(parts, tokens).cpu())
        return torch.cat(out)

    # ------------------------------------------------------------------------------ save
    def card_metadata(self, parts, cfg):
        meta = super().card_metadata(parts, cfg)
        return {**meta, "pipeline_tag": "unconditional-image-generation"}

    def card_usage(self, parts, cfg):
        """hftool generate, then transformers alone: sample from the start (or a class) token,
        pixel tokens only, and map the tokens to the processor's colour clusters."""
        first = ("(model.config.num_clusters + torch.arange(4) % model.config.num_labels)[:, None]  # class tokens"
                 if parts.state.conditional else "torch.full((4, 1), model.config.vocab_size - 1)  # the start token")
        return imagegen.CARD_GRID + (
            "```bash\n" + imagegen.CARD_GENERATE +
            "hftool generate . --prompt-image digit.png --num-images 8 -o completions.png  # lower halves\n```\n\n"
            "In transformers, no hftool needed:\n\n"
            "```python\nimport numpy as np\nimport torch\nfrom PIL import Image\n"
            "from transformers import ImageGPTForCausalImageModeling, ImageGPTImageProcessor\n\n"
            "model = ImageGPTForCausalImageModeling.from_pretrained(\".\")\n"
            "processor = ImageGPTImageProcessor.from_pretrained(\".\")  # its colour clusters\n"
            f"start = {first}\n"
            "pixel_tokens = model.config.num_clusters\n"
            "ids = model.generate(start, max_new_tokens=model.config.n_positions, do_sample=True, top_k=0,\n"
            "                     suppress_tokens=list(range(pixel_tokens, model.config.vocab_size)))[:, 1:]\n"
            "side = int(model.config.n_positions ** 0.5)\n"
            "pixels = np.asarray(processor.clusters)[ids.numpy()].reshape(len(ids), side, side, 3)  # in [-1, 1]\n"
            "Image.fromarray(((pixels[0] + 1) * 127.5).round().astype(np.uint8)).save(\"sample.png\")\n"
            "print(ids.shape)\n```\n")

    # ------------------------------------------------------------------------- inference
    def predict(self, parts, cfg, inputs, batch_size, **options):
        raise HftoolError("an image-gpt model generates images: use `hftool generate RUN --num-images 16 -o "
                          "samples.png` (or --prompt-image to complete one)")

    def generate(self, parts, cfg, prompts, on_text=None, options=None, num_images=None, label=None,
                 prompt_image=None, output=None, seed=None, batch_size=8):
        """`num_images` images (of class `label`, else each class in turn), seeded per image by
        `seed`; with `prompt_image`, completions of its lower half from its upper half."""
        import random

        import torch

        count = imagegen.check_generate(prompts, on_text, num_images, output)
        classes = imagegen.image_labels(parts.labels, count, label)
        prompt = torch.zeros(0, dtype=torch.long)
        if prompt_image is not None:
            try:
                pixels = images.decode(str(prompt_image))
            except (ValueError, OSError) as err:
                raise HftoolError(f"--prompt-image {prompt_image}: cannot be read ({err})") from None
            tokens = parts.processor(images=[pixels], return_tensors="pt")["input_ids"][0]
            prompt = tokens[: (parts.state.side // 2) * parts.state.side]
        seed = random.randrange(2**31) if seed is None else seed
        starts = _starts(parts.model.config, classes, count, prompt)
        pictures = self._images(parts, parts.model, starts, range(count), seed, batch_size)
        return imagegen.write_samples(pictures, output, parts.labels, classes)

    def format_generation(self, results):
        return imagegen.format_images(results)


class _Collate:
    """Rows -> input_ids (the start token, or the class token, then every pixel token but the
    last) and targets (every pixel token): position i predicts pixel i."""

    def __init__(self, start: int, first_class: int | None):
        self.start, self.first_class = start, first_class  # first_class: a conditional model's class token 0

    def __call__(self, features: list[dict]) -> dict:
        import torch

        targets = torch.tensor([f["input_ids"] for f in features], dtype=torch.long)
        first = torch.full((len(features), 1), self.start, dtype=torch.long)
        batch = {"index": torch.tensor([f["index"] for f in features], dtype=torch.long), "targets": targets}
        if "label" in features[0]:
            batch["labels"] = torch.tensor([f["label"] for f in features], dtype=torch.long)
            if self.first_class is not None:
                first = batch["labels"][:, None] + self.first_class
        batch["input_ids"] = torch.cat([first, targets[:, :-1]], dim=1)
        return batch


def _token_counts(targets):
    """Scored tokens per row: all of them (every row is one whole image)."""
    import torch

    return torch.full((targets.shape[0],), targets.shape[1], dtype=torch.long, device=targets.device)


def _start_token(config) -> int:
    return config.vocab_size - 1


def _clusters(processor):
    import torch

    return torch.as_tensor(processor.clusters, dtype=torch.float32)


def _processor(side: int, clusters):
    from transformers import ImageGPTImageProcessor

    # Resize the shorter side and centre-crop a square, as the gan recipe does (not a squashing resize).
    return ImageGPTImageProcessor(clusters=clusters, size={"shortest_edge": side}, do_center_crop=True,
                                  crop_size={"height": side, "width": side})


def _kmeans(processor, rows, mode: str, requested: int | None, seed: int, skip_bad: bool):
    """Colour clusters [K, 3] in [-1, 1]: k-means on pixels of up to KMEANS_IMAGES training images,
    as the processor sees them; greyscale data gets grey clusters (R = G = B), ordered dark to light."""
    import numpy as np
    import torch
    from sklearn.cluster import KMeans

    k = requested or (GREY_CLUSTERS if mode == "L" else COLOUR_CLUSTERS)
    generator = np.random.default_rng(seed)
    chosen = sorted(generator.choice(len(rows), min(len(rows), KMEANS_IMAGES), replace=False).tolist())
    done = images.readable(rows.select(chosen)["image"], images.decode, skip_bad)
    pixels = processor(images=[p for _, p in done], return_tensors="pt", do_color_quantize=False)["pixel_values"]
    values = pixels.permute(0, 2, 3, 1).reshape(-1, 3).numpy()
    values = values[:, :1] if mode == "L" else values
    if len(values) > KMEANS_PIXELS:
        values = values[generator.choice(len(values), KMEANS_PIXELS, replace=False)]
    distinct = len(np.unique(values, axis=0))
    if distinct < k:
        logs.info(f"data.num_clusters={k}: the training pixels have only {distinct} distinct colours; using {distinct}")
        k = distinct
    centres = KMeans(n_clusters=k, n_init=1, random_state=seed).fit(values).cluster_centers_
    centres = centres[np.argsort(centres.mean(1))]  # dark to light: token ids read as brightness
    if mode == "L":
        centres = np.repeat(centres, 3, axis=1)
    return torch.tensor(centres, dtype=torch.float32)


def _tiny_config(cfg, processor, side: int, mode: str, labels: list[str] | None):
    """A small ImageGPT: 4 layers of width 128, no dropout (short runs do not overfit)."""
    from transformers import ImageGPTConfig

    k, classes = len(processor.clusters), len(labels or [])
    overrides = dict(cfg.model.config_overrides)
    models.check_config_overrides(ImageGPTConfig(), overrides)
    sizes = dict(n_embd=128, n_layer=4, n_head=4, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    # One token per cluster, then one per class, then the start token (the vocabulary's last, as
    # ImageGPT has it); the model never predicts the start token.
    return ImageGPTConfig(vocab_size=k + classes + 1, n_positions=side * side, num_clusters=k,
                          conditional=bool(labels), image_channels=1 if mode == "L" else 3,
                          **(models.label_maps(labels) if labels else {}), **(sizes | overrides))


def _starts(config, classes: list[int] | None, count: int, prompt):
    """[count, 1 + prompt] start rows: the start token or each image's class token, then `prompt`."""
    import torch

    if classes is None:
        first = torch.full((count, 1), _start_token(config), dtype=torch.long)
    else:
        first = torch.tensor(classes, dtype=torch.long)[:, None] + config.num_clusters
    return torch.cat([first, prompt[None].expand(count, -1)], dim=1)


def _sample(parts, model, starts, generators):
    """Complete each row of `starts` to side * side pixel tokens: argmax of the logits plus Gumbel
    noise from that row's generator (a sample of the model's distribution, independent of the
    batch), class and start tokens excluded. Returns [B, side * side] token ids."""
    import torch
    from transformers import LogitsProcessor

    state = parts.state
    n, k = state.side * state.side, len(state.clusters)
    steps = n - (starts.shape[1] - 1)
    width = model.config.vocab_size - 1  # the logits: every token but the start token
    uniform = torch.stack([torch.rand(steps, width, generator=g) for g in generators])
    gumbel = -torch.log(-torch.log(uniform.clamp(1e-20, 1.0))).to(starts.device)

    class Gumbel(LogitsProcessor):
        def __call__(self, input_ids, scores):
            scores = scores.float() + gumbel[:, input_ids.shape[1] - starts.shape[1]]
            scores[:, k:] = float("-inf")  # class tokens are never pixels
            return scores

    out = model.generate(input_ids=starts, max_new_tokens=steps, min_new_tokens=steps, do_sample=False,
                         logits_processor=[Gumbel()], pad_token_id=_start_token(model.config), eos_token_id=None)
    return out[:, 1:]


def _pixels(parts, tokens):
    """Pixel tokens [B, side * side] -> uint8 images [B, C, side, side] (the clusters' colours)."""
    state = parts.state
    colours = state.clusters.to(tokens.device)[tokens]  # [B, n, 3] in [-1, 1]
    images_ = colours.transpose(1, 2).reshape(len(tokens), 3, state.side, state.side)
    return imagegen.to_uint8(images_[:, :1] if state.mode == "L" else images_)
