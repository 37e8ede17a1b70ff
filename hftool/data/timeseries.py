"""Time series from tables: a date column and value columns -> one regular, gap-free series.

Rows must be in date order (oldest first), so that holding out the last rows of a file
(data.holdout=tail) holds out the end of the series. The frequency comes from the dates unless
data.freq names it; dates missing from the regular grid are added and their values, like empty
cells, filled by linear interpolation, and the counts are reported.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from hftool import logs
from hftool.errors import HftoolError

# Names data.freq accepts besides pandas aliases ("15min", "W-MON", "MS").
FREQ_NAMES = {"hourly": "h", "daily": "D", "weekly": "W", "monthly": "M", "quarterly": "Q", "yearly": "Y"}
# Date-column names found without data.date_column (compared case-insensitively).
DATE_COLUMNS = ("date", "ds", "timestamp", "datetime", "time", "month", "day", "week", "period", "year")
# Cells read as "no value" (then interpolated) rather than as an error.
MISSING = {"", "na", "n/a", "nan", "null", "none", "?"}


@dataclass
class Series:
    """A regular series: one row per step of `freq`, no gaps, no missing values."""

    dates: "object"  # pandas DatetimeIndex
    values: np.ndarray  # (steps, columns), original units
    columns: list[str]
    freq: str  # pandas alias, e.g. D, MS, W-SUN
    added_dates: int = 0  # dates missing from the data, added and interpolated
    empty_values: int = 0  # empty cells, interpolated


def date_column(names: list[str], source: str, configured: str | None) -> str:
    """data.date_column if set, else the first column named like a date, else the first column."""
    if configured:
        if configured not in names:
            raise HftoolError(f"{source} has no column '{configured}' (columns: {', '.join(names)}); fix data.date_column")
        return configured
    return next((c for c in names if c.lower() in DATE_COLUMNS), names[0])


def value_columns(names: list[str], source: str, configured: list | None, date: str) -> list[str]:
    """data.value_columns if set, else every column but the date column."""
    if configured:
        missing = [c for c in configured if c not in names]
        if missing:
            raise HftoolError(f"{source} has no column '{missing[0]}' (columns: {', '.join(names)}); fix data.value_columns")
        return [str(c) for c in configured]
    columns = [c for c in names if c != date]
    if not columns:
        raise HftoolError(f"{source} has only the date column '{date}'; it needs at least one value column")
    return columns


def parse_dates(raw: list, source: str, column: str):
    """Cells -> DatetimeIndex, strictly increasing. Errors name the row (1 = first data row)."""
    import pandas as pd

    text = ["" if v is None else str(v).strip() for v in raw]
    dates = pd.to_datetime(pd.Series(text), errors="coerce", format="mixed")
    bad = np.flatnonzero(dates.isna().to_numpy())
    if len(bad):
        row = int(bad[0])
        shown = repr(text[row]) if text[row] else "an empty cell"
        raise HftoolError(f"{source} row {row + 1}, column '{column}': {shown} is not a date; fix the value "
                          "(e.g. 1981-01-31) or set data.date_column to the column that holds the dates")
    dates = pd.DatetimeIndex(dates)
    if dates.tz is not None:
        dates = dates.tz_localize(None)
    steps = np.diff(dates.asi8)
    if (steps <= 0).any():
        row = int(np.flatnonzero(steps <= 0)[0]) + 1
        what = "repeats" if steps[row - 1] == 0 else "comes before"
        raise HftoolError(f"{source} row {row + 1}, column '{column}': date {text[row]} {what} the previous row's "
                          f"({text[row - 1]}); rows must be in date order, oldest first, one per date")
    return dates


def parse_values(raw: list, source: str, column: str) -> np.ndarray:
    """Cells -> floats; empty or NA-like cells become NaN, anything else non-numeric is an error."""
    out = np.empty(len(raw), dtype=np.float64)
    for i, value in enumerate(raw):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out[i] = value
            continue
        text = "" if value is None else str(value).strip()
        if text.lower() in MISSING:
            out[i] = np.nan
            continue
        try:
            out[i] = float(text)
        except ValueError:
            raise HftoolError(f"{source} row {i + 1}, column '{column}': {text!r} is not a number; fix the value, "
                              "or leave the cell empty to have it interpolated") from None
    return out


def resolve_freq(freq: str | None, dates, source: str) -> str:
    """data.freq (a name or pandas alias), else the frequency of `dates`, as a pandas alias."""
    import pandas as pd

    if freq:
        name = FREQ_NAMES.get(freq.lower())
        if name in ("M", "Q", "Y"):  # start or end of the period, whichever the dates are on
            name += "S" if len(dates) == 0 or dates[0].is_month_start else "E"
        elif name == "W" and len(dates):  # weeks on the first date's weekday
            name = f"W-{dates[0].day_name()[:3].upper()}"
        alias = name or freq
        try:
            pd.tseries.frequencies.to_offset(alias)
        except ValueError:
            raise HftoolError(f"data.freq={freq} is not a frequency; use {', '.join(FREQ_NAMES)} or a pandas "
                              "alias such as 15min or W-MON") from None
        return alias
    if len(dates) < 2:
        raise HftoolError(f"{source} has {len(dates)} date(s): too few to tell the frequency; set data.freq")
    if len(dates) >= 3:
        with warnings.catch_warnings():  # pandas 3 warns that infer_freq will return an offset
            warnings.simplefilter("ignore")
            inferred = pd.infer_freq(dates)
        if inferred:
            return getattr(inferred, "freqstr", inferred)
    # Gaps defeat infer_freq: take the most common step, and name calendar steps by their anchor.
    nanoseconds = dates.to_numpy().astype("datetime64[ns]").astype(np.int64)  # asi8's unit varies with resolution
    steps, counts = np.unique(np.diff(nanoseconds), return_counts=True)
    step = pd.Timedelta(int(steps[counts.argmax()]), unit="ns")
    days = step / pd.Timedelta(days=1)
    start = dates[0]
    for low, high, period in ((28, 31, "M"), (89, 92, "Q"), (365, 366, "Y")):
        if low <= days <= high:
            return period + ("S" if start.is_month_start else "E")
    if days == 7:
        return f"W-{start.day_name()[:3].upper()}"
    if days >= 1 and days == int(days):
        return "D" if days == 1 else f"{int(days)}D"
    return pd.tseries.frequencies.to_offset(step).freqstr


def season_length(freq: str) -> int:
    """The usual seasonal period of a frequency: a day of hours, a week of days, a year of months."""
    import pandas as pd

    base = pd.tseries.frequencies.to_offset(freq).rule_code.split("-")[0]
    return {"h": 24, "D": 7, "B": 5, "W": 52, "MS": 12, "ME": 12, "QS": 4, "QE": 4}.get(base, 1)


def regularise(dates, values: np.ndarray, columns: list[str], freq: str, source: str) -> Series:
    """Reindex onto the regular grid of `freq` and fill gaps by linear interpolation."""
    import pandas as pd

    grid = pd.date_range(dates[0], dates[-1], freq=freq)
    off = ~dates.isin(grid)
    if off.any():
        row = int(np.flatnonzero(off)[0])
        raise HftoolError(f"{source} row {row + 1}: date {dates[row].date()} is not on the {freq} grid that starts at "
                          f"{dates[0].date()}; fix the date or set data.freq to the data's frequency")
    frame = pd.DataFrame(values, index=dates, columns=columns).reindex(grid)
    for column in columns:
        if frame[column].isna().all():
            raise HftoolError(f"{source}, column '{column}': no numeric value at all; pick other data.value_columns")
    empty = int(np.isnan(values).sum())
    filled = frame.interpolate(method="linear", limit_direction="both")
    return Series(grid, filled.to_numpy(dtype=np.float64), columns, freq, len(grid) - len(dates), empty)


def read_series(table: dict[str, list], names: list[str], source: str, data, report: bool = True) -> Series:
    """Columns of a table (name -> cells) -> a regular Series, as data.* configures it; `report`
    says how many dates were added and values filled, if any."""
    date = date_column(names, source, data.date_column)
    columns = value_columns(names, source, data.value_columns, date)
    dates = parse_dates(table[date], source, date)
    values = np.stack([parse_values(table[c], source, c) for c in columns], axis=1)
    freq = resolve_freq(data.freq, dates, source)
    series = regularise(dates, values, columns, freq, source)
    if report and (series.added_dates or series.empty_values):
        logs.info(f"{source}: {series.added_dates} missing dates added and {series.empty_values} empty values; "
                  f"filled by linear interpolation (frequency {freq})")
    return series


class StandardScaler:
    """Per-column mean/std scaling, fitted on the training part only; saved as scaler.json.

    It stands where other tasks have a tokenizer: built with the model, saved beside it, and
    loaded by evaluate and predict, so every split is scaled with the training statistics.
    """

    FILE = "scaler.json"

    def __init__(self, mean: list[float], std: list[float], columns: list[str]):
        self.mean = np.asarray(mean, dtype=np.float64)
        self.std = np.asarray(std, dtype=np.float64)
        self.columns = list(columns)

    @classmethod
    def fit(cls, values: np.ndarray, columns: list[str]) -> StandardScaler:
        std = values.std(axis=0)
        return cls(values.mean(axis=0), np.where(std > 0, std, 1.0), columns)  # a constant column stays put

    def transform(self, values: np.ndarray) -> np.ndarray:
        return (values - self.mean) / self.std

    def inverse(self, values):
        """Scaled -> original units (numpy arrays or torch tensors)."""
        if isinstance(values, np.ndarray):
            return values * self.std + self.mean
        import torch

        return values * torch.as_tensor(self.std, dtype=values.dtype, device=values.device) + \
            torch.as_tensor(self.mean, dtype=values.dtype, device=values.device)

    def save_pretrained(self, directory) -> None:
        import json
        from pathlib import Path

        data = {"type": "standard", "columns": self.columns, "mean": self.mean.tolist(), "std": self.std.tolist()}
        (Path(directory) / self.FILE).write_text(json.dumps(data, indent=2), encoding="utf-8")

    @classmethod
    def from_pretrained(cls, directory) -> StandardScaler:
        import json
        from pathlib import Path

        path = Path(directory) / cls.FILE
        if not path.is_file():
            raise HftoolError(f"{directory} has no {cls.FILE} (the training data's scaling); pass a run dir written "
                              "by `hftool finetune lstm-forecast`")
        data = json.loads(path.read_text(encoding="utf-8"))
        return cls(data["mean"], data["std"], data["columns"])
