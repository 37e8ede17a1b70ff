"""Class labels of training data: the class names a classifier is built with, and the checks that
catch labels that cannot mean what the user meant (one class; `1` beside `1.0` or beside `pos`).
"""

from __future__ import annotations

import re

from hftool.data.checks import Findings

INTEGER = re.compile(r"[+-]?\d+")
DECIMAL = re.compile(r"[+-]?(\d+\.\d*|\.\d+|\d+)([eE][+-]?\d+)?|[+-]?(nan|inf)", re.IGNORECASE)


def label_kind(value) -> str:
    """How a label is written: integer, decimal or name. Labels of one column share one kind;
    otherwise `1` and `1.0` (or `1` and `pos`) become different classes."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return "name"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "decimal"
    text = value.strip()
    return "integer" if INTEGER.fullmatch(text) else "decimal" if DECIMAL.fullmatch(text) else "name"


def check_label_types(values: list, source: str, column: str, findings: Findings | None = None) -> None:
    first: dict[str, int] = {}
    for row, value in enumerate(values):
        if value is None or value == "":
            continue
        first.setdefault(label_kind(value), row)
        if len(first) > 1:
            (a, row_a), (b, row_b) = sorted(first.items(), key=lambda kv: kv[1])[:2]
            (findings or Findings()).add("mixed_label_types", source=source, column=column, row_a=row_a + 1,
                                         value_a=values[row_a], kind_a=a, row_b=row_b + 1, value_b=values[row_b],
                                         kind_b=b)
            return


def label_names(ds, column: str, source: str = "the training data", findings: Findings | None = None) -> list[str]:
    """The class names of a training set's label column, index = class id: a ClassLabel's names,
    else the distinct values sorted (numbers numerically, then names alphabetically).

    Checks that the labels are written one way and that there are at least two classes: a
    single class would build a one-output "classifier" that is right by construction.
    """
    findings = findings or Findings()
    feature = ds.features[column]
    values = ds[column]
    if hasattr(feature, "names"):  # datasets.ClassLabel
        names = list(feature.names)
        present = sorted({names[v] for v in values if v is not None and 0 <= v < len(names)})
    else:
        check_label_types(values, source, column, findings)
        distinct = {v for v in values if v is not None and v != ""}
        names = [str(v) for v in sorted(distinct, key=lambda v: (isinstance(v, str), v))]
        present = names
    if len(present) == 1:
        findings.add("one_class", source=source, column=column, label=present[0])
    return names
