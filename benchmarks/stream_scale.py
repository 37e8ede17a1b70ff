"""data.streaming=true at scale: a 3-step MiniLM run's peak RSS and cache use, by rows.

    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/stream_scale.py --rows 1000000,3000000

The CSVs are data_scale.py's (`make_rows`: recombined TREC-6 questions, seeded). Each run is
`hftool finetune bert-cls --model all-MiniLM-L6-v2 --max-steps 3 --batch-size 32
data.streaming=true data.max_eval_samples=256`, a whole child process with an empty datasets
cache of its own, timed by data_scale.py's wrapper (wall, CPU, peak RSS from wait4). "cache MB"
is what the run left in that cache: a streamed run writes no Arrow copy of its training file.
With --cached, the same run without data.streaming also runs at each size (the peer in the
same run).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, minilm_path
from data_scale import make_rows, run_child


def folder_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 1e6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", default="1000000,3000000")
    parser.add_argument("--data-dir", default=str(RESULTS / "data_scale"))
    parser.add_argument("--cached", action="store_true", help="also run each size without data.streaming")
    args = parser.parse_args()
    model = str(minilm_path())
    results = []
    for rows in [int(r) for r in args.rows.split(",")]:
        path = make_rows(rows, Path(args.data_dir) / f"rows-{rows}.csv")
        for side in ("streamed", "cached") if args.cached else ("streamed",):
            with tempfile.TemporaryDirectory() as work:
                command = [sys.executable, "-m", "hftool", "finetune", "bert-cls", "--model", model, "--data", str(path),
                           "--max-steps", "3", "--batch-size", "32", "--output-dir", f"{work}/run",
                           "data.max_eval_samples=256", *(["data.streaming=true"] if side == "streamed" else [])]
                figures = run_child(command, Path(work) / "cache")
                cache = folder_mb(Path(work) / "cache")
            results.append({"side": side, "rows": rows, "csv_mb": round(path.stat().st_size / 1e6), **figures,
                            "cache_mb": round(cache, 1)})
            print(json.dumps(results[-1]), flush=True)
    print(f"\nOMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}\n")
    print("| rows | CSV MB | side | wall s | CPU s | peak RSS MB | cache MB |\n|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['rows']:,} | {r['csv_mb']} | {r['side']} | {r['wall_s']} | {r['cpu_s']} | {r['peak_rss_mb']:.0f} | "
              f"{r['cache_mb']} |")


if __name__ == "__main__":
    main()
