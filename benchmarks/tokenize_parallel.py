"""Tokenizing a table in one process or several: `Dataset.map(num_proc=N)` with MiniLM's tokenizer.

    nice -n -5 python benchmarks/tokenize_parallel.py --rows 20000,100000,1000000 --procs 1,2

Rows come from benchmarks/data_scale.py's generator (two TREC-6 questions a row). Each
measurement is a whole child process with an empty datasets cache of its own: it reads the CSV
through hftool's reader (not timed) and then times only the `map` that tokenizes every row, the
way text classification's features do (batched, truncation at 128, lengths kept). Wall time is
what a user waits; CPU time (user + system of the process and its workers) is what the cores
spend. Sides alternate within each repetition, so both see the same machine. Run it at a
higher priority than the machine's other work (nice -n -5 as root) or on an idle machine:
parallel work only pays where a second core is free.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, RESULTS, minilm_path  # noqa: E402
from data_scale import make_rows  # noqa: E402

CHILD = """
import json, os, resource, sys, time
from hftool.data import load_source
from transformers import AutoTokenizer
path, model, procs = sys.argv[1], sys.argv[2], int(sys.argv[3])
ds = load_source(path)["train"]
tokenizer = AutoTokenizer.from_pretrained(model)
def encode(batch):
    out = tokenizer(batch["text"], truncation=True, max_length=128)
    out["length"] = [len(ids) for ids in out["input_ids"]]
    return out
def cpu():
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime
start, used = time.perf_counter(), cpu()
out = ds.map(encode, batched=True, remove_columns=ds.column_names, num_proc=procs if procs > 1 else None)
print(json.dumps({"rows": len(out), "wall_s": time.perf_counter() - start, "cpu_s": cpu() - used}))
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", default="20000,100000,1000000")
    parser.add_argument("--procs", default="1,2")
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--data-dir", default=str(RESULTS / "data_scale"))
    args = parser.parse_args()
    model = str(minilm_path())
    results = []
    for rows in [int(r) for r in args.rows.split(",")]:
        path = make_rows(rows, Path(args.data_dir) / f"rows-{rows}.csv")
        for rep in range(args.reps):
            for procs in [int(p) for p in args.procs.split(",")]:
                with tempfile.TemporaryDirectory() as cache:
                    env = {**os.environ, "HF_DATASETS_CACHE": cache, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
                    done = subprocess.run([sys.executable, "-c", CHILD, str(path), model, str(procs)], env=env,
                                          capture_output=True, text=True, cwd=REPO)
                if done.returncode:
                    sys.exit(done.stderr[-3000:])
                figures = json.loads(done.stdout.strip().splitlines()[-1])
                results.append({"rows": rows, "procs": procs, "rep": rep, **{k: round(v, 2) for k, v in figures.items()
                                                                             if k != "rows"}})
                print(json.dumps(results[-1]), flush=True)
    print(f"\nOMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, "
          f"TOKENIZERS_PARALLELISM={os.environ.get('TOKENIZERS_PARALLELISM', 'unset')}, load {os.getloadavg()[0]:.1f}\n")
    print("| rows | num_proc | wall s (each rep) | CPU s (each rep) |\n|---|---|---|---|")
    for rows in dict.fromkeys(r["rows"] for r in results):
        for procs in dict.fromkeys(r["procs"] for r in results):
            mine = [r for r in results if r["rows"] == rows and r["procs"] == procs]
            print(f"| {rows:,} | {procs} | {', '.join(str(r['wall_s']) for r in mine)} | "
                  f"{', '.join(str(r['cpu_s']) for r in mine)} |")


if __name__ == "__main__":
    main()
