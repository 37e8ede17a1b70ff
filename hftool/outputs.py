"""Files hftool writes: atomically (a temporary file, then one rename), so a kill at any moment
leaves the old file or the new one, never half of one; and with the permissions the umask gives,
so a team (or a serving container running as another user) can read a run."""

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


def honour_umask(folder: Path, pattern: str = "*.safetensors") -> None:
    """Give the files matching `pattern` in `folder` the mode a plain open() gives (0666 less the
    umask). safetensors writes its files through a private temporary file, so weights come out
    0600 whatever the umask: unreadable to a colleague or a serving container."""
    mode = 0o666 & ~_umask()
    for path in Path(folder).glob(pattern):
        if path.is_file():
            os.chmod(path, mode)


def _umask() -> int:
    """The process's umask. Linux reports it in /proc; elsewhere os.umask is the only way to read
    it, which sets it for a moment (a file another thread created just then would get 0666)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            return next(int(line.split()[1], 8) for line in f if line.startswith("Umask:"))
    except (OSError, StopIteration):
        mask = os.umask(0)
        os.umask(mask)
        return mask
