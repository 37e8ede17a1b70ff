"""`hftool generate` against `transformers.pipeline("text-generation")`: tokens/s, same model, prompts, settings.

    python benchmarks/generate_vs_pipeline.py            # ~2-3 min on 2 idle CPU cores
    python benchmarks/generate_vs_pipeline.py --rounds 5 --max-new-tokens 64

The model is GPT-2-small-sized (12 layers, width 768, 1024 positions) with random weights,
built from a config, and a byte-level BPE learned from tiny Shakespeare (or sample:tales), so
nothing is downloaded; on a tiny model the ratio would measure only import time. Each tool runs
as a fresh process, as a user runs it (imports and model loading included), in alternation A B
A B, so drifting machine load hits both alike; the ratio is given per round and as the median, for
wall time and for CPU time (which other jobs on a shared machine disturb much less). Decoding is greedy with min_new_tokens =
max_new_tokens, so both generate exactly the same number of tokens, and their texts are compared.

hftool generates in bf16 where the CPU computes it natively (its default, `--mixed-precision
auto`); the pipeline in the checkpoint's fp32 unless given a dtype. On such a CPU four sides run:
hftool as it runs by default and in fp32, the pipeline as it runs by default and in bf16, and each
hftool side is compared with the pipeline at its own precision too. Elsewhere both run in fp32.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "generate_vs_pipeline"
SHAKESPEARE = Path("/work/shared/data/causal_lm/tiny_shakespeare/input.txt")


def build_model(path: Path) -> None:
    """A GPT-2-small-sized random model and a tokenizer, saved as a model dir (once)."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from hftool import models
    from hftool.samples.tales import generate

    if (path / "model.safetensors").is_file():
        return
    texts = SHAKESPEARE.read_text(encoding="utf-8").split("\n\n") if SHAKESPEARE.is_file() else generate(2000, 0)
    tokenizer = models.train_byte_bpe(texts, 50257)
    eos = tokenizer.eos_token_id
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), bos_token_id=eos, eos_token_id=eos, pad_token_id=eos))
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)


def prompts(n: int) -> list[str]:
    """Prompts of 2 to ~30 words, so batches need padding."""
    from hftool.samples.tales import generate

    words = " ".join(generate(n, 9)).split()
    return [" ".join(words[i * 31: i * 31 + 2 + (i * 7) % 29]) for i in range(n)]


def pipeline_worker(model: str, prompts_file: str, out: str, max_new_tokens: int, batch_size: int,
                    dtype: str | None) -> None:
    """What a user of transformers would write: one pipeline call over all prompts."""
    from transformers import AutoTokenizer, pipeline

    texts = Path(prompts_file).read_text(encoding="utf-8").splitlines()
    tokenizer = AutoTokenizer.from_pretrained(model, padding_side="left")  # decoder-only batches pad left
    pipe = pipeline("text-generation", model=model, tokenizer=tokenizer, device="cpu",
                    **({"dtype": dtype} if dtype else {}))
    outputs = pipe(texts, max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens, do_sample=False,
                   batch_size=batch_size, return_full_text=False)
    with open(out, "w", encoding="utf-8") as f:
        for prompt, result in zip(texts, outputs):
            f.write(json.dumps({"prompt": prompt, "generated_text": result[0]["generated_text"]}) + "\n")


def timed(command: list[str]) -> tuple[float, float]:
    """Wall seconds and CPU seconds (user + system) of one run of `command`."""
    def cpu() -> float:
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        return usage.ru_utime + usage.ru_stime

    start, cpu_start = time.perf_counter(), cpu()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   env=os.environ | {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"})
    return time.perf_counter() - start, cpu() - cpu_start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=2, help="A B pairs to run")
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--dtype", help=argparse.SUPPRESS)  # the pipeline worker's
    parser.add_argument("--pipeline-worker", nargs=3, metavar=("MODEL", "PROMPTS", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.pipeline_worker:
        pipeline_worker(*args.pipeline_worker, args.max_new_tokens, args.batch_size, args.dtype)
        return

    from hftool.runtime import resolve_mixed_precision

    RESULTS.mkdir(parents=True, exist_ok=True)
    model = RESULTS / "gpt2-small-random"
    build_model(model)
    prompts_file = RESULTS / "prompts.txt"
    prompts_file.write_text("\n".join(prompts(args.prompts)) + "\n", encoding="utf-8")
    settings = ["--max-new-tokens", str(args.max_new_tokens), "--batch-size", str(args.batch_size)]

    def hftool(out: str, *extra: str) -> list[str]:
        return [sys.executable, "-m", "hftool", "generate", str(model), "--prompts-file", str(prompts_file),
                "--greedy", "--min-new-tokens", str(args.max_new_tokens), *settings, *extra, "-o", str(RESULTS / out)]

    def pipeline(out: str, *extra: str) -> list[str]:
        return [sys.executable, __file__, *settings, *extra, "--pipeline-worker", str(model), str(prompts_file),
                str(RESULTS / out)]

    # name: (command, precision, the file its texts go to)
    bf16 = resolve_mixed_precision("auto") == "bf16"
    default = "hftool generate (default: bf16 here)" if bf16 else "hftool generate"
    sides = {default: (hftool("hftool.jsonl"), "bf16" if bf16 else "fp32", "hftool.jsonl"),
             "pipeline": (pipeline("pipeline.jsonl"), "fp32", "pipeline.jsonl")}
    if bf16:
        sides["hftool generate, fp32"] = (hftool("hftool-fp32.jsonl", "--mixed-precision", "no"), "fp32",
                                          "hftool-fp32.jsonl")
        sides["pipeline, bf16"] = (pipeline("pipeline-bf16.jsonl", "--dtype", "bfloat16"), "bf16",
                                   "pipeline-bf16.jsonl")
    tokens = args.prompts * args.max_new_tokens
    rates: dict[str, list[float]] = {name: [] for name in sides}
    cpu_rates: dict[str, list[float]] = {name: [] for name in sides}
    for round_ in range(args.rounds):
        for name, (command, _, _) in sides.items():
            seconds, cpu_seconds = timed(command)
            rates[name].append(tokens / seconds)
            cpu_rates[name].append(tokens / cpu_seconds)
            print(f"round {round_ + 1} {name:<36} {seconds:6.1f} s  {tokens / seconds:6.1f} tokens/s  "
                  f"{cpu_seconds:6.1f} CPU s  {tokens / cpu_seconds:6.1f} tokens/CPU s", flush=True)

    def texts(name: str) -> list[str]:
        return (RESULTS / sides[name][2]).read_text(encoding="utf-8").splitlines()

    print(f"\n{args.prompts} prompts x {args.max_new_tokens} new tokens, greedy, batch {args.batch_size}, "
          f"{os.cpu_count()} CPUs, end to end (process start, imports, model load, generation)")
    rows = []
    ours = [name for name in sides if name.startswith("hftool")]
    theirs = [name for name in sides if name.startswith("pipeline")]
    for mine in ours:
        for peer in theirs:
            if mine != ours[0] and sides[mine][1] != sides[peer][1]:
                continue  # the default against every peer side; the others at equal precision only
            ratios = [a / b for a, b in zip(rates[mine], rates[peer])]
            cpu_ratios = [a / b for a, b in zip(cpu_rates[mine], cpu_rates[peer])]
            same = sum(a == b for a, b in zip(texts(mine), texts(peer)))
            rows.append({"hftool side": mine, "pipeline side": peer,
                         "hftool tokens/s": round(statistics.mean(rates[mine]), 1),
                         "pipeline tokens/s": round(statistics.mean(rates[peer]), 1),
                         "wall ratio": round(statistics.median(ratios), 2),
                         "CPU ratio": round(statistics.median(cpu_ratios), 2),
                         "identical texts": f"{same}/{args.prompts}", "rounds": args.rounds,
                         "prompts x tokens": f"{args.prompts} x {args.max_new_tokens}"})
            print(f"{mine} vs {peer}: wall ratio per round {' '.join(f'{r:.2f}' for r in ratios)}, CPU ratio per "
                  f"round {' '.join(f'{r:.2f}' for r in cpu_ratios)} (above 1: hftool is faster), identical texts "
                  f"{same}/{args.prompts}")
    print("RESULT " + json.dumps(rows))


if __name__ == "__main__":
    main()
