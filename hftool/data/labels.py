"""Class labels: the names a label column holds, and each row's class id against them.

Shared by every task whose rows carry one class label (text, images, video): the same rules and
the same errors everywhere, including the checks that catch training labels that cannot mean what
the user meant (one class; `1` beside `1.0` or beside `pos`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from hftool.config import Option
from hftool.data.columns import column_values
from hftool.data.checks import Findings
from hftool.errors import HftoolError

# Column names found without data.label_column.
LABEL_COLUMNS = ("label", "labels", "class", "category", "target", "sentiment", "coarse_label")
# `hftool predict --top-k`, declared by every classifier (text, images, video).
TOP_K_OPTION = Option("top_k", int, "Classifiers: also give the k best classes with their scores.", flags=("-k",), min=1)
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


def check_label_types(values: Iterable, source: str, column: str, findings: Findings | None = None) -> None:
    """Labels written two ways (`1` and `1.0`, `1` and `pos`): a finding naming the first row of each."""
    first: dict[str, tuple[int, object]] = {}  # kind -> its first row and value
    for row, value in enumerate(values):
        if value is None or value == "":
            continue
        first.setdefault(label_kind(value), (row, value))
        if len(first) > 1:
            (a, (row_a, value_a)), (b, (row_b, value_b)) = sorted(first.items(), key=lambda kv: kv[1][0])[:2]
            (findings or Findings()).add("mixed_label_types", source=source, column=column, row_a=row_a + 1,
                                         value_a=value_a, kind_a=a, row_b=row_b + 1, value_b=value_b, kind_b=b)
            return


def label_names(ds, column: str, source: str, findings: Findings | None = None) -> list[str]:
    """The class names of a training set's label column, index = class id: a datasets
    ClassLabel's names, else the distinct values (numbers numerically, then names alphabetically).

    Checks that the labels are written one way and that there are at least two classes: a
    single class would build a one-output "classifier" that is right by construction.
    """
    import pyarrow.compute as pc

    findings = findings or Findings()
    feature = ds.features[column]
    values = column_values(ds, column)  # one Arrow read: a datasets column formats row by row
    # The distinct values, by Arrow: a Python object per row would be ~60 bytes each (GBs at 10M rows).
    distinct = {v for v in pc.unique(values).to_pylist() if v is not None and v != ""}
    if hasattr(feature, "names"):  # datasets.ClassLabel
        names = list(feature.names)
        present = sorted(names[v] for v in distinct if 0 <= v < len(names))
    else:
        if len({label_kind(v) for v in distinct}) > 1:  # written two ways: find the rows, a chunk at a time
            check_label_types((v for chunk in values.chunks for v in chunk.to_pylist()), source, column, findings)
        if not distinct:
            raise HftoolError(f"{source}: the label column '{column}' is empty; every row needs a label")
        names = present = [str(v) for v in sorted(distinct, key=lambda v: (isinstance(v, str), v))]
    if len(present) == 1:
        findings.add("one_class", source=source, column=column, label=present[0])
    return names


def label_ids(ds, column: str, names: list[str], source: str):
    """Class ids of `column` against `names`, a numpy int64 array (not a list: a Python int per
    row is 8 bytes of list besides the array); a missing or unknown label is an error naming the row."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    feature = ds.features[column]
    values = column_values(ds, column)
    if not hasattr(feature, "names") and (pa.types.is_string(values.type) or pa.types.is_integer(values.type)):
        # Looked up by Arrow (text and ints read as str() writes them): no Python object per row,
        # and on the stored rows, then mapped to the split's: no copy of a split's labels.
        found = pc.index_in(ds.data.column(column).cast(pa.string()), value_set=pa.array(names, pa.string()))
        if ds._indices is not None:  # see column_values
            found = found.take(ds._indices.column(0))
        if not found.null_count:
            return found.to_numpy().astype(np.int64)
        first = pc.index(pc.is_null(found), True).as_py()  # the message below names it
        values = values.slice(first, 1)
        offset = first
    else:
        offset = 0
    ids = {name: i for i, name in enumerate(names)}
    out = []
    for row, value in enumerate(values.to_pylist(), offset + 1):
        if hasattr(feature, "names") and value is not None and value >= 0:  # datasets.ClassLabel
            value = feature.names[value]
        key = "" if value is None else str(value)
        if key not in ids:
            if key == "":
                raise _no_label(source, row, column)
            raise HftoolError(f"{source} row {row}: label {value!r} is not one the model was trained on "
                              f"({', '.join(names)}); fix the row or add the class to the training data")
        out.append(ids[key])
    return np.asarray(out, dtype=np.int64)


def check_labelled(ds, column: str, source: str) -> None:
    """Every row has a label in `column`: the first without one is the error label_ids gives,
    found by Arrow (for the whole data before a hold-out, whose labels are never looked up)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    values = column_values(ds, column)
    missing = pc.is_null(values)
    if pa.types.is_string(values.type) or pa.types.is_large_string(values.type):
        missing = pc.or_kleene(missing, pc.equal(values, ""))
    first = pc.index(missing, True).as_py()
    if first >= 0:
        raise _no_label(source, first + 1, column)


def _no_label(source: str, row: int, column: str) -> HftoolError:
    return HftoolError(f"{source} row {row}: no label in column '{column}'; every row needs one")


def has_labels(ds, configured: str | None) -> bool:
    """Whether rows carry labels: data.label_column, or a column with a usual label name."""
    return any(c in ds.column_names for c in (configured, *LABEL_COLUMNS) if c)


def ranked(labels: list[str], ids: list[int], scores: list[float], with_top_k: bool) -> dict:
    """A classifier's answer for one input: the best class and its score, and with `with_top_k`
    the k best as `top_k` (one rule for every classifier's predict)."""
    best = [{"label": labels[i], "score": round(s, 6)} for i, s in zip(ids, scores)]
    return {**best[0], **({"top_k": best} if with_top_k else {})}


def with_top_k(line: str, prediction: dict) -> str:
    """A classifier's terminal line, followed by its k best classes when it has them."""
    if "top_k" in prediction:
        line += "\t" + ", ".join(f"{p['label']} {p['score']:.3f}" for p in prediction["top_k"])
    return line
