"""Training images/s: hftool's image pipeline + step vs the transformers example's approach.

    python benchmarks/image_pipeline.py                          # ants/bees from ../shared/data
    python benchmarks/image_pipeline.py --data path/to/folder --model timm:resnet18 --rounds 3

A: hftool. The vit-cls task's training features: images stay encoded until a DataLoader worker
   decodes them with torchvision (`decode_image`) and applies v2 transforms to uint8 tensors.
B: the approach of transformers' examples/pytorch/image-classification: a `datasets` Image
   column decoded to PIL images, per-sample torchvision (v1) PIL transforms in `with_transform`
   (RandomResizedCrop, flip, ToTensor, Normalize), and the Trainer's default of no DataLoader
   workers (`dataloader_num_workers=0`). B is written here from that description.

Both feed the same model, optimizer, batch size and images, in the main process, one
optimizer step per batch (`--no-step` times the input pipelines alone). Short rounds alternate
A B A B so that load from other processes hits both alike; the ratio reported is the median of
the per-round ratios. Nothing is downloaded (the model starts from random weights: its speed,
not its accuracy, is measured).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout's hftool

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "image_classification" / "hymenoptera_subset"


def hftool_loader(task, parts, cfg, rows, batch_size: int, workers: int):
    from torch.utils.data import DataLoader

    features = task.train_features(parts, cfg, rows)
    return DataLoader(features, batch_size=batch_size, shuffle=True, collate_fn=task.collate(parts),
                      num_workers=workers, drop_last=True, persistent_workers=workers > 0)


def example_loader(paths: list[str], labels: list[int], geometry, batch_size: int, workers: int):
    """The transformers example's pipeline: PIL images from a datasets Image column, v1 transforms."""
    import datasets
    import torch
    from torch.utils.data import DataLoader
    from torchvision import transforms

    ds = datasets.Dataset.from_dict({"image": paths, "label": labels}).cast_column("image", datasets.Image())
    train = transforms.Compose([transforms.RandomResizedCrop(geometry.crop), transforms.RandomHorizontalFlip(),
                                transforms.ToTensor(), transforms.Normalize(geometry.mean, geometry.std)])

    def apply(batch):
        batch["pixel_values"] = [train(image.convert("RGB")) for image in batch["image"]]
        return batch

    def collate(examples):
        return {"pixel_values": torch.stack([e["pixel_values"] for e in examples]),
                "labels": torch.tensor([e["label"] for e in examples])}

    return DataLoader(ds.with_transform(apply), batch_size=batch_size, shuffle=True, collate_fn=collate,
                      num_workers=workers, drop_last=True, persistent_workers=workers > 0)


def measure(loader, model, optimizer, batches: int, step: bool = True) -> float:
    """Images/s over `batches` steps (after one warm-up batch that starts workers and allocators)."""
    iterator = iter(loader)
    seen, start = 0, None
    for _ in range(batches + 1):
        try:
            batch = next(iterator)
        except StopIteration:
            iterator = iter(loader)
            batch = next(iterator)
        if step:
            model(**batch).loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        if start is None:
            start = time.perf_counter()
        else:
            seen += batch["labels"].shape[0]
    return seen / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="an image folder (class subfolders, train/ inside)")
    parser.add_argument("--model", default="timm:resnet18", help="model spec, built with random weights")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--batches", type=int, default=3, help="timed batches per round")
    parser.add_argument("--rounds", type=int, default=6, help="A B rounds")
    parser.add_argument("--no-step", dest="step", action="store_false", help="time the input pipelines alone")
    parser.add_argument("--workers", type=int, default=1, help="hftool's DataLoader workers (the vit-cls recipe's)")
    parser.add_argument("--example-workers", type=int, default=0, help="B's workers (Trainer default: 0)")
    args = parser.parse_args()
    if not Path(args.data).is_dir():
        sys.exit(f"benchmark data {args.data} is not there; pass --data an image folder (class subfolders)")

    import torch

    from hftool.config import load_config
    from hftool.data import load_splits
    from hftool.tasks import get_task
    from hftool.vision import geometry

    cfg = load_config("vit-cls", {"data.train": args.data, "model.name": args.model},
                      [f"data.image_size={args.image_size}", "model.pretrained=false", "data.validation_split=0.01",
                       "data.crop_scale_min=0.08"])  # 0.08: the example's RandomResizedCrop scale
    task = get_task(cfg.task)
    splits, names = load_splits(cfg.data, get_task(cfg.task).reading(cfg), cfg.train.seed)
    rows, labels = task.prepare(cfg, splits["train"], names["train"])
    parts = task.build(cfg, labels)
    model = parts.model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    paths = [entry["path"] for entry in rows["image"]]
    loaders = {"A hftool": hftool_loader(task, parts, cfg, rows, args.batch_size, args.workers),
               "B example": example_loader(paths, list(rows["label"]), geometry(parts.processor), args.batch_size,
                                           args.example_workers)}
    print(f"{len(rows)} images from {args.data}; {args.model} at {args.image_size}px, batch {args.batch_size}, "
          f"{torch.get_num_threads()} torch threads; A workers {args.workers}, B workers {args.example_workers}")
    results = {name: [] for name in loaders}
    for round_ in range(args.rounds):
        for name, loader in loaders.items():
            rate = measure(loader, model, optimizer, args.batches, args.step)
            results[name].append(rate)
            print(f"round {round_ + 1} {name}: {rate:.1f} images/s", flush=True)
    a, b = (statistics.median(r) for r in results.values())
    ratio = statistics.median(x / y for x, y in zip(*results.values()))
    print(f"median images/s: A hftool {a:.1f}, B example {b:.1f}; median per-round ratio A/B = {ratio:.2f}")
    print("RESULT " + json.dumps({"hftool images/s": round(a, 1), "per-image PIL images/s": round(b, 1),
                                  "ratio": round(ratio, 2), "rounds": args.rounds, "model": args.model,
                                  "image_size": args.image_size, "batch_size": args.batch_size,
                                  "train step": args.step}))


if __name__ == "__main__":
    main()
