"""Coloured shapes on noisy backgrounds: the embedded image-classification sample.

Each image holds one shape whose kind is the class (8 kinds, so top-5 accuracy is meaningful).
Colour, size, position, a small tilt and the background are random and independent of the
class, so a model has to learn outlines, not colours. The shape stays well inside the frame, so the
default crops (centre crop, random crops keeping most of the area) keep it whole.
"""

from __future__ import annotations

import io
import math
import random

SHAPES = ["circle", "square", "triangle", "diamond", "cross", "star", "ring", "bar"]
SIZE = 48  # pixels; small keeps generation (~1 ms an image) and a tiny ViT cheap
SIZES = {"train": (2400, 0), "validation": (400, 1), "test": (400, 2)}


def _polygon(kind: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    if kind == "star":
        radii, n = [r if i % 2 == 0 else r * 0.45 for i in range(10)], 10
        angle -= math.pi / 2  # a point up
    else:
        n = {"square": 4, "triangle": 3, "diamond": 4}[kind]
        radii = [r] * n
        angle += math.pi / 4 if kind == "square" else -math.pi / 2  # square: flat top; others: a point up
    if kind == "diamond":
        radii = [r, r * 0.6, r, r * 0.6]  # taller than wide
    return [(cx + radii[i] * math.cos(angle + 2 * math.pi * i / n), cy + radii[i] * math.sin(angle + 2 * math.pi * i / n))
            for i in range(n)]


def draw(kind: str, rng: random.Random):
    """One RGB PIL image of `kind`."""
    import numpy as np
    from PIL import Image, ImageDraw

    base = np.array([rng.randrange(256) for _ in range(3)], dtype=np.float32)
    noise = np.random.default_rng(rng.randrange(2**32)).normal(0, 18, (SIZE, SIZE, 3))
    image = Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8))
    colour = tuple(int(c) for c in (base + 128 + np.array([rng.randrange(-60, 60) for _ in range(3)])) % 256)
    pen = ImageDraw.Draw(image)
    r = rng.uniform(0.22, 0.32) * SIZE
    cx, cy = (rng.uniform(SIZE / 2 - 0.12 * SIZE, SIZE / 2 + 0.12 * SIZE) for _ in range(2))
    # Shapes only tilt a little (turned 45 degrees, a square would be a diamond and a cross an X):
    # upright templates are what a tiny ViT can learn from scratch in a minute.
    angle = rng.uniform(-0.25, 0.25)
    if kind == "circle":
        pen.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour)
    elif kind == "ring":
        pen.ellipse([cx - r, cy - r, cx + r, cy + r], outline=colour, width=max(2, int(r * 0.3)))
    elif kind in ("cross", "bar"):
        arms = (angle, angle + math.pi / 2) if kind == "cross" else (angle,)  # a plus sign; a lying bar
        for a in arms:
            dx, dy = r * math.cos(a), r * math.sin(a)
            pen.line([cx - dx, cy - dy, cx + dx, cy + dy], fill=colour, width=max(3, int(r * 0.35)))
    else:
        pen.polygon(_polygon(kind, cx, cy, r, angle), fill=colour)
    return image


def generate(n: int, seed: int, painter=None, names: list[str] | None = None) -> dict[str, list]:
    """`n` images as PNG bytes (classes balanced, order shuffled) and their class names; another
    sample (sprites) passes its own `painter` (draw) and class `names`."""
    painter, names = painter or draw, names or SHAPES
    rng = random.Random(seed)
    kinds = [names[i % len(names)] for i in range(n)]
    rng.shuffle(kinds)
    images = []
    for kind in kinds:
        buffer = io.BytesIO()
        painter(kind, rng).save(buffer, format="PNG")
        images.append({"bytes": buffer.getvalue(), "path": None})
    return {"image": images, "label": kinds}


def load(painter=None, names: list[str] | None = None, sizes: dict | None = None):
    """The sample's splits; another sample passes its own `painter`, class `names` and `sizes`."""
    import datasets

    names = names or SHAPES
    features = datasets.Features({"image": datasets.Image(decode=False), "label": datasets.ClassLabel(names=names)})
    return datasets.DatasetDict({split: datasets.Dataset.from_dict(generate(n, seed, painter, names), features=features)
                                 for split, (n, seed) in (sizes or SIZES).items()})
