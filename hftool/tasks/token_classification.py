"""Token classification (NER and other word tagging): BERT and any AutoModelForTokenClassification.

Tags belong to words; the model sees subwords. A word's first subword carries its tag (the rest
are ignored unless data.label_all_tokens), and predictions are read back from that subword, so
metrics are computed on words, never on subwords or padding. A sentence longer than
data.max_length is split into windows of whole words that overlap by about data.stride tokens;
each word is scored in the one window where it has most context, so every word is predicted and
scored exactly once. IOB1, IOB2 and BIOES tags are accepted and normalised to IOB2 (the scheme
transformers' token-classification pipeline aggregates).
"""

from __future__ import annotations

import json
import re
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

from hftool import logs, models
from hftool.config import DataConfig
from hftool.data.columns import column_values
from hftool.data.conll import TAG
from hftool.data.tables import column_texts, tokenize
from hftool.errors import HftoolError
from hftool.tasks.base import Options, Parts, Task, find_column

TOKEN_COLUMNS = ("tokens", "words")
TAG_COLUMNS = ("ner_tags", "tags", "labels", "ner")
# How `predict` splits raw text into words: runs of letters/digits, and each other visible
# character on its own, as BERT's pre-tokenizer and CoNLL's tokenisation split punctuation.
WORD = re.compile(r"\w+|[^\w\s]")
REPORT = "entity_metrics.tsv"
TOKENIZER_OUTPUTS = ("input_ids", "attention_mask", "token_type_ids")  # what a BERT-like model reads


@dataclass
class TokenClassificationData(DataConfig):
    # Column names; None auto-detects tokens/words and ner_tags/tags/labels/ner.
    text_column: str | None = None
    label_column: str | None = None
    # Subword budget per window; a sentence longer than this is split into overlapping windows of
    # whole words, never cut. 128 covers most sentences at a fraction of the 512-token cost.
    max_length: int = 128
    # Tokens shared by consecutive windows of a text longer than max_length. Each word is scored
    # in the window where it has the most context, so 32 gives every word at least ~16 tokens of
    # context on the side where a window was cut.
    stride: int = 32
    # Also train a word's later subwords (B- becomes I-) instead of only its first. False is the
    # usual choice: the first subword is the one predicted and scored.
    label_all_tokens: bool = False
    # Tag names for data whose tags are integer ids without names (a hub ClassLabel names them
    # otherwise), e.g. [O, B-PER, I-PER]; index = id. None: tags are names, or the hub's names.
    tag_names: list | None = None

    def check(self) -> None:
        super().check()
        self.require("max_length", self.max_length > 0, "positive")
        self.require("stride", self.stride >= 0, "0 or more")


def to_iob2(tags: list[str]) -> list[str]:
    """IOB1, IOB2 or BIOES tags -> IOB2: B- starts every entity, I- continues it.

    One rule covers the three schemes: S-/E- become B-/I-, and an I- that does not continue an
    entity of its type (IOB1's usual start) becomes B-.
    """
    out, previous = [], "O"
    for tag in tags:
        if tag != "O":
            prefix, kind = tag[0], tag[2:]
            prefix = {"S": "B", "E": "I"}.get(prefix, prefix)
            if prefix == "I" and previous[2:] != kind:
                prefix = "B"
            tag = f"{prefix}-{kind}"
        out.append(tag)
        previous = tag
    return out


def label_names(types: set[str]) -> list[str]:
    """O, then B-/I- for each type in name order: every type can begin and continue an entity."""
    return ["O"] + [f"{prefix}-{kind}" for kind in sorted(types) for prefix in "BI"]


def windows(pieces: list[int], budget: int, stride: int) -> list[tuple[int, int]]:
    """Split words with `pieces` subwords each into [start, end) windows of at most `budget`
    subwords, each repeating about `stride` subwords of the previous one as context. A single
    word longer than the budget gets a window of its own (and is cut, but keeps its first piece)."""
    if not pieces:
        return [(0, 0)]
    spans, start = [], 0
    while True:
        end, used = start, 0
        while end < len(pieces) and used + pieces[end] <= budget:
            used += pieces[end]
            end += 1
        end = max(end, start + 1)
        spans.append((start, end))
        if end >= len(pieces):
            return spans
        back, shared = end, 0  # step back over whole words while the shared part and the next word fit
        while back - 1 > start and shared + pieces[back - 1] <= min(stride, budget - pieces[end]):
            back -= 1
            shared += pieces[back]
        start = back


def home_windows(pieces: list[int], spans: list[tuple[int, int]]) -> list[int]:
    """For each word, the window where it has most context: the largest min(subwords before it,
    subwords after it) within the window (ties: the earlier window)."""
    best: list[tuple[int, int]] = [(-1, 0)] * len(pieces)
    for index, (start, end) in enumerate(spans):
        before = 0
        total = sum(pieces[start:end])
        for word in range(start, end):
            context = min(before, total - before - pieces[word])
            if context > best[word][0]:
                best[word] = (context, index)
            before += pieces[word]
    return [index for _, index in best]


class TokenClassification(Task):
    name = "token-classification"
    recipe = "bert-ner"
    options = Options(model=models.TextModel, data=TokenClassificationData)
    architectures = ("ForTokenClassification",)
    default_metric = "f1"
    pipeline_task = "token-classification"
    meta_keys = ("word_ids", "example_id")
    peft_unsupported = ""
    streams = True  # data.streaming=true: tag names from one pass (stream_labels)

    def peft_heads(self, parts):
        return ["classifier", "score"]

    def prepare(self, cfg, ds, source, labels=None, require_labels=True):
        """Rows -> columns tokens, [tags] (IOB2 tag ids); tag names come from `ds` when None.

        Read, checked and written CHUNK_ROWS rows at a time (memory flat in the number of rows):
        a first pass finds the tag names where they are not given, the second writes the rows."""
        from hftool.data.tables import row_parts, write_rows

        data = cfg.data
        column = find_column(ds, source, data.text_column, TOKEN_COLUMNS, "tokens", "text_column")
        tag_column = None
        if require_labels or any(c in ds.column_names for c in (data.label_column, *TAG_COLUMNS) if c):
            tag_column = find_column(ds, source, data.label_column, TAG_COLUMNS, "tags", "label_column")

        def chunks(names: list[str] | None):
            for start, part in row_parts(ds):
                yield self._checked_rows(part, start, column, tag_column, source, data.tag_names, names)

        if tag_column is not None and labels is None:
            types = set()
            for _, tags in chunks(None):
                types.update(tag[2:] for row in tags for tag in row if tag != "O")
            labels = label_names(types)

        def tables():
            import pyarrow as pa

            for tokens, tags in chunks(labels if tag_column else None):
                yield pa.table({"tokens": pa.array(tokens, pa.list_(pa.string())),
                                **({"tags": pa.array(tags, pa.list_(pa.int64()))} if tag_column else {})})
            if not len(ds):
                yield pa.table({"tokens": pa.array([], pa.list_(pa.string())),
                                **({"tags": pa.array([], pa.list_(pa.int64()))} if tag_column else {})})

        return write_rows(ds, tables(), json.dumps([column, tag_column, data.tag_names, labels])), labels

    def stream_labels(self, cfg, chunks, source):
        """The tag names of a stream: one pass, each chunk checked as prepare checks it (its
        errors name the file's line), keeping only the entity types seen."""
        data, types = cfg.data, set()
        logs.info(f"data.streaming: reading the tags of {source} once for their types")
        for start, part in chunks:
            column = find_column(part, source, data.text_column, TOKEN_COLUMNS, "tokens", "text_column")
            tag_column = find_column(part, source, data.label_column, TAG_COLUMNS, "tags", "label_column")
            _, tags = self._checked_rows(part, start, column, tag_column, source, data.tag_names, None)
            types.update(tag[2:] for row in tags for tag in row if tag != "O")
        return label_names(types)

    def _checked_rows(self, ds, offset: int, column: str, tag_column: str | None, source: str,
                      tag_names: list | None, labels: list[str] | None) -> tuple[list, list]:
        """Rows `offset`... of the data (`ds`, a part of it) -> (tokens, tags): IOB2 tag names, or
        with `labels` their ids (a tag outside them is an error). Errors name the file's line
        (CoNLL) or the row."""
        # One Arrow read per column: iterating a datasets column formats each row (~26 s per million).
        lines = column_values(ds, "line").to_pylist() if "line" in ds.column_names else None

        def where(row: int, word: int) -> str:
            return f"{source} line {lines[row] + word}" if lines else f"{source} row {offset + row + 1}, word {word + 1}"

        sentences = column_values(ds, column).to_pylist()
        for row, words in enumerate(sentences):
            if not isinstance(words, list) or not all(isinstance(w, str) for w in words):
                raise HftoolError(f"{source} row {offset + row + 1}: column '{column}' holds {words!r}, not a list of "
                                  "words; each row needs a list of tokens")
        if tag_column is None:
            return sentences, []
        rows = self._tag_strings(ds, tag_column, source, tag_names, where, offset)
        normalised = []
        for row, (words, tags) in enumerate(zip(sentences, rows)):
            if len(tags) != len(words):
                raise HftoolError(f"{where(row, 0)}: {len(words)} tokens but {len(tags)} tags; "
                                  "every token needs exactly one tag")
            for i, tag in enumerate(tags):
                if not TAG.match(tag):
                    raise HftoolError(f"{where(row, i)}: tag {tag!r} is not O or B-/I-/E-/S-<type> "
                                      "(IOB1, IOB2 and BIOES are accepted); fix the tag")
            normalised.append(to_iob2(tags))
        if labels is None:
            return sentences, normalised
        ids = {name: i for i, name in enumerate(labels)}
        for row, tags in enumerate(normalised):
            unknown = next((i for i, tag in enumerate(tags) if tag not in ids), None)
            if unknown is not None:
                kinds = sorted({n[2:] for n in labels if n != "O"})
                raise HftoolError(f"{where(row, unknown)}: tag {rows[row][unknown]!r} is not a type the model was "
                                  f"trained on ({', '.join(kinds) or 'none'}); fix the tag or add the type to "
                                  "the training data")
        return sentences, [[ids[tag] for tag in tags] for tags in normalised]

    def validate_rows(self, cfg, ds, source, findings, labels=None):
        """Tags outside the scheme, I- with no B- before it (in IOB2 data), token/tag count
        mismatches, entity types the training data lacks, repeated sentences."""
        from hftool.data import validation

        data = cfg.data
        column = find_column(ds, source, data.text_column, TOKEN_COLUMNS, "tokens", "text_column")
        sentences = ds[column]
        summary = validation.Summary(rows=len(ds))
        summary.values["sentence length (words)"] = [len(words or []) for words in sentences]
        summary.keys = [validation.fingerprint(words) for words in sentences]
        lines = ds["line"] if "line" in ds.column_names else None  # CoNLL: findings name the file's lines

        def at(row: int, word: int = 1) -> dict:
            """Where word `word` of row `row` is: its line in a CoNLL file, else the row."""
            return ({"row": lines[row - 1] + word - 1, "at": f"line {lines[row - 1] + word - 1}"} if lines
                    else {"row": row, "at": f"row {row}"})

        summary.counts["repeated sentences"] = validation.duplicates(summary.keys, source, findings, "sentence",
                                                                     lines=lines)
        if not any(c in ds.column_names for c in (data.label_column, *TAG_COLUMNS) if c):
            return summary
        tag_column = find_column(ds, source, data.label_column, TAG_COLUMNS, "tags", "label_column")
        try:
            rows = self._tag_strings(ds, tag_column, source, data.tag_names, lambda row, word: f"{source} row {row + 1}")
        except HftoolError:
            return summary  # tags that are not names or ids: the reader reports it next
        orphans, types = [], {}
        for row, (words, tags) in enumerate(zip(sentences, rows), 1):
            if len(tags) != len(words or []):
                findings.add("tag_count_mismatch", source=source, **at(row), tokens=len(words or []), tags=len(tags),
                             column=tag_column)
            previous = "O"
            for word, tag in enumerate(tags, 1):
                if not TAG.match(tag):
                    findings.add("tag_outside_scheme", source=source, **at(row, word), word=word, tag=tag,
                                 column=tag_column)
                    previous = "O"
                    continue
                kind = tag[2:]
                if tag != "O" and (tag[0] in "BS" or previous[2:] != kind or previous[0] in "ES"):  # an entity starts
                    types[kind] = types.get(kind, 0) + 1
                    if labels is not None and kind not in labels:
                        findings.add("unseen_label", source=source, **at(row, word), column=tag_column, label=kind,
                                     what="entity type")
                    if tag[0] == "I":
                        orphans.append((row, word, tag, previous, kind))
                previous = tag
        # IOB1 data (CoNLL-2003 as released) opens most entities with I-: valid there, so only
        # IOB2 data, where most open with B-, has its I- openings reported.
        if orphans and len(orphans) * 2 < sum(types.values()):
            for row, word, tag, previous, kind in orphans:
                findings.add("i_without_b", source=source, **at(row, word), word=word, tag=tag, previous=previous,
                             kind=kind, column=tag_column)
        summary.counts["entities opened by I-"] = len(orphans)
        summary.classes = dict(sorted(types.items(), key=lambda kv: -kv[1]))
        return summary

    @staticmethod
    def _tag_strings(ds, column: str, source: str, tag_names: list | None, where, offset: int = 0) -> list[list[str]]:
        """Tags as names: strings as they are; integer ids through data.tag_names or the
        dataset's ClassLabel names. `offset`: the number of the first row of `ds` in its file."""
        values = column_values(ds, column).to_pylist()
        inner = getattr(ds.features[column], "feature", None)
        names = tag_names or getattr(inner, "names", None)
        out = []
        for row, tags in enumerate(values):
            if not isinstance(tags, list):
                raise HftoolError(f"{source} row {offset + row + 1}: column '{column}' holds {tags!r}, not a list of tags")
            if all(isinstance(t, str) for t in tags):
                out.append(tags)
                continue
            bad = next((i for i, t in enumerate(tags) if not isinstance(t, int) or isinstance(t, bool)), None)
            if bad is not None:
                raise HftoolError(f"{where(row, bad)}: tag {tags[bad]!r} is neither a name nor an id; "
                                  "use names (B-PER) or integer ids throughout")
            if names is None:
                raise HftoolError(f"{source}: column '{column}' holds tag ids without names; set "
                                  "data.tag_names=[O, B-PER, I-PER, ...] (index = id) or write the tags as names")
            bad = next((i for i, t in enumerate(tags) if not 0 <= t < len(names)), None)
            if bad is not None:
                raise HftoolError(f"{where(row, bad)}: tag id {tags[bad]} has no name ({len(names)} tag names); "
                                  "fix the id or data.tag_names")
            out.append([str(names[t]) for t in tags])
        return out

    def build(self, cfg, labels, train_ds=None, model_path=None, run_dir=None) -> Parts:
        spec = model_path or cfg.model.name
        overrides = dict(cfg.model.config_overrides)
        if models.tiny_arch(spec) is not None:
            models.check_tiny(spec, ("bert",), self.name)
            tokenizer = models.tiny_tokenizer(run_dir, lambda: models.train_wordpiece(
                (" ".join(words) for words in column_texts(train_ds, ["tokens"])), cfg.model.tiny_vocab_size))
            from transformers import BertForTokenClassification

            config = models.tiny_bert_config(tokenizer, overrides, **models.label_maps(labels))
            return Parts(BertForTokenClassification(config), tokenizer, labels)

        from transformers import AutoModelForTokenClassification, AutoTokenizer

        token = cfg.model.token
        tokenizer = models.load("tokenizer", AutoTokenizer, spec, token)
        if not getattr(tokenizer, "is_fast", False):
            raise HftoolError(f"{spec}: token classification needs a fast (tokenizers) tokenizer to map subwords "
                              "to words; pass a model dir with a tokenizer.json")
        config, labels = models.classifier_config(spec, token, labels, overrides)
        model = models.load("model", AutoModelForTokenClassification, spec, token, config=config,
                            ignore_mismatched_sizes=model_path is None)  # a new tag set replaces the head
        return Parts(model, tokenizer, labels)

    def features(self, parts, cfg, ds):
        """Sentences -> windows of whole words, with labels on first subwords and, as meta,
        `word_ids` (the sentence's word index where this window scores a word, else -100) and
        `example_id` (the sentence's row)."""
        tokenizer = parts.processor
        max_length = min(cfg.data.max_length, getattr(parts.model.config, "max_position_embeddings", 10**9))
        budget = max_length - tokenizer.num_special_tokens_to_add(pair=False)
        stride, label_all = cfg.data.stride, cfg.data.label_all_tokens
        if stride >= budget:
            raise HftoolError(f"data.stride={stride} must be smaller than data.max_length={max_length} minus "
                              f"{max_length - budget} special tokens; lower data.stride")
        labels = parts.labels
        inside = [labels.index("I" + name[1:]) if name.startswith("B-") and "I" + name[1:] in labels else i
                  for i, name in enumerate(labels)]

        def encode(batch, indices):
            sentences = [list(words) for words in batch["tokens"]]
            pieces = []
            encoded = tokenizer(sentences, is_split_into_words=True, add_special_tokens=False)
            for i, words in enumerate(sentences):
                counts = Counter(w for w in encoded.word_ids(i) if w is not None)
                for j in range(len(words)):
                    if not counts[j]:
                        # A word the tokenizer turns into nothing (a zero-width space, a control
                        # character) becomes the one-piece unknown token: it is still scored.
                        words[j], counts[j] = tokenizer.unk_token, 1
                pieces.append([counts[j] for j in range(len(words))])
            jobs = []  # (sentence, window index, start, end, home windows)
            for i, words in enumerate(sentences):
                spans = windows(pieces[i], budget, stride)
                home = home_windows(pieces[i], spans)
                jobs += [(i, k, start, end, home) for k, (start, end) in enumerate(spans)]
            chunks = tokenizer([sentences[i][start:end] for i, _, start, end, _ in jobs], is_split_into_words=True,
                               truncation=True, max_length=max_length)
            out = {key: list(values) for key, values in chunks.items()}
            out |= {"length": [], "word_ids": [], "example_id": []}
            if "tags" in batch:
                out["labels"] = []
            for row, (i, k, start, _, home) in enumerate(jobs):
                word_ids, scored, targets = chunks.word_ids(row), [], []
                for position, word in enumerate(word_ids):
                    first = word is not None and (position == 0 or word_ids[position - 1] != word)
                    absolute = None if word is None else start + word
                    scored.append(absolute if first and home[absolute] == k else -100)
                    if "tags" in batch:
                        tag = None if word is None else batch["tags"][i][absolute]
                        targets.append(-100 if tag is None else tag if first else inside[tag] if label_all else -100)
                out["length"].append(len(word_ids))
                out["word_ids"].append(scored)
                out["example_id"].append(indices[i])
                if "tags" in batch:
                    out["labels"].append(targets)
            return out

        return tokenize(ds, encode, tokenizer, (max_length, stride, label_all, labels), cfg.data.num_proc,
                        with_indices=True)

    def collate(self, parts):
        from hftool.data.batching import pad_collate

        collate = pad_collate({"input_ids": parts.processor.pad_token_id, "labels": -100, "word_ids": -100})

        def without_length(features):
            return collate([{k: v for k, v in f.items() if k != "length"} for f in features])

        return without_length

    def metric(self, parts, rows):
        from hftool.metrics import Seqeval

        return Seqeval(parts.labels)

    def eval_outputs(self, parts, outputs, batch):
        # Widths differ between processes (dynamic padding); gathering needs one width.
        import torch
        from accelerate.utils import pad_across_processes

        logits, labels = outputs.logits.float(), batch["labels"]
        rows = {"predictions": logits.argmax(-1), "references": labels, "word_ids": batch["word_ids"]}
        rows = {k: pad_across_processes(v, dim=1, pad_index=-100) for k, v in rows.items()}
        # Each window's mean loss over its labelled tokens, so eval_loss does not depend on how
        # windows are batched (a window with no labelled token, an empty sentence, counts 0).
        token_losses = torch.nn.functional.cross_entropy(logits.transpose(1, 2), labels, reduction="none")
        losses = token_losses.sum(-1) / (labels != -100).sum(-1).clamp(min=1)
        return {**rows, "example_ids": batch["example_id"], "loss": losses}

    def resampler(self, parts, rows):
        from hftool.metrics.resampling import EntityStats

        return EntityStats(parts.labels)

    def prediction_records(self, parts, batches, order, rows):
        """One record per sentence (its windows joined): predicted and reference tags per word."""
        from hftool.metrics.tagging import sentence_tags

        rows = [(p, r, w, e) for b in batches
                for p, r, w, e in zip(b["predictions"], b["references"], b["word_ids"], b["example_ids"])]
        merged = sentence_tags(*zip(*rows)) if rows else {}
        return [{"index": example, "prediction": [parts.labels[i] for i in preds],
                 "reference": [parts.labels[i] for i in refs]} for example, (preds, refs) in merged.items()]

    def predict(self, parts, cfg, inputs, batch_size):
        import datasets
        import torch
        from seqeval.metrics.sequence_labeling import get_entities

        from hftool.evaluation import run_batches

        spans = [[m.span() for m in WORD.finditer(text)] for text in inputs]
        rows = datasets.Dataset.from_dict({"tokens": [[t[a:b] for a, b in s] for t, s in zip(inputs, spans)]})
        features = self.features(parts, cfg, rows)
        word_ids, example_ids = features["word_ids"], features["example_id"]
        words: dict[int, dict[int, tuple[int, float]]] = defaultdict(dict)
        batches = run_batches(parts.model, features.remove_columns(list(self.meta_keys)), self.collate(parts),
                              batch_size)
        for start, (_, outputs) in zip(range(0, len(features), batch_size), batches):
            scores, ids = torch.softmax(outputs.logits.float(), dim=-1).max(-1)
            scores, ids = scores.tolist(), ids.tolist()
            for r in range(len(ids)):
                for position, word in enumerate(word_ids[start + r]):
                    if word >= 0:
                        words[example_ids[start + r]][word] = (ids[r][position], scores[r][position])
        results = []
        for n, (text, offsets) in enumerate(zip(inputs, spans)):
            predicted = [words[n][w] for w in range(len(offsets))]
            entities = []
            for kind, first, last in get_entities([parts.labels[i] for i, _ in predicted]):
                start, end = offsets[first][0], offsets[last][1]
                score = sum(s for _, s in predicted[first:last + 1]) / (last + 1 - first)
                entities.append({"type": kind, "text": text[start:end], "start": start, "end": end,
                                 "score": round(score, 6)})
            results.append({"text": text, "entities": entities})
        return results

    def card_usage(self, parts, cfg):
        """aggregation_strategy="first": a word takes its first subword's tag, as training and
        `hftool predict` read it ("simple" splits a word whose subwords disagree)."""
        return ('```python\nfrom transformers import pipeline\n\n'
                'tagger = pipeline("token-classification", model=".", aggregation_strategy="first")\n'
                'print(tagger("Angela Merkel visited Paris"))\n```\n\n'
                '`aggregation_strategy="first"` gives each word its first subword\'s tag, as training and '
                '`hftool predict` do: the same entities.\n')

    def format_prediction(self, prediction):
        found = "; ".join(f"{e['type']} {json.dumps(e['text'], ensure_ascii=False)} {e['start']}-{e['end']} "
                          f"{e['score']:.4f}" for e in prediction["entities"])
        return f"{prediction['text']}\t{found or '(no entities)'}"

    def onnx_graphs(self, parts, cfg, batch):
        """model.onnx: the tokenizer's outputs (batch x sequence) -> logits per subword."""
        from hftool.export import model_graph

        axes = {name: {0: "batch", 1: "sequence"} for name in TOKENIZER_OUTPUTS if name in batch}
        return [model_graph(parts.model, batch, axes, ["logits"])]

    def write_reports(self, parts, run_dir, metrics, records):
        """entity_metrics.tsv: precision, recall, F1 and support per entity type, then overall."""
        kinds = [k[len("eval_"):-len("_support")] for k in metrics if k.startswith("eval_") and k.endswith("_support")]
        lines = ["type\tprecision\trecall\tf1\tsupport"]
        for kind in kinds:
            values = [metrics[f"eval_{kind}_{m}"] for m in ("precision", "recall", "f1")]
            lines.append("\t".join([kind, *(f"{v:.4f}" for v in values), str(int(metrics[f"eval_{kind}_support"]))]))
        total = sum(int(metrics[f"eval_{kind}_support"]) for kind in kinds)
        overall = [metrics.get(f"eval_{m}", 0.0) for m in ("precision", "recall", "f1")]
        lines.append("\t".join(["overall", *(f"{v:.4f}" for v in overall), str(total)]))
        (Path(run_dir) / REPORT).write_text("\n".join(lines) + "\n", encoding="utf-8")
