"""Fine-tune a real pretrained BERT (all-MiniLM-L6-v2, local) on TREC-6 and report test accuracy.

    python benchmarks/trec_accuracy.py [--epochs 2]

Prints the exact `hftool finetune` and `hftool evaluate` commands it runs.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys

from common import RESULTS, minilm_path, trec_csv


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", default="2")
    args = parser.parse_args()
    data = trec_csv()
    run = RESULTS / "trec-minilm"
    finetune = [sys.executable, "-m", "hftool", "finetune", "bert-cls", "--model", str(minilm_path()),
                "--data", str(data["train"]), "-o", str(run), "--overwrite", "--epochs", args.epochs,
                "--batch-size", "32", "--lr", "1e-4", "train.warmup_ratio=0.1", "train.logging_steps=20"]
    evaluate = [sys.executable, "-m", "hftool", "evaluate", str(run), "--data", str(data["test"]),
                "--output", str(run / "test_metrics.json")]
    for command in (finetune, evaluate):
        print("$", shlex.join(command), flush=True)
        subprocess.run(command, check=True, env={"HF_HUB_OFFLINE": "1", **__import__("os").environ})
    test = json.loads((run / "test_metrics.json").read_text())
    print(f"TREC-6 test accuracy {test['eval_accuracy']:.4f}, macro F1 {test['eval_f1_macro']:.4f}")


if __name__ == "__main__":
    main()
