"""Time-series forecasting (lstm-forecast): data formats, frequencies, missing dates, the
training-only scaler saved and reused, metrics against hand computations, bad input, the
forecasters' save/load/predict round trips and the embedded default's learnability."""

from __future__ import annotations

import csv
import json
import math
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pytest

from hftool.config import load_config


def daily(n: int, start: str = "2020-01-01", seed: int = 0) -> tuple[list[str], list[float]]:
    """n days of a weekly pattern plus a little noise."""
    rng = np.random.default_rng(seed)
    first = date.fromisoformat(start)
    dates = [(first + timedelta(days=i)).isoformat() for i in range(n)]
    values = [round(10 + 3 * math.sin(2 * math.pi * i / 7) + rng.normal(0, 0.3), 2) for i in range(n)]
    return dates, values


def write_csv(path: Path, header: list[str], rows: list[list], crlf: bool = True) -> Path:
    """Quoted dates and CRLF line ends, as the public time-series files have them."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, quoting=csv.QUOTE_NONNUMERIC, lineterminator="\r\n" if crlf else "\n")
        writer.writerow(header)
        writer.writerows(rows)
    return path


@pytest.fixture
def series_csv(tmp_path) -> Path:
    dates, values = daily(160)
    return write_csv(tmp_path / "series.csv", ["Date", "Temp"], [list(r) for r in zip(dates, values)])


def finetune_args(data: Path | str, out: Path, *extra: str, steps: int = 20) -> list[str]:
    return ["finetune", "lstm-forecast", "--data", str(data), "-o", str(out), "--max-steps", str(steps),
            "--batch-size", "16", "data.context_length=8", "data.validation_split=0.2", "train.eval_steps=100",
            "train.logging_steps=10", "model.config_overrides={hidden_size: 16}", *extra]


def prepared(path: Path, *overrides: str):
    """(rows, columns) of the forecasting task's prepare on a data file."""
    from hftool.data import load_source
    from hftool.tasks import get_task

    cfg = load_config("lstm-forecast", overrides=list(overrides))
    return get_task(cfg.task).prepare(cfg, load_source(str(path))["train"], str(path))


# ------------------------------------------------------------------------------------- data
@pytest.mark.parametrize("suffix", ["csv", "tsv", "jsonl", "parquet"])
def test_each_file_format_gives_the_same_series(tmp_path, suffix):
    import pandas as pd

    dates, values = daily(20)
    frame = pd.DataFrame({"date": dates, "sales": values, "visits": [v * 2 for v in values]})
    path = tmp_path / f"data.{suffix}"
    if suffix == "csv":
        frame.to_csv(path, index=False)
    elif suffix == "tsv":
        frame.to_csv(path, index=False, sep="\t")
    elif suffix == "jsonl":
        frame.to_json(path, orient="records", lines=True)
    else:
        frame.to_parquet(path)
    rows, columns = prepared(path)
    assert columns == ["sales", "visits"]  # every column but the date, in file order
    assert rows["date"][0].startswith("2020-01-01") and len(rows) == 20
    np.testing.assert_allclose(np.array(rows["values"]), frame[["sales", "visits"]].to_numpy())


def test_frequency_is_inferred_and_overridable(tmp_path):
    from hftool.data import timeseries

    months = write_csv(tmp_path / "months.csv", ["Month", "Passengers"],
                       [[f"{1949 + i // 12}-{i % 12 + 1:02d}", 100 + i] for i in range(30)])
    rows, _ = prepared(months)
    import pandas as pd

    dates = pd.DatetimeIndex(rows["date"])
    assert timeseries.resolve_freq(None, dates, "x") == "MS" and timeseries.season_length("MS") == 12
    # Weekly data with a gap: infer_freq gives up, the most common step does not.
    weeks = pd.DatetimeIndex(["2024-01-07", "2024-01-14", "2024-01-28", "2024-02-04"])
    assert timeseries.resolve_freq(None, weeks, "x") == "W-SUN"
    # data.freq=weekly on daily data: dates off the weekly grid are an error naming the row.
    dates, values = daily(10)
    days = write_csv(tmp_path / "days.csv", ["date", "v"], [list(r) for r in zip(dates, values)])
    from hftool.errors import HftoolError

    with pytest.raises(HftoolError, match=r"days.csv row 2: date 2020-01-02 is not on the W"):
        prepared(days, "data.freq=weekly")
    with pytest.raises(HftoolError, match="data.freq=fortnightly is not a frequency"):
        prepared(days, "data.freq=fortnightly")


def test_missing_dates_and_empty_values_are_interpolated_and_reported(tmp_path, capsys):
    rows = [["2021-03-01", 1.0], ["2021-03-02", 2.0], ["2021-03-05", 8.0], ["2021-03-06", ""],
            ["2021-03-07", 4.0], ["2021-03-08", "NA"]]
    path = write_csv(tmp_path / "gaps.csv", ["date", "level"], rows)
    out, columns = prepared(path)
    assert out["date"][:5] == [f"2021-03-0{d}T00:00:00" for d in range(1, 6)]
    # 03-03 and 03-04 lie a third and two thirds of the way from 2 to 8; 03-06 halfway from 8
    # to 4; the last (empty) value takes its neighbour's.
    np.testing.assert_allclose(np.array(out["values"])[:, 0], [1, 2, 4, 6, 8, 6, 4, 4])
    assert "gaps.csv: 2 missing dates added and 2 empty values; filled by linear interpolation" in capsys.readouterr().err


def test_tail_holdout_validates_on_the_end_of_the_series(series_csv):
    from hftool.data import load_splits
    from hftool.tasks import get_task

    cfg = load_config("lstm-forecast", flags={"data.train": str(series_csv)},
                      overrides=["data.context_length=8", "data.validation_split=0.25"])
    splits, names = load_splits(cfg.data, get_task(cfg.task).reading(cfg), seed=1)
    assert len(splits["train"]) == 120 and len(splits["validation"]) == 8 + 40
    # in order, the last training rows are the validation split's history
    assert splits["train"]["Date"][-8:] == splits["validation"]["Date"][:8]
    assert splits["validation"]["Date"][-1] == "2020-06-08"
    assert "last 40 rows" in names["validation"]


# ------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("rows, message", [
    ([["2020-01-01", 1.5], ["2020-01-02", "12,5"], ["2020-01-03", 2]],
     r"bad.csv row 2, column 'value': '12,5' is not a number; fix the value, or leave the cell empty"),
    ([["2020-01-01", 1.5], ["yesterday", 2], ["2020-01-03", 2]],
     r"bad.csv row 2, column 'date': 'yesterday' is not a date; fix the value \(e.g. 1981-01-31\) or set data.date_column"),
    ([["2020-01-02", 1.5], ["2020-01-01", 2], ["2020-01-03", 2]],
     r"bad.csv row 2, column 'date': date 2020-01-01 comes before the previous row's \(2020-01-02\); rows must be in date order"),
])
def test_bad_input_is_a_one_line_error_naming_file_row_and_column(cli, tmp_path, rows, message):
    path = write_csv(tmp_path / "bad.csv", ["date", "value"], rows * 1, crlf=False)
    result = cli(*finetune_args(path, tmp_path / "run"))
    assert result.code == 2
    error = result.err.strip().splitlines()[-1]
    assert error.startswith("error: ") and str(path) in error
    import re

    assert re.search(message, error), error


def test_bad_configuration_is_named(cli, series_csv, tmp_path):
    result = cli(*finetune_args(series_csv, tmp_path / "a", "data.value_columns=[Rain]"))
    assert result.code == 2 and "has no column 'Rain' (columns: Date, Temp); fix data.value_columns" in result.err
    result = cli(*finetune_args(series_csv, tmp_path / "b", "data.context_length=200"))
    assert result.code == 2 and "too few for data.context_length=200" in result.err
    result = cli(*finetune_args(series_csv, tmp_path / "c", "--model", "tiny:bert"))
    assert result.code == 2 and "tiny:lstm" in result.err


# --------------------------------------------------------------------------------- metrics
def test_metric_values_match_hand_computations():
    from hftool.metrics.forecasting import ForecastErrors

    metric = ForecastErrors()
    metric.add_batch(predictions=[[2.0], [4.0]], references=[[1.0], [5.0]], naive=[[1.0], [0.0]], seasonal=[[3.0], [5.0]])
    metric.add_batch(predictions=[[0.0]], references=[[0.0]], naive=[[2.0]], seasonal=[[0.0]])
    got = metric.compute()
    # model errors: 1, -1, 0 over targets 1, 5, 0 (MAPE leaves out the 0 target)
    assert got["mae"] == pytest.approx(2 / 3)
    assert got["rmse"] == pytest.approx(math.sqrt(2 / 3))
    assert got["mape"] == pytest.approx((1 / 1 + 1 / 5) / 2 * 100)
    assert got["smape"] == pytest.approx((2 * 1 / 3 + 2 * 1 / 9 + 0) / 3 * 100)
    # naive errors: 0, -5, 2
    assert got["naive_mae"] == pytest.approx(7 / 3)
    assert got["naive_rmse"] == pytest.approx(math.sqrt(29 / 3))
    assert got["naive_mape"] == pytest.approx((0 + 5 / 5) / 2 * 100)
    assert got["naive_smape"] == pytest.approx((0 + 2 * 5 / 5 + 2 * 2 / 2) / 3 * 100)
    # seasonal naive: 2, 0, 0
    assert got["seasonal_naive_rmse"] == pytest.approx(math.sqrt(4 / 3))
    assert got["seasonal_naive_mape"] == pytest.approx(2 / 1 / 2 * 100)


# ---------------------------------------------------------------- training, scaler, reload
def test_run_saves_the_training_scaler_and_reuses_it(cli, series_csv, tmp_path):
    out = tmp_path / "run"
    result = cli(*finetune_args(series_csv, out))
    assert result.code == 0, result.err
    metrics = json.loads((out / "metrics.json").read_text())
    values = np.array([float(r[1]) for r in list(csv.reader(open(series_csv)))[1:]])
    train, tail = values[:128], values[128:]  # validation_split 0.2 of 160 rows: the last 32
    # scaling fitted on the training part only
    scaler = json.loads((out / "scaler.json").read_text())
    assert scaler["columns"] == ["Temp"]
    assert scaler["mean"][0] == pytest.approx(train.mean()) and scaler["std"][0] == pytest.approx(train.std())
    assert scaler["mean"][0] != pytest.approx(values.mean())
    # the baselines are scored on exactly the held-out tail: 32 targets (naive: the day before;
    # seasonal naive: a week before), computed by hand from the file
    naive = values[127:159] - tail
    seasonal = values[121:153] - tail
    assert metrics["eval_naive_rmse"] == pytest.approx(math.sqrt(np.mean(naive ** 2)))
    assert metrics["eval_naive_mae"] == pytest.approx(np.mean(np.abs(naive)))
    assert metrics["eval_seasonal_naive_rmse"] == pytest.approx(math.sqrt(np.mean(seasonal ** 2)))
    assert {"eval_mae", "eval_rmse", "eval_mape", "eval_smape", "eval_loss"} <= set(metrics)

    # evaluate reloads model + scaler and reproduces the run's numbers
    result = cli("evaluate", out)
    assert result.code == 0, result.err
    again = json.loads(result.out)
    for key in ("eval_rmse", "eval_mae", "eval_naive_rmse", "eval_loss"):
        assert again[key] == pytest.approx(metrics[key], rel=1e-5)

    # evaluate --data scores another file with the saved scaler: windows start once a window
    # (8) and a season (7) of history exist, so the naive baseline covers rows 9..160 by hand
    other = tmp_path / "other.csv"
    other.write_text(series_csv.read_text())
    result = cli("evaluate", out, "--data", other)
    assert result.code == 0, result.err
    scored = json.loads(result.out)
    assert scored["eval_naive_rmse"] == pytest.approx(math.sqrt(np.mean((values[7:159] - values[8:160]) ** 2)))
    assert scored["eval_rmse"] != pytest.approx(metrics["eval_rmse"])  # other targets than the tail

    # predict: a one-step forecast by hand from the saved model and scaler equals step 1
    import torch
    from transformers import AutoModel

    import hftool.forecaster  # noqa: F401  (registers the model with AutoModel)

    model = AutoModel.from_pretrained(str(out)).eval()
    window = torch.tensor((values[-8:] - scaler["mean"][0]) / scaler["std"][0], dtype=torch.float32)[None, :, None]
    by_hand = model(past_values=window).predictions.item() * scaler["std"][0] + scaler["mean"][0]
    # in fp32 like the sum by hand (predict follows the run's precision: bf16 on CPUs that have it)
    result = cli("predict", out, "--horizon", "3", "--output", tmp_path / "f" / "forecast.csv", "train.mixed_precision=no")
    assert result.code == 0, result.err
    lines = result.out.strip().splitlines()
    assert [line.split("\t")[0] for line in lines] == ["2020-06-09", "2020-06-10", "2020-06-11"]
    assert float(lines[0].split("\t")[1]) == pytest.approx(by_hand, abs=1e-3)
    written = list(csv.DictReader(open(tmp_path / "f" / "forecast.csv")))
    assert [r["date"] for r in written] == ["2020-06-09", "2020-06-10", "2020-06-11"]
    assert float(written[0]["Temp"]) == pytest.approx(by_hand, abs=1e-4)
    assert (tmp_path / "f" / "forecast.png").stat().st_size > 5000

    # the saved scaler is what predict uses: shifting its mean shifts the forecast's first step
    scaler["mean"][0] += 100.0
    (out / "scaler.json").write_text(json.dumps(scaler))
    shifted = cli("predict", out, "--horizon", "1")
    assert shifted.code == 0 and float(shifted.out.split("\t")[1]) != pytest.approx(by_hand, abs=1.0)

    # a run whose data moved (a relative path, run elsewhere) asks for the history
    config = (out / "config.yaml").read_text().replace(str(series_csv), "data/moved.csv")
    (out / "config.yaml").write_text(config)
    moved = cli("predict", out)
    assert moved.code == 2 and "the run's data data/moved.csv (its data.train) is not found" in moved.err
    assert "hftool predict RUN_DIR path/to/history.csv" in moved.err


@pytest.mark.parametrize("cell", ["rnn", "gru", "transformer"])
def test_every_cell_trains_reloads_and_predicts_the_same(cli, series_csv, tmp_path, cell):
    out = tmp_path / cell
    result = cli(*finetune_args(series_csv, out, "--model", f"tiny:{cell}", steps=4))
    assert result.code == 0, result.err
    assert json.loads((out / "config.json").read_text())["cell"] == cell
    from hftool import api

    # predict from a history file (the series' first 100 days): dates continue after it
    history = tmp_path / "history.csv"
    history.write_text("".join(open(series_csv).readlines()[:101]))
    first = api.predict(str(out), [str(history)], horizon=2)
    assert [p["date"] for p in first] == ["2020-04-10", "2020-04-11"] and set(first[0]) == {"date", "step", "Temp"}
    assert api.predict(str(out), [str(history)], horizon=2) == first  # deterministic after reload


def test_horizon_and_output_are_refused_where_they_do_not_apply(cli, sentiment_csv, tmp_path):
    out = tmp_path / "cls"
    result = cli("finetune", "bert-cls", "--data", sentiment_csv["train"], "--eval-data", sentiment_csv["val"],
                 "-o", out, "--max-steps", "1")
    assert result.code == 0, result.err
    result = cli("predict", out, "a fine film", "--horizon", "3")
    assert result.code == 2 and "--horizon is not supported for text-classification models" in result.err
    result = cli("predict", out, "--output", tmp_path / "p.jsonl")  # no inputs: still an error there
    assert result.code == 2 and "nothing to predict" in result.err


@pytest.mark.slow
def test_embedded_default_beats_the_naive_forecast(cli, tmp_path):
    out = tmp_path / "default"
    result = cli("finetune", "lstm-forecast", "-o", out)
    assert result.code == 0, result.err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["eval_rmse"] < 0.85 * metrics["eval_naive_rmse"]
    assert metrics["eval_rmse"] < metrics["eval_seasonal_naive_rmse"]
