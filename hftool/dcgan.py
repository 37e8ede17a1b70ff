"""A DCGAN generator and discriminator as transformers models (Radford et al., 2016).

Each is a `PreTrainedModel`, so a gan run dir loads like any model dir:

    from hftool.dcgan import DCGANGenerator
    generator = DCGANGenerator.from_pretrained("runs/gan")      # the run dir's config.json
    images = generator.sample(16, labels=torch.arange(16) % 4)  # [16, C, H, W] in [-1, 1]

The generator maps a noise vector (and, when conditional, a class) to an image through a linear
projection to a small feature map and strided transposed convolutions that double it, with batch
norm and ReLU, and tanh at the end. The discriminator mirrors it with strided convolutions and
leaky ReLU; a conditional one adds the projection of Miyato & Koyama (2018): the inner product
of a class embedding with its features, which conditions better than concatenating the label.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, PreTrainedConfig, PreTrainedModel


class DCGANConfig(PreTrainedConfig):
    """One config for both networks of a DCGAN (each saves its own copy)."""

    model_type = "hftool-dcgan"
    image_size: int = 16  # side of the square images, divisible by 4
    channels: int = 1  # 1: greyscale, 3: RGB
    latent_dim: int = 64  # length of the generator's noise vector
    width: int = 32  # channels of the discriminator's first layer and the generator's last
    num_classes: int = 0  # classes the networks are conditioned on; 0: unconditional
    # DCGAN's N(0, 0.02) weights, class embeddings included: the generator's starting at N(0, 1),
    # as loud as the noise, collapsed every class to one image (the batch norm after the first
    # layer then normalises away what the noise adds).
    initializer_range: float = 0.02


def layout(image_size: int) -> tuple[int, int]:
    """(stride-2 stages, side of the smallest feature map): 16 -> (2, 4), 28 -> (2, 7), 64 -> (4, 4)."""
    stages, side = 0, image_size
    while side % 2 == 0 and side // 2 >= 4:
        stages, side = stages + 1, side // 2
    return stages, side


class _DCGANModel(PreTrainedModel):
    config_class = DCGANConfig
    config: DCGANConfig
    base_model_prefix = "dcgan"
    main_input_name = "noise"


class DCGANGenerator(_DCGANModel):
    def __init__(self, config: DCGANConfig):
        super().__init__(config)
        stages, self.side = layout(config.image_size)
        channels = config.width * 2 ** stages
        self.label_embedding = nn.Embedding(config.num_classes, config.latent_dim) if config.num_classes else None
        inputs = config.latent_dim * (2 if config.num_classes else 1)  # noise, then the class embedding
        self.project = nn.Linear(inputs, channels * self.side * self.side, bias=False)
        blocks: list[nn.Module] = [nn.Unflatten(1, (channels, self.side, self.side)), nn.BatchNorm2d(channels), nn.ReLU()]
        for _ in range(stages):
            blocks += [nn.ConvTranspose2d(channels, channels // 2, 4, 2, 1, bias=False), nn.BatchNorm2d(channels // 2),
                       nn.ReLU()]
            channels //= 2
        blocks += [nn.Conv2d(channels, config.channels, 3, 1, 1), nn.Tanh()]
        self.blocks = nn.Sequential(*blocks)
        self.post_init()

    def forward(self, noise: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Noise [B, latent_dim] (and class ids [B]) -> images [B, C, H, W] in [-1, 1]."""
        if self.label_embedding is not None:
            noise = torch.cat([noise, self.label_embedding(labels)], dim=1)
        return self.blocks(self.project(noise))

    @torch.no_grad()
    def sample(self, count: int, labels: torch.Tensor | None = None, generator: torch.Generator | None = None):
        """`count` images from standard normal noise drawn with `generator`."""
        noise = torch.randn(count, self.config.latent_dim, generator=generator).to(self.device, self.dtype)
        return self(noise, None if labels is None else labels.to(self.device))


class DCGANDiscriminator(_DCGANModel):
    main_input_name = "pixel_values"

    def __init__(self, config: DCGANConfig):
        super().__init__(config)
        stages, side = layout(config.image_size)
        channels = config.width
        blocks: list[nn.Module] = [nn.Conv2d(config.channels, channels, 4, 2, 1), nn.LeakyReLU(0.2)]
        for _ in range(stages - 1):  # no batch norm on the first layer, as in DCGAN
            blocks += [nn.Conv2d(channels, channels * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(channels * 2),
                       nn.LeakyReLU(0.2)]
            channels *= 2
        self.blocks = nn.Sequential(*blocks, nn.Flatten())
        features = channels * side * side
        self.head = nn.Linear(features, 1)
        self.label_embedding = nn.Embedding(config.num_classes, features) if config.num_classes else None
        self.post_init()

    def forward(self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Images [B, C, H, W] in [-1, 1] (and class ids [B]) -> logits [B]: real above 0."""
        features = self.blocks(pixel_values)
        logits = self.head(features).squeeze(1)
        if self.label_embedding is not None:
            logits = logits + (self.label_embedding(labels) * features).sum(1)
        return logits


# `import hftool` runs this (see hftool/__init__.py): AutoModel.from_pretrained(RUN) then loads a
# gan run's generator without remote code.
AutoConfig.register(DCGANConfig.model_type, DCGANConfig, exist_ok=True)
AutoModel.register(DCGANConfig, DCGANGenerator, exist_ok=True)
