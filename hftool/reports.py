"""What a finished run leaves beside its weights: curves, provenance and a model card."""

from __future__ import annotations

import hashlib
import json
import math
import platform
import re
import subprocess
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

from hftool import __version__
from hftool.config import RunConfig, to_dict
from hftool.outputs import atomic_write_text

PACKAGES = ("torch", "transformers", "datasets", "accelerate", "evaluate", "timm", "tokenizers")


def write_all(run_dir: Path, cfg: RunConfig, task, parts, metrics: dict, records: list[dict], sources: dict[str, str],
              recipe: str, command: str, precision: str, parameters: dict | None = None) -> None:
    """Every file a finished run leaves beside its weights; the task's own through its
    write_reports hook (records: the final evaluation's per-example results). `parameters`:
    trainable and total parameter counts and the adapters' description (Trainer._parameters)."""
    provenance = collect_provenance(cfg, sources, command, precision)
    if parameters:
        provenance["parameters"] = parameters
    atomic_write_text(run_dir / "provenance.json", json.dumps(provenance, indent=2))
    plot_curves(run_dir / "log.jsonl", run_dir / "curves.svg",
                (cfg.train.metric_for_best or task.default_metric).removeprefix("eval_"))
    atomic_write_text(run_dir / "README.md", model_card(run_dir, cfg, task, parts, metrics, provenance, recipe))
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
