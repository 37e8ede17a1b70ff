"""Two MiniLM runs on TREC-6 that differ only in their seed, compared by `hftool eval-suite`:
is the difference between them more than seed noise?

    nice -n 10 python benchmarks/trec_suite.py        # two 1-epoch runs: several minutes each on 2 CPU cores

Trains seed-1 and seed-2 (a run already there is reused), writes results/trec-suite/suite.yaml
and runs the suite on the 500 TREC-6 test questions, seed-1 as the baseline. Prints every
command it runs, then the leaderboard; the report is results/trec-suite/out/report.html.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

from common import REPO, RESULTS, minilm_path, trec_csv

SEEDS = (1, 2)


def run(command: list[str], check: bool = True) -> int:
    print("$", shlex.join(command), flush=True)
    return subprocess.run(command, check=check, cwd=REPO, env={**os.environ, "HF_HUB_OFFLINE": "1"}).returncode


def main() -> None:
    data = trec_csv()
    root = RESULTS / "trec-suite"
    runs = {seed: root / f"seed-{seed}" for seed in SEEDS}
    for seed, run_dir in runs.items():
        if (run_dir / "metrics.json").is_file():
            print(f"reusing {run_dir}")
            continue
        run([sys.executable, "-m", "hftool", "finetune", "bert-cls", "--model", str(minilm_path()), "--data",
             str(data["train"]), "-o", str(run_dir), "--overwrite", "--epochs", "1", "--batch-size", "32", "--lr", "1e-4",
             "--seed", str(seed), "train.warmup_ratio=0.1", "train.logging_steps=20"])
    relative = {seed: Path(os.path.relpath(path, REPO)) for seed, path in runs.items()}
    suite = root / "suite.yaml"
    suite.write_text(f"""# {Path(__file__).name}: two MiniLM runs on TREC-6, seeds {SEEDS[0]} and {SEEDS[1]}
models: [{', '.join(str(p) for p in relative.values())}]
baseline: {relative[SEEDS[0]]}
datasets:
  test: {{path: {os.path.relpath(data['test'], REPO)}}}
gates:
  eval_accuracy: {{no_significant_drop: 0.05}}
""", encoding="utf-8")
    code = run([sys.executable, "-m", "hftool", "eval-suite", str(suite.relative_to(REPO)), "-o",
                str((root / "out").relative_to(REPO))], check=False)
    sys.exit(code)


if __name__ == "__main__":
    main()
