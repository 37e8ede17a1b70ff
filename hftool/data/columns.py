"""What rows know of themselves: their columns (the one the config names, else the first with a
usual name) and the folder of the file they were read from."""

from __future__ import annotations

from pathlib import Path

from hftool.errors import HftoolError


def find_column(ds, source: str, configured: str | None, candidates: tuple[str, ...], what: str, key: str) -> str:
    """The column of `ds` to use: `configured` (data.<key>) if set, else the first of `candidates` present."""
    if configured:
        if configured not in ds.column_names:
            raise HftoolError(f"{source} has no column '{configured}' (columns: {', '.join(ds.column_names)}); "
                              f"fix data.{key}")
        return configured
    found = next((c for c in candidates if c in ds.column_names), None)
    if found is None:
        raise HftoolError(f"{source} has no {what} column (columns: {', '.join(ds.column_names)}); "
                          f"set data.{key}=<column>")
    return found


def source_dir(ds) -> Path | None:
    """The folder of the file `ds` was read from (see read_file), or None (hub, samples)."""
    from urllib.parse import unquote, urlparse

    uri = ds.info.homepage or ""
    return Path(unquote(urlparse(uri).path)) if uri.startswith("file:") else None
