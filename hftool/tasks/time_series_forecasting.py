"""Time-series forecasting: a window of `data.context_length` past values -> the next value.

Data is a table with a date column and one or more value columns (hftool.data.timeseries makes
it a regular series: frequency inferred, gaps interpolated and reported). The model is
hftool.forecaster.TimeSeriesForecaster (`tiny:lstm`, `tiny:gru`, `tiny:rnn`,
`tiny:transformer`); values are standard-scaled with statistics of the training part only,
saved as scaler.json beside the weights and reused by evaluate and predict.

Evaluation scores one-step-ahead forecasts in the data's own units (eval_mae, eval_rmse,
eval_mape, eval_smape) beside the naive (last value) and seasonal-naive (value one season
earlier) forecasts of the same targets. `predict` forecasts `horizon` steps past the end of the
series recursively, each forecast feeding the next window.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from hftool import models
from hftool.config import DataConfig, Option
from hftool.errors import HftoolError
from hftool.outputs import atomic_path, check_output
from hftool.tasks.base import Options, Parts, Reading, Task

DEFAULT_HORIZON = 30  # steps `predict` forecasts unless told: the textbook's 30 days


@dataclass
class ForecastingData(DataConfig):
    choices = {"holdout": ("random", "tail")}
    # The date column; None takes the first column named like a date (date, ds, timestamp,
    # month, ...), else the first column.
    date_column: str | None = None
    # The columns to forecast, together; None takes every column but the date.
    value_columns: list | None = None
    # hourly | daily | weekly | monthly | quarterly | yearly or a pandas alias (15min, W-MON);
    # None infers it from the dates. Missing dates on that grid are added and interpolated.
    freq: str | None = None
    # Past steps the model reads to predict the next one. 30 is the textbook month of daily
    # values; a monthly series wants at least a year (12).
    context_length: int = 30
    # The seasonal-naive baseline's period; None uses the frequency's usual one (24 hourly, 7
    # daily, 52 weekly, 12 monthly, 4 quarterly).
    season_length: int | None = None
    # How validation is held out when there is no validation data: random rows (seeded), or
    # tail: the last rows in file order, with data.context_length rows before them as history
    # for the first windows (the model is scored on the future it has not seen).
    holdout: str = "random"

    def check(self) -> None:
        super().check()
        self.require("context_length", self.context_length > 0, "positive")
        self.require("season_length", self.season_length is None or self.season_length > 0, "positive")


class TimeSeriesForecasting(Task):
    name = "time-series-forecasting"
    default_metric = "rmse"
    # Original-unit values for the metric only; the model sees past_values and labels.
    meta_keys = ("target", "naive", "seasonal")
    recipe = "lstm-forecast"
    options = Options(data=ForecastingData)
    architectures = ("TimeSeriesForecaster",)
    predict_options = (
        Option("horizon", int, "Forecasting: steps to forecast past the end of the series (default 30).", min=1),
    )
    # `hftool predict RUN_DIR` forecasts from the end of the run's own series.
    inputs_optional = True
    writes_output = True
    peft_unsupported = ("its forecaster is hftool's own small recurrent model (tens of thousands of parameters), "
                        "whose LSTM/GRU cells peft has no adapters for")

    def __init__(self):
        # Sources whose gaps were reported: training reads a file's rows whole, then its
        # training part, which would say the same thing twice.
        self._reported: set[str] = set()

    def reading(self, cfg):
        return Reading(holdout=cfg.data.holdout, history=cfg.data.context_length)

    # ------------------------------------------------------------------------------ data
    def prepare(self, cfg, ds, source, labels=None, require_labels=True):
        """Rows -> a regular series: `date` (ISO) and `values` (one float per value column).

        `labels` are the value columns (a trained model's, for evaluate and predict)."""
        import pyarrow as pa

        from hftool.data import timeseries

        data = cfg.data
        if labels is not None and not data.value_columns:
            data = dataclasses.replace(data, value_columns=list(labels))
        elif labels is not None and len(data.value_columns) != len(labels):
            raise HftoolError(f"data.value_columns names {len(data.value_columns)} columns; the model forecasts "
                              f"{len(labels)} ({', '.join(labels)}); name as many")
        series = timeseries.read_series(ds.to_dict(), ds.column_names, source, data, report=source not in self._reported)
        if series.added_dates or series.empty_values:
            self._reported.add(source)
        rows = _table({"date": pa.array([d.isoformat() for d in series.dates], pa.string()),
                       "values": _float_lists(series.values)})
        rows.info.description = source  # features() names it in errors
        return rows, series.columns

    def validate_rows(self, cfg, ds, source, findings, labels=None):
        """Dates that are not dates or out of order, values that are not numbers (each with its
        row), and gaps in the dates (the steps training fills by interpolation)."""
        import pandas as pd

        from hftool.data import timeseries, validation

        data = cfg.data
        date = timeseries.date_column(ds.column_names, source, data.date_column)
        columns = timeseries.value_columns(ds.column_names, source, data.value_columns or labels, date)
        summary = validation.Summary(rows=len(ds))
        empty = 0
        for column in columns:
            numbers = summary.values.setdefault(column, [])
            for row, value in enumerate(ds[column], 1):
                text = "" if value is None else str(value).strip()
                if text.lower() in timeseries.MISSING:
                    empty += 1
                    continue
                try:
                    numbers.append(float(text))
                except ValueError:
                    findings.add("not_a_number", source=source, row=row, value=value, column=column)
        raw = ["" if v is None else str(v).strip() for v in ds[date]]
        parsed = pd.to_datetime(pd.Series(raw), errors="coerce", format="mixed")
        kept, previous = [], None  # (row, date) of the dates in order
        for row, (text, when) in enumerate(zip(raw, parsed), 1):
            if pd.isna(when):
                findings.add("not_a_date", source=source, row=row, value=text, column=date)
            elif previous is not None and when <= previous[1]:
                findings.add("unsorted_dates", source=source, row=row, value=text, previous=raw[previous[0] - 1],
                             column=date)
            else:
                kept.append((row, when))
                previous = (row, when)
        missing = 0
        if len(kept) > 2:
            dates = pd.DatetimeIndex([when for _, when in kept])
            try:
                freq = timeseries.resolve_freq(data.freq, dates, source)
            except HftoolError:
                freq = None  # no regular frequency: the reader says so
            if freq:
                steps = pd.date_range(dates[0], dates[-1], freq=freq).get_indexer(dates)
                for (row, _), step, before in zip(kept[1:], steps[1:], steps[:-1]):
                    if step > before + 1 and before >= 0:
                        missing += int(step - before - 1)
                        findings.add("date_gap", source=source, row=row, missing=int(step - before - 1),
                                     value=raw[row - 1], freq=freq, column=date)
        summary.counts |= {"empty values": empty, "missing dates": missing}
        return summary

    def _windows(self, parts: Parts, ds, scored: bool):
        """One example per target step t: the scaled window before t and the scaled value at t;
        scored examples also carry the original-unit target and the two baselines' forecasts.

        Scored targets start once a window and a season of history exist before them, so the
        model and both baselines are scored on the same steps."""
        import numpy as np

        config = parts.model.config
        context, season = config.context_length, config.season_length
        values = _values(ds)
        start = max(context, season) if scored else context
        if len(values) <= start:
            need = f"data.context_length={context}" + (f" and season_length={season}" if season > context and scored else "")
            raise HftoolError(f"{ds.info.description or 'the data'}: {len(values)} time steps, too few for "
                              f"{need} (needs more than {start}); lower data.context_length or give a longer series")
        scaled = parts.processor.transform(values).astype(np.float32)
        windows = np.lib.stride_tricks.sliding_window_view(scaled, context, axis=0).transpose(0, 2, 1)
        steps = np.arange(start, len(values))
        columns = {"past_values": windows[steps - context], "labels": scaled[steps]}
        if scored:
            columns |= {"target": values[steps], "naive": values[steps - 1], "seasonal": values[steps - season]}
        return _table({name: _float_lists(array) for name, array in columns.items()})

    def features(self, parts, cfg, ds):
        return self._windows(parts, ds, scored=True)

    def train_features(self, parts, cfg, ds):
        return self._windows(parts, ds, scored=False)

    def collate(self, parts):
        return collate

    # ----------------------------------------------------------------------------- model
    def build(self, cfg, labels, train_ds=None, model_path=None, run_dir=None) -> Parts:
        from hftool.data import timeseries
        from hftool.forecaster import CELLS, ForecasterConfig, TimeSeriesForecaster

        spec = model_path or cfg.model.name
        overrides = dict(cfg.model.config_overrides)
        if models.tiny_arch(spec) is not None and model_path is None:
            cell = models.check_tiny(spec, CELLS, self.name)
            models.check_config_overrides(ForecasterConfig(), overrides)
            values = _values(train_ds)
            import pandas as pd

            freq = timeseries.resolve_freq(cfg.data.freq, pd.DatetimeIndex(train_ds["date"]), "the training data")
            season = cfg.data.season_length or timeseries.season_length(freq)
            config = ForecasterConfig(**({"cell": cell, "input_size": len(labels), "context_length": cfg.data.context_length,
                                          "columns": labels, "freq": freq, "season_length": season} | overrides))
            return Parts(TimeSeriesForecaster(config), timeseries.StandardScaler.fit(values, labels), list(labels))
        # A saved forecaster (run dir): evaluate, predict, or training it further on new data.
        model = models.load("model", TimeSeriesForecaster, spec, cfg.model.token)
        scaler = timeseries.StandardScaler.from_pretrained(spec)
        if labels is not None and len(labels) != model.config.input_size:
            raise HftoolError(f"{spec} forecasts {model.config.input_size} columns ({', '.join(model.config.columns)}); "
                              f"the data has {len(labels)} ({', '.join(labels)}); set data.value_columns")
        return Parts(model, scaler, list(model.config.columns))

    # --------------------------------------------------------------------------- metrics
    def metric(self, parts, rows):
        from hftool.metrics.forecasting import ForecastErrors

        return ForecastErrors()

    def resampler(self, parts, rows):
        from hftool.metrics.resampling import ForecastStats

        return ForecastStats()

    def eval_outputs(self, parts, outputs, batch):
        scaled = outputs.predictions.float()
        return {"predictions": parts.processor.inverse(scaled.double()), "references": batch["target"],
                "naive": batch["naive"], "seasonal": batch["seasonal"],
                # per-example, so eval_loss is exact whatever the batching
                "loss": ((scaled - batch["labels"]) ** 2).mean(-1)}

    # ------------------------------------------------------------------------- inference
    def predict(self, parts, cfg, inputs, batch_size, horizon: int | None = None, output: Path | None = None):
        """Forecast `horizon` steps past the end of a series: the run's own data (no inputs) or
        one table file of history. Returns one {"date", "step", <column>: value} per step;
        with `output`, also writes it as CSV and a PNG of history and forecast beside it."""
        import numpy as np
        import pandas as pd
        import torch

        from hftool.data import load_source

        horizon = DEFAULT_HORIZON if horizon is None else horizon
        if horizon < 1:
            raise HftoolError(f"--horizon must be at least 1, got {horizon}")
        if len(inputs) > 1:
            raise HftoolError(f"pass one file of history to forecast from, got {len(inputs)} inputs; or none to "
                              "forecast from the end of the run's own data")
        spec = inputs[0] if inputs else cfg.data.train
        if not spec:
            raise HftoolError("no history to forecast from: pass a CSV file with the series")
        if not inputs and not spec.startswith("sample:") and not Path(spec).expanduser().exists():
            raise HftoolError(f"the run's data {spec} (its data.train) is not found from {Path.cwd()}; pass the "
                              "history to forecast from: hftool predict RUN_DIR path/to/history.csv")
        config = parts.model.config
        data = dataclasses.replace(cfg.data, freq=cfg.data.freq or config.freq)
        source = load_source(spec, data.encoding, cfg.model.token)
        if "train" not in source:
            raise HftoolError(f"{spec} has no train split (splits: {', '.join(source)}); pass one file of history")
        rows, _ = self.prepare(dataclasses.replace(cfg, data=data), source["train"], spec, parts.labels)
        values = np.asarray(rows["values"], dtype=np.float64).reshape(len(rows), -1)
        if len(values) < config.context_length:
            raise HftoolError(f"{spec}: {len(values)} time steps; the model reads windows of {config.context_length}: "
                              "give a longer history")
        from hftool.forecaster import forecast

        model = parts.model.eval()
        device = next(model.parameters()).device
        window = torch.tensor(parts.processor.transform(values[-config.context_length:]), dtype=torch.float32)
        scaled = forecast(model, window[None].to(device), horizon)[0].double().cpu().numpy()
        forecast = parts.processor.inverse(scaled)
        history = pd.DatetimeIndex(rows["date"])
        dates = pd.date_range(history[-1], periods=horizon + 1, freq=data.freq)[1:]
        with_time = any(d != d.normalize() for d in history[-2:])
        predictions = [{"date": d.isoformat() if with_time else d.date().isoformat(), "step": i + 1,
                        **{c: round(float(v), 6) for c, v in zip(parts.labels, row)}}
                       for i, (d, row) in enumerate(zip(dates, forecast))]
        if output is not None:
            write_forecast(Path(output), predictions, parts.labels, history, values)
        return predictions

    def format_prediction(self, prediction):
        return "\t".join([prediction["date"], *(f"{v:.4f}" for k, v in prediction.items() if k not in ("date", "step"))])

    def card_metadata(self, parts, cfg):
        """library_name hftool: transformers loads the model once `import hftool` registered it."""
        return {**super().card_metadata(parts, cfg), "library_name": "hftool"}

    def card_usage(self, parts, cfg):
        """The model through transformers' AutoModel (transformers has no forecasting pipeline)."""
        return ("```python\nimport json\n\nimport torch\nfrom transformers import AutoModel\n\n"
                "import hftool  # registers its forecaster with transformers' Auto classes (no remote code)\n\n"
                'model = AutoModel.from_pretrained(".").eval()\n'
                'scaler = json.load(open("scaler.json"))  # the training data\'s mean and std per column\n'
                'mean, std = torch.tensor(scaler["mean"]), torch.tensor(scaler["std"])\n'
                "# your last context_length values, one column per series (scaler[\"columns\"]), in data units\n"
                "history = mean.repeat(model.config.context_length, 1)\n"
                "forecast = model.forecast(((history - mean) / std)[None], horizon=7)[0] * std + mean\n"
                "print(forecast)\n```\n\n"
                "or `hftool predict . --horizon 30 --output forecast.csv` (dates, values and a plot).\n")

    def onnx_graphs(self, parts, cfg, batch):
        """model.onnx: one step, past_values (batch x steps x series, scaled) -> predictions (batch x
        series, scaled); predict feeds each forecast back for the next step, as on the PyTorch model."""
        from hftool.export import model_graph

        return [model_graph(parts.model, batch, {"past_values": {0: "batch", 1: "steps"}}, ["predictions"])]

    def save(self, parts, run_dir, model=None, state_dict=None):
        if model is not None:
            model.save_pretrained(str(run_dir), state_dict=state_dict, safe_serialization=True)
        parts.processor.save_pretrained(run_dir)


def collate(features: list[dict]) -> dict:
    import torch

    batch = {k: torch.tensor([f[k] for f in features], dtype=torch.float32) for k in ("past_values", "labels")}
    for key in TimeSeriesForecasting.meta_keys:  # original units, kept exact for the metric
        if key in features[0]:
            batch[key] = torch.tensor([f[key] for f in features], dtype=torch.float64)
    return batch


def write_forecast(path: Path, predictions: list[dict], columns: list[str], dates, values) -> Path:
    """The forecast as CSV at `path` and a PNG of the recent history and the forecast beside it."""
    import csv

    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt
    import pandas as pd

    png = path.with_suffix(".png")
    for target in (path, png):  # both before either is written
        check_output(target, what="--output")
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=["date", *columns])
        writer.writeheader()
        writer.writerows({k: p[k] for k in ("date", *columns)} for p in predictions)
    shown = min(len(values), max(4 * len(predictions), 120))  # enough history to see the pattern
    future = pd.DatetimeIndex([p["date"] for p in predictions])
    fig, axes = plt.subplots(len(columns), 1, figsize=(10, 3 * len(columns)), squeeze=False)
    for i, (ax, column) in enumerate(zip(axes[:, 0], columns)):
        ax.plot(dates[-shown:], values[-shown:, i], color="tab:blue", label="history")
        # Joined to the last observed point, so the forecast reads as a continuation.
        ax.plot([dates[-1], *future], [values[-1, i], *(p[column] for p in predictions)], color="tab:orange",
                label=f"forecast ({len(predictions)} steps)")
        ax.set_ylabel(column)
        ax.legend(loc="upper left")
    fig.autofmt_xdate()
    fig.tight_layout()
    with atomic_path(png) as tmp:
        fig.savefig(tmp, dpi=80)
    plt.close(fig)
    return png


def _values(ds):
    """The `values` column as a (steps, columns) float64 array, read by Arrow (no Python floats)."""
    import numpy as np

    from hftool.data.columns import column_values

    flat = column_values(ds, "values").combine_chunks().flatten().to_numpy(zero_copy_only=False)
    return np.asarray(flat, dtype=np.float64).reshape(len(ds), -1)


def _float_lists(array):
    """The rows of a numpy array as an Arrow list array of float64 (lists of lists for 3 dimensions),
    built from its buffer: a window per step as Python floats took ~30x the memory of the numbers."""
    import numpy as np
    import pyarrow as pa

    values = pa.array(np.ascontiguousarray(array, dtype=np.float64).reshape(-1))
    for size in reversed(array.shape[1:]):
        values = pa.ListArray.from_arrays(pa.array(np.arange(0, len(values) + 1, size, dtype=np.int32)), values)
    return values


def _table(columns: dict):
    """An in-memory Dataset of Arrow arrays (see tables.in_memory)."""
    import pyarrow as pa

    from hftool.data.tables import in_memory

    return in_memory(pa.table(columns))
