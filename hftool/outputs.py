"""Files hftool writes: atomically (a temporary file, then one rename), so a kill at any moment
leaves the old file or the new one, never half of one."""

from __future__ import annotations

import json
import os
from pathlib import Path


def write_jsonl(path: Path, records: list[dict]) -> None:
    """One JSON object per line, written to a temporary file and renamed into place."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    os.replace(tmp, path)


def write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
