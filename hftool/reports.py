"""What a finished run leaves beside its weights: curves, provenance and a model card."""

from __future__ import annotations

import hashlib
import json
import math
import platform
import re
import subprocess
from datetime import datetime, timezone
from html import escape
from importlib import metadata
from pathlib import Path

from hftool import __version__
from hftool.config import RunConfig, to_dict

PACKAGES = ("torch", "transformers", "datasets", "accelerate", "evaluate", "timm", "tokenizers")


def write_all(run_dir: Path, cfg: RunConfig, task, parts, metrics: dict, records: list[dict], sources: dict[str, str],
              recipe: str, command: str, precision: str, parameters: dict | None = None) -> None:
    """Every file a finished run leaves beside its weights; the task's own through its
    write_reports hook (records: the final evaluation's per-example results). `parameters`:
    trainable and total parameter counts and the adapters' description (Trainer._parameters)."""
    provenance = collect_provenance(cfg, sources, command, precision)
    if parameters:
        provenance["parameters"] = parameters
    (run_dir / "provenance.json").write_text(json.dumps(provenance, indent=2), encoding="utf-8")
    plot_curves(run_dir / "log.jsonl", run_dir / "curves.svg")
    (run_dir / "README.md").write_text(model_card(run_dir, cfg, task, parts, metrics, provenance, recipe),
                                       encoding="utf-8")
    task.write_reports(parts, run_dir, metrics, records)


def collect_provenance(cfg: RunConfig, sources: dict[str, str], command: str, precision: str) -> dict:
    """Where a run came from. `precision` is what training ran in (train.mixed_precision=auto
    depends on the machine): recorded as fp32, bf16 or fp16."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return {
        "hftool_version": __version__,
        "hftool_git_commit": _git_commit(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": command,
        "python": platform.python_version(),
        "packages": versions,
        "precision": "fp32" if precision == "no" else precision,
        "data": {split: {"source": name, **fingerprint(spec)}
                 for split, name, spec in _data_specs(cfg, sources)},
    }


def _data_specs(cfg: RunConfig, sources: dict[str, str]):
    for split, name in sources.items():
        spec = cfg.data.eval if split == "validation" and cfg.data.eval else cfg.data.train
        yield split, name, spec


def fingerprint(spec: str | None) -> dict:
    """sha256 of a data file (or of each file in a folder); hub and sample specs are named only."""
    if not spec:
        return {}
    path = Path(spec).expanduser()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else []
    if not files:
        return {"kind": "sample" if spec.startswith("sample:") else "hub"}
    digest = hashlib.sha256()
    for file in files[:1000]:
        digest.update(str(file.relative_to(path) if path.is_dir() else file.name).encode())
        with open(file, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    return {"kind": "files", "files": len(files), "sha256": digest.hexdigest()}


def _git_commit() -> str | None:
    """The commit of the hftool source tree when it is a git checkout (editable installs)."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
                             capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def plot_curves(log_path: Path, out_path: Path) -> None:
    """Training loss and every eval metric against the optimizer step, one panel each, as SVG.

    Written by hand rather than with matplotlib: importing matplotlib and laying out a figure
    costs seconds, a noticeable share of a one-minute run, for a few lines of a few dozen points."""
    if not log_path.is_file():
        return
    records = [json.loads(line) for line in log_path.read_text(encoding="utf-8").splitlines() if line.strip()]
    train = [(r["step"], r["loss"]) for r in records if r["type"] == "train"]
    evals = [r for r in records if r["type"] == "eval"]
    names = [k for k in (evals[-1] if evals else {}) if k.startswith("eval_") and k != "eval_loss"]
    panels = [("loss", [("train loss", train, False)]
               + ([("eval loss", [(r["step"], r["eval_loss"]) for r in evals if "eval_loss" in r], True)]
                  if evals and "eval_loss" in evals[0] else []))]
    panels += [(name, [(name, [(r["step"], r[name]) for r in evals if isinstance(r.get(name), (int, float))], True)])
               for name in names]
    cols = min(len(panels), 4)  # at most 4 a row: per-type metrics (token classification) make dozens
    width, height = 320, 240
    rows = math.ceil(len(panels) / cols)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{cols * width}" height="{rows * height}" '
             f'font-family="sans-serif" font-size="11"><rect width="100%" height="100%" fill="white"/>']
    for index, (title, series) in enumerate(panels):
        x0, y0 = (index % cols) * width, (index // cols) * height
        parts.append(_svg_panel(x0, y0, width, height, title, series))
    parts.append("</svg>\n")
    out_path.write_text("\n".join(parts), encoding="utf-8")


COLORS = ("#1f77b4", "#ff7f0e")


def _svg_panel(x0: float, y0: float, width: float, height: float, title: str, series: list) -> str:
    """One panel: a framed plot area, min/max tick labels, a polyline per series (dots for evals)."""
    left, right, top, bottom = x0 + 48, x0 + width - 12, y0 + 24, y0 + height - 32
    points = [p for _, data, _ in series for p in data if math.isfinite(p[1])]
    out = [f'<text x="{x0 + width / 2}" y="{y0 + 15}" text-anchor="middle" font-weight="bold">{escape(title)}</text>',
           f'<rect x="{left}" y="{top}" width="{right - left}" height="{bottom - top}" fill="none" stroke="#999"/>']
    if not points:
        return "\n".join(out)
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    x_lo, x_hi, y_lo, y_hi = min(xs), max(xs), min(ys), max(ys)
    if y_hi == y_lo:  # a flat line sits mid-panel
        pad = abs(y_hi) * 0.05 or 1
        y_lo, y_hi = y_lo - pad, y_hi + pad
    x_span, y_span = (x_hi - x_lo) or 1, y_hi - y_lo

    def at(x, y):
        return f"{left + (x - x_lo) / x_span * (right - left):.1f},{bottom - (y - y_lo) / y_span * (bottom - top):.1f}"

    for label, y in ((_number(y_hi), top + 4), (_number(y_lo), bottom)):
        out.append(f'<text x="{left - 4}" y="{y}" text-anchor="end">{label}</text>')
    out.append(f'<text x="{left}" y="{bottom + 14}" text-anchor="middle">{x_lo}</text>')
    out.append(f'<text x="{right}" y="{bottom + 14}" text-anchor="middle">{x_hi}</text>')
    out.append(f'<text x="{(left + right) / 2}" y="{bottom + 26}" text-anchor="middle">step</text>')
    for number, (label, data, dots) in enumerate(series):
        color = COLORS[number % len(COLORS)]
        coords = [at(x, y) for x, y in data if math.isfinite(y)]
        out.append(f'<polyline class="series" data-label="{escape(label)}" fill="none" stroke="{color}" '
                   f'stroke-width="1.5" points="{" ".join(coords)}"/>')
        if dots:
            out += [f'<circle cx="{c.split(",")[0]}" cy="{c.split(",")[1]}" r="2.5" fill="{color}"/>' for c in coords]
        if len(series) > 1:
            out.append(f'<text x="{right - 4}" y="{top + 14 + 13 * number}" text-anchor="end" fill="{color}">'
                       f'{escape(label)}</text>')
    return "\n".join(out)


def _number(value: float) -> str:
    return f"{value:.4g}"


def model_card(run_dir: Path, cfg: RunConfig, task, parts, metrics: dict, provenance: dict, recipe: str) -> str:
    """README.md of a run: YAML metadata as the Hub and huggingface_hub.ModelCard read it
    (library, task, base model, hub datasets, and every final eval metric as a model-index
    result), then the metrics, data, command, how to use the model, and provenance."""
    from huggingface_hub import EvalResult, ModelCardData

    meta = task.card_metadata(parts, cfg)
    evaluated = _dataset(cfg.data.eval or cfg.data.train)
    split = _split(provenance["data"].get("validation", {}).get("source", ""))
    results = [EvalResult(task_type=meta["pipeline_tag"], dataset_type=evaluated["id"], dataset_name=evaluated["id"],
                          dataset_config=evaluated["config"], dataset_split=split, metric_type=key.removeprefix("eval_"),
                          metric_name=key, metric_value=value)
               for key, value in metrics.items() if key.startswith("eval_")]
    hub_datasets = list(dict.fromkeys(d["id"] for d in map(_dataset, (cfg.data.train, cfg.data.eval)) if d["hub"]))
    bases = meta["base_model"]
    parameters = provenance.get("parameters") or {}
    library = "peft" if parameters.get("adapters") else meta["library_name"]  # peft loads adapters onto their base
    card_data = ModelCardData(model_name=Path(run_dir).name, library_name=library,
                              pipeline_tag=meta["pipeline_tag"], base_model=bases[0] if len(bases) == 1 else bases or None,
                              datasets=hub_datasets or None, tags=["hftool", cfg.task], eval_results=results or None)
    rows = "\n".join(f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in metrics.items())
    data_rows = "\n".join(f"- {split}: {d['source']}" + (f" (sha256 {d['sha256'][:16]}...)" if "sha256" in d else "")
                          for split, d in provenance["data"].items())
    versions = ", ".join(f"{k} {v}" for k, v in provenance["packages"].items())
    training, usage = "", task.card_usage(parts, cfg)
    if parameters:
        from hftool.adapters import card_section, card_usage

        training = "## Training\n\n" + card_section(parameters["trainable"], parameters["total"],
                                                     parameters.get("adapters")) + "\n"
        if parameters.get("adapters"):  # transformers loads the merged folder, not this one
            usage = card_usage(usage)
    base = ", ".join(f"[{b}](https://huggingface.co/{b})" for b in bases) or "none (trained from scratch)"
    return f"""---
{card_data.to_yaml()}
---

# {recipe or cfg.task} fine-tuned with hftool

Task: {cfg.task}. Model: {meta['model']}. Base model: {base}.

## Evaluation

| metric | value |
|---|---|
{rows}

{training}## Data

{data_rows}

## Reproduce

```
{provenance['command']}
```

Resolved configuration: `config.yaml`; training log: `log.jsonl`; curves: `curves.svg`.

## Use

Run from this folder (`"."`), or put its path or Hub id in place of `"."`:

{usage}
## Provenance

hftool {provenance['hftool_version']} (commit {provenance['hftool_git_commit'] or 'unknown'}), Python {provenance['python']}; {versions}.

Configuration (secrets redacted):

```yaml
{json.dumps(to_dict(cfg), indent=2)}
```
"""


HUB_ID = re.compile(r"[\w.-]+(/[\w.-]+)?")


def model_origin(spec: str | None) -> list[str]:
    """The Hub ids a model spec's weights came from (a card's base_model): a hub id itself; a
    folder of the HF cache (models--org--name/snapshots/...) its id; an hftool run dir its own
    card's base_model. Nothing for specs with a scheme (tiny:, timm:) and other folders, whose
    origin is unknown."""
    if not spec:
        return []
    path = Path(spec).expanduser()
    if not path.exists():
        return [spec] if HUB_ID.fullmatch(spec) else []
    cached = next((p.name for p in (path, *path.parents) if p.name.startswith("models--")), None)
    if cached:
        return [cached.removeprefix("models--").replace("--", "/")]
    if (path / "config.yaml").is_file() and (path / "README.md").is_file():  # a run dir: its card knows
        from huggingface_hub import ModelCard

        base = ModelCard.load(path / "README.md").data.base_model
        return [base] if isinstance(base, str) else list(base or [])
    return []


def _dataset(spec: str | None) -> dict:
    """A data spec as a card names it: a hub dataset by id (and config), a sample by its spec, a
    file or folder by its name (the Data section gives its hash)."""
    if not spec:
        return {"id": None, "config": None, "hub": False}
    if spec.startswith("sample:") or Path(spec).expanduser().exists():
        return {"id": spec if spec.startswith("sample:") else Path(spec).name, "config": None, "hub": False}
    name, _, config = spec.partition(":")  # hftool's hub spec: name or name:config
    return {"id": name, "config": config or None, "hub": True}


def _split(source: str) -> str:
    """The split a validation source's name says (hftool.data names it `spec [split]`); a part
    held out of the training data (`... (held-out N rows)`, `(last N rows ...)`) is the run's
    validation split, as is a whole file passed as validation data."""
    found = re.search(r"\[(\w+)\]", source)
    held_out = re.search(r"\((held-out|last) \d+ rows", source)
    return found.group(1) if found and not held_out else "validation"


def plot_confusion(records: list[dict], labels: list[str], path: Path) -> None:
    """Counts per (reference, prediction) of classifier records (label names) as a heat map;
    numbers written in when they fit."""
    import matplotlib
    import numpy as np

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    n, index = len(labels), {name: i for i, name in enumerate(labels)}
    pairs = np.asarray([index[r["reference"]] * n + index[r["prediction"]] for r in records], dtype=np.int64)
    matrix = np.bincount(pairs, minlength=n * n).reshape(n, n)
    side = min(3 + 0.45 * n, 20)
    fig, ax = plt.subplots(figsize=(side, side))
    ax.imshow(matrix, cmap="Blues")
    if n <= 40:
        ax.set_xticks(range(n), labels, rotation=90)
        ax.set_yticks(range(n), labels)
    if n <= 20:
        threshold = matrix.max() / 2
        for (row, col), value in np.ndenumerate(matrix):
            ax.text(col, row, str(value), ha="center", va="center", color="white" if value > threshold else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"confusion matrix ({int(matrix.sum())} examples)")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
