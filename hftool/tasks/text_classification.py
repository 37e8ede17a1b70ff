"""Text classification (single sentences or pairs): BERT and any AutoModelForSequenceClassification."""

from __future__ import annotations

from dataclasses import dataclass

from hftool import models
from hftool.config import DataConfig
from hftool.data.checks import check_texts
from hftool.data.columns import column_values, first_not_text
from hftool.data.labels import LABEL_COLUMNS, TOP_K_OPTION, check_labelled, has_labels, label_ids, label_names, ranked, with_top_k
from hftool.data.tables import column_texts, tokenize
from hftool.errors import HftoolError
from hftool.tasks.base import Options, Parts, Task, find_column

TEXT_COLUMNS = ("text", "sentence", "sentence1", "premise", "question1", "question", "content", "review",
                "document", "query")
TOKENIZER_OUTPUTS = ("input_ids", "attention_mask", "token_type_ids")  # what a BERT-like model reads
PAIR_COLUMNS = {"sentence1": "sentence2", "premise": "hypothesis", "question1": "question2", "text": "text_pair"}


@dataclass
class TextClassificationData(DataConfig):
    # Column names; None auto-detects the usual ones (text/sentence/..., label/labels/...).
    text_column: str | None = None
    text_pair_column: str | None = None
    label_column: str | None = None
    # Token budget per example; longer inputs are truncated. 128 covers most sentence tasks at a
    # fraction of the 512-token cost.
    max_length: int = 128

    def check(self) -> None:
        super().check()
        self.require("max_length", self.max_length > 0, "positive")


class TextClassification(Task):
    name = "text-classification"
    recipe = "bert-cls"
    options = Options(model=models.TextModel, data=TextClassificationData)
    architectures = ("ForSequenceClassification",)
    default_metric = "accuracy"
    pipeline_task = "text-classification"
    predict_options = (TOP_K_OPTION,)
    quantizable = True
    peft_unsupported = ""
    streams = True

    def peft_heads(self, parts):
        return ["pre_classifier", "classifier", "score"]  # BERT-likes, DistilBERT, decoder-only classifiers

    def prepare(self, cfg, ds, source, labels=None, require_labels=True):
        """Rows -> columns text, [text_pair], label (class id); label names come from `ds` when None."""

        from hftool.data.tables import select_rows

        columns, label, labels = self._columns(cfg, ds, source, labels, require_labels)
        extra = {} if label is None else {"label": label_ids(ds, label, labels, source)}
        # Rows read from a file stay memory-mapped, and the tokenized features are then written
        # beside them on disk (and found there by the next run on the same data).
        return select_rows(ds, columns, extra), labels

    def label_set(self, cfg, ds, source):
        _, label, labels = self._columns(cfg, ds, source)  # checked and named, without writing the rows out
        check_labelled(ds, label, source)  # a row without a label is named by its line in the file
        return labels

    def _columns(self, cfg, ds, source, labels=None, require_labels=True):
        """The checked text columns (old name -> new), the label column (None without labels) and
        the label names (from `ds` when None)."""
        data = cfg.data
        text = find_column(ds, source, data.text_column, TEXT_COLUMNS, "text", "text_column")
        pair = data.text_pair_column
        if pair is None and PAIR_COLUMNS.get(text) in ds.column_names:
            pair = PAIR_COLUMNS[text]
        elif pair is not None:
            find_column(ds, source, pair, (), "text pair", "text_pair_column")
        columns = {text: "text", **({pair: "text_pair"} if pair else {})}
        for column, name in columns.items():
            bad = first_not_text(ds, column)
            if bad is not None:
                raise HftoolError(f"{source} row {bad + 1}: {name} column '{column}' "
                                  f"holds {ds[bad][column]!r}, not text; fix or remove the row")
            if labels is None and require_labels:  # training data, its first pass: warned once
                check_texts(column_values(ds, column), source, column)
        label = None
        if require_labels or has_labels(ds, data.label_column):
            label = find_column(ds, source, data.label_column, LABEL_COLUMNS, "label", "label_column")
            labels = label_names(ds, label, source) if labels is None else labels
        return columns, label, labels

    def validate_rows(self, cfg, ds, source, findings, labels=None):
        """Empty texts, missing/unseen/mixed labels, repeated texts and texts with two labels."""
        from hftool.data import validation

        data = cfg.data
        text = find_column(ds, source, data.text_column, TEXT_COLUMNS, "text", "text_column")
        pair = data.text_pair_column or (PAIR_COLUMNS.get(text) if PAIR_COLUMNS.get(text) in ds.column_names else None)
        summary = validation.Summary(rows=len(ds))
        summary.values["text length (words)"] = validation.texts(ds[text], source, text, findings)
        pairs = ds[pair] if pair in ds.column_names else [None] * len(ds)
        if pair in ds.column_names:
            validation.texts(pairs, source, pair, findings)
        summary.keys = [validation.fingerprint(a, b) for a, b in zip(ds[text], pairs)]
        values = validation.labelled(ds, source, data.label_column, findings, labels, summary)
        summary.counts["repeated texts"] = validation.duplicates(summary.keys, source, findings, "text", values)
        return summary

    def build(self, cfg, labels, train_ds=None, model_path=None, run_dir=None) -> Parts:
        spec = model_path or cfg.model.name
        overrides = dict(cfg.model.config_overrides)
        if models.tiny_arch(spec) is not None:
            models.check_tiny(spec, ("bert",), self.name)
            columns = [c for c in ("text", "text_pair") if c in train_ds.column_names]
            tokenizer = models.tiny_tokenizer(run_dir, lambda: models.train_wordpiece(
                column_texts(train_ds, columns), cfg.model.tiny_vocab_size))
            from transformers import BertForSequenceClassification

            config = models.tiny_bert_config(tokenizer, overrides, **models.label_maps(labels))
            return Parts(BertForSequenceClassification(config), tokenizer, labels)

        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        token = cfg.model.token
        tokenizer = models.load("tokenizer", AutoTokenizer, spec, token)
        config, labels = models.classifier_config(spec, token, labels, overrides)
        model = models.load("model", AutoModelForSequenceClassification, spec, token, config=config,
                            ignore_mismatched_sizes=model_path is None)  # a new label set replaces the head
        return Parts(model, tokenizer, labels)

    def features(self, parts, cfg, ds):
        tokenizer = parts.processor
        max_length = min(cfg.data.max_length, getattr(parts.model.config, "max_position_embeddings", 10**9))

        def encode(batch):
            encoded = tokenizer(batch["text"], batch.get("text_pair"), truncation=True, max_length=max_length)
            encoded["length"] = [len(ids) for ids in encoded["input_ids"]]
            if "label" in batch:
                encoded["labels"] = batch["label"]
            return encoded

        return tokenize(ds, encode, tokenizer, (max_length,), cfg.data.num_proc)

    def collate(self, parts):
        from hftool.data.batching import pad_collate

        collate = pad_collate({"input_ids": parts.processor.pad_token_id})

        def without_length(features):
            return collate([{k: v for k, v in f.items() if k != "length"} for f in features])

        return without_length

    def metric(self, parts, rows):
        from hftool.metrics import Accuracy, PrecisionRecallF1, combine

        return combine([Accuracy(), PrecisionRecallF1(num_classes=len(parts.labels))])

    def eval_outputs(self, parts, outputs, batch):
        import torch

        logits = outputs.logits.float()
        losses = torch.nn.functional.cross_entropy(logits, batch["labels"], reduction="none")
        return {"predictions": logits.argmax(-1), "references": batch["labels"], "loss": losses}

    def resampler(self, parts, rows):
        from hftool.metrics.resampling import ClassStats

        return ClassStats(parts.labels)

    def predict(self, parts, cfg, inputs, batch_size, top_k: int = 1):
        import datasets
        import torch

        from hftool.evaluation import run_batches

        rows, _ = self.prepare(cfg, datasets.Dataset.from_dict({"text": list(inputs)}), "input", require_labels=False)
        k = min(top_k, len(parts.labels))
        results = []
        for batch, outputs in run_batches(parts.model, self.features(parts, cfg, rows), self.collate(parts), batch_size):
            scores, ids = torch.softmax(outputs.logits.float(), dim=-1).topk(k, dim=-1)
            results += [ranked(parts.labels, row_ids, row_scores, top_k > 1)
                        for row_ids, row_scores in zip(ids.tolist(), scores.tolist())]
        return [{"text": text, **result} for text, result in zip(inputs, results)]

    def card_usage(self, parts, cfg):
        return ('```python\nfrom transformers import pipeline\n\nclassifier = pipeline("text-classification", model=".")\n'
                'print(classifier(["a wonderful film", "a dull, clumsy script"], top_k=None))\n```\n')

    def format_prediction(self, prediction):
        return with_top_k(f"{prediction['label']}\t{prediction['score']:.4f}\t{prediction['text']}", prediction)

    def onnx_graphs(self, parts, cfg, batch):
        """model.onnx: the tokenizer's outputs (batch x sequence) -> logits."""
        from hftool.export import model_graph

        axes = {name: {0: "batch", 1: "sequence"} for name in TOKENIZER_OUTPUTS if name in batch}
        return [model_graph(parts.model, batch, axes, ["logits"])]

