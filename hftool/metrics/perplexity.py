"""Perplexity (and bits per token) from summed token losses, exact whatever the batch size or process count."""

from __future__ import annotations

import math

import datasets
import evaluate
import numpy as np

_FEATURES = datasets.Features({"loss_sum": datasets.Value("float64"), "tokens": datasets.Value("int64")})


class Perplexity(evaluate.Metric):
    """exp(total token loss / total tokens) over every scored token.

    Inputs are per example: the summed cross-entropy of its scored tokens and their count. A mean
    of batch means would weight a short last batch like a full one; pooled sums do not.
    """

    def __init__(self, **kwargs):
        super().__init__(keep_in_memory=True, **kwargs)

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description="Token-weighted mean loss and its exponential, the perplexity.",
            citation="", inputs_description="loss_sum: summed token loss per example; tokens: scored tokens",
            features=_FEATURES,
        )

    def _compute(self, loss_sum, tokens) -> dict[str, float]:
        total, count = float(np.sum(loss_sum, dtype=np.float64)), int(np.sum(tokens))
        if count == 0:
            return {"loss": math.nan, "perplexity": math.nan}
        loss = total / count
        return {"loss": loss, "perplexity": math.exp(min(loss, 700.0))}  # exp overflows float past ~709


class BitsPerDim(Perplexity):
    """Perplexity, and the same mean loss in bits: `bits_per_dim`, bits per predicted token (Image
    GPT's measure, one token a pixel)."""

    def _compute(self, loss_sum, tokens) -> dict[str, float]:
        result = super()._compute(loss_sum, tokens)
        return {**result, "bits_per_dim": result["loss"] / math.log(2)}
