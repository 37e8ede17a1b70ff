"""Run dirs: the marker that makes a folder an hftool run, and what --overwrite may do to one.

A new run's first file is `hftool_run.json` (a run id, the hftool version, the time), written
before anything else, so a run killed at any later moment still carries it. `--overwrite` and
`--resume` act only on a folder with the marker: a user's project folder that merely holds a
`config.yaml` is never deleted or written into.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from datetime import datetime, timezone
from pathlib import Path

from hftool import __version__, logs
from hftool.config import RunConfig
from hftool.errors import HftoolError
from hftool.outputs import atomic_write_text

MARKER = "hftool_run.json"


def write_marker(run_dir: Path, labels: list[str] | None = None) -> dict:
    """Mark `run_dir` as an hftool run (creating it). Returns the marker's content.

    Args:
        labels: The run's class names: config.json's id2label must still name them when the run
            is loaded (transformers leaves id2label out of config.json when it is its default).
    """
    marker = {"run_id": uuid.uuid4().hex, "hftool_version": __version__,
              "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "labels": labels}
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / MARKER, json.dumps(marker, indent=2) + "\n")
    return marker


def is_run(path: str | Path) -> bool:
    """Whether hftool wrote the folder `path`: it has the marker, or is a finished run from before
    the marker existed (hftool 0.1 wrote no marker, but every finished run it left has a
    config.yaml and a provenance.json naming an hftool version; a folder with only a
    config.yaml is anybody's)."""
    path = Path(path)
    if (path / MARKER).is_file():
        return True
    if not (path / "config.yaml").is_file() or not (path / "provenance.json").is_file():
        return False
    try:
        provenance = json.loads((path / "provenance.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(provenance, dict) and "hftool_version" in provenance


def trained_labels(run_dir: str | Path) -> list[str] | None:
    """The class names a run was trained with, as its marker records them (None: no marker, or
    a task without classes)."""
    path = Path(run_dir).expanduser() / MARKER
    if not path.is_file():
        return None
    try:
        labels = json.loads(path.read_text(encoding="utf-8")).get("labels")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        raise HftoolError(f"{path} is not the JSON hftool wrote; restore the file") from None
    return None if labels is None else [str(label) for label in labels]


def shown(labels: list) -> str:
    return ", ".join(map(str, labels[:5])) + (f", ... ({len(labels)} in all)" if len(labels) > 5 else "")


def check_labels(model_dir: str | Path, labels: list[str] | None) -> None:
    """Fail when a run's loaded class names are not the ones it was trained on (its config.json
    lost or changed its id2label): predictions would name the wrong classes."""
    trained = trained_labels(model_dir)
    if trained is not None and labels is not None and [str(label) for label in labels] != trained:
        raise HftoolError(f"{Path(model_dir).expanduser() / 'config.json'}: its id2label ({shown(labels)}) is not "
                          f"the run's label map ({shown(trained)}, in {MARKER}); restore the run's config.json")


def move_aside(run_dir: Path) -> Path:
    """Rename a run out of the way, to a hidden sibling (one atomic rename: the run is either
    where it was or whole beside it). Returns where it went."""
    aside = run_dir.with_name(f".{run_dir.name}.replaced-{uuid.uuid4().hex[:8]}")
    os.rename(run_dir, aside)
    return aside


def remove_aside(aside: Path) -> None:
    """Delete a run moved aside by move_aside (the new run has saved a checkpoint)."""
    shutil.rmtree(aside, ignore_errors=True)
    if aside.exists():
        logs.warn(f"could not delete the replaced run in {aside}; delete it by hand")


def absolute(spec: str | None) -> str | None:
    """A data or model spec as config.yaml records it: a local path that exists becomes absolute
    (evaluate and resume never read it relative to another working directory); hub ids,
    sample:<name> and tiny:<arch> stay as they are."""
    if not spec or ":" in spec.split("/", 1)[0]:
        return spec
    path = Path(spec).expanduser()
    return str(path.resolve()) if path.exists() else spec


def recorded(cfg: RunConfig) -> RunConfig:
    """A copy of `cfg` with its local data and model paths absolute, as config.yaml stores them."""
    import copy

    out = copy.deepcopy(cfg)
    for section, key in (("data", "train"), ("data", "eval"), ("data", "images_dir"), ("model", "name"),
                         ("model", "encoder"), ("model", "decoder")):
        part = getattr(out, section)
        if hasattr(part, key):  # images_dir, encoder and decoder are options of some tasks only
            setattr(part, key, absolute(getattr(part, key)))
    return out


def same_spec(saved: str | None, wanted: str | None) -> bool:
    """Whether config.yaml's `saved` spec names the data `wanted` names (either may be relative:
    runs from before paths were stored absolute)."""
    if saved == wanted:
        return True
    if not saved or not wanted:
        return False
    return absolute(saved) == absolute(wanted)
