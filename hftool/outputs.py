"""Files hftool writes. Always whole: a temporary file beside the target, then one rename, so a
kill at any moment leaves the old file or the new one, never half of one; with the permissions the
umask gives, so a team (or a serving container running as another user) can read a run.

What `predict`, `evaluate` and `generate` write is also checked first: never over an existing file
unless the command was given --overwrite, never over a model or run dir's own files.

    check_output(path, overwrite, protected)   # before anything expensive runs
    atomic_write_text(path, text)              # a temporary file beside it, then one rename
    with atomic_path(path) as tmp:             # for libraries that write to a path themselves
        fig.savefig(tmp)

Tasks write their files (forecast CSV/PNG, drawn boxes, attention maps) through atomic_path
and check_output with no explicit policy: the command sets it once with `policy(...)`, so a task
needs no --overwrite argument of its own. Temporary files are created with the default mode,
so they honour the umask like any file the user writes.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import os
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from hftool.errors import HftoolError


@dataclass(frozen=True)
class Policy:
    """What the running command may replace: with `overwrite`, existing files outside `protected`
    (resolved dirs whose existing files are never replaced, and files never replaced)."""

    overwrite: bool = False
    protected: tuple[Path, ...] = ()


_POLICY: contextvars.ContextVar[Policy] = contextvars.ContextVar("hftool_output_policy", default=Policy())


@contextlib.contextmanager
def policy(overwrite: bool = False, protected: Iterable[str | Path | None] = ()) -> Iterator[None]:
    """Within the block, outputs are checked against this policy (see check_output)."""
    guards = tuple(Path(p).expanduser().resolve() for p in protected if p and Path(p).expanduser().exists())
    token = _POLICY.set(Policy(overwrite, guards))
    try:
        yield
    finally:
        _POLICY.reset(token)


def check_folder(folder: str | Path, what: str | None = None) -> Path:
    """Fail unless `folder` is a folder or can be made one: no file in the way, and the nearest
    existing folder at or above it writable. Nothing is created.

    Args:
        what: How the message names it (default: "output folder FOLDER").
    """
    folder = Path(folder).expanduser()
    what = what or f"output folder {folder}"
    existing = next(p for p in (folder, *folder.parents) if p.exists() or p == p.parent)
    if not existing.is_dir():
        raise HftoolError(f"{what} cannot be created: {existing} is a file, not a folder; choose another path")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise HftoolError(f"{what} cannot be created: {existing} is not writable (permission denied)")
    return folder


def check_output(path: str | Path, overwrite: bool | None = None, protected: Iterable[str | Path] | None = None,
                 what: str = "output") -> Path:
    """Fail unless `path` may be written: not a folder, its folder creatable, and (when it exists)
    replaceable: --overwrite given and not a file of a protected dir. A device or pipe
    (/dev/stdout, /dev/null) is written in place and replaces nothing.

    Args:
        overwrite: None: the current policy's.
        protected: Dirs whose existing files are never replaced, even with overwrite (a model
            or run dir), and files never replaced (the data being scored). None: the policy's.
    """
    path = Path(path).expanduser()
    current = _POLICY.get()
    overwrite = current.overwrite if overwrite is None else overwrite
    guards = current.protected if protected is None else tuple(
        Path(p).expanduser().resolve() for p in protected if p and Path(p).expanduser().exists())
    if path.is_dir():
        raise HftoolError(f"{what} {path} is a folder; pass a file path (e.g. {path / 'out.json'})")
    check_folder(path.parent, f"{what} {path}")
    if not path.exists() or not path.is_file():
        return path
    real = path.resolve()
    for guard in guards:
        if real == guard or guard in real.parents:
            raise HftoolError(f"{what} {path} is a file of {guard}; hftool never writes over the files of a model "
                              "or run dir or the data it reads, even with --overwrite: choose another path")
    if not overwrite:
        raise HftoolError(f"{what} {path} already exists; pass --overwrite to replace it, or choose another path")
    return path


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path` (same suffix: libraries pick the format by it), then
    rename it onto `path`; on any error the temporary file is removed and `path` is untouched.
    A device or pipe is yielded as itself. OS errors become one line naming `path`."""
    path = Path(path).expanduser()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists() and not path.is_file():  # /dev/stdout, a FIFO: nothing to replace
            yield path
            return
        tmp = path.with_name(f".{path.stem}.{uuid.uuid4().hex[:8]}.tmp{path.suffix}")
        try:
            yield tmp
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
    except OSError as err:
        raise HftoolError(f"cannot write {path}: {err.strerror or err}") from None


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            if Path(tmp) != Path(path).expanduser():  # a device cannot always fsync
                os.fsync(f.fileno())


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def write_jsonl(path: str | Path, records: Iterable[dict]) -> None:
    """One JSON object per line, written atomically."""
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


def write_json(path: str | Path, data: dict) -> None:
    """Indented JSON, written atomically."""
    atomic_write_text(path, json.dumps(data, indent=2))


def write_png(path: Path, image) -> None:
    """A uint8 image tensor [C, H, W] (C = 1: greyscale, 3: RGB) as a PNG, written atomically."""
    from PIL import Image

    array = image.permute(1, 2, 0).cpu().numpy()
    picture = Image.fromarray(array[:, :, 0] if array.shape[2] == 1 else array)  # uint8: L or RGB
    with atomic_path(path) as tmp:
        picture.save(tmp, format="PNG")


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
