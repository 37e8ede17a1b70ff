"""Data that cannot mean what the user meant: one table of named checks, shared by the readers.

Each check has a name, a severity and a message template. A reader reports what it finds
through `Findings`: by default the first error raises (one line, exit 2) and warnings are
printed; `Findings(collect=True)` keeps every finding instead, so a command can report all
the problems of a data set at once.

    findings = Findings()
    findings.add("one_class", source="train.csv", column="label", label="pos")
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hftool import logs
from hftool.errors import HftoolError


@dataclass(frozen=True)
class Check:
    name: str
    severity: str  # "error" (the data cannot be used as it is) | "warning" (it can, but look)
    message: str  # str.format template over the finding's fields


CHECKS = {check.name: check for check in (
    Check("tab_separated_csv", "error",
          "{source}: looks tab-separated (every line has tabs, the header no comma); rename it to .tsv"),
    Check("duplicate_columns", "error",
          "{source}: the header names column '{column}' twice; give every column its own name"),
    Check("merged_rows", "error",
          "{source}:{line}: a quote opened on this line runs on to line {end}, merging rows into one ({preview!r}); "
          "close the quote or remove it"),
    Check("one_class", "error",
          "{source}: every row has label {label!r} in column '{column}'; a classifier needs at least two classes"),
    Check("mixed_label_types", "error",
          "{source}: column '{column}' mixes label types: row {row_a} has {value_a!r} ({kind_a}), row {row_b} has "
          "{value_b!r} ({kind_b}); write every label the same way"),
    Check("empty_class_folder", "error",
          "{folder} holds no {items}, so class '{label}' would be dropped; add {items} or remove the folder"),
    Check("empty_texts", "warning",
          "{source}: {count} of {total} rows have an empty or 'NaN' text in column '{column}' (first: row {row}); "
          "they train on no text"),
)}

# The row checks `hftool validate` runs on every row (#26), in the same table: each message names
# the file and row, then the fix after its last "; " (validate reports the two apart).
CHECKS.update({check.name: check for check in (
    Check("unreadable_data", "error", "{message}"),  # the task's reader stopped here: its own one-line error
    Check("empty_text", "warning", "{source} row {row}: column '{column}' is empty; write the text or remove the row"),
    Check("missing_label", "error", "{source} row {row}: no label in column '{column}'; give every row a label"),
    Check("unseen_label", "error",
          "{source} {at}: {what} {label!r} in column '{column}' is not in the training data; "
          "fix the row or add the class to the training data"),
    Check("duplicate_row", "warning", "{source} {at}: the same {what} as {first_at}; remove one of them"),
    Check("conflicting_labels", "warning",
          "{source} {at}: the same text as {first_at}, labelled {label!r} here and {first_label!r} there; "
          "keep the right label"),
    Check("tag_outside_scheme", "error",
          "{source} {at}, word {word}: tag {tag!r} is not O or B-/I-/E-/S-<type>; fix the tag"),
    Check("i_without_b", "warning",
          "{source} {at}, word {word}: {tag!r} follows {previous!r}, so no B- opens the entity; "
          "begin it with B-{kind}"),
    Check("tag_count_mismatch", "error",
          "{source} {at}: {tokens} tokens but {tags} tags in column '{column}'; give every token one tag"),
    Check("unreadable_file", "error", "{source} row {row}: {path}: {reason}; fix the path or remove the row"),
    Check("empty_file", "error", "{source} row {row}: {path} is empty (0 bytes); replace the file or remove the row"),
    Check("unusual_mode", "warning",
          "{source} row {row}: {path} is a {mode} image, which training converts to RGB; check it looks right "
          "converted, or convert it yourself"),
    Check("box_outside_image", "warning",
          "{source} row {row}: box {box} reaches outside the {width}x{height} image, so training clips or drops it; "
          "check data.box_format, or fix the box"),
    Check("box_empty", "error",
          "{source} row {row}: box {box} has zero or negative size; fix the corners (or data.box_format)"),
    Check("unknown_category", "error",
          "{source} row {row}: category {label!r} is not in the training data; fix the row or add the class"),
    Check("duplicate_image_id", "error",
          "{source} row {row}: image id {image_id} is also row {first}'s, so one image's boxes land on the other; "
          "give every image its own id"),
    Check("empty_caption", "error", "{source} row {row}: an empty caption in column '{column}'; write it or remove it"),
    Check("empty_side", "error", "{source} row {row}: the {side} text in column '{column}' is empty; write it or remove the row"),
    Check("length_ratio", "warning",
          "{source} row {row}: {target} target words for {source_words} source words, over {limit}x off the data's "
          "usual target/source ratio ({usual}), often a misaligned pair; check the row"),
    Check("not_a_number", "error",
          "{source} row {row}: {value!r} in column '{column}' is not a number; fix it, or leave the cell empty "
          "to have it interpolated"),
    Check("not_a_date", "error", "{source} row {row}: {value!r} in column '{column}' is not a date; fix the value"),
    Check("unsorted_dates", "error",
          "{source} row {row}: date {value} is not after the previous row's ({previous}); sort the rows by date, "
          "one per date"),
    Check("date_gap", "warning",
          "{source} row {row}: {missing} step(s) missing before {value} (frequency {freq}); training fills them by "
          "interpolation, add the rows if you have them"),
    Check("leakage", "warning",
          "{source} row {row}: {count} validation rows are exact copies of training rows (first: this one, "
          "training row {first}); remove them from one split, or the validation score is optimistic"),
)})


@dataclass
class Finding:
    check: Check
    fields: dict

    @property
    def message(self) -> str:
        return self.check.message.format(**self.fields)


@dataclass
class Findings:
    """Where checks report. collect=False: raise HftoolError at the first error, print warnings.
    collect=True: keep them all in `items` (nothing raised, nothing printed)."""

    collect: bool = False
    items: list[Finding] = field(default_factory=list)

    def add(self, name: str, **fields) -> None:
        finding = Finding(CHECKS[name], fields)
        if self.collect:
            self.items.append(finding)
        elif finding.check.severity == "error":
            raise HftoolError(finding.message)
        else:
            logs.warn(finding.message)


def check_texts(values, source: str, column: str, findings: Findings | None = None) -> None:
    """Count texts that are empty or a spreadsheet's 'NaN' (an empty cell exported as text).

    `values` is a list, or a pyarrow string array, counted by Arrow without a Python object per row.
    """
    if hasattr(values, "type"):
        import pyarrow as pa
        import pyarrow.compute as pc

        count, first, offset = 0, None, 0
        # A chunk at a time: the trimmed, lower-cased copy of a whole column is twice the text in memory.
        for chunk in values.chunks if isinstance(values, pa.ChunkedArray) else [values]:
            mask = pc.is_in(pc.utf8_lower(pc.utf8_trim_whitespace(chunk)), value_set=pa.array(["", "nan"]))
            found = pc.sum(mask).as_py() or 0
            if found and first is None:
                first = offset + pc.index(mask, True).as_py()
            count, offset = count + found, offset + len(chunk)
    else:
        blank = [i for i, v in enumerate(values) if isinstance(v, str) and v.strip().lower() in ("", "nan")]
        count, first = len(blank), blank[0] if blank else None
    if count:
        (findings or Findings()).add("empty_texts", source=source, count=count, total=len(values),
                                     column=column, row=first + 1)
