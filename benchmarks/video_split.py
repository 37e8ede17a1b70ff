"""A seeded, class-balanced train/test split of a folder of class folders of clips, as CSV files of
`video,label` (paths relative to the CSV), so a run can be scored on clips it never saw:

    python benchmarks/video_split.py                 # fight_surveillance -> benchmarks/results/fight/
    hftool finetune video-cls --data benchmarks/results/fight/train.csv \\
        --eval-data benchmarks/results/fight/test.csv ...   # README "video-cls" has the command
"""

from __future__ import annotations

import argparse
import csv
import os
import random
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_DATA = REPO.parent / "shared" / "data" / "video_classification" / "fight_surveillance"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "fight")
    parser.add_argument("--test", type=float, default=0.2, help="share of each class held out")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(args.seed)
    rows = {"train": [], "test": []}
    for folder in sorted(p for p in args.data.iterdir() if p.is_dir()):
        clips = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
        rng.shuffle(clips)
        held = round(len(clips) * args.test)
        for split, part in (("test", clips[:held]), ("train", clips[held:])):
            rows[split] += [(os.path.relpath(clip, args.out), folder.name) for clip in sorted(part)]
    for split, found in rows.items():
        with open(args.out / f"{split}.csv", "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["video", "label"])
            writer.writerows(found)
        print(f"{args.out / f'{split}.csv'}: {len(found)} clips")


if __name__ == "__main__":
    main()
