"""csv, tsv, JSON lines, txt, CoNLL and parallel text files (gzip too) read in chunks into a
memory-mapped Arrow file; and the rows tasks make from them, written the same way.

Reading takes memory flat in the number of rows: each chunk of rows is parsed (pandas for
csv/tsv, json for JSON lines), written to an Arrow file in the datasets cache and dropped; the
Dataset maps that file. The file is keyed on the source's path, size and modification time and
the reading settings, so a second run (or `evaluate`, or `--resume`) maps it without parsing.

Written here rather than through `datasets.load_dataset("csv"/"json")`: its builders raise
mid-file decoding errors instead of falling back to Latin-1, and name neither the file nor the
line of a bad JSON row.

The guarantees of the whole-file reader hold: UTF-8 (BOM stripped), else Latin-1 with a warning
naming the first bad line, decided on a sample and re-read from the start when a bad byte shows
up past it; CRLF read as LF; quotes are text in a tsv; errors name the file and line.
"""

from __future__ import annotations

import codecs
import gzip
import hashlib
import io
import json
import os
import re
import warnings
import zlib
from collections.abc import Iterator
from pathlib import Path

from hftool import logs
from hftool.data.encoding import check_no_nul, latin1_warning, marked_encoding, not_what_it_is_marked
from hftool.errors import HftoolError

# Rows parsed at once: a few MB of Python objects, whatever the file's size. Tests lower it to
# cross chunk boundaries on small files.
CHUNK_ROWS = 20_000
# Bytes the encoding and the .txt/.json flavour are decided on.
SAMPLE_BYTES = 1 << 20
# Part of every cache key: bump it when what a reader produces changes.
VERSION = "2"
# Rows each tokenizing process gets at least, where data.num_proc is not set: below this a second
# process gained nothing measurable (benchmarks/tokenize_parallel.py).
ROWS_PER_PROCESS = 50_000


class _Restart(Exception):
    """A later chunk needs other column types or another encoding: read the file again from the start."""


def _open(path: Path):
    """The bytes of `path`, decompressed when it ends in .gz (parallel text files ship so)."""
    return gzip.open(path) if path.name.endswith(".gz") else path.open("rb")


def cache_dir() -> Path:
    import datasets

    return Path(datasets.config.HF_DATASETS_CACHE) / "hftool-tables"


def read_streamed(path: Path, kind: str, encoding: str | None = None, txt_unit: str = "line"):
    """The rows of `path` as a memory-mapped Dataset.

    Args:
        kind: "csv", "tsv", "jsonl", "txt", "conll" or "lines" (a `text` row per line, empty
            lines too: line N of a parallel file translates line N of the other).
        encoding: data.encoding; None decides between UTF-8 and Latin-1.
        txt_unit: for txt, "line" (a row per non-empty line) or "paragraph" (a row per block
            between blank lines).
    """
    import datasets

    stat = path.stat()
    key = "|".join((VERSION, str(path.resolve()), str(stat.st_size), str(stat.st_mtime_ns), kind, encoding or "",
                    txt_unit))
    target = cache_dir() / f"{hashlib.sha256(key.encode()).hexdigest()[:24]}.arrow"
    if not target.with_suffix(".json").is_file():  # its notes are written last: without them, write it (again)
        _write(path, kind, encoding, txt_unit, target)
        return datasets.Dataset.from_file(str(target))
    _used(target, target.with_suffix(".json"))
    ds = datasets.Dataset.from_file(str(target))
    for message in notes(ds)["warnings"]:
        logs.warn(message)  # read before: its warnings are said again, the data is still what it was
    return ds


def notes(ds) -> dict:
    """What reading the file behind `ds` (a read_streamed Dataset) found: "warnings" given, and
    "spans_lines", whether a text value holds a line break (csv: a quoted field over lines)."""
    return json.loads(Path(ds.cache_files[0]["filename"]).with_suffix(".json").read_text(encoding="utf-8"))


def sample_text(path: Path, encoding: str | None = None) -> str:
    """The start of a text file, decoded as the reader will decode it (for format sniffing)."""
    with _open(path) as handle:
        raw = handle.read(SAMPLE_BYTES)
    decoder = codecs.getincrementaldecoder(_sample_encoding(raw, path, encoding)[0])(errors="replace")
    return decoder.decode(raw).replace("\r\n", "\n").replace("\r", "\n")


def _sample_encoding(raw: bytes, path: Path, encoding: str | None) -> tuple[str, str | None]:
    """data.encoding, else the byte-order mark's, else UTF-8 unless the sample already holds a
    byte UTF-8 cannot read (then Latin-1); and the warning to give for Latin-1."""
    if encoding:
        try:
            codecs.lookup(encoding)
        except LookupError as err:
            raise HftoolError(f"{path}: cannot be read as {encoding} ({err}); set data.encoding to the file's encoding") from None
        return encoding, None
    if (bom := marked_encoding(raw)) is not None:
        return bom, None
    chosen, warning = "utf-8-sig", None
    try:
        text = codecs.getincrementaldecoder(chosen)().decode(raw)  # not final: a character cut at the end is fine
    except UnicodeDecodeError as err:
        chosen, warning = "latin-1", latin1_warning(path, raw[: err.start].count(b"\n") + 1)
        text = raw.decode(chosen)
    check_no_nul(text, path)
    return chosen, warning


def _first_bad_line(path: Path) -> int:
    """The line of the first byte UTF-8 cannot read (one pass over the bytes, in blocks)."""
    decoder, line = codecs.getincrementaldecoder("utf-8")(), 1
    with _open(path) as handle:
        while block := handle.read(1 << 24):
            carried = decoder.getstate()[0]  # an incomplete character from the previous block: no newline in it
            try:
                decoder.decode(block)
            except UnicodeDecodeError as err:
                return line + (carried + block)[: err.start].count(b"\n")
            line += block.count(b"\n")
    return line


def _write(path: Path, kind: str, encoding: str | None, txt_unit: str, target: Path) -> None:
    """Parse `path` chunk by chunk into the Arrow file `target` (written whole, then renamed)."""
    try:
        _parse(path, kind, encoding, txt_unit, target)
    except (gzip.BadGzipFile, EOFError, zlib.error) as err:  # only a .gz file's reading raises these
        raise HftoolError(f"{path}: not a readable gzip file ({err}); re-download or decompress it") from None


def _parse(path: Path, kind: str, encoding: str | None, txt_unit: str, target: Path) -> None:
    with _open(path) as handle:
        chosen, warning = _sample_encoding(handle.read(SAMPLE_BYTES), path, encoding)
    said = [warning] if warning else []
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f"{target.name}.{os.getpid()}.tmp")
    settings: dict = {}
    try:
        while True:
            try:
                # newline=None: CRLF and CR read as LF
                with io.TextIOWrapper(_open(path), encoding=chosen, newline=None) as text:
                    _write_chunks(_CHUNKERS[kind](text, path, settings, txt_unit), temporary, f"Reading {path.name}")
                break
            except UnicodeDecodeError as err:
                if chosen in ("utf-16", "utf-32"):
                    raise not_what_it_is_marked(path, chosen, err) from None
                if encoding:
                    raise HftoolError(f"{path}: cannot be read as {encoding} ({err}); set data.encoding to the file's "
                                      "encoding") from None
                # A bad byte past the sample: everything is read again as Latin-1, as the whole-file reader did.
                said.append(latin1_warning(path, _first_bad_line(path)))
                chosen = "latin-1"
            except _Restart:
                continue
        os.replace(temporary, target)
        # The notes last, atomically: a table without them is written again (see read_streamed).
        notes_file = target.with_suffix(".json")
        partial = notes_file.with_name(f"{notes_file.name}.{os.getpid()}.tmp")
        partial.write_text(json.dumps({"warnings": said, "spans_lines": settings.get("spans_lines", False)}), encoding="utf-8")
        os.replace(partial, notes_file)
    finally:
        temporary.unlink(missing_ok=True)
    for message in said:
        logs.warn(message)


def _write_chunks(chunks: Iterator, temporary: Path, desc: str = "") -> None:
    """Write the Arrow tables of `chunks` (at least one) to one stream file; with `desc`, a
    progress bar counts rows per second."""
    import pyarrow as pa
    from tqdm.auto import tqdm

    writer = None
    with tqdm(desc=desc, unit=" rows", disable=not desc, leave=False) as progress:
        try:
            for table in chunks:
                if writer is None:
                    writer = pa.ipc.new_stream(str(temporary), table.schema)
                writer.write_table(table)
                progress.update(len(table))
        finally:
            if writer is not None:
                writer.close()


def _csv_chunks(text, path: Path, settings: dict, txt_unit: str, sep: str = ","):
    """pandas tables of CHUNK_ROWS rows. Types are inferred per chunk: where a later chunk disagrees
    (numbers, then text), `settings["dtype"]` pins the column as the whole file would read and the
    read restarts."""
    import pandas as pd
    import pyarrow as pa
    import pyarrow.compute as pc

    first = None  # the first chunk's schema
    try:
        with warnings.catch_warnings():
            # Extra fields in the first row would silently become an index or be dropped.
            warnings.simplefilter("error", pd.errors.ParserWarning)
            reader = pd.read_csv(text, sep=sep, keep_default_na=False, index_col=False, chunksize=CHUNK_ROWS,
                                 quoting=3 if sep == "\t" else 0,  # tsv: quotes are text
                                 dtype=settings.get("dtype"))
            with reader:
                for frame in reader:
                    table = pa.Table.from_pandas(frame, preserve_index=False).replace_schema_metadata(None)
                    if first is None:
                        first = table.schema
                    elif table.schema != first:
                        settings["dtype"] = {**settings.get("dtype", {}), **_pinned(first, table.schema)}
                        raise _Restart
                    settings["spans_lines"] = settings.get("spans_lines") or any(
                        pc.any(pc.match_substring(column, "\n")).as_py() for column in table.columns
                        if pa.types.is_string(column.type) or pa.types.is_large_string(column.type))
                    yield table
    except pd.errors.ParserWarning:
        raise HftoolError(f"{path}: a row has more fields than the header; quote fields that contain the "
                          "separator, or fix the header") from None
    except pd.errors.EmptyDataError:
        raise HftoolError(f"{path} is empty; it needs a header row and at least one data row") from None
    except pd.errors.ParserError as err:
        reason = str(err).strip().splitlines()[-1]
        if "EOF inside string" in reason:  # pandas counts rows from 0, the header included (across chunks too)
            row = re.search(r"row (\d+)", reason)
            where = f" on line {int(row.group(1)) + 1}" if row else ""
            raise HftoolError(f"{path}: a quote opened{where} is never closed; close it or remove it") from None
        raise HftoolError(f"{path}: {reason}; every row needs the header's number of fields") from None
    except ValueError:  # a column pinned to float meets text further on: it is text, as the whole file reads
        floats = [column for column, kind in settings.get("dtype", {}).items() if kind == "float64"]
        if not floats:
            raise
        settings["dtype"].update(dict.fromkeys(floats, "str"))
        raise _Restart from None


def _pinned(first, later) -> dict[str, str]:
    """Column types the whole file has where two chunks disagree: float for ints and floats, else text."""
    import pyarrow as pa

    pinned = {}
    for a, b in zip(first, later):
        if a.type != b.type:
            numbers = all(pa.types.is_integer(t) or pa.types.is_floating(t) for t in (a.type, b.type))
            pinned[a.name] = "float64" if numbers else "str"
    return pinned


def _tsv_chunks(text, path: Path, settings: dict, txt_unit: str):
    return _csv_chunks(text, path, settings, txt_unit, sep="\t")


def _jsonl_chunks(text, path: Path, settings: dict, txt_unit: str):
    """Tables of CHUNK_ROWS JSON objects, one per non-empty line. A later chunk that brings a new
    key or a wider type (ints, then floats) restarts the read with the schema that covers both."""
    import pyarrow as pa

    schema = settings.get("schema")
    records: list[dict] = []

    def table():
        try:
            inferred = pa.Table.from_struct_array(pa.array(records))
            if schema is None or inferred.schema == schema:
                return inferred
            unified = pa.unify_schemas([schema, inferred.schema], promote_options="permissive")
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as err:
            raise HftoolError(f"{path}: rows do not share one type per column ({str(err).splitlines()[0]}); "
                              "fix the values") from None
        if unified != schema:
            settings["schema"] = unified
            raise _Restart
        return pa.Table.from_pylist(records, schema=schema)  # keys a chunk lacks are null

    for number, line in enumerate(text, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise HftoolError(f"{path}:{number}: not valid JSON ({err.msg}); fix or remove the line") from None
        if not isinstance(record, dict):
            raise HftoolError(f"{path}: expected JSON objects (one per row), e.g. {{\"text\": ..., \"label\": ...}}")
        records.append(record)
        if len(records) == CHUNK_ROWS:
            chunk = table()
            schema = schema or chunk.schema
            yield chunk
            records = []
    if records:
        yield table()
    elif schema is None:  # no rows at all
        yield pa.table({})


def _txt_chunks(text, path: Path, settings: dict, txt_unit: str):
    """Tables of one `text` column: a row per non-empty line, or per paragraph (lines between
    lines of only spaces and tabs, as the whole-file reader split them)."""
    import pyarrow as pa

    rows: list[str] = []
    block: list[str] = []
    for number, line in enumerate(text):
        if txt_unit != "paragraph":
            if line.strip():
                rows.append(line.removesuffix("\n"))
        elif number and line.endswith("\n") and not line.strip(" \t\n"):  # a blank line between two others
            rows.append("".join(block).rstrip())
            block = []
        else:
            block.append(line)
        if len(rows) >= CHUNK_ROWS:
            yield pa.table({"text": [row for row in rows if row.strip()]})
            rows = []
    rows.append("".join(block).rstrip())
    yield pa.table({"text": pa.array([row for row in rows if row.strip()], pa.string())})


def _conll_chunks(text, path: Path, settings: dict, txt_unit: str):
    """Tables of CHUNK_ROWS CoNLL sentences: tokens, tags and the line each starts on."""
    import pyarrow as pa

    from hftool.data.conll import conll_sentences

    for columns in conll_sentences(path, text, CHUNK_ROWS):
        yield pa.table(columns)


def _lines_chunks(text, path: Path, settings: dict, txt_unit: str):
    """Tables of one `text` column: a row per line, empty lines included (as str.split("\n") of the
    whole text gives them, less the empty string after a final newline)."""
    import pyarrow as pa

    rows: list[str] = []
    for line in text:
        rows.append(line.removesuffix("\n"))
        if len(rows) == CHUNK_ROWS:
            yield pa.table({"text": pa.array(rows, pa.string())})
            rows = []
    yield pa.table({"text": pa.array(rows, pa.string())})


_CHUNKERS = {"lines": _lines_chunks, "csv": _csv_chunks, "tsv": _tsv_chunks, "jsonl": _jsonl_chunks, "txt": _txt_chunks, "conll": _conll_chunks}


def looks_like_json_lines(path: Path, encoding: str | None = None) -> bool:
    """Whether a .json file is JSON lines: two or more non-empty lines, the first an object on its own."""
    lines = [line for line in sample_text(path, encoding).split("\n") if line.strip()][:2]
    if len(lines) < 2:
        return False
    try:
        return isinstance(json.loads(lines[0]), dict)
    except json.JSONDecodeError:
        return False


def select_rows(ds, columns: dict[str, str], extra: dict | None = None):
    """Columns of `ds` (renamed old -> new), in its row order, plus `extra` columns (name -> numpy
    array, a value per row): memory-mapped from an Arrow file in the cache when `ds` is, in
    memory otherwise.

    Written here because datasets' own route (select_columns + add_column) flattens a split's row
    mapping through Python objects and hashes the new column with dill: 17 s of a 200k-row run's
    setup here. Gathering the rows a chunk at a time (`_gather`) writes the same rows in a fraction
    of that and in flat memory. The file is keyed on `ds`'s fingerprint, the columns and the extra
    values.
    """
    import datasets
    import numpy as np
    import pyarrow as pa
    from datasets.table import InMemoryTable

    extra = extra or {}

    def chunks():
        for start, chunk in column_parts(ds, list(columns)):
            chunk = chunk.rename_columns(list(columns.values()))
            for name, values in extra.items():
                chunk = chunk.append_column(name, pa.array(values[start:start + CHUNK_ROWS]))
            yield chunk

    if not len(ds):
        empty = ds.data.table.select(list(columns)).slice(0, 0).rename_columns(list(columns.values()))
        for name, values in extra.items():
            empty = empty.append_column(name, pa.array(np.asarray(values)[:0]))
        return datasets.Dataset(InMemoryTable(empty))
    digest = hashlib.sha256(f"{sorted(columns.items())}".encode())
    for name, values in sorted(extra.items()):
        digest.update(name.encode())
        digest.update(memoryview(np.ascontiguousarray(values)).cast("B"))  # no copy of a 10M-row column
    return write_rows(ds, chunks(), digest.hexdigest())


def column_parts(ds, columns: list[str], rows=None) -> Iterator[tuple[int, object]]:
    """(first row, a pyarrow table of `columns` for the next CHUNK_ROWS rows of `ds`), in its row
    order, gathered batch-wise (`_gather`) where a split maps rows; `rows` (a numpy array of
    positions in `ds`), when given, replaces the rows `ds` lists, in that order."""
    import numpy as np

    indices = ds._indices  # the split's mapping onto the stored rows (None: as stored)
    if rows is None and indices is None:
        selected = ds.data.table.select(columns)
        for start in range(0, len(ds), CHUNK_ROWS):
            yield start, selected.slice(start, CHUNK_ROWS)
        return
    batches, starts, schema = stored_batches(ds, columns)
    for start in range(0, len(ds) if rows is None else len(rows), CHUNK_ROWS):
        wanted = np.arange(start, min(start + CHUNK_ROWS, len(ds))) if rows is None else rows[start:start + CHUNK_ROWS]
        if indices is not None:
            wanted = indices.column(0).take(wanted).to_numpy()
        yield start, _gather(batches, starts, wanted, schema)


def stored_batches(ds, columns: list[str]) -> tuple[list, object, object]:
    """(record batches, each batch's first row, schema) of `columns` as `ds` stores them (zero-copy
    views of the file's batches): what `_gather` takes rows from."""
    import numpy as np

    selected = ds.data.table.select(columns)
    batches = selected.to_batches()
    return batches, np.cumsum([0] + [len(batch) for batch in batches]), selected.schema


def first_seen_codes(values):
    """For each value of the pyarrow string array `values`, the number of distinct values whose
    first occurrence comes before its own: equal values share a code, codes run in the order the
    values first appear (what `dictionary_encode(values).indices` gives). A numpy int64 array.

    Ours because Arrow's hash-based dictionary_encode grows a memo table of every distinct value
    that its memory pool then keeps (~35 MB per 100k distinct paths); this stable sort and a
    part-at-a-time comparison of neighbours hold one integer array per row."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    n = len(values)
    order = pc.sort_indices(values).to_numpy()  # stable: equal values stay in row order
    starts_group = np.ones(n, dtype=bool)
    for start in range(1, n, CHUNK_ROWS):
        stop = min(start + CHUNK_ROWS, n)
        window = values.take(pa.array(order[start - 1:stop]))
        starts_group[start:stop] = pc.not_equal(window.slice(1), window.slice(0, len(window) - 1)).to_numpy(
            zero_copy_only=False)
    group = np.cumsum(starts_group) - 1  # each sorted position's group, groups in sort order
    firsts = order[starts_group]  # each group's first row (the sort is stable)
    rank = np.empty(len(firsts), dtype=np.int64)
    rank[np.argsort(firsts, kind="stable")] = np.arange(len(firsts))
    codes = np.empty(n, dtype=np.int64)
    codes[order] = rank[group]
    return codes


def column_texts(ds, columns: list[str]) -> Iterator:
    """Every value of `columns` of `ds` (all of the first column, then the next), in row order, read
    a part of the rows at a time: a tokenizer learned from the data (tiny:<arch>) sees every text
    without a Python string of every row held at once (1.5 GB at 10M short rows)."""
    for column in columns:
        for _, part in column_parts(ds, [column]):
            yield from part.column(0).to_pylist()


def row_parts(ds) -> Iterator[tuple[int, object]]:
    """(first row, the next CHUNK_ROWS rows of `ds` as a Dataset), in order: for readers that turn
    rows into Python objects, a part at a time, so their memory stays flat in the number of rows."""
    for start in range(0, len(ds), CHUNK_ROWS):
        yield start, ds.select(range(start, min(start + CHUNK_ROWS, len(ds))))


def write_rows(ds, chunks: Iterator, key: str):
    """The Arrow tables of `chunks` (at least one; rows made from `ds`, in order) as one Dataset:
    memory-mapped from a file in the cache, keyed on `ds`'s fingerprint and `key` (what else decides
    the rows), when `ds` is on disk; in memory when `ds` is (samples, predict inputs).

    A file already there is mapped and `chunks` is not read: whatever it checks passed when the
    file was written (a failed write leaves no file)."""
    import datasets
    import pyarrow as pa

    if not ds.cache_files:
        return in_memory(pa.concat_tables(list(chunks)))
    digest = hashlib.sha256(f"{VERSION}|{ds._fingerprint}|{key}".encode()).hexdigest()[:24]
    target = cache_dir() / f"rows-{digest}.arrow"
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        temporary = target.with_name(f"{target.name}.{os.getpid()}.tmp")
        try:
            _write_chunks(chunks, temporary)
            os.replace(temporary, target)
        finally:
            temporary.unlink(missing_ok=True)
    _used(target)
    return datasets.Dataset.from_file(str(target))


def in_memory(table, features=None):
    """A pyarrow table as an in-memory Dataset (of datasets `features`, when given: a ClassLabel's
    names), fingerprinted by a hash of its schema and buffers: datasets' own fingerprint pickles
    the table to hash it, ~5x the table's size in memory."""
    import datasets
    from datasets.table import InMemoryTable

    digest = hashlib.sha256(f"{VERSION}|{table.schema}|{features}".encode())
    for column in table.columns:
        for chunk in column.chunks:
            for buffer in chunk.buffers():
                if buffer is not None:
                    digest.update(buffer)
    info = datasets.DatasetInfo(features=features) if features is not None else None
    return datasets.Dataset(InMemoryTable(table), info=info, fingerprint=digest.hexdigest()[:16])


def features_fingerprint(ds, tokenizer, *settings) -> str:
    """The cache key of `ds` tokenized by `tokenizer` under `settings` (for `Dataset.map`'s
    new_fingerprint): the rows' fingerprint and what the tokenizer does, hashed from its
    serialised form rather than its path, so a run, its `--resume` and `evaluate` of the run
    dir (which load the tokenizer from elsewhere) find the same cached features, and a change to
    the data, the tokenizer or a setting misses.

    Ours because datasets would hash `encode` by pickling the tokenizer inside it: slow, it fails
    on some dill/pyarrow combinations, and it differs between a tokenizer and its saved copy.
    """
    digest = hashlib.sha256(f"{VERSION}|{ds._fingerprint}|{type(tokenizer).__name__}|{settings!r}".encode())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:  # a fast tokenizer: vocabulary, normaliser, special tokens, templates
        state = json.loads(backend.to_str())
        # Not what a call last set: transformers sets these on the backend per call (the
        # settings above say what this one asks for).
        state.pop("truncation", None)
        state.pop("padding", None)
        digest.update(json.dumps(state, sort_keys=True).encode())
    else:
        digest.update(repr(sorted(tokenizer.get_vocab().items())).encode())
    digest.update(repr((tokenizer.padding_side, tokenizer.truncation_side, sorted(tokenizer.special_tokens_map.items()),
                        getattr(tokenizer, "add_bos_token", None), getattr(tokenizer, "add_eos_token", None))).encode())
    return digest.hexdigest()[:16]


def tokenize(ds, encode, tokenizer, settings: tuple, num_proc: int | None, **options):
    """`ds.map(encode, batched=True)` dropping ds's columns, cached under the key
    features_fingerprint gives (a later run, --resume or `evaluate` maps the cached file), in
    `num_proc` processes (None: one per ROWS_PER_PROCESS rows, at most one per usable core)."""
    if num_proc is None:
        num_proc = max(1, min(len(os.sched_getaffinity(0)), len(ds) // ROWS_PER_PROCESS))
    before = os.environ.get("TOKENIZERS_PARALLELISM")
    if num_proc > 1:  # the workers are forked: each tokenizes on one thread, without the fork warning
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
    try:
        features = ds.map(encode, batched=True, remove_columns=ds.column_names, desc="Tokenizing",
                          num_proc=num_proc if num_proc > 1 else None,
                          new_fingerprint=features_fingerprint(ds, tokenizer, *settings), **options)
        _used(*(Path(f["filename"]) for f in features.cache_files))
        return features
    finally:
        if before is None:
            os.environ.pop("TOKENIZERS_PARALLELISM", None)
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = before


def _gather(batches: list, starts, rows, schema):
    """Rows `rows` (positions in the table of `batches`, whose first rows are at `starts`) as a
    table, in that order.

    Not `Table.take`: on a table of many record batches, Arrow (26) first concatenates each column
    whole, so every chunk of a shuffled split would copy the entire column (1 GB of text at 10M
    rows) and a 10M-row split would take minutes. Here each batch gives only its own rows.
    """
    import numpy as np
    import pyarrow as pa

    rows = np.asarray(rows, dtype=np.int64)  # datasets stores a split's indices as uint64
    order = np.argsort(rows, kind="stable")
    ordered = rows[order]
    which = np.searchsorted(starts, ordered, side="right") - 1
    bounds = np.flatnonzero(np.diff(which)) + 1
    pieces = [batches[which[group[0]]].take(pa.array(ordered[group] - starts[which[group[0]]]))
              for group in np.split(np.arange(len(ordered)), bounds) if len(group)]
    gathered = pa.Table.from_batches(pieces, schema=schema).combine_chunks()  # one chunk's rows: small
    return gathered.take(pa.array(np.argsort(order)))  # back in the split's order


def _used(*files: Path) -> None:
    """Mark cached files as just used, in their access time: `hftool cache --clear --older-than`
    removes what no run has used for a while, not what was written long ago. (Not the
    modification time: datasets fingerprints a mapped file by it, so the features made from it
    would be made again.)"""
    import time

    for file in files:
        if file.parent == cache_dir():
            try:
                os.utime(file, ns=(time.time_ns(), file.stat().st_mtime_ns))
            except OSError:  # a read-only or shared cache: the mark is a convenience
                pass


def cache_files() -> list[Path]:
    """Every file in hftool's table cache: parsed tables, their notes, rows, tokenized features."""
    folder = cache_dir()
    return sorted(p for p in folder.iterdir() if p.is_file()) if folder.is_dir() else []


def clear_cache(older_than_days: float = 0) -> tuple[int, int]:
    """Remove the cache's files that no run used in `older_than_days` days; (files, bytes) removed.

    A run that has a file mapped keeps reading it (Linux frees it when the run ends); the next run
    reads and tokenizes its data again.
    """
    import time

    cutoff, removed, freed = time.time() - older_than_days * 86400, 0, 0
    for file in cache_files():
        try:
            stat = file.stat()
            if max(stat.st_atime, stat.st_mtime) <= cutoff:
                file.unlink()
                removed, freed = removed + 1, freed + stat.st_size
        except FileNotFoundError:  # another process cleared it first
            continue
    return removed, freed
