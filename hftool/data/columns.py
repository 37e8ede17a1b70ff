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


def column_values(ds, column: str):
    """Column `column` of a datasets Dataset as one pyarrow ChunkedArray, in the Dataset's row order.

    Read by Arrow in one call: iterating `ds[column]` formats row by row (about 26 s per million
    rows here), and even `ds.with_format("numpy")[column]` gathers a split's rows through Python
    lists (28 s for 900k). `_indices` is the row mapping select/shuffle/train_test_split leave:
    datasets has no public way to read it.
    """
    indices = ds._indices
    if indices is None:
        return ds.data.column(column)
    import pyarrow as pa

    from hftool.data.tables import _gather, stored_batches

    # Gathered batch by batch: Arrow's take would concatenate the whole stored column first, on
    # every call, which a reader calling this per part of a split (row_parts) pays per part.
    batches, starts, schema = stored_batches(ds, [column])
    if not batches:
        return pa.chunked_array([], schema.field(0).type)
    return _gather(batches, starts, indices.column(0).to_numpy(), schema).column(0)


def first_not_text(ds, column: str) -> int | None:
    """The first row of `column` whose value is not a string (None where every one is)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    values = ds.data.column(column)  # the stored rows: a split's row mapping is applied to the mask, not the texts
    if not (pa.types.is_string(values.type) or pa.types.is_large_string(values.type)):
        return 0 if len(ds) else None
    if not values.null_count:
        return None
    missing = pc.is_null(values)
    if ds._indices is not None:  # see column_values
        missing = missing.take(ds._indices.column(0))
    first = pc.index(missing, True).as_py()
    return None if first < 0 else first
