"""Sequence-labelling metrics: seqeval entity precision/recall/F1 and word accuracy."""

from __future__ import annotations

from collections import defaultdict

import datasets
import evaluate
import numpy as np

_IDS = datasets.Sequence(datasets.Value("int64"))
_FEATURES = datasets.Features({"predictions": _IDS, "references": _IDS, "word_ids": _IDS,
                               "example_ids": datasets.Value("int64")})


class Seqeval(evaluate.Metric):
    """Entity-level precision, recall and F1 (overall and per type) and word accuracy.

    Each row is one model input: a sentence, or one window of a sentence too long for the model.
    `predictions`/`references` are tag ids per token position and `word_ids` says which word of
    sentence `example_ids` a position scores (negative: not scored), so the windows of a long
    sentence are put back together and every word counts exactly once, whatever the batch or
    process that scored it. Entities are compared by seqeval in its default (conlleval) mode:
    an I- tag that follows O or another type starts an entity. Types come from `labels`, so
    every type reports a score even when the data has none of it (support 0).

    compute() -> {precision, recall, f1, accuracy, <TYPE>_precision, <TYPE>_recall, <TYPE>_f1,
    <TYPE>_support}.
    """

    def __init__(self, labels: list[str], **kwargs):
        super().__init__(keep_in_memory=True, **kwargs)
        self.labels = list(labels)

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description="seqeval entity precision/recall/F1 per type and overall, and word accuracy.",
            citation="", inputs_description="tag ids per position, word ids per position, sentence ids",
            features=_FEATURES,
        )

    def _compute(self, predictions, references, word_ids, example_ids) -> dict[str, float]:
        from seqeval.metrics import accuracy_score
        from seqeval.metrics.sequence_labeling import precision_recall_fscore_support

        y_true, y_pred = [], []
        for preds, refs in sentence_tags(predictions, references, word_ids, example_ids).values():
            y_pred.append([self.labels[i] for i in preds])
            y_true.append([self.labels[i] for i in refs])
        types = sorted({label[2:] for label in self.labels if label != "O"})
        result = {"precision": 0.0, "recall": 0.0, "f1": 0.0, "accuracy": 0.0}
        result |= {f"{t}_{k}": 0.0 for t in types for k in ("precision", "recall", "f1", "support")}
        if not y_true:
            return result
        result["accuracy"] = float(accuracy_score(y_true, y_pred))
        overall = precision_recall_fscore_support(y_true, y_pred, average="micro", zero_division=0)
        result.update(precision=float(overall[0]), recall=float(overall[1]), f1=float(overall[2]))
        # seqeval orders per-type rows by sorted type name, over the types present in either list.
        present = sorted({e[0] for seq in (y_true, y_pred) for e in _entities(seq)})
        for name, p, r, f, s in zip(present, *precision_recall_fscore_support(y_true, y_pred, zero_division=0)):
            result.update({f"{name}_precision": float(p), f"{name}_recall": float(r), f"{name}_f1": float(f),
                           f"{name}_support": float(s)})
        return result


def sentence_tags(predictions, references, word_ids, example_ids) -> dict[int, tuple[list[int], list[int]]]:
    """Put the windows of each sentence back together: {sentence id: (predicted tag ids, reference
    tag ids)} per word, sentences in id order. Rows are model inputs (a sentence or one window of
    a long one); `word_ids` says which word of sentence `example_ids` a position scores."""
    words: dict[int, dict[int, tuple[int, int]]] = defaultdict(dict)
    for preds, refs, ids, example in zip(predictions, references, word_ids, example_ids):
        ids = np.asarray(ids)
        example = int(example)
        for position in np.flatnonzero(ids >= 0):
            if int(ids[position]) in words[example]:
                raise ValueError(f"word {ids[position]} of sentence {example} was scored twice")
            words[example][int(ids[position])] = (int(preds[position]), int(refs[position]))
    merged = {}
    for example in sorted(words):
        sentence = words[example]
        if sorted(sentence) != list(range(len(sentence))):
            raise ValueError(f"sentence {example} is missing words: a window was dropped")
        merged[example] = ([sentence[w][0] for w in range(len(sentence))], [sentence[w][1] for w in range(len(sentence))])
    return merged


def _entities(sequences: list[list[str]]) -> list[tuple[str, int, int]]:
    from seqeval.metrics.sequence_labeling import get_entities

    return get_entities(sequences)
