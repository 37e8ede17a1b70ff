"""Forecast errors of a model beside the naive and seasonal-naive baselines, on the same targets."""

from __future__ import annotations

import datasets
import evaluate
import numpy as np

_SERIES = datasets.Sequence(datasets.Value("float64"))
_FEATURES = datasets.Features({"predictions": _SERIES, "references": _SERIES, "naive": _SERIES, "seasonal": _SERIES})


def errors(predictions: np.ndarray, references: np.ndarray) -> dict[str, float]:
    """MAE, RMSE, MAPE and sMAPE (both in percent) over every value.

    MAPE leaves out targets equal to 0 (it is undefined there; NaN if all are 0). sMAPE is
    200 |y - f| / (|y| + |f|), counted as 0 where both are 0.
    """
    e = predictions - references
    nonzero = references != 0
    mape = float(np.mean(np.abs(e[nonzero] / references[nonzero])) * 100) if nonzero.any() else float("nan")
    scale = np.abs(references) + np.abs(predictions)
    with np.errstate(divide="ignore", invalid="ignore"):
        smape = np.where(scale > 0, 2 * np.abs(e) / scale, 0.0)
    return {"mae": float(np.mean(np.abs(e))), "rmse": float(np.sqrt(np.mean(e ** 2))), "mape": mape,
            "smape": float(np.mean(smape) * 100)}


class ForecastErrors(evaluate.Metric):
    """mae, rmse, mape, smape of the predictions, and naive_* / seasonal_naive_* of the baselines.

    Inputs per example, one value per series, in the data's units: `predictions`, `references`
    (the true next values), `naive` (the last value before the target) and `seasonal` (the value
    one season before it).
    """

    def __init__(self, **kwargs):
        super().__init__(keep_in_memory=True, **kwargs)

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description="MAE, RMSE, MAPE and sMAPE of a forecast and of the naive and seasonal-naive forecasts.",
            citation="", inputs_description="predictions, references, naive, seasonal: one value per series",
            features=_FEATURES,
        )

    def _compute(self, predictions, references, naive, seasonal) -> dict[str, float]:
        references = np.asarray(references, dtype=np.float64)
        result = errors(np.asarray(predictions, dtype=np.float64), references)
        for name, values in (("naive", naive), ("seasonal_naive", seasonal)):
            result.update({f"{name}_{k}": v for k, v in errors(np.asarray(values, dtype=np.float64), references).items()})
        return result
