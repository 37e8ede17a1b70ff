"""`hftool export` on a real classifier: all-MiniLM-L6-v2 fine-tuned on TREC-6 (1 epoch), exported
to ONNX in fp32 and dynamic int8; test accuracy of each against PyTorch, and predict latency and
throughput of onnxruntime against PyTorch CPU inference on the same questions, sides alternated.

    nice -n 10 python benchmarks/export_onnx.py [--reps 3] [--retrain]

Prints the exact `hftool` commands it runs, then a markdown table (benchmarks/README.md has the
latest one).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, RESULTS, minilm_path, trec_csv  # noqa: E402

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
       "PYTHONPATH": str(REPO)}


def hftool(*args: str) -> str:
    command = [sys.executable, "-m", "hftool", *map(str, args)]
    print("$", shlex.join(command), flush=True)
    return subprocess.run(command, cwd=REPO, env=ENV, check=True, stdout=subprocess.PIPE, text=True).stdout


def loaded(model: str, overrides: list[str]):
    """(predict(texts, batch_size), forward(tokenized batch)) of a run or export dir, loaded once, as api.predict runs it."""
    import torch

    from hftool.api import run_config
    from hftool.runtime import inference_accelerator
    from hftool.tasks import get_task

    cfg = run_config(model, overrides)
    task = get_task(cfg.task)
    parts = task.build(cfg, None, model_path=model)
    accelerator = inference_accelerator(cfg.train.mixed_precision)
    parts.model = accelerator.prepare(parts.model)

    def forward(batch):
        with torch.no_grad(), accelerator.autocast():
            return parts.model(**batch).logits

    return (lambda texts, size: task.predict(parts, cfg, texts, size)), forward


def clock(call) -> tuple[float, float]:
    """(wall, CPU) seconds of call(); CPU time counts every thread of this process (onnxruntime's too)."""
    wall, cpu = time.perf_counter(), time.process_time()
    call()
    return time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--retrain", action="store_true")
    args = parser.parse_args()
    data = trec_csv()
    run = RESULTS / "trec-minilm-1ep"
    if args.retrain or not (run / "metrics.json").is_file():
        hftool("finetune", "bert-cls", "--model", minilm_path(), "--data", data["train"], "-o", run, "--overwrite",
               "--epochs", "1", "--batch-size", "32", "--lr", "1e-4", "train.warmup_ratio=0.1", "train.logging_steps=20")
    fp32, int8 = RESULTS / "trec-minilm-onnx", RESULTS / "trec-minilm-onnx-int8"
    export = json.loads(hftool("export", run, "-o", fp32, "--overwrite"))
    quantized = json.loads(hftool("export", run, "-o", int8, "--overwrite", "--quantize", "dynamic-int8"))
    sides = {"PyTorch fp32": (str(run), ["train.mixed_precision=no"]), "PyTorch default precision": (str(run), []),
             "ONNX fp32 (onnxruntime)": (str(fp32), []), "ONNX dynamic int8 (onnxruntime)": (str(int8), [])}
    accuracy = {name: json.loads(hftool("evaluate", model, "--data", data["test"], *overrides))["eval_accuracy"]
                for name, (model, overrides) in sides.items()}

    import csv

    import torch

    with open(data["test"], encoding="utf-8") as f:
        questions = [row["text"] for row in csv.DictReader(f)]
    singles = questions[:64]
    runners = {name: loaded(model, overrides) for name, (model, overrides) in sides.items()}
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(run))
    one = [tokenizer([q], return_tensors="pt") for q in singles]  # the same token ids on every side
    timings: dict[str, dict[str, list[float]]] = {name: {} for name in sides}
    for _ in range(args.reps):
        for name, (predict, forward) in runners.items():  # sides alternated in each repetition
            wall, cpu = clock(lambda: predict(questions, 32))
            timings[name].setdefault("batch wall", []).append(wall)
            timings[name].setdefault("batch cpu", []).append(cpu)
            walls = []
            for text in singles:
                walls.append(clock(lambda: predict([text], 1))[0])
            timings[name].setdefault("predict latency", []).append(statistics.median(walls))
            walls = []
            for batch in one:
                walls.append(clock(lambda: forward(dict(batch)))[0])
            timings[name].setdefault("forward latency", []).append(statistics.median(walls))
    labels = [p["label"] for p in runners["ONNX fp32 (onnxruntime)"][0](questions, 32)]
    reference = [p["label"] for p in runners["PyTorch fp32"][0](questions, 32)]
    agree = sum(a == b for a, b in zip(labels, reference)) / len(reference)

    best = {name: {k: min(v) for k, v in t.items()} for name, t in timings.items()}
    base = best["PyTorch fp32"]
    print(f"\nall-MiniLM-L6-v2 on TREC-6, 1 epoch; {len(questions)} test questions; best of {args.reps} repetitions, "
          f"sides alternated; torch threads {torch.get_num_threads()}")
    print(f"parity (fp32 export): {json.dumps(export['parity']['outputs'])}")
    print(f"quantisation report (validation): {json.dumps(quantized['quantization']['metrics'])}, "
          f"size {quantized['quantization']['size_mb']}")
    print(f"ONNX fp32 labels equal to PyTorch fp32 labels on {agree:.1%} of the test questions\n")
    print("| side | test accuracy | predict throughput, batch 32 (q/s) | ratio | CPU s | predict latency, batch 1 (ms) "
          "| ratio | model forward, batch 1 (ms) | ratio |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name in sides:
        b = best[name]
        print(f"| {name} | {accuracy[name]:.4f} | {len(questions) / b['batch wall']:.0f} | "
              f"{base['batch wall'] / b['batch wall']:.2f}x | {b['batch cpu']:.1f} | {1000 * b['predict latency']:.1f} | "
              f"{base['predict latency'] / b['predict latency']:.2f}x | {1000 * b['forward latency']:.2f} | "
              f"{base['forward latency'] / b['forward latency']:.2f}x |")


if __name__ == "__main__":
    main()
