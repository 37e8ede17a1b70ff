"""Training clips/s from video files to batches: hftool's seeking decoder vs decoding every frame.

    python benchmarks/video_decoding.py                        # fight_surveillance from ../shared/data
    python benchmarks/video_decoding.py --data path/to/clips --rounds 5 --num-frames 16 --stride 4

A: hftool. The video-cls task's training features (hftool.video.VideoTransform): PyAV seeks to the
   keyframe before a random clip, decodes forward, converts and resizes only the clip's frames (in
   FFmpeg's swscale) and stops after the last; then a random resized crop and normalisation.
B: the naive way: decode every frame of the video to full-size RGB (PyAV), take the same clip's
   frames from them, resize them with torchvision, then the same crop and normalisation.
C: torchcodec (when it is installed; it needs FFmpeg's libraries from the system):
   `VideoDecoder(path, seek_mode="approximate").get_frames_at(indices)`, then as B.

Every side makes the same batches (clips of --num-frames frames --stride apart, --image-size
crops) from the same files, in the main process, one thread, no model step: what is timed is
the input pipeline alone. Short rounds alternate the sides so that load from other processes hits
them alike; the ratio reported is the median of the per-round ratios.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout's hftool

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "video_classification" / "fight_surveillance"


def setup(data: Path, num_frames: int, stride: float, side: int):
    """The task's rows (probed videos) and training transform, as `hftool finetune video-cls` makes them."""
    from hftool.config import load_config
    from hftool.data import load_source
    from hftool.tasks import get_task

    cfg = load_config("video-cls", overrides=[f"data.train={data}", "model.name=timm:resnet18", "model.pretrained=false",
                                              f"data.num_frames={num_frames}", f"data.frame_stride={stride}",
                                              f"data.image_size={side}"])
    task = get_task(cfg.task)
    rows, labels = task.prepare(cfg, load_source(str(data), videos=True)["train"], str(data))
    parts = task.build(cfg, labels)
    return rows, task._transform(parts, cfg, train=True)


def naive_clip(row: dict, transform, decoder: str):
    """The clip's frames from a whole decoded video (B) or from torchcodec (C), resized afterwards."""
    import numpy as np
    import torch
    from torchvision.transforms import v2

    from hftool.data import videos

    s = transform.sampling
    stride = s.stride(row["fps"])
    start = float(torch.rand(()) * videos.clip_span(row["frames"], s.num_frames, stride))
    positions = videos.clip_positions(row["frames"], s.num_frames, stride, start, s.short_clips)
    if decoder == "all":
        import av

        with av.open(row["video"]) as container:
            frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
        clip = torch.from_numpy(np.stack([frames[min(round(p), len(frames) - 1)] for p in positions])).permute(0, 3, 1, 2)
    else:
        from torchcodec.decoders import VideoDecoder

        decoder_ = VideoDecoder(row["video"], seek_mode="approximate", num_ffmpeg_threads=1)
        count = decoder_.metadata.num_frames
        clip = decoder_.get_frames_at([min(round(p), count - 1) for p in positions]).data
    clip = v2.Resize(transform.short, antialias=True)(clip)
    return transform.pipeline(clip)


def batches(rows, transform, side: str, batch_size: int, clips: int) -> float:
    """Clips/s making `clips` clips into batches of `batch_size`."""
    import torch

    from hftool import vision

    started = time.perf_counter()
    with vision.one_thread():
        for first in range(0, clips, batch_size):
            picked = [rows[(first + i) % len(rows)] for i in range(batch_size)]
            if side == "hftool":
                torch.stack([transform.clip(row) for row in picked])
            else:
                torch.stack([naive_clip(row, transform, side) for row in picked])
    return clips / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clips", type=int, default=64, help="clips per side per round")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--num-frames", type=int, default=8)
    parser.add_argument("--stride", type=float, default=4.0)
    parser.add_argument("--image-size", type=int, default=112)
    args = parser.parse_args()
    if not args.data.exists():
        sys.exit(f"benchmark skipped: {args.data} is missing (the real datasets live in ../shared/data)")
    import torch

    torch.manual_seed(0)
    rows, transform = setup(args.data, args.num_frames, args.stride, args.image_size)
    rows = rows.shuffle(seed=0)  # both classes, all sizes and rates in every round
    sides = ["hftool", "all"]
    try:
        from torchcodec.decoders import VideoDecoder  # noqa: F401

        sides.append("torchcodec")
    except (ImportError, OSError, RuntimeError):  # not installed, or FFmpeg's libraries missing
        pass
    names = {"hftool": "A hftool (seek, decode the clip only)", "all": "B decode every frame, then sample",
             "torchcodec": "C torchcodec get_frames_at"}
    rates: dict[str, list[float]] = {side: [] for side in sides}
    batches(rows, transform, "hftool", args.batch_size, args.batch_size)  # warm-up: imports, first open
    for round_ in range(1, args.rounds + 1):
        for side in sides:
            rate = batches(rows, transform, side, args.batch_size, args.clips)
            rates[side].append(rate)
            print(f"    round {round_} {names[side]}: {rate:.1f} clips/s", flush=True)
    print(f"\n{len(rows)} videos from {args.data}; clips of {args.num_frames} frames {args.stride:g} apart, "
          f"{args.image_size}px crops, batches of {args.batch_size}, {args.clips} clips per side per round\n")
    print("| side | clips/s (median) | hftool speed-up (median of per-round ratios) |")
    print("|---|---|---|")
    for side in sides:
        ratio = statistics.median(a / b for a, b in zip(rates["hftool"], rates[side]))
        print(f"| {names[side]} | {statistics.median(rates[side]):.1f} | {'-' if side == 'hftool' else f'{ratio:.2f}x'} |")


if __name__ == "__main__":
    main()
