"""Every task's reader at two sizes 10x apart: wall time, CPU time and peak RSS, and its growth.

    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/reader_scale.py            # every task, both sizes
    python benchmarks/reader_scale.py --only seq2seq,object-detection/coco    # some of them
    python benchmarks/reader_scale.py --scale 0.1                             # sizes 10x smaller
    python benchmarks/reader_scale.py --code /tmp/before                      # another checkout's hftool

What is measured is what a training run does before its first step, minus the model: with
hftool.training (torch, accelerate) imported, as a run has it before reading, the task's
recipe with `data.train` pointing at generated data, then `hftool.data.load_splits` (reading and
the validation hold-out), the task's `prepare` of the full, train and validation rows, and its
`train_features` / `eval_features` (tokenized text, packed blocks, windows, quantised images...),
touching the last feature row. `build` runs on the first 2,000 prepared rows only (a tiny model
and, for text, a tokenizer learned from them), so what grows with the data is the data's.

Each measurement is a whole child process with its own empty datasets cache, timed by the
parent (wall s, CPU s, peak RSS from wait4: benchmarks/common.py's run_child). The child also
notes its peak RSS after reading, after prepare and after the features, to say where growth is.

Data are generated (seeded) under benchmarks/results/reader_scale/ and kept for the next run:
text rows recombine words of a fixed vocabulary; image files are hard links of one 8x8 PNG (a
100k-file folder costs directory entries only, and every reader still sees distinct paths);
videos are hard links of one clip of the embedded motion sample.

Prints one JSON line per measurement and a markdown table at the end.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, RESULTS, run_child  # noqa: E402

CHILD = """
import json, resource, sys
import hftool.training  # a run has torch and the loop imported before it reads: the reader's memory comes on top
from hftool.config import load_config
from hftool.data import load_splits
from hftool.tasks import get_task

recipe, overrides, notes = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
peak = {}
def note(stage):
    peak[stage] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
note("start")
cfg = load_config(recipe, overrides=overrides)
task = get_task(cfg.task)
raw, sources = load_splits(cfg.data, task.reading(cfg), cfg.train.seed, None)
note("read")
_, labels = task.prepare(cfg, raw["full"], sources["train"]) if "full" in raw else (None, None)
train, labels = task.prepare(cfg, raw["train"], sources["train"], labels)
evals, _ = task.prepare(cfg, raw["validation"], sources["validation"], labels)
note("prepared")
parts = task.build(cfg, labels, train.select(range(min(len(train), 2000))))
features = task.train_features(parts, cfg, train)
eval_features = task.eval_features(parts, cfg, evals)
features[len(features) - 1], eval_features[len(eval_features) - 1]
note("features")
with open(notes, "w") as out:
    json.dump({"rows": len(raw["full"] if "full" in raw else raw["train"]), "train_features": len(features), "peak": peak}, out)
"""

WORDS = [f"{a}{b}" for a in ("ka", "lo", "mi", "ne", "su", "ta", "ro", "vi") for b in ("n", "ra", "te", "lo", "s", "mu")]
TAGS = ("O", "O", "O", "B-PER", "I-PER", "B-LOC", "B-ORG")


def _sentence(rng: random.Random, low: int = 4, high: int = 14) -> list[str]:
    return [rng.choice(WORDS) for _ in range(rng.randint(low, high))]


def _written(path: Path, write: Callable[[Path], None]) -> Path:
    """`path`, made by `write(partial)` and renamed, unless it is there already (kept between runs)."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".partial")
        if partial.is_dir():
            shutil.rmtree(partial)
        write(partial)
        os.replace(partial, path)
    return path


def _lines(path: Path, lines) -> None:
    with path.open("w", encoding="utf-8") as out:
        out.writelines(line + "\n" for line in lines)


def text_csv(rows: int, path: Path) -> None:
    import csv

    rng = random.Random(0)
    with path.open("w", newline="", encoding="utf-8") as out:
        writer = csv.writer(out)
        writer.writerow(["text", "label"])
        for _ in range(rows):
            words = _sentence(rng, 8, 24)
            writer.writerow([" ".join(words), "pos" if words[0] < words[-1] else "neg"])


def conll(rows: int, path: Path) -> None:
    rng = random.Random(0)
    with path.open("w", encoding="utf-8") as out:
        for _ in range(rows):
            out.writelines(f"{word} {rng.choice(TAGS)}\n" for word in _sentence(rng))
            out.write("\n")


def paragraphs(rows: int, path: Path) -> None:
    rng = random.Random(0)
    _lines(path, ("\n".join(" ".join(_sentence(rng)) + "." for _ in range(3)) + "\n" for _ in range(rows)))


def parallel(rows: int, folder: Path) -> None:
    rng = random.Random(0)
    folder.mkdir(parents=True)
    pairs = [_sentence(rng) for _ in range(rows)]
    _lines(folder / "train.en", (" ".join(words) for words in pairs))
    _lines(folder / "train.de", (" ".join(reversed(words)) for words in pairs))


def translation_jsonl(rows: int, path: Path) -> None:
    rng = random.Random(0)
    _lines(path, (json.dumps({"en": " ".join(w), "de": " ".join(reversed(w))}) for w in (_sentence(rng) for _ in range(rows))))


def series_csv(rows: int, path: Path) -> None:
    import numpy as np
    import pandas as pd

    dates = pd.date_range("2000-01-01", periods=rows, freq="h")
    values = np.sin(np.arange(rows) * 2 * np.pi / 24) + np.random.default_rng(0).normal(0, 0.1, rows)
    pd.DataFrame({"date": dates.strftime("%Y-%m-%d %H:%M"), "value": values.round(4)}).to_csv(path, index=False)


def _png(folder: Path) -> Path:
    """One 8x8 RGB PNG that every image file links to."""
    from PIL import Image

    path = folder / "one.png"
    if not path.exists():
        folder.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8), (200, 40, 90)).save(path)
    return path


def _link_files(source: Path, paths) -> None:
    for n, path in enumerate(paths):
        if n % 50_000 == 0:  # ext4 allows a file 65,000 links: a copy of `source` for every 50,000
            linked = source.with_name(f"{source.stem}-{n // 50_000}{source.suffix}")
            if not linked.exists():
                shutil.copyfile(source, linked)
        path.parent.mkdir(parents=True, exist_ok=True)
        os.link(linked, path)


def image_folder(rows: int, folder: Path, classes: int = 8) -> None:
    png = _png(folder.parent)
    _link_files(png, (folder / f"class{i % classes}" / f"{i:07d}.png" for i in range(rows)))


def captions_jsonl(rows: int, folder: Path) -> None:
    png = _png(folder.parent)
    rng = random.Random(0)
    _link_files(png, (folder / "images" / f"{i:07d}.png" for i in range(rows)))
    _lines(folder / "train.jsonl", (json.dumps({"image": f"images/{i:07d}.png",
                                                "captions": [" ".join(_sentence(rng, 4, 9)) for _ in range(2)]})
                                    for i in range(rows)))


def _boxes(rng: random.Random) -> list[tuple[int, float, float, float, float]]:
    """1-3 (class, x, y, w, h) boxes in an 8x8 image."""
    return [(rng.randrange(3), rng.uniform(0, 4), rng.uniform(0, 4), rng.uniform(1, 4), rng.uniform(1, 4))
            for _ in range(rng.randint(1, 3))]


def coco(rows: int, folder: Path) -> None:
    png = _png(folder.parent)
    rng = random.Random(0)
    _link_files(png, (folder / f"{i:07d}.png" for i in range(rows)))
    images, annotations = [], []
    for i in range(rows):
        images.append({"id": i + 1, "file_name": f"{i:07d}.png", "width": 8, "height": 8})
        for c, x, y, w, h in _boxes(rng):
            annotations.append({"id": len(annotations) + 1, "image_id": i + 1, "category_id": c + 1,
                                "bbox": [round(v, 2) for v in (x, y, w, h)], "area": round(w * h, 2), "iscrowd": 0})
    categories = [{"id": c + 1, "name": name} for c, name in enumerate(("cat", "dog", "bird"))]
    (folder / "train.json").write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))


def yolo(rows: int, folder: Path) -> None:
    png = _png(folder.parent)
    rng = random.Random(0)
    _link_files(png, (folder / "images" / f"{i:07d}.png" for i in range(rows)))
    (folder / "labels").mkdir(parents=True)
    for i in range(rows):
        _lines(folder / "labels" / f"{i:07d}.txt",
               (f"{c} {(x + w / 2) / 8:.4f} {(y + h / 2) / 8:.4f} {w / 8:.4f} {h / 8:.4f}" for c, x, y, w, h in _boxes(rng)))
    (folder / "classes.txt").write_text("cat\ndog\nbird\n")


def voc(rows: int, folder: Path) -> None:
    png = _png(folder.parent)
    rng = random.Random(0)
    _link_files(png, (folder / "JPEGImages" / f"{i:07d}.png" for i in range(rows)))
    (folder / "Annotations").mkdir(parents=True)
    names = ("cat", "dog", "bird")
    for i in range(rows):
        objects = "".join(f"<object><name>{names[c]}</name><difficult>0</difficult><bndbox><xmin>{x:.1f}</xmin>"
                          f"<ymin>{y:.1f}</ymin><xmax>{x + w:.1f}</xmax><ymax>{y + h:.1f}</ymax></bndbox></object>"
                          for c, x, y, w, h in _boxes(rng))
        (folder / "Annotations" / f"{i:07d}.xml").write_text(
            f"<annotation><filename>{i:07d}.png</filename><size><width>8</width><height>8</height></size>{objects}"
            "</annotation>")


def video_folder(rows: int, folder: Path, classes: int = 4) -> None:
    clip = folder.parent / "one.mp4"
    if not clip.exists():
        from hftool.samples import load_sample

        first = load_sample("motion")["train"][0]["video"]
        source = first["path"] if isinstance(first, dict) else first
        clip.write_bytes(Path(source).read_bytes())
    _link_files(clip, (folder / f"class{i % classes}" / f"{i:07d}.mp4" for i in range(rows)))


# name -> (recipe, how to generate `rows`, the generated file or folder's name, overrides, the smaller size)
CASES: dict[str, tuple[str, Callable[[int, Path], None], str, list[str], int]] = {
    "text-classification/csv": ("bert-cls", text_csv, "rows.csv", [], 20_000),
    "token-classification/conll": ("bert-ner", conll, "rows.conll", [], 20_000),
    "causal-lm/txt": ("gpt2", paragraphs, "rows.txt", [], 20_000),
    "seq2seq/parallel": ("seq2seq", parallel, "rows", ["data.source_lang=en", "data.target_lang=de"], 20_000),
    "seq2seq/jsonl": ("seq2seq", translation_jsonl, "rows.jsonl", ["data.source_lang=en", "data.target_lang=de"], 20_000),
    "time-series-forecasting/csv": ("lstm-forecast", series_csv, "rows.csv", ["data.freq=h"], 20_000),
    "image-classification/folder": ("vit-cls", image_folder, "rows", [], 10_000),
    "image-gpt/folder": ("igpt", image_folder, "rows", [], 10_000),
    "gan/folder": ("gan", image_folder, "rows", [], 10_000),
    "image-captioning/jsonl": ("caption", captions_jsonl, "rows", [], 10_000),
    "object-detection/coco": ("detr", coco, "rows", [], 5_000),
    "object-detection/yolo": ("detr", yolo, "rows", [], 5_000),
    "object-detection/voc": ("detr", voc, "rows", [], 5_000),
    "video-classification/folder": ("video-cls", video_folder, "rows", [], 1_000),
}


def data_spec(name: str, made: Path) -> str:
    """What --data names for a generated case: the file, or the folder (COCO: its JSON file;
    captions: the JSONL file beside its images)."""
    if name.endswith("/coco"):
        return str(made / "train.json")
    if name.startswith("image-captioning"):
        return str(made / "train.jsonl")
    return str(made)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--only", help="comma-separated case names or prefixes (e.g. seq2seq,object-detection/coco)")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every size (0.1: a quick look)")
    parser.add_argument("--data-dir", default=str(RESULTS / "reader_scale"))
    parser.add_argument("--code", default=str(REPO), help="the hftool checkout to measure (default: this one)")
    parser.add_argument("--table", help="print the table of a saved run's JSON lines (this script's output) and stop")
    args = parser.parse_args()
    if args.table:
        print(table([json.loads(line) for line in Path(args.table).read_text().splitlines() if line.startswith("{")]))
        return
    wanted = [w for w in (args.only or "").split(",") if w]
    results = []
    for name, (recipe, generate, file_name, overrides, small) in CASES.items():
        if wanted and not any(name == w or name.startswith(w.rstrip("/") + "/") for w in wanted):
            continue
        size = max(10, math.ceil(small * args.scale))
        for rows in (size, 10 * size):
            made = _written(Path(args.data_dir) / name.replace("/", "-") / str(rows) / file_name,
                            lambda partial, rows=rows, generate=generate: generate(rows, partial))
            with tempfile.TemporaryDirectory() as work:
                notes = Path(work) / "notes.json"
                figures = run_child([sys.executable, "-c", CHILD, recipe,
                                     json.dumps([f"data.train={data_spec(name, made)}", *overrides]), str(notes)],
                                    Path(work) / "cache", Path(args.code))
                stages = json.loads(notes.read_text())
            results.append({"case": name, "size": rows, **figures, **stages})
            print(json.dumps(results[-1]), flush=True)
    print(f"\nhftool from {args.code}; OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}\n")
    print(table(results))


def table(results: list[dict]) -> str:
    """The markdown table of `results` (JSON lines of this script), growth from each case's first size.

    The reader's peak RSS is the child's own (getrusage(RUSAGE_SELF) when it is done); wait4's
    figure, beside it, also counts any process the child forked (its pages as they were then)."""
    lines = [("| task / format | rows or files | wall s | CPU s | peak RSS MB | wait4 peak MB | "
              "after read / prepare / features MB | growth MB (10x) |"), "|---|---|---|---|---|---|---|---|"]
    first: dict[str, float] = {}
    for r in results:
        peak = r["peak"]
        growth = f"{peak['features'] - first[r['case']]:+.0f}" if r["case"] in first else ""
        first.setdefault(r["case"], peak["features"])
        lines.append(f"| {r['case']} | {r['size']:,} | {r['wall_s']} | {r['cpu_s']} | {peak['features']} | "
                     f"{r['peak_rss_mb']:.0f} | {peak['read']} / {peak['prepared']} / {peak['features']} | {growth} |")
    return "\n".join(lines)

if __name__ == "__main__":
    main()
