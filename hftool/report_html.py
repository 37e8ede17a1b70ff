"""report.html: one offline file (styles, script, plots and images inline; a Content-Security-Policy
that forbids any fetch), for a suite's results or for runs side by side.

    suite_report(out_dir, rows, path)     `hftool eval-suite`'s report.html
    runs_report([run, ...], path)         `hftool report RUN [RUN ...] -o FILE.html`
"""

from __future__ import annotations

import base64
import io
import json
import math
from datetime import datetime
from html import escape
from pathlib import Path

from hftool import __version__
from hftool.plots import COLORS, Series, figure

GALLERY = 8  # examples shown per gallery
DISAGREEMENTS = 10  # examples where a model and the baseline differ most, per model and dataset
THUMBNAIL = 224  # longest side of an inlined image, in pixels (keeps the file small)

STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 24px auto; max-width: 1280px; padding: 0 16px; color: #222; }
h1 { font-size: 22px; } h2 { font-size: 18px; border-bottom: 1px solid #ddd; padding-bottom: 4px; margin-top: 32px; }
h3 { font-size: 15px; margin: 20px 0 8px; }
table { border-collapse: collapse; margin: 8px 0 16px; font-size: 13px; }
th, td { border: 1px solid #ddd; padding: 4px 8px; text-align: left; vertical-align: top; }
th { background: #f4f4f4; }
table.sortable th { cursor: pointer; user-select: none; }
table.sortable th::after { content: " \\2195"; color: #aaa; }
table.sortable th[data-dir="asc"]::after { content: " \\2191"; color: #333; }
table.sortable th[data-dir="desc"]::after { content: " \\2193"; color: #333; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
.ci { color: #777; font-size: 12px; } .sig { color: #b00; font-weight: bold; } .base { color: #666; font-style: italic; }
.gallery { display: flex; flex-wrap: wrap; gap: 12px; }
.card { border: 1px solid #ddd; border-radius: 4px; padding: 6px; max-width: 260px; font-size: 12px; }
.card img { display: block; max-width: 100%; }
.ent { border-radius: 3px; padding: 0 2px; } .tag { font-size: 10px; color: #555; vertical-align: super; }
.confusion td { text-align: right; min-width: 28px; }
div.wide { overflow-x: auto; } nav a { margin-right: 14px; } .muted { color: #777; } pre { background: #f7f7f7; padding: 8px; overflow-x: auto; }
"""

SCRIPT = """
document.querySelectorAll('table.sortable').forEach(function (table) {
  table.querySelectorAll('th').forEach(function (th, column) {
    th.addEventListener('click', function () {
      var dir = th.dataset.dir === 'desc' ? 'asc' : 'desc';
      table.querySelectorAll('th').forEach(function (h) { delete h.dataset.dir; });
      th.dataset.dir = dir;
      var body = table.tBodies[0];
      var key = function (row) {
        var cell = row.cells[column], value = cell.dataset.value;
        return value !== undefined && value !== '' && !isNaN(value) ? parseFloat(value) : cell.textContent.trim().toLowerCase();
      };
      Array.prototype.slice.call(body.rows).sort(function (a, b) {
        var x = key(a), y = key(b);
        var order = typeof x === 'number' && typeof y === 'number' ? x - y : String(x).localeCompare(String(y));
        return dir === 'asc' ? order : -order;
      }).forEach(function (row) { body.appendChild(row); });
    });
  });
});
"""

# Nothing may be fetched: images are data: URIs, styles and scripts inline.
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'"


def page(title: str, sections: list[tuple[str, str, str]]) -> str:
    """The whole document: (anchor, heading, html) sections behind a table of contents."""
    nav = " ".join(f'<a href="#{a}">{escape(h)}</a>' for a, h, _ in sections)
    body = "\n".join(f'<section id="{a}"><h2>{escape(h)}</h2>\n{html}</section>' for a, h, html in sections)
    stamp = datetime.now().strftime("%Y-%m-%d %H:%M")
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">\n'
            f'<meta http-equiv="Content-Security-Policy" content="{CSP}">\n'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f'<title>{escape(title)}</title>\n<style>{STYLE}</style></head>\n<body>\n<h1>{escape(title)}</h1>\n'
            f'<p class="muted">hftool {__version__}, {stamp}. Click a column heading to sort.</p>\n<nav>{nav}</nav>\n'
            f'{body}\n<script>{SCRIPT}</script>\n</body></html>\n')


def _num(value) -> str:
    return "-" if value is None or (isinstance(value, float) and not math.isfinite(value)) else \
        f"{value:.4f}" if isinstance(value, float) else str(value)


def _cell(value, extra: str = "") -> str:
    data = "" if value is None or (isinstance(value, float) and not math.isfinite(value)) else repr(float(value))
    return f'<td class="num" data-value="{data}">{_num(value)}{extra}</td>'


def table(header: list[str], rows: list[str], sortable: bool = True, css: str = "") -> str:
    classes = " ".join(c for c in ("sortable" if sortable else "", css) if c)
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    return (f'<div class="wide"><table class="{classes}"><thead><tr>{head}</tr></thead><tbody>\n' + "\n".join(rows)
            + "\n</tbody></table></div>")


# ------------------------------------------------------------------------------------- images
def thumbnail(image: str | bytes | None, boxes: list[tuple[list[float], str, str]] = ()) -> str:
    """An <img> of an image (a path or encoded bytes), shrunk and with `boxes` (xyxy in the
    original's pixels, label, colour) drawn on it, as a data: URI."""
    from PIL import Image, ImageDraw

    if not image:
        return '<p class="muted">(image not stored with the results)</p>'
    name = Path(image).name if isinstance(image, str) else "image"
    try:
        with Image.open(image if isinstance(image, str) else io.BytesIO(image)) as opened:
            image = opened.convert("RGB")
    except (OSError, ValueError):
        return f'<p class="muted">{escape(name)} (unreadable)</p>'
    scale = min(1.0, THUMBNAIL / max(image.size))
    if scale < 1:
        image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))))
    elif max(image.size) < 128:  # tiny generated images: enlarged, so boxes and labels can be read
        scale = 128 / max(image.size)
        image = image.resize((round(image.width * scale), round(image.height * scale)), Image.NEAREST)
    pen = ImageDraw.Draw(image)
    for box, label, color in boxes:
        x0, y0, x1, y1 = (v * scale for v in box)
        pen.rectangle([x0, y0, x1, y1], outline=color, width=2)
        if label:
            pen.text((x0 + 2, y0 + 1), label, fill=color)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    data = base64.b64encode(buffer.getvalue()).decode()
    return f'<img alt="{escape(name)}" src="data:image/png;base64,{data}">'


# ---------------------------------------------------------------------------------- examples
TRUTH, PREDICTED = "#2ca02c", "#d62728"


def render_example(record: dict, image: str | bytes | None = None, palette: dict[str, str] | None = None) -> str:
    """One evaluated example as HTML, by what the task recorded: boxes, a caption, tags or a label.
    `image`: the example's image when the record holds no path to it (images stored in the data);
    `palette`: entity type -> colour, the same on the whole page."""
    source = record.get("input") or {}
    image = source.get("image") or image
    if "objects" in record:
        from hftool.metrics.detection import SCORE_SEEN

        boxes = [(box, "", TRUTH) for _, box in source.get("truth", [])]
        boxes += [(o["box"], f"{o['label']} {o['score']:.2f}", PREDICTED) for o in record["objects"]
                  if o["score"] >= SCORE_SEEN]
        shown = sum(o["score"] >= SCORE_SEEN for o in record["objects"])
        return (thumbnail(image, boxes)
                + f'<div>{shown} boxes scoring {SCORE_SEEN} or more (red); true boxes green</div>')
    if "caption" in record:
        refs = "".join(f"<li>{escape(r)}</li>" for r in record.get("references") or [])
        return thumbnail(image) + f'<div><b>{escape(record["caption"])}</b></div><ul class="muted">{refs}</ul>'
    if isinstance(record.get("prediction"), list) and "tokens" in source:
        return (f'<div>predicted: {entities(source["tokens"], record["prediction"], palette)}</div>'
                f'<div>reference: {entities(source["tokens"], record["reference"], palette)}</div>')
    text = " / ".join(str(source[c]) for c in ("text", "text_pair") if c in source)
    head = thumbnail(image) if image or "image" in source else f"<div>{escape(text)}</div>"
    if "prediction" in record:
        right = record["prediction"] == record.get("reference")
        return head + (f'<div>predicted <b>{escape(str(record["prediction"]))}</b> '
                       f'{"=" if right else "&ne;"} reference {escape(str(record.get("reference")))}</div>')
    return head + f"<pre>{escape(json.dumps(record, ensure_ascii=False)[:400])}</pre>"


def entities(tokens: list[str], tags: list[str], palette: dict[str, str] | None = None) -> str:
    """Words with their entities highlighted, a colour per type and the type after each entity."""
    from seqeval.metrics.sequence_labeling import get_entities

    types = sorted({t[2:] for t in tags if t != "O"})
    color = {t: (palette or {}).get(t) or COLORS[i % len(COLORS)] for i, t in enumerate(types)}
    spans = {start: (kind, end) for kind, start, end in get_entities(list(tags))}
    out, i = [], 0
    while i < len(tokens):
        if i in spans:
            kind, end = spans[i]
            words = escape(" ".join(tokens[i:end + 1]))
            out.append(f'<span class="ent" style="background:{color[kind]}33;border:1px solid {color[kind]}">'
                       f'{words}<span class="tag">{escape(kind)}</span></span>')
            i = end + 1
        else:
            out.append(escape(tokens[i]))
            i += 1
    return " ".join(out)


def read_records(path: Path, wanted: set[int] | None = None) -> dict[int, dict]:
    """Records of a predictions.jsonl by index (only `wanted` ones when given: files can be large)."""
    out = {}
    if not path.is_file():
        return out
    with open(path, encoding="utf-8") as f:
        for line in f:
            record = json.loads(line)
            if wanted is None or record["index"] in wanted:
                out[record["index"]] = record
    return out


# ------------------------------------------------------------------------------------ a suite
def suite_report(out: Path, rows: list[dict], path: Path, title: str = "", images=None) -> None:
    """Write a suite's report: leaderboard, metric-vs-checkpoint plots, per-class tables,
    confusion matrices, disagreements with the baseline and galleries.

    Args:
        images: (dataset name, example index) -> the example's image (bytes or path), for data
            whose images are stored in it rather than named by path; None: paths only.
    """
    images = images or (lambda dataset, index: None)
    classes = sorted({str(c["class"]) for r in rows for c in r.get("tables", {}).get("per_class", [])})
    palette = {name: COLORS[i % len(COLORS)] for i, name in enumerate(classes)}
    from hftool.suite import headline

    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    groups = [(d, [r for r in rows if r["dataset"] == d]) for d in datasets]
    sections = [("leaderboard", "Leaderboard", _leaderboard(groups, headline)),
                ("plots", "Metrics by checkpoint or model", _step_plots(groups, headline)),
                ("classes", "Per-class results", _per_class(groups)),
                ("disagreements", "Where models and the baseline disagree most", _disagreements(out, groups, images, palette)),
                ("gallery", "Galleries", _galleries(out, groups, images, palette))]
    confusion = _confusions(groups)
    if confusion:
        sections.insert(3, ("confusion", "Confusion matrices", confusion))
    path.write_text(page(title or f"hftool eval-suite: {out.name}", sections), encoding="utf-8")


def _leaderboard(groups, headline) -> str:
    html = ['<p class="muted">95% bootstrap intervals in grey. &Delta;: difference from the baseline on the same '
            'examples, with its paired-bootstrap interval and p; <span class="sig">red</span>: significant.</p>']
    for dataset, mine in groups:
        names = headline(mine)
        lines = []
        for row in best_first(mine, names[0]):
            cells = [f"<td>{escape(row['model'])}{' <span class=base>(baseline)</span>' if row.get('baseline') else ''}"
                     "</td>", _cell(row.get("step")), _cell(row["n"])]
            for name in names:
                low, high = row.get("intervals", {}).get(name, (None, None))
                band = f'<br><span class="ci">[{_num(low)}, {_num(high)}]</span>' if low is not None else ""
                cells.append(_cell(row["metrics"].get(name), band))
            for name in names[:2]:
                comparison = (row.get("vs_baseline") or {}).get(name)
                if comparison:
                    css = "sig" if comparison["significant"] else ""
                    cells.append(f'<td class="num {css}" data-value="{comparison["diff"]!r}">{comparison["diff"]:+.4f}'
                                 f'<br><span class="ci">[{comparison["low"]:+.4f}, {comparison["high"]:+.4f}] '
                                 f'p={comparison["p"]:.3g}</span></td>')
                else:
                    cells.append('<td class="num" data-value="">-</td>')
            lines.append("<tr>" + "".join(cells) + "</tr>")
        html.append(f"<h3>{escape(dataset)} ({escape(mine[0]['task'])}, n={mine[0]['n']})</h3>")
        html.append(table(["model", "step", "n", *names, *(f"Δ {n}" for n in names[:2])], lines))
    return "\n".join(html)


def best_first(rows: list[dict], metric: str) -> list[dict]:
    from hftool.suite import lower_is_better

    sign = -1 if lower_is_better(metric) else 1
    return sorted(rows, key=lambda r: sign * r["metrics"].get(metric, -sign * math.inf), reverse=True)


def _step_plots(groups, headline) -> str:
    """Per dataset, the headline metrics with their 95% intervals: against the optimizer step, a
    line and band per run, where a run brings several checkpoints; else a point per model."""
    html = []
    for dataset, mine in groups:
        runs: dict[str, list[dict]] = {}
        for row in mine:
            runs.setdefault(_run_name(row), []).append(row)
        by_step = any(len({r["step"] for r in rows if r.get("step") is not None}) > 1 for rows in runs.values())
        panels = []
        for name in headline(mine)[:2]:
            series = []
            if by_step:
                for number, (run, points) in enumerate(runs.items()):
                    points = sorted((r for r in points if r.get("step") is not None and name in r["metrics"]),
                                    key=lambda r: r["step"])
                    band = [(r["step"], *r["intervals"][name]) for r in points if name in r.get("intervals", {})]
                    if points:
                        series.append(Series(run, [(r["step"], r["metrics"][name]) for r in points],
                                             COLORS[number % len(COLORS)], dots=True, band=band))
            else:
                for number, row in enumerate(mine):
                    if name in row["metrics"]:
                        band = [(number, *row["intervals"][name])] if name in row.get("intervals", {}) else []
                        series.append(Series(row["model"], [(number, row["metrics"][name])],
                                             COLORS[number % len(COLORS)], band=band))
            if series:
                panels.append((f"{name} on {dataset}", "points: the metric; bands: 95% intervals", series))
        if panels:
            html.append(figure(panels, "optimizer step" if by_step else "model", columns=2, width=520, height=320,
                               x_names=None if by_step else [_short(r["model"]) for r in mine]))
    return "\n".join(html) or '<p class="muted">Nothing to plot.</p>'


def _short(name: str) -> str:
    """A model's name on a plot axis: its last two path parts."""
    return "/".join(Path(name).parts[-2:])


def _run_name(row: dict) -> str:
    """The run a model belongs to: a checkpoint's run dir, else the model itself."""
    return str(Path(row["model"]).parent.parent) if row.get("checkpoint") else row["model"]


def _per_class(groups) -> str:
    html = []
    for dataset, mine in groups:
        tables = [(r["model"], r.get("tables", {}).get("per_class")) for r in mine]
        tables = [(m, t) for m, t in tables if t]
        if not tables:
            continue
        score = "ap" if "ap" in tables[0][1][0] else "f1"
        classes = [c["class"] for c in tables[0][1]]
        count = "objects" if score == "ap" else "support"
        lines = []
        for number, name in enumerate(classes):
            cells = [f"<td>{escape(str(name))}</td>", _cell(tables[0][1][number].get(count))]
            cells += [_cell(t[number][score]) for _, t in tables]
            lines.append("<tr>" + "".join(cells) + "</tr>")
        html.append(f"<h3>{escape(dataset)}: {score.upper()} per class</h3>")
        html.append(table(["class", count, *(m for m, _ in tables)], lines))
    return "\n".join(html) or '<p class="muted">This task has no per-class results.</p>'


def _confusions(groups) -> str:
    html = []
    for dataset, mine in groups:
        for row in mine:
            tables = row.get("tables", {})
            if "confusion" not in tables:
                continue
            labels, matrix = tables["labels"], tables["confusion"]
            peak = max(max(r) for r in matrix) or 1
            lines = []
            for name, counts in zip(labels, matrix):
                cells = "".join(f'<td style="background:rgba(31,119,180,{0.08 + 0.7 * c / peak:.2f})">{c}</td>'
                                for c in counts)
                lines.append(f"<tr><th>{escape(name)}</th>{cells}</tr>")
            head = "<tr><th>reference \\ predicted</th>" + "".join(f"<th>{escape(n)}</th>" for n in labels) + "</tr>"
            html.append(f"<details{' open' if row.get('baseline') or len(html) == 0 else ''}>"
                        f"<summary>{escape(row['model'])} on {escape(dataset)}</summary>"
                        f'<table class="confusion"><thead>{head}</thead><tbody>{"".join(lines)}</tbody></table></details>')
    return "\n".join(html)


def _disagreements(out: Path, groups, images, palette: dict[str, str]) -> str:
    import numpy as np

    from hftool.metrics import resampling

    html = []
    for dataset, mine in groups:
        base = next((r for r in mine if r.get("baseline")), None)
        if base is None:
            continue
        base_stats = resampling.load(out / "cache" / base["key"] / "stats.npz")
        for row in mine:
            if row is base or row.get("ids") is not None and row.get("ids") != base.get("ids"):
                continue
            cand = resampling.load(out / "cache" / row["key"] / "stats.npz")
            if not np.array_equal(cand.ids, base_stats.ids):
                continue
            gap = cand.scores() - base_stats.scores()
            worst = np.argsort(-np.abs(gap), kind="stable")[:DISAGREEMENTS]
            worst = [i for i in worst if abs(gap[i]) > 0]
            if not worst:
                html.append(f"<h3>{escape(row['model'])} vs baseline on {escape(dataset)}</h3><p>No example differs.</p>")
                continue
            wanted = {int(cand.ids[i]) for i in worst}
            mine_records = read_records(out / "cache" / row["key"] / "predictions.jsonl", wanted)
            base_records = read_records(out / "cache" / base["key"] / "predictions.jsonl", wanted)
            lines = []
            for i in worst:
                index = int(cand.ids[i])
                if index not in mine_records or index not in base_records:
                    continue
                lines.append(f'<tr><td class="num" data-value="{index}">{index}</td>'
                             f'<td class="num" data-value="{gap[i]!r}">{gap[i]:+.3g}</td>'
                             f"<td>{render_example(base_records[index], images(dataset, index), palette)}</td>"
                             f"<td>{render_example(mine_records[index], images(dataset, index), palette)}</td></tr>")
            html.append(f"<h3>{escape(row['model'])} vs baseline {escape(base['model'])} on {escape(dataset)}</h3>")
            html.append('<p class="muted">Score: per-example quality (correct, entity F1, F1 of the boxes shown, '
                        'CIDEr, minus the loss) of the model minus the baseline.</p>')
            html.append(table(["example", "score gap", "baseline", escape(row["model"])], lines))
    return "\n".join(html) or '<p class="muted">No baseline: nothing to compare with.</p>'


def _galleries(out: Path, groups, images, palette: dict[str, str]) -> str:
    html = []
    from hftool.suite import headline

    for dataset, mine in groups:
        best = best_first(mine, headline(mine)[0])[0]
        records = read_records(out / "cache" / best["key"] / "predictions.jsonl", set(range(GALLERY)))
        cards = [f'<div class="card"><div class="muted">#{i}</div>{render_example(r, images(dataset, i), palette)}</div>'
                 for i, r in sorted(records.items())]
        if cards:
            html.append(f"<h3>{escape(dataset)}: {escape(best['model'])}, the first {len(cards)} examples</h3>")
            html.append(f'<div class="gallery">{"".join(cards)}</div>')
    return "\n".join(html)


# -------------------------------------------------------------------------------------- runs
def runs_report(runs: list[Path], path: Path) -> None:
    """Write a page for one run or several side by side: metrics, curves, config differences and,
    where the run saved its predictions, per-class results and a confusion matrix."""
    from hftool.config import read_yaml
    from hftool.errors import HftoolError
    from hftool.reports import curve_panels, read_log, run_metric
    from hftool.suite import lower_is_better

    for run in runs:
        if not (run / "config.yaml").is_file():
            raise HftoolError(f"{run} is not an hftool run dir (no config.yaml); pass run dirs written by "
                              "`hftool finetune`, or an eval-suite output dir")
    names = _short_names(runs)
    metrics = {n: json.loads((r / "metrics.json").read_text(encoding="utf-8")) if (r / "metrics.json").is_file() else {}
               for n, r in zip(names, runs)}
    columns = list(dict.fromkeys(k for m in metrics.values() for k in m if k.startswith("eval_") and
                                 not k.endswith("_support")))
    lines = ["<tr><td>" + escape(n) + "</td>" + _cell(m.get("train_steps")) + "".join(_cell(m.get(c)) for c in columns)
             + "</tr>" for n, m in metrics.items()]
    best = run_metric(runs[0])
    sections = [("metrics", "Metrics", f'<p class="muted">eval_{escape(best)} is metric_for_best '
                                       f'({"lower" if lower_is_better(best) else "higher"} is better).</p>'
                 + table(["run", "steps", *columns], lines))]
    logs = {n: read_log(r / "log.jsonl") for n, r in zip(names, runs) if (r / "log.jsonl").is_file()}
    if logs:
        panels = curve_panels(logs if len(logs) > 1 else {"": next(iter(logs.values()))}, best)
        sections.append(("curves", "Training curves", figure(panels)))
    configs = {n: _flatten(read_yaml(r / "config.yaml")) for n, r in zip(names, runs)}
    keys = list(dict.fromkeys(k for c in configs.values() for k in c))
    differ = [k for k in keys if len({json.dumps(c.get(k), default=str) for c in configs.values()}) > 1]
    shown = differ if len(runs) > 1 else keys
    rows = ["<tr><td>" + escape(k) + "</td>" + "".join(f"<td>{escape(json.dumps(c.get(k), default=str))}</td>"
                                                      for c in configs.values()) + "</tr>" for k in shown]
    heading = "Config differences" if len(runs) > 1 else "Config"
    sections.append(("config", heading, table(["key", *names], rows) if rows else "<p>The configs are identical.</p>"))
    confusion = [_run_confusion(n, r) for n, r in zip(names, runs)]
    if any(confusion):
        sections.append(("classes", "Per-class results (predictions.jsonl)", "\n".join(c for c in confusion if c)))
    title = f"hftool runs: {', '.join(names)}" if len(runs) > 1 else f"hftool run: {names[0]}"
    path.write_text(page(title, sections), encoding="utf-8")


def _short_names(runs: list[Path]) -> list[str]:
    names = [r.name for r in runs]
    return names if len(set(names)) == len(names) else [str(r) for r in runs]


def _flatten(mapping: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in mapping.items():
        if isinstance(value, dict) and value:
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _run_confusion(name: str, run: Path) -> str:
    """Per-class table and confusion matrix of a classifier run's predictions.jsonl ('' otherwise)."""
    import numpy as np

    from hftool.metrics.classification import per_class

    records = list(read_records(run / "predictions.jsonl").values())
    if not records or not all(isinstance(r.get("prediction"), str) for r in records):
        return ""
    labels = sorted({r["reference"] for r in records} | {r["prediction"] for r in records})
    at = {label: i for i, label in enumerate(labels)}
    matrix = np.zeros((len(labels), len(labels)), dtype=int)
    for r in records:
        matrix[at[r["reference"]], at[r["prediction"]]] += 1
    precision, recall, f1, support = per_class(matrix)
    lines = [f"<tr><td>{escape(label)}</td>{_cell(int(s))}{_cell(float(p))}{_cell(float(r))}{_cell(float(f))}</tr>"
             for label, p, r, f, s in zip(labels, precision, recall, f1, support)]
    row = {"model": name, "tables": {"labels": labels, "confusion": matrix.tolist()}, "baseline": True}
    return (f"<h3>{escape(name)}</h3>" + table(["class", "support", "precision", "recall", "f1"], lines)
            + _confusions([(f"{len(records)} predictions", [row])]))
