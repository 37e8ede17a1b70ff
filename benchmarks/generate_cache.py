"""`hftool generate` with a dynamic KV cache vs a static cache (+ torch.compile): tokens/s.

    python benchmarks/generate_cache.py                   # on a GPU: the speed-up of the fast path
    python benchmarks/generate_cache.py --rounds 2 --max-new-tokens 32 --layers 2   # quick CPU check

One process, one GPT-2-small-sized random model (built from a config, see
generate_vs_pipeline.py), the same prompts and greedy settings with min_new_tokens =
max_new_tokens, so every variant generates exactly the same tokens (checked). Variants run in
alternation (A B C A B C ...) after one warm-up call each (which holds the compile time; it is
reported separately). On GPUs transformers compiles whenever the cache is static, so the
variants are: dynamic, static without compile, static with compile.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
RESULTS = HERE / "results" / "generate_cache"

VARIANTS = {"dynamic": {"cache": "dynamic", "compile": False},
            "static": {"cache": "static", "compile": False},
            "static+compile": {"cache": "static", "compile": True}}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--layers", type=int, default=12, help="GPT-2 small has 12; fewer for a quick CPU check")
    args = parser.parse_args()

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from benchmarks.generate_vs_pipeline import build_model, prompts
    from hftool.generation import GenerationOptions, generate

    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / "gpt2-small-random"
    build_model(path)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = AutoModelForCausalLM.from_pretrained(path, num_hidden_layers=args.layers).to(device)
    if device == "cuda":
        model = model.to(torch.bfloat16)
    tokenizer = AutoTokenizer.from_pretrained(path)
    texts = prompts(args.prompts)
    tokens = args.prompts * args.max_new_tokens

    def call(name: str) -> tuple[float, list[str]]:
        options = GenerationOptions(max_new_tokens=args.max_new_tokens, min_new_tokens=args.max_new_tokens,
                                    do_sample=False, batch_size=args.batch_size, **VARIANTS[name])
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        out = generate(model, tokenizer, texts, options)
        if device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start, [r["generated_text"] for r in out]

    warmup, outputs = {}, {}
    for name in VARIANTS:
        warmup[name], outputs[name] = call(name)
    times = {name: [] for name in VARIANTS}
    for _ in range(args.rounds):
        for name in VARIANTS:
            seconds, _ = call(name)
            times[name].append(seconds)
    base = statistics.median(times["dynamic"])
    report = {
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        "torch": torch.__version__, "layers": args.layers, "prompts": args.prompts,
        "max_new_tokens": args.max_new_tokens, "batch_size": args.batch_size,
        "first_call_seconds": {k: round(v, 2) for k, v in warmup.items()},
        "tokens_per_second": {k: round(tokens / statistics.median(v), 1) for k, v in times.items()},
        "speedup_vs_dynamic": {k: round(base / statistics.median(v), 3) for k, v in times.items()},
        "same_text_as_dynamic": {k: outputs[k] == outputs["dynamic"] for k in VARIANTS},
    }
    (RESULTS / "result.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
