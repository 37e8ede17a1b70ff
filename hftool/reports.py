"""What a finished run leaves beside its weights: curves, provenance and a model card."""

from __future__ import annotations

import hashlib
import json
import math
import platform
import subprocess
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

from hftool import __version__
from hftool.config import RunConfig, to_dict

PACKAGES = ("torch", "transformers", "datasets", "accelerate", "evaluate", "timm", "tokenizers")


def write_all(run_dir: Path, cfg: RunConfig, metrics: dict, sources: dict[str, str], recipe: str, command: str,
              precision: str) -> None:
    provenance = collect_provenance(cfg, sources, command, precision)
    (run_dir / "provenance.json").write_text(json.dumps(provenance, indent=2), encoding="utf-8")
    from hftool.tasks import get_task

    plot_curves(run_dir / "log.jsonl", run_dir / "curves.svg",
                (cfg.train.metric_for_best or get_task(cfg.task).default_metric).removeprefix("eval_"))
    (run_dir / "README.md").write_text(model_card(cfg, metrics, provenance, recipe), encoding="utf-8")
    get_task(cfg.task).write_reports(run_dir, metrics)


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


def plot_curves(log_path: Path, out_path: Path, metric_for_best: str | None = None) -> None:
    """curves.svg: the loss, the run's metric_for_best and a few other headline metrics against
    the optimizer step (curve_panels); nothing when the run has no log."""
    from hftool import plots

    if not log_path.is_file():
        return
    panels = curve_panels({"": read_log(log_path)}, metric_for_best or run_metric(log_path.parent))
    out_path.write_text(plots.figure(panels), encoding="utf-8")


# Drawn after the loss and metric_for_best, in this order, while there is room: each task's headline.
HEADLINE = ("accuracy", "f1_macro", "f1", "map", "map_50", "bleu", "cider", "perplexity", "rougeL", "chrf", "rmse",
            "mae", "top5_accuracy")
MAX_METRIC_PANELS = 3


def read_log(log_path: Path) -> list[dict]:
    return [json.loads(line) for line in log_path.read_text(encoding="utf-8").splitlines() if line.strip()]


def run_metric(run_dir: Path) -> str:
    """The metric a run picked its best checkpoint by (without eval_): train.metric_for_best, else its task's."""
    from hftool.config import read_yaml
    from hftool.tasks import TASKS, get_task

    saved = read_yaml(run_dir / "config.yaml") if (run_dir / "config.yaml").is_file() else {}
    chosen = (saved.get("train") or {}).get("metric_for_best")
    task = saved.get("task")
    return (chosen or (get_task(task).default_metric if task in TASKS else "loss")).removeprefix("eval_")


def curve_panels(runs: dict[str, list[dict]], metric_for_best: str) -> list[tuple[str, str, list]]:
    """(title, subtitle, series) panels: loss, metric_for_best and at most MAX_METRIC_PANELS
    metrics in all, each drawn once: metrics equal at every evaluation (micro F1 and accuracy of a
    single-label classifier) share a panel whose subtitle names them. `runs`: name -> log records;
    with several runs each gets a colour."""
    from hftool.plots import COLORS, Series

    def evals(records: list[dict], name: str) -> list[tuple[float, float]]:
        return [(r["step"], float(r[name])) for r in records
                if r["type"] == "eval" and isinstance(r.get(name), (int, float)) and math.isfinite(r[name])]

    names = list(dict.fromkeys(k.removeprefix("eval_") for records in runs.values() for r in records
                               if r["type"] == "eval" for k in r if k.startswith("eval_") and k != "eval_loss"))
    series_of = {n: tuple(tuple(evals(records, f"eval_{n}")) for records in runs.values()) for n in names}
    groups: dict[tuple, list[str]] = {}
    for name in names:
        groups.setdefault(series_of[name], []).append(name)
    chosen: list[str] = []
    for name in [metric_for_best, *HEADLINE] if any(n in series_of for n in HEADLINE) else [metric_for_best, *names]:
        if name in series_of and len(chosen) < MAX_METRIC_PANELS and all(series_of[name] != series_of[c] for c in chosen):
            chosen.append(name)
    single = len(runs) == 1
    loss = []
    for number, (run, records) in enumerate(runs.items()):
        color = COLORS[number % len(COLORS)]
        train = [(r["step"], float(r["loss"])) for r in records if r["type"] == "train" and "loss" in r]
        loss.append(Series(f"{run} train" if run else "train loss", train, color))
        eval_loss = evals(records, "eval_loss")
        if eval_loss:
            loss.append(Series(f"{run} eval" if run else "eval loss", eval_loss,
                               COLORS[1] if single else color, dots=True, dashed=not single))
    panels = [("loss", "", [s for s in loss if s.points])]
    for name in chosen:
        same = [n for n in groups[series_of[name]] if n != name]
        subtitle = f"= {', '.join(same)}" if same else ""
        title = f"eval_{name}" + (" (metric_for_best)" if name == metric_for_best else "")
        panels.append((title, subtitle[:60] + ("..." if len(subtitle) > 60 else ""),
                       [Series(run or f"eval_{name}", evals(records, f"eval_{name}"), COLORS[number % len(COLORS)], dots=True)
                        for number, (run, records) in enumerate(runs.items())]))
    return panels


def model_card(cfg: RunConfig, metrics: dict, provenance: dict, recipe: str) -> str:
    from hftool.tasks import get_task

    task = get_task(cfg.task)
    rows = "\n".join(f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in metrics.items())
    data_rows = "\n".join(f"- {split}: {d['source']}" + (f" (sha256 {d['sha256'][:16]}...)" if "sha256" in d else "")
                          for split, d in provenance["data"].items())
    versions = ", ".join(f"{k} {v}" for k, v in provenance["packages"].items())
    return f"""---
library_name: transformers
pipeline_tag: {task.pipeline_task or cfg.task}
tags: [hftool, {cfg.task}]
---

# {recipe or cfg.task} fine-tuned with hftool

Base model: `{cfg.model.name}`. Task: {cfg.task}.

## Evaluation

| metric | value |
|---|---|
{rows}

## Data

{data_rows}

## Reproduce

```
{provenance['command']}
```

Resolved configuration: `config.yaml`; training log: `log.jsonl`; curves: `curves.svg`.

## Use

```python
from transformers import pipeline
pipe = pipeline("{task.pipeline_task or cfg.task}", model="path/to/this/folder")
```

## Provenance

hftool {provenance['hftool_version']} (commit {provenance['hftool_git_commit'] or 'unknown'}), Python {provenance['python']}; {versions}.

Configuration (secrets redacted):

```yaml
{json.dumps(to_dict(cfg), indent=2)}
```
"""
