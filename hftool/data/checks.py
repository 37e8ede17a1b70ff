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


def check_texts(values: list, source: str, column: str, findings: Findings | None = None) -> None:
    """Count texts that are empty or a spreadsheet's 'NaN' (an empty cell exported as text)."""
    blank = [i for i, v in enumerate(values) if isinstance(v, str) and v.strip().lower() in ("", "nan")]
    if blank:
        (findings or Findings()).add("empty_texts", source=source, count=len(blank), total=len(values),
                                     column=column, row=blank[0] + 1)
