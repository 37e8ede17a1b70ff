"""A generated daily series with a yearly and a weekly season: the embedded forecasting sample.

Three years of one value a day: a yearly wave (amplitude 6), a weekly pattern (weekends
higher, by up to 3) and AR(1) noise (each day keeps 0.7 of yesterday's surprise). The weekly
pattern is what a 30-day window can learn and yesterday's value cannot show, so a forecaster
that learns beats the naive forecast; the noise keeps it from being trivial.
"""

from __future__ import annotations

import math
import random

START = "2021-01-01"
DAYS = 3 * 365 + 1  # 2021-2023 and the first day of 2024
WEEKLY = (0.0, -0.5, -1.0, -0.5, 0.5, 2.0, 3.0)  # Monday .. Sunday


def generate(days: int = DAYS, seed: int = 0) -> dict[str, list]:
    """{"date": ISO dates, "value": floats}, one row a day from START."""
    from datetime import date, timedelta

    rng = random.Random(seed)
    start, noise, dates, values = date.fromisoformat(START), 0.0, [], []
    for t in range(days):
        day = start + timedelta(days=t)
        noise = 0.7 * noise + rng.gauss(0, 1.0)
        yearly = 6 * math.sin(2 * math.pi * (day.timetuple().tm_yday - 100) / 365.25)
        dates.append(day.isoformat())
        values.append(round(15 + yearly + WEEKLY[day.weekday()] + noise, 2))
    return {"date": dates, "value": values}


def load():
    """One `train` split: the whole series (the recipe holds out its tail for validation)."""
    import datasets

    return datasets.DatasetDict(train=datasets.Dataset.from_dict(generate()))
