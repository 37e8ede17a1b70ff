"""The peer: transformers `Trainer` fine-tuning a sequence classifier, as a user would write it.

    python benchmarks/peer_trainer.py --train train.csv --test test.csv --model DIR --padding max
    python benchmarks/peer_trainer.py ... --padding dynamic   # + group_by_length
    python benchmarks/peer_trainer.py ... --padding dynamic --bf16   # + bf16 autocast

`--padding max` is run_glue.py's default (every example padded to max_length); `--padding
dynamic` is Trainer at its best on CPU: DataCollatorWithPadding and length-grouped batches.
Prints one JSON line with the test accuracy.
"""

from __future__ import annotations

import argparse
import json

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser()
    for name in ("--train", "--test", "--model", "--out"):
        parser.add_argument(name, required=True)
    parser.add_argument("--padding", choices=("max", "dynamic"), required=True)
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (CPUs with avx512_bf16/AMX, GPUs)")
    args = parser.parse_args()

    import datasets
    from transformers import (AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding, Trainer,
                              TrainingArguments, default_data_collator, set_seed)

    set_seed(args.seed)  # before the model, as run_glue.py does: the new classifier head's init is seeded too

    raw = datasets.load_dataset("csv", data_files={"train": args.train, "test": args.test})
    names = sorted(set(raw["train"]["label"]))
    label2id = {n: i for i, n in enumerate(names)}
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    pad = "max_length" if args.padding == "max" else False

    def encode(batch):
        out = tokenizer(batch["text"], truncation=True, max_length=args.max_length, padding=pad)
        out["labels"] = [label2id[label] for label in batch["label"]]
        return out

    data = raw.map(encode, batched=True, remove_columns=raw["train"].column_names)
    model = AutoModelForSequenceClassification.from_pretrained(
        args.model, num_labels=len(names), id2label=dict(enumerate(names)), label2id=label2id)
    training = TrainingArguments(
        output_dir=args.out, per_device_train_batch_size=args.batch_size, per_device_eval_batch_size=2 * args.batch_size,
        learning_rate=args.lr, num_train_epochs=args.epochs, weight_decay=0.01, eval_strategy="no",
        save_strategy="no", report_to="none", logging_steps=50, seed=args.seed, use_cpu=True, bf16=args.bf16,
        train_sampling_strategy="group_by_length" if args.padding == "dynamic" else "random")

    def accuracy(prediction):
        return {"accuracy": float((np.argmax(prediction.predictions, -1) == prediction.label_ids).mean())}

    collator = DataCollatorWithPadding(tokenizer) if args.padding == "dynamic" else default_data_collator
    trainer = Trainer(model=model, args=training, train_dataset=data["train"], data_collator=collator,
                      compute_metrics=accuracy)
    train_metrics = trainer.train().metrics
    trainer.save_model()  # as run_glue.py does: the fine-tuned model is what the user came for
    metrics = trainer.evaluate(data["test"])
    print(json.dumps({"accuracy": metrics["eval_accuracy"], "train_runtime": train_metrics["train_runtime"]}))


if __name__ == "__main__":
    main()
