"""Row checks that `hftool validate` runs through the tasks' `validate_rows` hooks.

Each helper looks at every row of one split and reports each problem to a `Findings` (the one
table in hftool.data.checks) with its file, row and column; what it measures goes into a
`Summary` (counts, distributions for the histograms, one fingerprint per row for leakage).
Rows are numbered from 1, as the readers' errors number them.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from hftool.data.checks import Findings
from hftool.data.labels import label_kind


@dataclass
class Summary:
    """What one split holds, for the report (and the histograms of `values`)."""

    rows: int = 0
    classes: dict[str, int] = field(default_factory=dict)  # class -> examples (objects, for detection)
    counts: dict[str, int] = field(default_factory=dict)  # other counts worth a line ("images without boxes")
    values: dict[str, list[float]] = field(default_factory=dict)  # distributions: "text length (words)" -> one per row
    keys: list[str] = field(default_factory=list)  # one fingerprint per row: exact copies across splits are leakage


def fingerprint(*parts) -> str:
    """A row's content as a short hash (texts, lists of words, file bytes)."""
    return hashlib.sha1(json.dumps(parts, ensure_ascii=False, default=str).encode()).hexdigest()


def texts(values: list, source: str, column: str, findings: Findings) -> list[int]:
    """Empty texts (empty, blank or a spreadsheet's 'NaN'), each with its row; their lengths in words."""
    for row, value in enumerate(values, 1):
        if value is None or isinstance(value, str) and value.strip().lower() in ("", "nan"):
            findings.add("empty_text", source=source, row=row, column=column)
    return [len(str(v).split()) if v is not None else 0 for v in values]


def class_labels(values: list, source: str, column: str, findings: Findings, labels: list[str] | None,
                 names: list[str] | None = None) -> dict[str, int]:
    """Missing labels, labels the training split lacks (`labels`; None: this is the training
    split), one column written with two label types; returns the count of each class.

    Args:
        names: a datasets ClassLabel's names: the values are their ids.
    """
    kinds: dict[str, tuple[int, object]] = {}  # how labels are written -> the first row written so
    counts: Counter = Counter()
    for row, value in enumerate(values, 1):
        if names is not None and isinstance(value, int) and value >= 0:
            value = names[value]
        if value is None or value == "" or names is not None and value == -1:
            findings.add("missing_label", source=source, row=row, column=column)
            continue
        kinds.setdefault(label_kind(value), (row, value))
        key = str(value)
        counts[key] += 1
        if labels is not None and key not in labels:
            findings.add("unseen_label", source=source, row=row, at=f"row {row}", column=column, label=value,
                         what="label")
    if len(kinds) > 1:
        (kind_a, (row_a, value_a)), (kind_b, (row_b, value_b)) = sorted(kinds.items(), key=lambda kv: kv[1][0])[:2]
        findings.add("mixed_label_types", source=source, column=column, row_a=row_a, value_a=value_a,
                     kind_a=kind_a, row_b=row_b, value_b=value_b, kind_b=kind_b)
    if labels is None and len(counts) == 1:
        findings.add("one_class", source=source, column=column, label=next(iter(counts)))
    return dict(sorted(counts.items(), key=lambda kv: -kv[1]))


def labelled(ds, source: str, configured: str | None, findings: Findings, labels: list[str] | None,
             summary: Summary) -> list | None:
    """A classifier's label column checked (class_labels) and counted into `summary`; the labels,
    or None when the rows have none (prediction inputs)."""
    from hftool.data.columns import find_column
    from hftool.data.labels import LABEL_COLUMNS, has_labels

    if not has_labels(ds, configured):
        return None
    column = find_column(ds, source, configured, LABEL_COLUMNS, "label", "label_column")
    values = ds[column]
    summary.classes = class_labels(values, source, column, findings, labels, getattr(ds.features[column], "names", None))
    return values


def duplicates(keys: list[str], source: str, findings: Findings, what: str, labels: list | None = None,
               lines: list[int] | None = None) -> int:
    """Rows repeating an earlier row's content; with `labels`, a repeat with another label is a
    conflict instead (the same text taught two answers). Returns how many rows repeat.

    Args:
        lines: each row's first line in its file (CoNLL): findings name lines, not rows.
    """
    first: dict[str, int] = {}
    repeats = 0
    for row, key in enumerate(keys, 1):
        if not key:  # a row that could not be read (reported already)
            continue
        if key not in first:
            first[key] = row
            continue
        repeats += 1
        earlier = first[key]
        number, at, first_at = place(row, lines), where(row, lines), where(earlier, lines)
        if labels is not None and str(labels[row - 1]) != str(labels[earlier - 1]):
            findings.add("conflicting_labels", source=source, row=number, at=at, first_at=first_at,
                         label=labels[row - 1], first_label=labels[earlier - 1])
        else:
            findings.add("duplicate_row", source=source, row=number, at=at, first_at=first_at, what=what)
    return repeats


def place(row: int, lines: list[int] | None) -> int:
    """A row's number in the report: its line in the file where rows have lines (CoNLL)."""
    return lines[row - 1] if lines else row


def where(row: int, lines: list[int] | None) -> str:
    """A row as messages name it: `line 57` (CoNLL) or `row 3`."""
    return f"line {lines[row - 1]}" if lines else f"row {row}"


def leakage(train: list[str], validation: list[str], source: str, findings: Findings) -> int:
    """Validation rows that are exact copies of training rows: counted, one warning naming the first."""
    seen = {}
    for row, key in enumerate(train, 1):
        if key:
            seen.setdefault(key, row)
    copies = [(row, seen[key]) for row, key in enumerate(validation, 1) if key in seen]
    if copies:
        findings.add("leakage", source=source, row=copies[0][0], count=len(copies), first=copies[0][1])
    return len(copies)


# Pillow modes that convert to RGB without surprises; the others (CMYK, 16-bit, 1-bit, palettes,
# transparency) change colours or lose information in training's RGB conversion.
PLAIN_MODES = ("RGB", "L")


def image_entries(ds, column: str) -> list[dict]:
    """The column's images as {bytes, path} dicts, paths absolute (relative to the data file)."""
    import datasets

    from hftool.data.columns import source_dir
    from hftool.data.images import resolve_paths

    feature = ds.features[column]
    if isinstance(feature, datasets.Image) or isinstance(feature, dict) and {"bytes", "path"} <= set(feature):
        return list(ds.cast_column(column, datasets.Image(decode=False))[column])
    given = ["" if v is None else str(v) for v in ds[column]]
    paths = resolve_paths(given, source_dir(ds))
    return [{"bytes": None, "path": p if g else ""} for p, g in zip(paths, given)]


def media_files(entries: list[dict], source: str, findings: Findings, read) -> list[str]:
    """Missing, empty and unreadable files (or stored bytes), each with its row; `read(data, row,
    name)` checks one file's bytes (raising ValueError with the reason). Returns fingerprints of
    the bytes ("" for rows that could not be read)."""
    keys = []
    for row, entry in enumerate(entries, 1):
        data, name = entry.get("bytes"), entry.get("path") or f"image stored in {source}"
        if data is None:
            path = Path(name)
            if not entry.get("path") or not path.is_file():
                findings.add("unreadable_file", source=source, row=row, path=name or "(no path)", reason="no such file")
                keys.append("")
                continue
            data = path.read_bytes()
        if not data:
            findings.add("empty_file", source=source, row=row, path=name)
            keys.append("")
            continue
        try:
            read(data, row, name)
        except ValueError as err:
            findings.add("unreadable_file", source=source, row=row, path=name, reason=str(err) or "cannot be read")
            keys.append("")
            continue
        keys.append(hashlib.sha1(data).hexdigest())
    return keys


def images(entries: list[dict], source: str, findings: Findings, summary: Summary) -> list[str]:
    """Image files: unreadable (decoded as training decodes them), empty, unusual modes; their
    sizes go into `summary`. Returns one fingerprint per row (of the bytes)."""
    import io

    from PIL import Image

    from hftool.data.images import decode

    widths, heights = summary.values.setdefault("image width (px)", []), summary.values.setdefault("image height (px)", [])

    def read(data: bytes, row: int, name: str) -> None:
        decode(data)  # training's own decoder: what fails here fails there
        with Image.open(io.BytesIO(data)) as image:
            widths.append(image.width)
            heights.append(image.height)
            if image.mode not in PLAIN_MODES:
                findings.add("unusual_mode", source=source, row=row, path=name, mode=image.mode)

    return media_files(entries, source, findings, read)


def videos(entries: list, source: str, findings: Findings, summary: Summary) -> list[str]:
    """Video files (or frame folders): missing, empty, unreadable (probed as training probes
    them); their frame counts go into `summary`. Returns one fingerprint per row."""
    from hftool.data.videos import frame_files, probe

    frames = summary.values.setdefault("clip length (frames)", [])
    keys = []
    for row, entry in enumerate(entries, 1):
        path = Path(entry) if isinstance(entry, str) else None
        name = entry if isinstance(entry, str) else entry.get("path") or f"video stored in {source}"
        if path is not None and path.is_file() and path.stat().st_size == 0:
            findings.add("empty_file", source=source, row=row, path=name)
            keys.append("")
            continue
        try:
            frames.append(probe(entry).frames)
        except ValueError as err:
            findings.add("unreadable_file", source=source, row=row, path=name or "(no path)", reason=str(err))
            keys.append("")
            continue
        if path is None:
            keys.append(hashlib.sha1(entry["bytes"]).hexdigest())
        elif path.is_dir():  # a clip as a folder of frames: the same frames are the same clip
            keys.append(fingerprint([(p.name, p.stat().st_size) for p in frame_files(path)]))
        else:
            keys.append(_file_hash(path))
    return keys


def _file_hash(path: Path) -> str:
    digest = hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):  # videos can be large: never all in memory
            digest.update(block)
    return digest.hexdigest()
