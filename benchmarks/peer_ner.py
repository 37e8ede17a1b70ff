"""The NER peer: transformers `Trainer` fine-tuning a token classifier the way run_ner.py does it.

    python benchmarks/peer_ner.py --train train.conll --test test.conll --model DIR --out DIR --seed 0

As run_ner.py by default: labels sorted by name, each word's first subword carries its tag and
the others are ignored (`label_all_tokens=False`), `DataCollatorForTokenClassification` (dynamic
padding), random batches (no length grouping), truncation at the tokenizer's `model_max_length`
(run_ner.py's `max_seq_length=None`), fp32. Test entity F1 is seqeval's `f1_score` over the
first subword of every word, as run_ner.py's compute_metrics does. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json

import numpy as np


def read_conll(path: str) -> dict[str, list[list[str]]]:
    """`token ... tag` lines, blank (or whitespace-only) lines between sentences."""
    tokens, tags, words, labels = [], [], [], []
    for line in open(path, encoding="utf-8").read().split("\n") + [""]:
        fields = line.split()
        if fields and fields[0] != "-DOCSTART-":
            words.append(fields[0])
            labels.append(fields[-1])
        elif words:
            tokens.append(words)
            tags.append(labels)
            words, labels = [], []
    return {"tokens": tokens, "tags": tags}


def main() -> None:
    parser = argparse.ArgumentParser()
    for name in ("--train", "--test", "--model", "--out"):
        parser.add_argument(name, required=True)
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--warmup-steps", type=int, default=0)
    parser.add_argument("--weight-decay", type=float, default=0.01)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (CPUs with avx512_bf16/AMX, GPUs)")
    args = parser.parse_args()

    import datasets
    from seqeval.metrics import f1_score, precision_score, recall_score
    from transformers import (AutoModelForTokenClassification, AutoTokenizer, DataCollatorForTokenClassification,
                              Trainer, TrainingArguments, set_seed)

    set_seed(args.seed)  # before the model, as run_ner.py does: the new head's init is seeded too
    raw = datasets.DatasetDict({split: datasets.Dataset.from_dict(read_conll(path))
                                for split, path in (("train", args.train), ("test", args.test))})
    names = sorted({tag for tags in raw["train"]["tags"] for tag in tags})
    label2id = {n: i for i, n in enumerate(names)}
    tokenizer = AutoTokenizer.from_pretrained(args.model)

    def encode(batch):
        out = tokenizer(batch["tokens"], truncation=True, max_length=tokenizer.model_max_length,
                        is_split_into_words=True)
        out["labels"] = []
        for i, tags in enumerate(batch["tags"]):
            previous, row = None, []
            for word in out.word_ids(i):
                row.append(-100 if word is None or word == previous else label2id[tags[word]])
                previous = word
            out["labels"].append(row)
        return out

    data = raw.map(encode, batched=True, remove_columns=raw["train"].column_names)
    model = AutoModelForTokenClassification.from_pretrained(
        args.model, num_labels=len(names), id2label=dict(enumerate(names)), label2id=label2id)
    training = TrainingArguments(
        output_dir=args.out, per_device_train_batch_size=args.batch_size, per_device_eval_batch_size=2 * args.batch_size,
        learning_rate=args.lr, num_train_epochs=args.epochs, weight_decay=args.weight_decay,
        warmup_steps=args.warmup_steps, eval_strategy="no", save_strategy="no", report_to="none", logging_steps=50,
        seed=args.seed, use_cpu=True, bf16=args.bf16)
    trainer = Trainer(model=model, args=training, train_dataset=data["train"],
                      data_collator=DataCollatorForTokenClassification(tokenizer))
    train_metrics = trainer.train().metrics
    trainer.save_model()  # as run_ner.py does: the fine-tuned model is what the user came for
    logits, labels, _ = trainer.predict(data["test"])
    predicted = np.argmax(logits, -1)
    truth = [[names[t] for t in row if t != -100] for row in labels]
    guess = [[names[p] for p, t in zip(prow, row) if t != -100] for prow, row in zip(predicted, labels)]
    print(json.dumps({"f1": f1_score(truth, guess), "precision": precision_score(truth, guess),
                      "recall": recall_score(truth, guess), "train_runtime": train_metrics["train_runtime"]}))


if __name__ == "__main__":
    main()
