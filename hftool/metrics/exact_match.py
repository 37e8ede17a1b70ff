"""Exact match of generated answers: the share that equal their reference, whitespace at the ends aside."""

from __future__ import annotations

import datasets
import evaluate

from hftool.metrics.captioning import caption_text


class GeneratedExactMatch(evaluate.Metric):
    """Decodes generated token ids (up to EOS) and compares each with its example's reference.

    Inputs per example: `generated` (token ids, padded with -100) and `index` (the example's row
    in the evaluation data, whose reference is `references[index]`). compute() -> {exact_match}.
    """

    def __init__(self, tokenizer=None, references: list[str] | None = None, **kwargs):
        super().__init__(keep_in_memory=True, **kwargs)
        self.tokenizer, self.references = tokenizer, references or []

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description="Share of generated answers equal to their reference.", citation="",
            inputs_description="generated: token ids; index: the example's row in the evaluation data",
            features=datasets.Features({"generated": datasets.Sequence(datasets.Value("int64")),
                                        "index": datasets.Value("int64")}),
        )

    def _compute(self, generated, index) -> dict[str, float]:
        hits = [caption_text(self.tokenizer, ids) == self.references[i].strip() for ids, i in zip(generated, index)]
        return {"exact_match": sum(hits) / len(hits) if hits else 0.0}
