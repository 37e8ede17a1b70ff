"""A pinwheel turning: the embedded video-classification sample, written as MP4 files.

Each clip shows a four-bladed pinwheel filling the frame, turned by a fixed step every frame; the
step is the class: 11.25 degrees clockwise or anticlockwise, or three times that (fast) either way.
The blades repeat every 90 degrees, so the wheel takes 8 distinct angles, and every clip is at
least 16 frames long: any 8 consecutive frames show each of the 8 angles exactly once whatever the
class. A single frame, or a clip's frames in shuffled order, tell the classes apart no better than
chance (0.25); only the order of the frames does. (Straight motion in four directions would not do:
its axis shows in shuffled frames, and a model learns half of the answer from them.) Every part of
the frame moves, so each patch a video transformer embeds sees the turning.

Colours, centre, clip lengths and frame rates (8 to 15 fps) are random and independent of the
class. The MP4 files go to `<datasets cache>/hftool-samples/motion-v2/` (HF_DATASETS_CACHE, under
HF_HOME), written once into a temporary folder and renamed into place, so processes that load the
sample at the same time never see half of it; delete the folder to make them again.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import tempfile
from pathlib import Path

CLASSES = ["clockwise", "anticlockwise", "clockwise-fast", "anticlockwise-fast"]
STEPS = {"clockwise": 1, "anticlockwise": -1, "clockwise-fast": 3, "anticlockwise-fast": -3}  # in 1/8 of a turn
BLADES = 4
ANGLES = 8  # distinct angles of the wheel: one step is (360 / BLADES) / ANGLES degrees
SIZE = 32  # pixels; even (MP4's 4:2:0 colour needs it)
FRAMES = (16, 32)  # frames per clip, inclusive
RATES = (8, 10, 12, 15)  # frames per second
SIZES = {"train": (800, 0), "validation": (200, 1), "test": (200, 2)}
VERSION = "motion-v2"  # a new version when the clips change: the old cache is then left alone


def draw(angle: float, centre: tuple[float, float], background, colour, noise):
    """One RGB frame (numpy HxWx3) with the wheel turned to `angle` (radians, clockwise)."""
    import numpy as np

    y, x = np.mgrid[0:SIZE, 0:SIZE] + 0.5
    theta = np.arctan2(y - centre[1], x - centre[0])  # y grows downwards: a growing angle turns clockwise
    blade = 0.5 + 0.5 * np.tanh(3 * np.sin(BLADES * (theta - angle)))  # soft edges: no aliasing to learn from
    frame = background + blade[..., None] * (colour - background) + noise
    return np.clip(frame, 0, 255).astype(np.uint8)


def write_clip(path: Path, frames: list, fps: int) -> None:
    """Frames (HxWx3 uint8) -> an H.264 MP4 file (PyAV, which bundles FFmpeg)."""
    import av

    with av.open(str(path), "w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=fps, options={"crf": "18", "preset": "veryfast"})
        stream.width, stream.height, stream.pix_fmt = frames[0].shape[1], frames[0].shape[0], "yuv420p"
        for array in frames:
            out.mux(stream.encode(av.VideoFrame.from_ndarray(array, format="rgb24")))
        out.mux(stream.encode())


def generate(folder: Path, n: int, seed: int) -> dict[str, list]:
    """`n` clips written to `folder` as 0000.mp4, 0001.mp4, ... (classes balanced, order shuffled):
    their paths and class names."""
    import numpy as np

    rng = random.Random(seed)
    classes = [CLASSES[i % len(CLASSES)] for i in range(n)]
    rng.shuffle(classes)
    paths = []
    for i, name in enumerate(classes):
        background = np.array([rng.randrange(256) for _ in range(3)], dtype=np.float32)
        colour = (background + 128 + np.array([rng.randrange(-50, 50) for _ in range(3)])) % 256
        centre = (rng.uniform(0.4, 0.6) * SIZE, rng.uniform(0.4, 0.6) * SIZE)
        start, count = rng.randrange(ANGLES), rng.randint(*FRAMES)
        noise = np.random.default_rng(rng.randrange(2**32)).normal(0, 6, (count, SIZE, SIZE, 1))
        offset = rng.uniform(0, 2 * math.pi / BLADES / ANGLES)  # angles need not line up with the frame's axes
        frames = [draw(offset + 2 * math.pi / BLADES / ANGLES * ((start + k * STEPS[name]) % ANGLES), centre,
                       background, colour, noise[k]) for k in range(count)]
        path = folder / f"{i:04d}.mp4"
        write_clip(path, frames, rng.choice(RATES))
        paths.append(str(path))
    return {"video": paths, "label": classes}


def cache_dir() -> Path:
    import datasets

    return Path(datasets.config.HF_DATASETS_CACHE) / "hftool-samples" / VERSION


def load():
    import datasets

    root = cache_dir()
    if not root.is_dir():
        root.parent.mkdir(parents=True, exist_ok=True)
        building = Path(tempfile.mkdtemp(prefix=f".{VERSION}-", dir=root.parent))
        try:
            for split, (n, seed) in SIZES.items():
                (building / split).mkdir()
                labels = generate(building / split, n, seed)["label"]
                (building / split / "labels.json").write_text(json.dumps(labels), encoding="utf-8")
            os.rename(building, root)  # atomic; fails if another process got there first
        except OSError:
            if not root.is_dir():
                raise
        finally:
            shutil.rmtree(building, ignore_errors=True)
    features = datasets.Features({"video": datasets.Value("string"), "label": datasets.ClassLabel(names=CLASSES)})
    splits = {}
    for split in SIZES:
        classes = json.loads((root / split / "labels.json").read_text(encoding="utf-8"))
        paths = [str(root / split / f"{i:04d}.mp4") for i in range(len(classes))]
        splits[split] = datasets.Dataset.from_dict({"video": paths, "label": classes}, features=features)
    return datasets.DatasetDict(splits)
