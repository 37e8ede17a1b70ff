"""Coloured rectangles and circles with known boxes: the embedded object-detection sample.

Each 96-pixel image holds one or two objects that do not overlap, on a plain noisy background.
The class is the shape (rectangle or circle); colour, size and position are random, so a model
has to learn outlines. Rows follow the hub's detection layout (cppe-5): `image` and `objects`
{bbox: [x, y, width, height] in pixels, category: ClassLabel}.

The training part is small on purpose: DETR from scratch learns slowly, and a few dozen fixed
images are what a tiny DETR can visibly fit within minutes on a CPU (see STACK.md's probe).
"""

from __future__ import annotations

import io
import random

CLASSES = ["rectangle", "circle"]
SIZE = 96
SIZES = {"train": (16, 0), "validation": (16, 1), "test": (16, 2)}


def _place(rng: random.Random, taken: list[list[float]]) -> list[float] | None:
    """A box (x, y, w, h) inside the image that overlaps none of `taken`, or None after a few tries."""
    for _ in range(20):
        w, h = rng.uniform(0.22, 0.45) * SIZE, rng.uniform(0.22, 0.45) * SIZE
        x, y = rng.uniform(2, SIZE - w - 2), rng.uniform(2, SIZE - h - 2)
        if all(x + w <= a or a + c <= x or y + h <= b or b + d <= y for a, b, c, d in taken):
            return [x, y, w, h]
    return None


def draw(rng: random.Random):
    """One RGB PIL image and its objects: boxes (x, y, w, h, rounded to the drawn pixels) and class ids."""
    import numpy as np
    from PIL import Image, ImageDraw

    base = np.array([rng.randrange(40, 216) for _ in range(3)], dtype=np.float32)
    noise = np.random.default_rng(rng.randrange(2**32)).normal(0, 12, (SIZE, SIZE, 3))
    image = Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8))
    pen = ImageDraw.Draw(image)
    boxes, classes = [], []
    for _ in range(rng.choice((1, 1, 2))):
        box = _place(rng, boxes)
        if box is None:
            break
        kind = rng.randrange(len(CLASSES))
        colour = tuple(int(c) for c in (base + 128 + np.array([rng.randrange(-50, 50) for _ in range(3)])) % 256)
        x0, y0 = round(box[0]), round(box[1])
        x1, y1 = round(box[0] + box[2]), round(box[1] + box[3])
        (pen.rectangle if CLASSES[kind] == "rectangle" else pen.ellipse)([x0, y0, x1 - 1, y1 - 1], fill=colour)
        boxes.append([float(x0), float(y0), float(x1 - x0), float(y1 - y0)])
        classes.append(kind)
    return image, boxes, classes


def generate(n: int, seed: int) -> dict[str, list]:
    rng = random.Random(seed)
    images, objects = [], []
    for _ in range(n):
        image, boxes, classes = draw(rng)
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        images.append({"bytes": buffer.getvalue(), "path": None})
        objects.append({"bbox": boxes, "category": classes})
    return {"image": images, "objects": objects}


def load():
    import datasets

    features = datasets.Features({
        "image": datasets.Image(decode=False),
        "objects": {"bbox": datasets.Sequence(datasets.Sequence(datasets.Value("float32"), length=4)),
                    "category": datasets.Sequence(datasets.ClassLabel(names=CLASSES))}})
    return datasets.DatasetDict({split: datasets.Dataset.from_dict(generate(n, seed), features=features)
                                 for split, (n, seed) in SIZES.items()})
