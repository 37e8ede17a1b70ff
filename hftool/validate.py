"""`hftool validate`: every problem of a data set at once, before training meets the first.

    from hftool import validate
    from hftool.config import load_config

    report = validate.validate(load_config("bert-cls", {"data.train": "train.csv"}))
    report.errors        # [{"file", "row", "column", "check", "message", "fix"}, ...]

Each split (training, then validation) goes through the task's `validate_rows` hook with a
collecting `Findings` (the one table of checks in hftool.data.checks, which training's readers
raise from), then through the task's own reader (`prepare`), which reports the first problem the
hook missed: data that validate passes, training reads.
"""

from __future__ import annotations

import contextlib
import shlex
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from hftool import logs
from hftool.config import RunConfig
from hftool.data.checks import Finding, Findings
from hftool.errors import HftoolError

# The distribution figures the summary gives for each of a split's measured values.
STATS = {"min": min, "median": statistics.median, "mean": statistics.fmean, "max": max}
REPORT_FILES = ("report.json", "summary.png")  # what --report-dir holds
# Findings of one check printed on the terminal; the rest are counted (the JSON report has all):
# a million-row file's thousands of repeated rows would bury the other findings.
SHOWN_PER_CHECK = 10


@dataclass
class Report:
    errors: list[dict] = field(default_factory=list)
    warnings: list[dict] = field(default_factory=list)
    summary: dict = field(default_factory=dict)

    def as_json(self) -> dict:
        return {"errors": self.errors, "warnings": self.warnings, "summary": self.summary}

    def text(self) -> str:
        """For the terminal: a line per finding (the first SHOWN_PER_CHECK of each check, then
        how many more), then the summary."""
        lines = [line for kind, found in (("error", self.errors), ("warning", self.warnings))
                 for line in shown_findings(kind, found)]
        for split, about in self.summary.get("splits", {}).items():
            lines.append(f"{split}: {about['source']}: {about['rows']} rows")
            if about["classes"]:
                shown = ", ".join(f"{name} {count}" for name, count in list(about["classes"].items())[:20])
                more = len(about["classes"]) - 20
                lines.append(f"  classes ({len(about['classes'])}): {shown}" + (f", ... {more} more" if more > 0 else ""))
            for name, count in about["counts"].items():
                lines.append(f"  {name}: {count}")
            for name, stats in about["values"].items():
                lines.append(f"  {name}: " + ", ".join(f"{k} {v:g}" for k, v in stats.items()))
        if "leakage" in self.summary:
            lines.append(f"leakage: {self.summary['leakage']} validation rows are copies of training rows")
        lines.append(f"{len(self.errors)} error(s), {len(self.warnings)} warning(s)")
        return "\n".join(lines)


def shown_findings(kind: str, found: list[dict], every: str = "--json or --report-dir lists every one") -> list[str]:
    """Lines for `found` (records of one kind): the first SHOWN_PER_CHECK of each check, in order,
    then a line per check saying how many more there are and where `every` one is listed."""
    lines, per_check = [], {}
    for f in found:
        per_check[f["check"]] = per_check.get(f["check"], 0) + 1
        if per_check[f["check"]] <= SHOWN_PER_CHECK:
            lines.append(f"{kind}: {f['message']}; {f['fix']} [{f['check']}]" if f["fix"]
                         else f"{kind}: {f['message']} [{f['check']}]")
    for check, count in per_check.items():
        if count > SHOWN_PER_CHECK:
            lines.append(f"{kind}: ... and {count - SHOWN_PER_CHECK} more [{check}] ({every})")
    return lines


def as_record(finding: Finding) -> dict:
    """A finding as the report's row: file, row, column, check, message and fix apart (a check's
    message ends with its fix, after the last '; ')."""
    fields = finding.fields
    template = finding.check.message
    head, sep, tail = template.rpartition("; ")
    if sep:
        message, fix = head.format(**fields), tail.format(**fields)
    else:  # a reader's own error: split the text itself
        message, _, fix = finding.message.rpartition("; ")
        message = message or finding.message
    row = fields.get("row", fields.get("line", fields.get("row_b")))
    return {"file": str(fields.get("source", fields.get("folder", ""))), "row": row, "column": fields.get("column"),
            "check": finding.check.name, "message": message, "fix": fix}


def validate(cfg: RunConfig, report_dir: str | Path | None = None, overwrite: bool = False) -> Report:
    """Check the training data (cfg.data.train) and validation data (cfg.data.eval, else the
    source's own validation split) of a run as `finetune` would read them. Never raises for bad
    data: every problem is in the report. With `report_dir`, writes report.json and summary.png,
    replacing existing ones only with `overwrite`."""
    from hftool.data import describe, load_source
    from hftool.outputs import check_output
    from hftool.tasks import get_task

    if not cfg.data.train:
        raise HftoolError("no training data: pass --data FILE (or set data.train in the recipe)")
    for name in REPORT_FILES if report_dir is not None else ():  # before any data is read
        check_output(Path(report_dir) / name, overwrite, [], what="--report-dir file")
    task = get_task(cfg.task)
    reading = task.reading(cfg)
    findings = Findings(collect=True)
    splits = []  # (name, rows, source)
    for spec, wanted in ((cfg.data.train, ("train",)), (cfg.data.eval, ("validation", "test", "train"))):
        if spec is None:
            continue
        try:
            source = load_source(spec, cfg.data.encoding, cfg.model.token, reading.txt_unit, reading.langs, reading.videos)
        except HftoolError as err:
            findings.add("unreadable_data", source=spec, message=str(err))
            continue
        whole = Path(spec).expanduser().is_file()
        name = next((s for s in wanted if s in source), None)
        if name is None:
            findings.add("unreadable_data", source=spec, message=f"{spec} has no {wanted[0]} split (splits: "
                         f"{', '.join(source)}); pass the training data with --data")
            continue
        splits.append(("train" if wanted[0] == "train" else "validation", source[name], describe(spec, name, whole)))
        if cfg.data.eval is None and "validation" in source and wanted[0] == "train":
            splits.append(("validation", source["validation"], describe(spec, "validation", whole)))
    summaries, classes, labels = {}, None, None
    for split, ds, source in splits:
        before = _errors(findings)
        try:
            summary = task.validate_rows(cfg, ds, source, findings, classes)
        except HftoolError as err:  # no column to check (a wrong data.text_column...): the reader's error
            from hftool.data.validation import Summary

            findings.add("unreadable_data", source=source, message=str(err))
            summaries[split] = (source, Summary(rows=len(ds)))
            continue
        if _errors(findings) == before:  # the reader's first error, where the hook saw none
            try:
                _, read_labels = task.prepare(cfg, ds, source, labels)
            except HftoolError as err:
                findings.add("unreadable_data", source=source, message=str(err))
            else:
                labels = labels if split == "validation" else read_labels
        if split == "train":
            classes = list(summary.classes) or None
        summaries[split] = (source, summary)
    report = Report()
    if "train" in summaries and "validation" in summaries:
        from hftool.data.validation import leakage

        source, summary = summaries["validation"]
        report.summary["leakage"] = leakage(summaries["train"][1].keys, summary.keys, source, findings)
    for finding in findings.items:
        (report.errors if finding.check.severity == "error" else report.warnings).append(as_record(finding))
    report.summary["splits"] = {split: _describe(source, summary) for split, (source, summary) in summaries.items()}
    if report_dir is not None:
        write_report(report, {split: summary for split, (_, summary) in summaries.items()}, Path(report_dir))
    return report


def _errors(findings: Findings) -> int:
    return sum(f.check.severity == "error" for f in findings.items)


def _describe(source: str, summary) -> dict:
    return {"source": source, "rows": summary.rows, "classes": summary.classes, "counts": summary.counts,
            "values": {name: {k: round(float(f(values)), 2) for k, f in STATS.items()}
                       for name, values in summary.values.items() if values}}


def write_report(report: Report, summaries: dict, folder: Path) -> None:
    """report.json and summary.png (a histogram per measured value, both splits overlaid, and the
    class counts) in `folder`, each written atomically."""
    from hftool.outputs import atomic_path, write_json

    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / "report.json", report.as_json())
    panels = sorted({name for s in summaries.values() for name, values in s.values.items() if values})
    with_classes = any(s.classes for s in summaries.values())
    if not panels and not with_classes:
        return
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    count = len(panels) + with_classes
    fig, axes = plt.subplots(count, 1, figsize=(8, 2.8 * count), squeeze=False)
    colours = {"train": "tab:blue", "validation": "tab:orange"}
    for ax, name in zip(axes[:, 0], panels):
        present = {split: s.values[name] for split, s in summaries.items() if s.values.get(name)}
        low, high = min(min(v) for v in present.values()), max(max(v) for v in present.values())
        whole = all(float(v).is_integer() for values in present.values() for v in values)
        # Counts (words, boxes) get a bin each, so no bin is empty by rounding alone.
        bins = [b - 0.5 for b in range(int(low), int(high) + 2)] if whole and high - low <= 60 else 40
        for split, values in present.items():  # shares of each split's rows: splits of different sizes compare
            ax.hist(values, bins=bins, range=(low, high + (high == low)), alpha=0.55, weights=[1 / len(values)] * len(values),
                    label=f"{split} ({len(values)})", color=colours.get(split))
        ax.set_title(name)
        ax.set_ylabel("share of rows")
        ax.legend()
    if with_classes:
        ax = axes[-1, 0]
        names = list(summaries.get("train", next(iter(summaries.values()))).classes)[:30]
        names += [n for s in summaries.values() for n in s.classes if n not in names][: 30 - len(names)]
        width = 0.8 / len(summaries)
        for i, (split, s) in enumerate(summaries.items()):
            ax.bar([x + i * width for x in range(len(names))], [s.classes.get(n, 0) for n in names], width,
                   label=split, color=colours.get(split))
        ax.set_xticks([x + 0.4 - width / 2 for x in range(len(names))], names, rotation=45, ha="right", fontsize=8)
        ax.set_title("examples per class" + (" (the 30 largest)" if len(names) == 30 else ""))
        ax.legend()
    fig.tight_layout()
    with atomic_path(folder / "summary.png") as tmp:
        fig.savefig(tmp, dpi=80, format="png")
    plt.close(fig)


def command(recipe: str, cfg: RunConfig) -> str:
    """The `hftool validate` command for a run's data (what a training error suggests)."""
    words = ["hftool", "validate", recipe or cfg.task, "--data", cfg.data.train or ""]
    if cfg.data.eval:
        words += ["--eval-data", cfg.data.eval]
    return shlex.join(words)


@contextlib.contextmanager
def hint(recipe: str, cfg: RunConfig):
    """A data error raised inside ends with the command that lists every problem (still one line)."""
    try:
        yield
    except HftoolError as err:
        err.args = (f"{err}; run `{command(recipe, cfg)}` to list every problem",)
        raise


def refuse_bad_data(cfg: RunConfig, recipe: str = "", report_dir: str | Path | None = None) -> Report:
    """`finetune --validate`: the report's findings on stderr; bad data stops the run (exit 2)."""
    report = validate(cfg, report_dir)
    every = f"`{command(recipe, cfg)} --json` lists every one"
    for line in shown_findings("error", report.errors, every):
        logs.info(line)
    for line in shown_findings("warning", report.warnings, every):
        logs.warn(line.removeprefix("warning: "))
    if report.errors:
        raise HftoolError(f"--validate: {len(report.errors)} error(s) in the data (listed above); fix them, or run "
                          f"`{command(recipe, cfg)} --json` for a machine-readable list")
    return report
