"""Wall time of each training step of a short bert-cls run, and of the sampler's first batch.

    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/step_times.py MODEL_DIR DATA.csv OUT_DIR [STEPS]

Where a slow first step comes from: the batch sampler (length grouping over every row) or the
step itself (the longest batch goes first, by design). Prints one line per measurement.
"""

from __future__ import annotations

import sys
import time


def main() -> None:
    model, data, out = sys.argv[1:4]
    steps = sys.argv[4] if len(sys.argv) > 4 else "6"
    from hftool.data import batching
    from hftool.tasks.text_classification import TextClassification

    times = []
    train_step = TextClassification.train_step

    def timed_step(self, parts, batch, step):
        start = time.perf_counter()
        losses = train_step(self, parts, batch, step)
        times.append((round(time.perf_counter() - start, 2), tuple(batch["input_ids"].shape)))
        return losses

    batches = batching.LengthGroupedBatches.__iter__

    def timed_batches(self):
        start = time.perf_counter()
        order = batches(self)
        first = next(order)
        print(f"sampler: first batch after {time.perf_counter() - start:.2f} s over {len(self.lengths)} rows", flush=True)
        yield first
        yield from order

    TextClassification.train_step = timed_step
    batching.LengthGroupedBatches.__iter__ = timed_batches
    sys.argv = ["hftool", "finetune", "bert-cls", "--model", model, "--data", data, "--max-steps", steps,
                "--batch-size", "32", "--output-dir", out, "data.max_eval_samples=64"]
    from hftool.cli import main as cli

    try:
        cli()
    except SystemExit as exit_:
        if exit_.code:
            raise
    print("steps (s, batch shape):", times)


if __name__ == "__main__":
    main()
