"""Data at scale: hftool's reader and a 3-step MiniLM run against datasets + Trainer, by rows.

    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/data_scale.py --rows 100000,1000000,3000000
    python benchmarks/data_scale.py --rows 100000 --only reader   # the readers alone
    python benchmarks/data_scale.py --only reader --baseline ../main   # + another checkout's reader

Rows are made by recombining TREC-6 questions from ../shared/data (two random questions per row,
labelled with the first one's class), seeded, so every size holds the same kind of text. Every
measurement is a whole child process with its own empty datasets cache (nothing is reused
between sides or sizes), timed by the parent: wall time, CPU time (user + system) and peak RSS
from wait4.

- reader: `hftool.data.load_source(csv)` against `datasets.load_dataset("csv")`; each side
  touches its last row.
- train: `hftool finetune bert-cls` (all-MiniLM-L6-v2, 3 optimizer steps, batch 32, validation
  held out and capped at 256 rows) against the peer run_glue.py is: `load_dataset("csv")`,
  a batched `map` tokenizing every row, Trainer (dynamic padding, length grouping, 3 steps, no
  evaluation, no saving).

Prints one JSON line per measurement and a markdown table at the end.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, RESULTS, SHARED, TREC_LABELS, minilm_path, need, run_child  # noqa: E402

READER = {
    "hftool": "from hftool.data import load_source\nds = load_source({path!r})['train']\nprint(len(ds), ds[-1]['label'])",
    "datasets": "import datasets\nds = datasets.load_dataset('csv', data_files={path!r}, split='train')\n"
                "print(len(ds), ds[-1]['label'])",
}

# Prepended to both sides' training code: the first optimizer step (any torch optimizer, through
# torch's global step hook) prints the wall clock and the process's CPU time at that moment.
FIRST_STEP = """
import json, sys, time
from torch.optim.optimizer import register_optimizer_step_post_hook
def _first_step(optimizer, args, kwargs):
    _hook.remove()
    print("FIRST_STEP " + json.dumps({"at": time.time(), "cpu_s": time.process_time()}), file=sys.stderr, flush=True)
_hook = register_optimizer_step_post_hook(_first_step)
"""

HFTOOL_TRAIN = FIRST_STEP + """
import runpy
sys.argv = ["hftool", *sys.argv[1:]]
runpy.run_module("hftool", run_name="__main__")
"""

PEER_TRAIN = FIRST_STEP + """
import sys
import datasets
from transformers import AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding, Trainer, TrainingArguments, set_seed
path, model_dir, out = sys.argv[1:4]
set_seed(42)
raw = datasets.load_dataset("csv", data_files=path, split="train")
names = sorted(set(raw.unique("label")))
label2id = {n: i for i, n in enumerate(names)}
tokenizer = AutoTokenizer.from_pretrained(model_dir)
def encode(batch):
    out = tokenizer(batch["text"], truncation=True, max_length=128)
    out["labels"] = [label2id[label] for label in batch["label"]]
    return out
data = raw.map(encode, batched=True, remove_columns=raw.column_names)
model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=len(names))
args = TrainingArguments(output_dir=out, per_device_train_batch_size=32, learning_rate=1e-4, max_steps=3,
                         eval_strategy="no", save_strategy="no", report_to="none", use_cpu=True,
                         train_sampling_strategy="group_by_length")
Trainer(model=model, args=args, train_dataset=data, data_collator=DataCollatorWithPadding(tokenizer)).train()
"""


def make_rows(rows: int, path: Path, seed: int = 0) -> Path:
    """`rows` rows of text,label: two TREC questions each, labelled with the first one's class."""
    if path.is_file():
        return path
    source = need(SHARED / "text_classification" / "trec" / "TREC.train.all")
    questions = []
    for line in source.read_text(encoding="latin-1").splitlines():
        label, _, text = line.strip().partition(" ")
        if text:
            questions.append((text, TREC_LABELS[int(label)]))
    rng = random.Random(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".tmp")
    with partial.open("w", newline="", encoding="utf-8") as out:
        writer = csv.writer(out)
        writer.writerow(["text", "label"])
        for _ in range(rows):
            (first, label), (second, _) = rng.choice(questions), rng.choice(questions)
            writer.writerow([f"{first} {second}", label])
    os.replace(partial, path)
    return path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", default="100000,1000000,3000000")
    parser.add_argument("--only", choices=("reader", "train"), default=None)
    parser.add_argument("--data-dir", default=str(RESULTS / "data_scale"))
    parser.add_argument("--baseline", help="another hftool checkout whose reader also runs (e.g. ../main)")
    parser.add_argument("--sides", default="hftool,peer", help="which sides of the 3-step run to measure")
    args = parser.parse_args()
    threads = os.environ.get("OMP_NUM_THREADS", "unset")
    results = []
    for rows in [int(r) for r in args.rows.split(",")]:
        path = make_rows(rows, Path(args.data_dir) / f"rows-{rows}.csv")
        size = path.stat().st_size / 1e6
        if args.only in (None, "reader"):
            sides = [("hftool", READER["hftool"], REPO), ("datasets", READER["datasets"], REPO)]
            if args.baseline:
                sides.append((f"hftool at {args.baseline}", READER["hftool"], Path(args.baseline)))
            for side, code, code_dir in sides:
                with tempfile.TemporaryDirectory() as cache:
                    figures = run_child([sys.executable, "-c", code.format(path=str(path))], Path(cache), code_dir)
                results.append({"what": "reader", "side": side, "rows": rows, "csv_mb": round(size), **figures})
                print(json.dumps(results[-1]), flush=True)
        if args.only in (None, "train"):
            model = str(minilm_path())
            for side in args.sides.split(","):
                with tempfile.TemporaryDirectory() as work:
                    if side == "hftool":
                        command = [sys.executable, "-c", HFTOOL_TRAIN, "finetune", "bert-cls", "--model", model, "--data",
                                   str(path), "--max-steps", "3", "--batch-size", "32", "--output-dir",
                                   f"{work}/run", "data.max_eval_samples=256"]
                    else:
                        command = [sys.executable, "-c", PEER_TRAIN, str(path), model, f"{work}/run"]
                    figures = run_child(command, Path(work) / "cache")
                results.append({"what": "3-step run", "side": side, "rows": rows, "csv_mb": round(size), **figures})
                print(json.dumps(results[-1]), flush=True)
    print(f"\nOMP_NUM_THREADS={threads}\n")
    print("| measured | rows | CSV MB | side | wall s | CPU s | to 1st step, wall s | to 1st step, CPU s | peak RSS MB |\n"
          "|---|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['what']} | {r['rows']:,} | {r['csv_mb']} | {r['side']} | {r['wall_s']} | {r['cpu_s']} | "
              f"{r.get('first_step_wall_s', '')} | {r.get('first_step_cpu_s', '')} | {r['peak_rss_mb']:.0f} |")


if __name__ == "__main__":
    main()
