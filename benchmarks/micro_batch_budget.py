"""train.micro_batch_size=auto under a CPU memory budget: the micro-batch it picks, and the run's
real peak resident memory against the budget.

    python benchmarks/micro_batch_budget.py --budgets 1.4,1.8,3.0 [--batch-size 64 --steps 6]

all-MiniLM-L6-v2 (local) on TREC-6 at 128 tokens, a global batch of --batch-size. Each budget is
a whole `hftool finetune` process; its peak RSS comes from `/usr/bin/time -v` (the kernel's
count for the process, not hftool's own measurement).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys

from common import RESULTS, minilm_path, trec_csv


def run(budget: float, batch_size: int, steps: int) -> tuple[str, float]:
    data = trec_csv()
    out = RESULTS / f"micro-batch-{budget}"
    command = ["/usr/bin/time", "-v", sys.executable, "-m", "hftool", "finetune", "bert-cls", "--model",
               str(minilm_path()), "--data", str(data["train"]), "-o", str(out), "--overwrite", "--max-steps",
               str(steps), "--batch-size", str(batch_size), "data.max_length=128", "data.max_eval_samples=64",
               "train.micro_batch_size=auto", f"train.memory_budget={budget}"]
    done = subprocess.run(command, capture_output=True, text=True, env={"HF_HUB_OFFLINE": "1", **os.environ})
    chosen = re.search(r"micro_batch_size=auto: (\d+) per process x (\d+) accumulation", done.stderr)
    peak = re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr)
    refused = next((line for line in done.stderr.splitlines() if line.startswith("error: ")), None)
    if refused or not chosen or not peak:
        return f"refused: {refused or done.stderr.strip().splitlines()[-1]}", float("nan")
    return f"{chosen.group(1)} x {chosen.group(2)}", int(peak.group(1)) / 2**20


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--budgets", default="1.4,1.8,3.0", help="GiB, comma-separated")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=6)
    args = parser.parse_args()
    print("| train.memory_budget | micro-batch x accumulation | peak RSS | within budget |\n|---|---|---|---|")
    for budget in (float(b) for b in args.budgets.split(",")):
        chosen, peak = run(budget, args.batch_size, args.steps)
        within = "-" if peak != peak else "yes" if peak <= budget else "NO"  # nan: the run was refused
        print(f"| {budget:.1f} GiB | {chosen} | {peak:.2f} GiB | {within} |", flush=True)


if __name__ == "__main__":
    main()
