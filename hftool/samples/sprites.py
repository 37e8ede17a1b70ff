"""Small grey shapes on black: the embedded sample of the image-generation recipes (igpt, gan).

16 px greyscale images of four kinds of shape (the class). Size, position, a small tilt and the
brightness of shape and background vary, independently of the class, so a generator has a real
distribution to learn and a classifier of the four shapes can tell whether a sample is one. The
shapes are drawn four times larger and scaled down, so their edges are smooth grey steps, not
stairs. Small and grey keep Image GPT's sequences short (256 tokens) and a GAN quick on a CPU.
"""

from __future__ import annotations

import math
import random

from hftool.samples import shapes
from hftool.samples.shapes import _polygon

SHAPES = ["circle", "square", "triangle", "cross"]
SIZE = 16  # pixels
SUPERSAMPLE = 4
SIZES = {"train": (2000, 10), "validation": (400, 11), "test": (400, 12)}


def draw(kind: str, rng: random.Random):
    """One greyscale (mode L) PIL image of `kind`."""
    from PIL import Image, ImageDraw

    big = SIZE * SUPERSAMPLE
    image = Image.new("L", (big, big), rng.randrange(0, 40))
    pen = ImageDraw.Draw(image)
    shade = rng.randrange(170, 256)
    r = rng.uniform(0.27, 0.38) * big
    cx, cy = (rng.uniform(big / 2 - 0.08 * big, big / 2 + 0.08 * big) for _ in range(2))
    angle = rng.uniform(-0.25, 0.25)  # a small tilt: a square turned 45 degrees would be a diamond
    if kind == "circle":
        pen.ellipse([cx - r, cy - r, cx + r, cy + r], fill=shade)
    elif kind == "cross":
        for a in (angle, angle + math.pi / 2):
            dx, dy = r * math.cos(a), r * math.sin(a)
            pen.line([cx - dx, cy - dy, cx + dx, cy + dy], fill=shade, width=int(r * 0.45))
    else:
        pen.polygon(_polygon(kind, cx, cy, r * (1.15 if kind == "triangle" else 1.0), angle), fill=shade)
    return image.resize((SIZE, SIZE), Image.Resampling.BOX)


def generate(n: int, seed: int) -> dict[str, list]:
    """`n` images as PNG bytes (classes balanced, order shuffled) and their class names."""
    return shapes.generate(n, seed, draw, SHAPES)


def load():
    return shapes.load(draw, SHAPES, SIZES)
