"""Run every comparison and write the results into benchmarks/README.md.

    python benchmarks/run.py [--reps 2] [--train-rows 2000] [--only bert-cls,generate,images,cli,lora-trec,lora-chat]

Each comparison runs hftool and the tool a user would pick instead on the same machine, data,
model and settings, alternating the sides (A B A B ...) and reporting medians and ratios. Whole
processes are timed (start-up, data preparation, training, final evaluation), as a user sees
them; peak memory is the child's max RSS.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, RESULTS, minilm_path, trec_csv  # noqa: E402

PY = sys.executable
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
       "PYTHONPATH": str(REPO)}


def timed(command: list[str]) -> dict:
    """Wall time, CPU time, peak RSS (MiB) and stdout of one whole process."""
    start = time.perf_counter()
    process = subprocess.Popen(command, cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    stdout = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise SystemExit(f"failed ({process.returncode}): {shlex.join(command)}")
    return {"seconds": time.perf_counter() - start, "cpu_seconds": usage.ru_utime + usage.ru_stime,
            "rss_mib": usage.ru_maxrss / 1024, "stdout": stdout}


def subset(path: Path, rows: int | None, out: Path) -> Path:
    if not rows:
        return path
    with open(path, encoding="utf-8") as f:
        lines = list(csv.reader(f))
    with open(out, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows(lines[: rows + 1])
    return out


def bert_cls_sides(train_rows: int | None) -> tuple[dict, str, int]:
    """The bert-cls benchmark's sides: {name: seed -> command}, the name of hftool's default side,
    and the number of training rows."""
    data = trec_csv()
    train = subset(data["train"], train_rows, RESULTS / "trec" / f"train-{train_rows}.csv")
    n = sum(1 for _ in open(train, encoding="utf-8")) - 1
    model = str(minilm_path())
    common = ["--epochs", "1", "--batch-size", "32", "--lr", "1e-4"]
    out = RESULTS / "bert-cls"

    def hftool(run: str, *extra: str):
        return lambda seed: [PY, "-m", "hftool", "finetune", "bert-cls", "--model", model, "--data", str(train),
                             "--eval-data", str(data["test"]), "-o", str(out / run), "--overwrite", *common,
                             "data.max_length=128", "train.warmup_ratio=0.0", "train.logging_steps=50",
                             f"train.seed={seed}", *extra]

    def trainer(run: str, *extra: str):
        return lambda seed: [PY, "benchmarks/peer_trainer.py", "--train", str(train), "--test", str(data["test"]),
                             "--model", model, "--out", str(out / run), *common, "--seed", str(seed), *extra]

    from hftool.runtime import cpu_has_native_bf16

    # hftool's default precision (train.mixed_precision=auto) is bf16 autocast on a CPU with native
    # bf16 (avx512_bf16 or AMX), fp32 elsewhere. Trainer's default is fp32.
    native = cpu_has_native_bf16()
    default = f"hftool (default: {'bf16 autocast' if native else 'fp32'} on this CPU)"
    sides = {default: hftool("hftool")}
    if native:
        sides["hftool, fp32"] = hftool("hftool-fp32", "--mixed-precision", "no")
    sides["Trainer, run_glue defaults (pad to 128)"] = trainer("trainer-max", "--padding", "max")
    sides["Trainer, dynamic padding + group_by_length"] = trainer("trainer-dynamic", "--padding", "dynamic")
    if native:
        sides["Trainer, dynamic padding + group_by_length, bf16"] = trainer("trainer-dynamic-bf16", "--padding",
                                                                          "dynamic", "--bf16")
    return sides, default, n


def accuracy_of(name: str, command: list[str], result: dict) -> float:
    """The test accuracy a side's run reached: hftool's metrics.json, or the peer's last stdout line."""
    if name.startswith("hftool"):
        run_dir = command[command.index("-o") + 1]
        return json.loads((Path(run_dir) / "metrics.json").read_text())["eval_accuracy"]
    return json.loads(result["stdout"].strip().splitlines()[-1])["accuracy"]


def bert_cls(reps: int, train_rows: int | None) -> dict:
    """hftool vs transformers Trainer (run_glue defaults, and its best CPU settings)."""
    from hftool.runtime import cpu_has_native_bf16

    sides, default, n = bert_cls_sides(train_rows)
    native = cpu_has_native_bf16()
    runs = {name: [] for name in sides}
    for rep in range(reps):
        seed = 42 + rep  # both tools get the same seed in a repetition, a new one in the next
        for name, command in sides.items():
            command = command(seed)
            result = timed(command)
            accuracy = accuracy_of(name, command, result)
            runs[name].append({**result, "accuracy": accuracy, "samples_per_second": n / result["seconds"],
                               "samples_per_cpu_second": n / result["cpu_seconds"]})
            print(f"  [{rep + 1}/{reps}] seed {seed} {name}: {result['seconds']:.1f} s, acc {accuracy:.4f}, "
                  f"{result['rss_mib']:.0f} MiB", flush=True)
    rows = []

    def median(name, key):
        return statistics.median(r[key] for r in runs[name])

    def spread(values, digits):
        return f"{min(values):.{digits}f}-{max(values):.{digits}f}" if len(values) > 1 else f"{values[0]:.{digits}f}"

    for name, results in runs.items():
        speed, cpu_speed = median(name, "samples_per_second"), median(name, "samples_per_cpu_second")
        # Each Trainer side against hftool as it runs by default, and against hftool at the
        # Trainer side's own precision.
        same = default if name.endswith("bf16") or not native else "hftool, fp32"
        mine = name.startswith("hftool")
        accuracies, rss = [r["accuracy"] for r in results], [r["rss_mib"] for r in results]
        rows.append({"side": name, "samples/s": round(speed, 2),
                     "hftool default speed-up": "-" if mine else
                     f"{median(default, 'samples_per_second') / speed:.2f}x",
                     "at the same precision": "-" if mine else f"{median(same, 'samples_per_second') / speed:.2f}x",
                     "same precision, in CPU time": "-" if mine else
                     f"{median(same, 'samples_per_cpu_second') / cpu_speed:.2f}x",
                     "accuracy, mean": round(statistics.mean(accuracies), 4), "accuracy, range": spread(accuracies, 3),
                     "peak RSS MiB, median": round(statistics.median(rss)), "peak RSS, range": spread(rss, 0),
                     "runs": len(results)})
    sides = {name: command(42) for name, command in sides.items()}
    commands = {name: shlex.join(c).replace(str(REPO) + "/", "") for name, c in sides.items()}
    return {"title": f"bert-cls training: all-MiniLM-L6-v2 on TREC-6 ({n} train rows, 500 test), 1 epoch, "
                     f"batch 32, lr 1e-4, whole processes; repetition r uses seed 42 + r on every side",
            "rows": rows, "commands": commands}


def cli_startup(reps: int, _rows) -> dict:
    """`hftool --help` / `hftool recipes` against `accelerate --help` (a CLI in the same stack)."""
    sides = {"hftool --help": [PY, "-m", "hftool", "--help"], "hftool recipes": [PY, "-m", "hftool", "recipes"],
             "accelerate --help (peer)": [PY, "-m", "accelerate.commands.accelerate_cli", "--help"]}
    times = {name: [] for name in sides}
    for _ in range(max(reps, 5)):
        for name, command in sides.items():
            times[name].append(timed(command)["seconds"])
    peer = statistics.median(times["accelerate --help (peer)"])
    rows = [{"command": name, "median s": round(statistics.median(t), 3),
             "vs accelerate --help": "-" if "peer" in name else f"{peer / statistics.median(t):.2f}x faster"}
            for name, t in times.items()]
    return {"title": "CLI start-up (wall time of the whole process)", "rows": rows,
            "commands": {name: shlex.join(c) for name, c in sides.items()}}


def script(name: str, args: list[str], title: str) -> dict:
    """A benchmark script of its own that ends with a `RESULT {json}` line."""
    command = [PY, f"benchmarks/{name}", *args]
    lines = timed(command)["stdout"].strip().splitlines()
    result = json.loads(next(line for line in reversed(lines) if line.startswith("RESULT "))[len("RESULT "):])
    return {"title": title, "rows": result if isinstance(result, list) else [result],
            "commands": {"command": shlex.join(command)},
            "notes": "\n".join(f"    {line}" for line in lines if line.startswith("round "))}


def generation(reps: int, _rows) -> dict:
    """hftool generate vs transformers.pipeline("text-generation"), GPT-2-small-sized model."""
    return script("generate_vs_pipeline.py", ["--rounds", str(max(reps, 2))],
                  "Generation: `hftool generate` vs `pipeline(\"text-generation\")`, GPT-2-small-sized, greedy, "
                  "whole processes (ratio above 1: hftool faster)")


def images(reps: int, _rows) -> dict:
    """vit-cls input pipeline + training step vs per-image PIL transforms (the HF example's)."""
    return script("image_pipeline.py", ["--rounds", str(max(reps, 4))],
                  "Image training throughput: hftool's pipeline vs per-image PIL transforms, timm resnet18 at 128 px "
                  "with a training step (ratio above 1: hftool faster)")


def run_sides(sides: dict, reps: int, score) -> dict[str, list[dict]]:
    """Each side's whole process, sides alternated `reps` times; `score(name, command, result)` adds
    the side's figures (accuracy, ...) to its result."""
    runs = {name: [] for name in sides}
    for rep in range(reps):
        for name, command in sides.items():
            result = timed(command)
            result |= score(name, command, result)
            runs[name].append(result)
            print(f"  [{rep + 1}/{reps}] {name}: {result['seconds']:.1f} s, {result['rss_mib']:.0f} MiB, "
                  + ", ".join(f"{k} {v}" for k, v in result.items() if k not in ("seconds", "cpu_seconds", "rss_mib",
                                                                                  "stdout")), flush=True)
    return runs


def run_figures(command: list[str]) -> dict:
    """What an hftool run dir says of itself: trainable parameters, training time, metrics."""
    run = Path(command[command.index("-o") + 1])
    metrics = json.loads((run / "metrics.json").read_text())
    parameters = json.loads((run / "provenance.json").read_text()).get("parameters", {})
    saved = sum(p.stat().st_size for p in run.iterdir() if p.suffix == ".safetensors")
    return {"metrics": metrics, "trainable": parameters.get("trainable"), "total": parameters.get("total"),
            "train_seconds": metrics["train_runtime"], "saved_mib": saved / 2**20}


def lora_trec(reps: int, train_rows: int | None) -> dict:
    """LoRA against full fine-tuning of all-MiniLM-L6-v2 on TREC-6, one epoch each."""
    data = trec_csv()
    train = subset(data["train"], train_rows, RESULTS / "trec" / f"train-{train_rows}.csv")
    n = sum(1 for _ in open(train, encoding="utf-8")) - 1
    out = RESULTS / "lora-trec"

    def hftool(run: str, lr: str, *extra: str) -> list[str]:
        return [PY, "-m", "hftool", "finetune", "bert-cls", "--model", str(minilm_path()), "--data", str(train),
                "--eval-data", str(data["test"]), "-o", str(out / run), "--overwrite", "--epochs", "1",
                "--batch-size", "32", "--lr", lr, "data.max_length=128", "train.warmup_ratio=0.1",
                "train.logging_steps=50", *extra]

    sides = {"full fine-tuning, lr 1e-4": hftool("full", "1e-4"),
             "LoRA r=8, lr 1e-4 (the same settings)": hftool("lora-1e-4", "1e-4", "model.peft=lora"),
             "LoRA r=8, lr 1e-3 (LoRA's usual rate)": hftool("lora-1e-3", "1e-3", "model.peft=lora")}
    runs = run_sides(sides, reps, lambda name, command, result: run_figures(command))
    rows = []
    for name, results in runs.items():
        first = results[0]
        rows.append({"side": name, "test accuracy, mean": round(statistics.mean(r["metrics"]["eval_accuracy"]
                                                                               for r in results), 4),
                     "macro F1": round(statistics.mean(r["metrics"]["eval_f1_macro"] for r in results), 4),
                     "trainable parameters": f"{first['trainable']:,} of {first['total']:,} "
                                             f"({100 * first['trainable'] / first['total']:.2f}%)",
                     "training s per epoch (with its evaluation)": round(statistics.median(r["train_seconds"] for r in results), 1),
                     "whole process s": round(statistics.median(r["seconds"] for r in results), 1),
                     "peak RSS MiB": round(statistics.median(r["rss_mib"] for r in results)),
                     "weights saved MiB": round(first["saved_mib"], 1), "runs": len(results)})
    return {"title": f"LoRA vs full fine-tuning: all-MiniLM-L6-v2 on TREC-6 ({n} train rows, 500 test), 1 epoch, "
                     "batch 32, warm-up 10%, the machine's default precision",
            "rows": rows, "commands": {name: shlex.join(c).replace(str(REPO) + "/", "") for name, c in sides.items()}}


def lora_chat(reps: int, _rows) -> dict:
    """LoRA against full fine-tuning of tiny:llama on the chat sample, and packing against padding."""
    out = RESULTS / "lora-chat"

    def hftool(run: str, *extra: str) -> list[str]:
        return [PY, "-m", "hftool", "finetune", "chat", "-o", str(out / run), "--overwrite", *extra]

    sides = {"full fine-tuning (the recipe: packed)": hftool("full"),
             # a packed row holds about 9 conversations: 64 padded rows a batch train on as many per step
             "full fine-tuning, data.packing=false (padded), batch 64": hftool("padded", "data.packing=false",
                                                                               "--batch-size", "64"),
             "LoRA r=8 (the recipe's lr 2e-3)": hftool("lora", "model.peft=lora")}

    def score(name: str, command: list[str], result: dict) -> dict:
        run = command[command.index("-o") + 1]
        test = timed([PY, "-m", "hftool", "evaluate", run, "--data", "sample:chat", "--split", "test"])
        return {**run_figures(command), "exact_match": json.loads(test["stdout"])["eval_exact_match"]}

    runs = run_sides(sides, reps, score)
    rows = []
    for name, results in runs.items():
        first = results[0]
        rows.append({"side": name, "held-out exact match, mean": round(statistics.mean(r["exact_match"] for r in results), 3),
                     "validation exact match": round(statistics.mean(r["metrics"]["eval_exact_match"] for r in results), 3),
                     "trainable parameters": f"{first['trainable']:,} of {first['total']:,} "
                                             f"({100 * first['trainable'] / first['total']:.1f}%)",
                     "training s, median": round(statistics.median(r["train_seconds"] for r in results), 1),
                     "peak RSS MiB": round(statistics.median(r["rss_mib"] for r in results)), "runs": len(results)})
    return {"title": "LoRA vs full fine-tuning: tiny:llama (random init) on sample:chat (3000 conversations, 8 epochs), "
                     "exact answers on the 200 held-out test conversations; packing vs padding",
            "rows": rows, "commands": {name: shlex.join(c).replace(str(REPO) + "/", "") for name, c in sides.items()}}


BENCHMARKS = {"bert-cls": bert_cls, "generate": generation, "images": images, "cli": cli_startup,
              "lora-trec": lora_trec, "lora-chat": lora_chat}


def table(rows: list[dict]) -> str:
    keys = list(rows[0])
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(str(r[k]) for k in keys) + " |" for r in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--train-rows", type=int, default=2000, help="TREC-6 training rows (0: all 5452)")
    parser.add_argument("--only", default=",".join(BENCHMARKS))
    args = parser.parse_args()
    sections = {}
    for name in args.only.split(","):
        if name not in BENCHMARKS:
            raise SystemExit(f"unknown benchmark {name}; choose from {', '.join(BENCHMARKS)}")
        print(f"{name} ...", flush=True)
        try:
            sections[name] = BENCHMARKS[name](args.reps, args.train_rows or None)
        except SystemExit as skipped:
            print(f"  skipped: {skipped}", flush=True)
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    load = os.getloadavg()[0]
    threads = os.environ.get("OMP_NUM_THREADS", "unset")  # both sides of a comparison share it
    blocks = {}
    for name, section in sections.items():
        text = [f"Measured {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC on {cpu}, {os.cpu_count()} cores "
                f"(load average {load:.1f} when it ended), OMP_NUM_THREADS={threads}, Python "
                f"{platform.python_version()}; {args.reps} alternating repetitions per side, medians. Reproduce: "
                f"`OMP_NUM_THREADS={threads} python benchmarks/run.py --reps {args.reps} --train-rows {args.train_rows} --only {name}`\n",
                f"### {section['title']}\n\n{table(section['rows'])}\n"]
        if section.get("notes"):
            text.append(section["notes"] + "\n")
        text.append("Commands:\n\n" + "\n".join(f"- {k}: `{v}`" for k, v in section["commands"].items()) + "\n")
        blocks[name] = "\n".join(text)
    write_results(blocks)
    print("\n".join(blocks.values()))


def write_results(blocks: dict[str, str]) -> None:
    """Replace each benchmark's block in benchmarks/README.md's results part; the blocks of
    benchmarks not run this time stay as they were (each says when it was measured)."""
    readme = REPO / "benchmarks" / "README.md"
    start, end = "<!-- results: written by benchmarks/run.py -->", "<!-- /results -->"
    current = readme.read_text(encoding="utf-8")
    if start not in current:
        current += f"\n## Latest results\n\n{start}\n{end}\n"
    before, rest = current.split(start, 1)
    results, after = rest.split(end, 1)
    for name, text in blocks.items():
        opening, closing = f"<!-- {name} -->", f"<!-- /{name} -->"
        block = f"{opening}\n{text}\n{closing}"
        if opening in results and closing in results:
            head, tail = results.split(opening, 1)
            results = head + block + tail.split(closing, 1)[1]
        else:
            results = results.rstrip("\n") + f"\n{block}\n"
    readme.write_text(f"{before}{start}{results}{end}{after}", encoding="utf-8")


if __name__ == "__main__":
    main()
