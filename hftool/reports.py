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


def write_all(run_dir: Path, cfg: RunConfig, metrics: dict, sources: dict[str, str], recipe: str, command: str) -> None:
    provenance = collect_provenance(cfg, sources, command)
    (run_dir / "provenance.json").write_text(json.dumps(provenance, indent=2), encoding="utf-8")
    plot_curves(run_dir / "log.jsonl", run_dir / "curves.png")
    (run_dir / "README.md").write_text(model_card(cfg, metrics, provenance, recipe), encoding="utf-8")
    from hftool.tasks import get_task

    get_task(cfg.task).write_reports(run_dir, metrics)


def collect_provenance(cfg: RunConfig, sources: dict[str, str], command: str) -> dict:
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
    """Training loss and every eval metric against the optimizer step, one panel each."""
    if not log_path.is_file():
        return
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    records = [json.loads(line) for line in log_path.read_text(encoding="utf-8").splitlines() if line.strip()]
    train = [r for r in records if r["type"] == "train"]
    evals = [r for r in records if r["type"] == "eval"]
    metric_names = [k for k in (evals[-1] if evals else {}) if k.startswith("eval_")]
    panels = 1 + len(metric_names)
    # At most 4 panels a row: per-type metrics (token classification) make dozens.
    cols, rows = min(panels, 4), math.ceil(panels / 4)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3.2 * rows), squeeze=False)
    axes = axes.ravel()
    for unused in axes[panels:]:
        unused.set_visible(False)
    ax = axes[0]
    ax.plot([r["step"] for r in train], [r["loss"] for r in train], label="train loss")
    if evals and "eval_loss" in evals[0]:
        ax.plot([r["step"] for r in evals], [r["eval_loss"] for r in evals], "o-", label="eval loss")
    ax.set_xlabel("step")
    ax.set_title("loss")
    ax.legend()
    for ax, name in zip(axes[1:], metric_names):
        ax.plot([r["step"] for r in evals], [r.get(name) for r in evals], "o-")
        ax.set_xlabel("step")
        ax.set_title(name)
    fig.tight_layout()
    fig.savefig(out_path, dpi=80)
    plt.close(fig)


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

Resolved configuration: `config.yaml`; training log: `log.jsonl`; curves: `curves.png`.

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
