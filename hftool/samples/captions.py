"""Two coloured shapes and where one is relative to the other: the embedded captioning sample.

Each 64-pixel image holds two shapes (4 colours x 3 kinds, never the same pair twice in an
image), one above, below, left or right of the other, and two reference captions that say the
same thing from either side: "a red circle above a blue square" and "a blue square below a red
circle". A model must see colours, outlines and positions to caption it; the two references make
every image a multiple-reference example, as COCO's five captions are.
"""

from __future__ import annotations

import io
import random

COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 70, 220), "yellow": (235, 215, 40)}
KINDS = ["circle", "square", "triangle"]
# relation of the first shape to the second -> the converse, and the offset direction (dx, dy)
RELATIONS = {"above": ("below", (0, 1)), "below": ("above", (0, -1)),
             "left of": ("right of", (1, 0)), "right of": ("left of", (-1, 0))}
SIZE = 64  # pixels: tiny:vit sees it as an 8 x 8 grid of patches
SIZES = {"train": (2000, 10), "validation": (200, 11), "test": (200, 12)}


def _shape(pen, kind: str, cx: float, cy: float, r: float, colour: tuple[int, int, int]) -> None:
    if kind == "circle":
        pen.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour)
    elif kind == "square":
        pen.rectangle([cx - r * 0.85, cy - r * 0.85, cx + r * 0.85, cy + r * 0.85], fill=colour)
    else:
        pen.polygon([(cx, cy - r), (cx + r, cy + r * 0.8), (cx - r, cy + r * 0.8)], fill=colour)


def draw(first: tuple[str, str], second: tuple[str, str], relation: str, rng: random.Random):
    """One RGB PIL image: shape `first` (colour, kind) placed `relation` shape `second`."""
    import numpy as np
    from PIL import Image, ImageDraw

    grey = rng.randrange(70, 170)
    noise = np.random.default_rng(rng.randrange(2**32)).normal(0, 10, (SIZE, SIZE, 3))
    image = Image.fromarray(np.clip(grey + noise, 0, 255).astype(np.uint8))
    pen = ImageDraw.Draw(image)
    r = rng.uniform(7.0, 9.0)
    dx, dy = RELATIONS[relation][1]
    gap = rng.uniform(2.4, 3.0) * r  # centre to centre along the relation's axis
    # Centred with jitter; the pair stays inside a 10-pixel margin (a centre crop keeps it whole).
    mx, my = SIZE / 2 + rng.uniform(-4, 4), SIZE / 2 + rng.uniform(-4, 4)
    across = rng.uniform(-4, 4)  # the two shapes need not line up exactly
    a = (mx - dx * gap / 2 + dy * across, my - dy * gap / 2 + dx * across)
    b = (mx + dx * gap / 2 - dy * across, my + dy * gap / 2 - dx * across)
    _shape(pen, first[1], *a, r, COLOURS[first[0]])
    _shape(pen, second[1], *b, r, COLOURS[second[0]])
    return image


def generate(n: int, seed: int) -> dict[str, list]:
    """`n` images as PNG bytes and their two captions each."""
    rng = random.Random(seed)
    objects = [(c, k) for c in COLOURS for k in KINDS]
    images, captions = [], []
    for _ in range(n):
        first, second = rng.sample(objects, 2)
        relation = rng.choice(list(RELATIONS))
        buffer = io.BytesIO()
        draw(first, second, relation, rng).save(buffer, format="PNG")
        images.append({"bytes": buffer.getvalue(), "path": None})
        captions.append([f"a {first[0]} {first[1]} {relation} a {second[0]} {second[1]}",
                         f"a {second[0]} {second[1]} {RELATIONS[relation][0]} a {first[0]} {first[1]}"])
    return {"image": images, "captions": captions}


def load():
    import datasets

    features = datasets.Features({"image": datasets.Image(decode=False),
                                  "captions": datasets.Sequence(datasets.Value("string"))})
    return datasets.DatasetDict({split: datasets.Dataset.from_dict(generate(n, seed), features=features)
                                 for split, (n, seed) in SIZES.items()})
