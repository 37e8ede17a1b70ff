"""GPU paths: fp32 vs bf16 vs bf16 + torch.compile training throughput, FSDP smoke run.

    python benchmarks/gpu_check.py [--steps 60]

Needs a CUDA GPU (run by hand on a GPU machine; never part of the test suite). Models are
BERT-base / GPT-2-small sized, randomly initialised from configs (no download); throughput is
read from the runs' log.jsonl (samples/s over the last logging windows, warm-up excluded).
MFU = (6 N + 12 L d T) x tokens/s / peak, counting non-pad tokens only; peak bf16 dense is
989 TFLOP/s for H100 SXM / H200 and 756 for H100 PCIe.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
OUT = Path(os.environ.get("OUT", "/tmp")) / "gpu-check"
BERT_BASE = ("model.config_overrides={hidden_size: 768, num_hidden_layers: 12, num_attention_heads: 12, "
             "intermediate_size: 3072}")


def peak_tflops() -> float:
    import torch

    name = torch.cuda.get_device_name()
    return 756.0 if "PCIe" in name else 989.0


def run(name: str, args: list[str], launcher: list[str] | None = None) -> dict:
    out = OUT / name
    command = [*(launcher or [sys.executable]), "-m", "hftool", *args, "-o", str(out), "--overwrite"]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True,
                            env={**os.environ, "HF_HUB_OFFLINE": "1",
                                 "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))})
    if result.returncode != 0:
        OUT.mkdir(parents=True, exist_ok=True)
        (OUT.parent / f"{name}.err").write_text(result.stderr[-20000:])
        return {"run": name, "error": result.stderr.strip().splitlines()[-1][:300]}
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    train = [r for r in records if r["type"] == "train"][1:]  # the first window holds warm-up/compile
    speed = sorted(r["samples_per_second"] for r in train)[len(train) // 2] if train else 0.0
    metrics = json.loads((out / "metrics.json").read_text())
    return {"run": name, "samples_per_second": speed, "final_loss": metrics.get("train_loss"),
            **{k: v for k, v in metrics.items() if k in ("eval_accuracy", "eval_perplexity")}}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", default="60")
    args = parser.parse_args()
    import torch

    print(json.dumps({"gpu": torch.cuda.get_device_name(), "torch": torch.__version__}), flush=True)
    common = ["--max-steps", args.steps, "--batch-size", "64", "train.logging_steps=10", "train.eval_steps=1000"]
    results = []
    for name, extra in (("bert-fp32", ["--mixed-precision", "no"]), ("bert-bf16", ["--mixed-precision", "bf16"]),
                        ("bert-bf16-compile", ["--mixed-precision", "bf16", "train.compile=true"])):
        results.append(run(name, ["finetune", "bert-cls", BERT_BASE, *common, *extra]))
        print(json.dumps(results[-1]), flush=True)
    fsdp = run("bert-fsdp-1gpu", ["finetune", "bert-cls", "--max-steps", "10", "--batch-size", "32"],
               launcher=[sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                         str(REPO / "recipes/accelerate/fsdp.yaml"), "--num_processes", "1"])
    results.append(fsdp)
    print(json.dumps(fsdp), flush=True)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT.parent / "gpu-check.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
