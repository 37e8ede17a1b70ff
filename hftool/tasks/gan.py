"""Generative adversarial networks: a DCGAN generator and discriminator trained against each other.

The task owns its step (`updates`, `train_step`): the discriminator learns to tell training images
from generated ones, then the generator learns to fool it, each with its own Adam (beta1 0.5, as
in DCGAN). The loop keeps accumulation, precision, checkpoints of both optimizers, exact resume,
multi-process training and the NaN check. With labels the pair is class-conditional.

Evaluation generates one image per evaluation row (that row's class, noise seeded by the row), so
it is the same on any number of processes: eval_loss is the discriminator's loss on the real and
generated images, eval_g_loss the generator's, and with eval.features FID/KID against the real
images and their real-vs-real floor (hftool.metrics.samples).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hftool import imagegen, models
from hftool.config import TrainConfig
from hftool.errors import HftoolError
from hftool.tasks.base import Options, Parts, Task, Update

BETAS = (0.5, 0.999)  # DCGAN's Adam: beta1 0.5 keeps the momentum from chasing the other player's old moves


@dataclass
class GanTrain(TrainConfig):
    choices = {"gan_loss": ("non-saturating", "hinge")}
    # non-saturating: the discriminator's cross-entropy, and the generator maximises log D(G(z))
    # (Goodfellow et al.), which keeps its gradient alive while D wins early on; hinge: the SNGAN
    # / BigGAN margin loss.
    gan_loss: str = "non-saturating"
    # Discriminator updates per generator update (WGAN-style training uses 5); each takes a
    # batch of its own, and the generator updates on every d_steps-th optimizer step.
    d_steps: int = 1
    # Keep an exponential moving average of the generator's weights with this decay (0.999 is
    # usual) and evaluate, sample and save it: its images are steadier than the raw generator's.
    # None: off.
    ema_decay: float | None = None
    # DCGAN's learning rate for both networks.
    lr: float = 2.0e-4
    # GANs train without weight decay (DCGAN, StyleGAN).
    weight_decay: float = 0.0
    # A constant rate, as GANs are usually trained: a decaying one also decays one player's
    # strength against the other's.
    scheduler: str = "constant"
    # Keep the last models: a GAN's losses do not say which checkpoint makes the best images
    # (set train.metric_for_best to an eval_fid_* metric and this to true to pick by FID).
    load_best_at_end: bool = False

    def check(self) -> None:
        super().check()
        self.require("d_steps", self.d_steps >= 1, "at least 1")
        self.require("ema_decay", self.ema_decay is None or 0 < self.ema_decay < 1, "in (0, 1), or null (off)")


@dataclass
class GanState:
    discriminator: Any  # DCGANDiscriminator, trained and saved beside the generator
    mode: str  # L (greyscale) or RGB: what the generator makes
    side: int  # image side in pixels
    seed: int  # evaluation noise seed (train.seed): every evaluation sees the same noise per row
    loss: str  # train.gan_loss
    d_steps: int
    grid_images: int
    precision: str  # evaluation's autocast: runtime.inference_precision(train.mixed_precision)
    ema: Any | None = None  # torch.optim.swa_utils.AveragedModel of the generator
    features: Any | None = None  # hftool.metrics.samples.FeatureModel (eval.features)
    class_map: Any | None = None  # the feature classifier's class -> this model's class id


class Gan(Task):
    name = "gan"
    recipe = "gan"
    options = Options(model=imagegen.GenerativeImageModel, data=imagegen.GenerativeImageData, train=GanTrain,
                      eval=imagegen.SampleEval)
    architectures = ("DCGANGenerator",)
    default_metric = "loss"
    meta_keys = ("index",)
    generate_options = (imagegen.NUM_IMAGES_OPTION, imagegen.LABEL_OPTION)
    prompts_optional = True
    writes_output = True

    # ------------------------------------------------------------------------------ data
    def prepare(self, cfg, ds, source, labels=None, require_labels=True):
        return imagegen.prepare(cfg, ds, source, labels)

    def features(self, parts, cfg, ds):
        """Rows -> pixel_values in [-1, 1] at the model's size (decoded lazily), labels, index."""
        from hftool import vision

        state = parts.state
        channels = 1 if state.mode == "L" else 3
        transform = vision.ImageTransform(imagegen.geometry(state.side, channels), train=False,
                                          skip_bad=cfg.data.skip_bad_images, image_mode=state.mode)
        return ds.add_column("index", list(range(len(ds)))).with_transform(transform)

    def collate(self, parts):
        return collate

    # ----------------------------------------------------------------------------- model
    def build(self, cfg, labels, train_ds=None, model_path=None, run_dir=None) -> Parts:
        from hftool.dcgan import DCGANConfig, DCGANDiscriminator, DCGANGenerator

        spec = model_path or cfg.model.name
        if models.tiny_arch(spec) is not None:
            models.check_tiny(spec, ("dcgan",), self.name)
            mode = imagegen.data_mode(train_ds, "the training data")
            side = imagegen.image_side(cfg, train_ds)
            if side % 4 or side < 8:
                raise HftoolError(f"data.image_size={side}: the DCGAN doubles its feature maps from a small one, so "
                                  "it needs a side divisible by 4, at least 8 (16, 28, 32, 64)")
            overrides = dict(cfg.model.config_overrides)
            models.check_config_overrides(DCGANConfig(), overrides)
            labels = labels if imagegen.conditional(cfg, labels) else None
            config = DCGANConfig(image_size=side, channels=1 if mode == "L" else 3,
                                 num_classes=len(labels) if labels else 0,
                                 **(models.label_maps(labels) if labels else {}), **overrides)
            generator, discriminator = DCGANGenerator(config), DCGANDiscriminator(config)
        else:
            generator = models.load("model", DCGANGenerator, spec, cfg.model.token)
            critic = Path(spec) / "discriminator"
            if not (critic / "config.json").is_file():
                raise HftoolError(f"{spec} has no discriminator/ folder; pass a run dir written by `hftool finetune gan`")
            discriminator = models.load("model", DCGANDiscriminator, str(critic), cfg.model.token)
            config = generator.config
            labels = [config.id2label[i] for i in range(config.num_classes)] if config.num_classes else None
        from hftool.runtime import inference_precision

        state = GanState(discriminator, "L" if config.channels == 1 else "RGB", config.image_size, cfg.train.seed,
                         cfg.train.gan_loss, cfg.train.d_steps, cfg.eval.grid_images,
                         inference_precision(cfg.train.mixed_precision))
        if model_path is None and cfg.train.ema_decay:
            from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

            state.ema = AveragedModel(generator, multi_avg_fn=get_ema_multi_avg_fn(cfg.train.ema_decay),
                                      use_buffers=True).requires_grad_(False)
        if cfg.eval.features:
            from hftool.metrics.samples import FeatureModel

            state.features = FeatureModel.load(cfg.eval.features, cfg.model.token)
            if labels:
                state.class_map = state.features.class_map(labels)
        return Parts(generator, None, labels, state=state)

    # -------------------------------------------------------------------------- training
    def updates(self, parts, cfg):
        d = parts.state.discriminator
        return [Update("generator", parts.model, self.param_groups(parts, cfg, parts.model), betas=BETAS),
                Update("discriminator", d, self.param_groups(parts, cfg, d), betas=BETAS)]

    def checkpointed(self, parts):
        return [parts.state.ema] if parts.state.ema is not None else []

    def train_step(self, parts, batch, step):
        """The discriminator on real images and on generated ones (no generator gradients), then,
        on every d_steps-th optimizer step, the generator through the discriminator (which gets
        no gradients from it)."""
        import torch

        state = parts.state
        g, d = step.models["generator"], step.models["discriminator"]
        real, labels = batch["pixel_values"], batch.get("labels") if parts.labels else None
        latent = step.accelerator.unwrap_model(g).config.latent_dim
        with torch.no_grad():
            fake = g(torch.randn(len(real), latent, device=real.device), labels)
        # Real and generated images in separate batches (DCGAN): batch norm never mixes them.
        d_real = _d_loss(state.loss, d(real, labels), real=True)
        step.backward(d_real)
        d_fake = _d_loss(state.loss, d(fake, labels), real=False)
        step.backward(d_fake)
        step.update("discriminator")
        out = {"loss": d_real.detach() + d_fake.detach()}
        if step.number % state.d_steps == state.d_steps - 1:
            # The unwrapped discriminator, and gradients for the generator only: the discriminator
            # neither syncs nor keeps gradients it would otherwise apply at its next update.
            critic = step.accelerator.unwrap_model(d)
            g_loss = _g_loss(state.loss, critic(g(torch.randn(len(real), latent, device=real.device), labels), labels))
            step.backward(g_loss, inputs=[p for p in g.parameters() if p.requires_grad])
            step.update("generator")
            if state.ema is not None and step.at_boundary:
                state.ema.update_parameters(step.accelerator.unwrap_model(g))
            out["g_loss"] = g_loss.detach()
        return out

    # --------------------------------------------------------------------------- metrics
    def _generator(self, parts, model):
        """What evaluation and samples use: the EMA of the generator when there is one."""
        return parts.state.ema.module if parts.state.ema is not None else imagegen.unwrapped(model)

    def eval_forward(self, parts, model, batch):
        """One generated image per row (its class, its row's noise), the discriminator's logits on
        the real and generated images, and with eval.features the sample-metric outputs."""
        state, g = parts.state, self._generator(parts, model)
        real, labels = batch["pixel_values"], batch.get("labels") if parts.labels else None
        d = state.discriminator.to(real.device)
        noise = _noise(g, imagegen.generators(state.seed, batch["index"].tolist())).to(real.device)
        with imagegen.autocast(state.precision, real.device), imagegen.evaluating(g, d):
            fake = g(noise, labels)
            out = {"real_logits": d(real, labels), "fake_logits": d(fake, labels)}
            if state.features is not None:
                from hftool.metrics.samples import sample_outputs

                out.update(sample_outputs(state.features, state.class_map, imagegen.to_uint8(real),
                                          imagegen.to_uint8(fake)))
        return out

    def eval_outputs(self, parts, outputs, batch):
        state = parts.state
        real_logits, fake_logits = outputs.pop("real_logits").float(), outputs.pop("fake_logits").float()
        out = {"loss": _d_loss(state.loss, real_logits, real=True, mean=False)
               + _d_loss(state.loss, fake_logits, real=False, mean=False),
               "g_loss": _g_loss(state.loss, fake_logits, mean=False).double(), "index": batch["index"], **outputs}
        if parts.labels:
            out["requested_class"] = batch["labels"]
        return out

    def metric(self, parts, rows):
        from hftool.metrics import Mean, combine
        from hftool.metrics.samples import sample_metrics

        return combine([Mean("g_loss"), *sample_metrics(parts.state.features, parts.state.class_map is not None)])

    def prediction_records(self, parts, batches, order, rows):
        """Per evaluation row: the discriminator's and generator's losses on it, its class, and
        the feature classifier's class of the image generated for it."""
        import numpy as np

        if not batches:
            return []
        columns = {k: np.concatenate([b[k] for b in batches]) for k in ("index", "loss", "g_loss", "requested_class",
                                                                       "sample_class") if k in batches[0]}
        records = []
        for i in range(len(columns["index"])):
            record = {"index": int(columns["index"][i]), "loss": round(float(columns["loss"][i]), 6),
                      "g_loss": round(float(columns["g_loss"][i]), 6)}
            if "requested_class" in columns:
                record["label"] = parts.labels[int(columns["requested_class"][i])]
            if "sample_class" in columns:
                found = int(columns["sample_class"][i])
                record["sample_class"] = parts.labels[found] if found >= 0 else None
            records.append(record)
        return sorted(records, key=lambda r: r["index"])

    def evaluated(self, parts, model, run_dir, step):
        state = parts.state
        count = imagegen.grid_count(state.grid_images, parts.labels)
        images = self._sample(parts, self._generator(parts, model), imagegen.generators(state.seed, range(count)),
                              imagegen.image_labels(parts.labels, count, None), count)
        imagegen.write_evaluation_grid(images, run_dir, step, parts.labels)

    def _sample(self, parts, g, generators, classes, batch_size: int):
        """uint8 images from `g`, one per generator (its noise) and class."""
        import torch

        device = next(g.parameters()).device
        out = []
        with imagegen.evaluating(g), torch.no_grad():
            for start in range(0, len(generators), batch_size):
                noise = _noise(g, generators[start:start + batch_size]).to(device, next(g.parameters()).dtype)
                labels = None if classes is None else torch.tensor(classes[start:start + batch_size], device=device)
                out.append(imagegen.to_uint8(g(noise, labels)).cpu())
        return torch.cat(out)

    # ------------------------------------------------------------------------------ save
    def save(self, parts, run_dir, model=None, state_dict=None):
        """The generator (its EMA when train.ema_decay is set) as the run dir's model, the
        discriminator in discriminator/."""
        if model is None:
            return
        if parts.state.ema is not None:
            parts.state.ema.module.save_pretrained(str(run_dir), safe_serialization=True)
        else:
            model.save_pretrained(str(run_dir), state_dict=state_dict, safe_serialization=True)
        parts.state.discriminator.save_pretrained(str(Path(run_dir) / "discriminator"), safe_serialization=True)

    def card_metadata(self, parts, cfg):
        meta = super().card_metadata(parts, cfg)
        return {**meta, "library_name": "hftool", "pipeline_tag": "unconditional-image-generation"}

    def card_usage(self, parts, cfg):
        labels = "torch.arange(8) % generator.config.num_classes" if parts.labels else "None"
        return imagegen.CARD_GRID + (
            "```bash\n" + imagegen.CARD_GENERATE + "```\n\n"
            "In Python, `import hftool` registers the DCGAN with transformers' AutoModel (no remote code):\n\n"
            "```python\nimport torch\nfrom transformers import AutoModel\n\nimport hftool  # noqa: F401\n\n"
            "generator = AutoModel.from_pretrained(\".\")  # the generator; the discriminator is in discriminator/\n"
            f"images = generator.sample(8, labels={labels}, generator=torch.Generator().manual_seed(0))\n"
            "print(images.shape)  # [8, channels, side, side] in [-1, 1]\n```\n")

    # ------------------------------------------------------------------------- inference
    def predict(self, parts, cfg, inputs, batch_size, **options):
        raise HftoolError("a gan model generates images: use `hftool generate RUN --num-images 16 -o samples.png`")

    def generate(self, parts, cfg, prompts, on_text=None, options=None, num_images=None, label=None, output=None,
                 seed=None, batch_size=8):
        """`num_images` images (of class `label`, else each class in turn), seeded per image by
        `seed`; with `output`, written as a grid and one PNG each."""
        import random

        count = imagegen.check_generate(prompts, on_text, num_images, output)
        classes = imagegen.image_labels(parts.labels, count, label)
        seed = random.randrange(2**31) if seed is None else seed
        images = self._sample(parts, parts.model, imagegen.generators(seed, range(count)), classes, batch_size)
        return imagegen.write_samples(images, output, parts.labels, classes)

    def format_generation(self, results):
        return imagegen.format_images(results)


def collate(features: list[dict]) -> dict:
    import torch

    batch = {"pixel_values": torch.stack([f["pixel_values"] for f in features]),
             "index": torch.tensor([f["index"] for f in features], dtype=torch.long)}
    if "labels" in features[0]:
        batch["labels"] = torch.tensor([f["labels"] for f in features], dtype=torch.long)
    return batch


def _noise(generator, generators):
    import torch

    return torch.stack([torch.randn(generator.config.latent_dim, generator=g) for g in generators])


def _d_loss(kind: str, logits, real: bool, mean: bool = True):
    """The discriminator's loss on real (or generated) images' logits, per image or averaged."""
    import torch.nn.functional as F

    if kind == "hinge":
        losses = F.relu(1 - logits) if real else F.relu(1 + logits)
    else:  # cross-entropy with target 1 for real, 0 for generated
        losses = F.softplus(-logits) if real else F.softplus(logits)
    return losses.mean() if mean else losses


def _g_loss(kind: str, logits, mean: bool = True):
    """The generator's loss on its images' logits: hinge -D(G(z)); non-saturating -log D(G(z))."""
    import torch.nn.functional as F

    losses = -logits if kind == "hinge" else F.softplus(-logits)
    return losses.mean() if mean else losses

