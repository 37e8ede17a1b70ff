"""data.streaming=true: the training rows as a stream, never copied into the cache.

For sources that do not fit on disk twice (the file and its Arrow copy). Files are parsed a chunk
at a time by tables.py's parsers (so errors name the file and line), each chunk goes through the
task's `prepare`, rows pass a seeded buffer shuffle (datasets.IterableDataset.shuffle) and the
task's `stream_features` tokenizes them on the fly, a group of rows at a time. The stream starts
again when it ends (pass p shuffles with seed + p) and training stops at train.max_steps: a
stream has no length, so there are no epochs to count.

What a stream gives up: length grouping (batches are what the buffer lets out), the whole-file
checks (rows merged by a stray quote), and re-reading: a column whose type changes after the
first chunk, or a byte that is not UTF-8 past the first MB, is an error naming the fix rather
than a second read from the start.

Validation is bounded and read as usual (map-style): data.eval, else the source's validation
split, else the first rows of the stream, which training skips.

A hub dataset is read through datasets' own stream (`load_dataset(..., streaming=True)`): its files
are fetched as training reads them, its validation split (data.max_eval_samples rows of it, when
set) is read before training. Other sources (samples, save_to_disk folders, image folders) are
loaded as usual and their training split then goes through the same stream.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from hftool import logs
from hftool.errors import HftoolError

# Rows held out as validation when neither data.eval nor a validation split exists and
# data.max_eval_samples is unset: enough for an accuracy within about 1.6 points (one standard
# error at 50%), and an evaluation of seconds, however long the stream.
HOLD_OUT = 1000
# Rows tokenized at once (datasets' own `map` batch): what causal LM packing holds at most.
GROUP_ROWS = 1000


def check(cfg, task, streaming_tasks: list[str]) -> None:
    """The settings a streamed run needs, checked before any data is read."""
    if not task.streams:
        raise HftoolError(f"data.streaming=true: {task.name} cannot stream its data; the tasks that stream are "
                          f"{', '.join(streaming_tasks)} (drop data.streaming for {task.name})")
    if cfg.train.max_steps is None:
        raise HftoolError("data.streaming=true needs --max-steps: a stream has no length, so epochs cannot be "
                          "counted; pass --max-steps N (train.max_steps)")
    if cfg.train.micro_batch_size == "auto":
        raise HftoolError("train.micro_batch_size=auto measures the training data's longest examples, which a stream "
                          "cannot know in advance; set --batch-size instead with data.streaming=true")


@dataclass
class Stream:
    """A streamed run's data: the training rows as a stream, and the bounded rows read in full.

    Attributes:
        sample: the first chunk of training rows, prepared (a tiny model's tokenizer is trained on it).
        validation: the prepared validation rows.
        labels: the class names, from one pass over the label column (None: the task has none).
        names: how messages name the training and validation data.
    """

    cfg: object
    task: object
    chunks: Callable[[], Iterator[tuple[str, int, object]]]  # (source name, first row, Arrow table) per chunk
    features_of: object  # datasets.Features of a loaded source's rows (ClassLabel names); None for files
    skip: int  # rows at the start that are the validation hold-out
    sample: object = None
    validation: object = None
    labels: list[str] | None = None
    names: dict | None = None

    def tables(self) -> Iterator[tuple[str, int, object]]:
        """The training chunks: the hold-out skipped, data.max_train_samples rows at most."""
        skip, left = self.skip, self.cfg.data.max_train_samples
        for name, start, table in self.chunks():
            if skip >= len(table):
                skip -= len(table)
                continue
            table, start, skip = table.slice(skip), start + skip, 0
            if left is not None:
                table, left = table.slice(0, left), left - min(left, len(table))
            if len(table):
                yield name, start, table
            if left == 0:
                return

    def prepared(self, name: str, start: int, table, labels: list[str] | None = None):
        """One chunk through the task's prepare, (rows, labels): its errors name the chunk's rows."""
        where = f"{name} [rows {start + 1}-{start + len(table)}]"
        return self.task.prepare(self.cfg, _dataset(table, self.features_of), where, labels)

    def rows(self) -> Iterator[dict]:
        for name, start, table in self.tables():
            yield from self.prepared(name, start, table, self.labels)[0].to_list()

    def features(self, parts) -> StreamFeatures:
        """The model inputs of the training stream, shuffled (data.shuffle_buffer, train.seed)."""
        import datasets

        data, seed = self.cfg.data, self.cfg.train.seed
        rows = datasets.IterableDataset.from_generator(self.rows).shuffle(seed=seed, buffer_size=data.shuffle_buffer)
        # One process per group: forking tokenizer workers for GROUP_ROWS rows costs more than it saves.
        cfg = dataclasses.replace(self.cfg, data=dataclasses.replace(data, num_proc=1))
        featurize = lambda groups: self.task.stream_features(parts, cfg, groups)
        with _quiet():
            first = next(iter(featurize(iter([self.sample]))), None)  # what a batch holds (the kernel caches ask)
        return StreamFeatures(rows, featurize, list(first or ()), self.names["train"])


class StreamFeatures(torch.utils.data.IterableDataset):
    """Training examples from a shuffled row stream, pass after pass, tokenized GROUP_ROWS rows at
    a time. Deterministic (seeded), so `--resume` skips the batches it consumed and sees what an
    unbroken run sees; read in the main process only (a DataLoader worker would read it all again)."""

    def __init__(self, rows, featurize: Callable[[Iterator], Iterator[dict]], column_names: list[str], name: str):
        self.rows, self.featurize, self.column_names, self.name = rows, featurize, column_names, name

    def __iter__(self) -> Iterator[dict]:
        for epoch in itertools.count():
            self.rows.set_epoch(epoch)  # pass p shuffles with seed + p
            seen = False
            for example in self.featurize(self._groups()):
                seen = True
                yield example
            if not seen:
                raise HftoolError(f"{self.name} has no training rows left after the validation hold-out; pass "
                                  "--eval-data, or lower data.max_eval_samples")

    def _groups(self):
        import datasets

        rows = iter(self.rows)
        while group := list(itertools.islice(rows, GROUP_ROWS)):
            with _quiet():
                yield datasets.Dataset.from_list(group)


def open_stream(cfg, task, token: str | None = None) -> Stream:
    """The stream of `cfg.data.train`, its validation rows, its labels and a prepared sample."""
    stream, validation, loaded = _source(cfg, task, token)
    name, validation_name = stream.names["train"], stream.names["validation"]
    first = next(stream.tables(), None)
    if first is None:
        raise HftoolError(f"{name} has no training rows{' after the validation hold-out' if stream.skip else ''}; "
                          "training data needs at least one example")
    _, labels = stream.prepared(*first)  # labels=None: the training data's first pass (its checks warn)
    if labels is not None:  # one pass over the label column, holding a value per class
        labels = _labels(stream, first, loaded)
    stream.labels = labels
    stream.sample = stream.prepared(*first, labels)[0]
    stream.validation, _ = task.prepare(cfg, validation, validation_name, labels)
    return stream


def load_validation(cfg, task, token: str | None = None):
    """A streamed run's validation rows as it read them (raw), and their name: `hftool evaluate`."""
    stream, validation, _ = _source(cfg, task, token)
    return validation, stream.names["validation"]


def _source(cfg, task, token: str | None):
    """(stream without labels or sample, raw validation rows, the loaded training split where the
    source was loaded rather than streamed)."""
    from hftool.data import _one_file
    from hftool.data.sources import describe, is_hub_spec, load_hub, load_source, normal_split_names

    data, reading = cfg.data, task.reading(cfg)
    if not data.train:
        raise HftoolError("no training data: pass --data FILE (or set data.train in the recipe)")
    files = _files(data.train)
    validation, validation_name, loaded = None, None, None
    if files is not None:
        train_files, validation_files = files
        kinds = [_parser(path, data.encoding) for path in train_files]
        chunks = lambda: _file_chunks(train_files, kinds, data.encoding, reading.txt_unit)
        features_of = None
        name = str(train_files[0]) if Path(data.train).is_file() else f"{data.train} [train]"
        if validation_files:
            from hftool.data.sources import _read_shards

            validation = _read_shards(validation_files, data.encoding, reading.txt_unit)
            validation_name = f"{data.train} [validation]"
    elif is_hub_spec(data.train):  # the hub's own stream: its files are read as training goes
        splits = normal_split_names(load_hub(data.train, token, streaming=True))
        if "train" not in splits:
            raise HftoolError(f"{data.train} has no train split (splits: {', '.join(splits)}); pass the training data with --data")
        features_of, name = splits["train"].features, describe(data.train, "train", False)
        chunks = lambda: _iterable_chunks(splits["train"], name)
        if "validation" in splits and not data.eval:
            validation = _dataset(_first_rows(_iterable_chunks(splits["validation"], name), data.max_eval_samples),
                                  splits["validation"].features)
            validation_name = describe(data.train, "validation", False)
    else:  # loaded as usual, then streamed from its (memory-mapped or in-memory) table
        source = load_source(data.train, data.encoding, token, reading.txt_unit, reading.langs, reading.videos)
        if "train" not in source:
            raise HftoolError(f"{data.train} has no train split (splits: {', '.join(source)}); pass the training data with --data")
        loaded, features_of = source["train"], source["train"].features
        name = describe(data.train, "train", _one_file(data.train))
        chunks = lambda: _loaded_chunks(loaded, name)
        if "validation" in source:
            validation, validation_name = source["validation"], describe(data.train, "validation", False)
    if data.eval:
        eval_source = load_source(data.eval, data.encoding, token, reading.txt_unit, reading.langs, reading.videos)
        split = next((s for s in ("validation", "test", "train") if s in eval_source), None)
        validation, validation_name = eval_source[split], describe(data.eval, split, _one_file(data.eval))
    stream = Stream(cfg, task, chunks, features_of, skip=0)
    if validation is None:  # the first rows of the stream, which training skips
        held_out = data.max_eval_samples or HOLD_OUT
        validation = _dataset(_first_rows(stream.chunks(), held_out), features_of)
        if len(validation) < held_out:
            raise HftoolError(f"{name} has {len(validation)} rows: too few to hold out {held_out} for validation and "
                              "train on the rest; pass --eval-data, or lower data.max_eval_samples")
        stream.skip = held_out
        validation_name = f"{name} (held-out {held_out} rows, the first)"  # reports._split reads "held-out N rows"
        logs.info(f"no validation data given: holding out the first {held_out} rows of the stream "
                  f"(data.max_eval_samples{'' if data.max_eval_samples else f' unset: {HOLD_OUT}'}); training skips "
                  "them; pass --eval-data to use your own")
    elif data.max_eval_samples is not None and data.max_eval_samples < len(validation):
        validation = validation.select(range(data.max_eval_samples))
        validation_name = f"{validation_name} (first {data.max_eval_samples} rows)"
    if len(validation) == 0:
        raise HftoolError(f"{validation_name} has no rows; validation data needs at least one example")
    stream.names = {"train": name, "validation": validation_name}
    return stream, validation, loaded


def _files(spec: str) -> tuple[list[Path], list[Path]] | None:
    """(train files, validation files) of a table file or a folder of split files (shards in name
    order); None for any other source."""
    from hftool.data.sources import FOLDER_EXTENSIONS, _split_name

    path = Path(spec).expanduser()
    if path.is_file():
        return ([path], []) if path.suffix.lower() in FOLDER_EXTENSIONS or not path.suffix else None
    if not path.is_dir() or (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
        return None
    files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in FOLDER_EXTENSIONS)
    splits = {}
    for file in files:
        splits.setdefault(_split_name(file.stem), []).append(file)
    if not splits.get("train"):
        return None  # no train files: read as usual, which says what it found
    return splits["train"], splits.get("validation", [])


def _parser(path: Path, encoding: str | None) -> str:
    """A file's parser (tables._CHUNKERS' key, or "parquet"), after the checks on its start: its
    encoding (a Latin-1 fallback is said here, once) and, for csv/tsv, the header. A JSON
    document cannot stream: it is parsed whole."""
    from hftool.data.conll import looks_like_conll
    from hftool.data.sources import check_table_text
    from hftool.data.tables import (
        SAMPLE_BYTES,
        _sample_encoding,
        looks_like_json_lines,
        sample_text,
    )

    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return "parquet"
    with path.open("rb") as handle:
        _, warning = _sample_encoding(handle.read(SAMPLE_BYTES), path, encoding)
    if warning:
        logs.warn(warning)
    if suffix in (".csv", ".tsv"):
        check_table_text(sample_text(path, encoding), path, "\t" if suffix == ".tsv" else ",")
        return suffix[1:]
    if suffix == ".jsonl" or (suffix == ".json" and looks_like_json_lines(path, encoding)):
        return "jsonl"
    if suffix == ".json":
        raise HftoolError(f"{path}: one JSON document cannot be streamed (it is parsed whole); write it as JSON lines "
                          "(.jsonl, an object a line), or train without data.streaming")
    return "txt" if suffix == ".txt" and not looks_like_conll(sample_text(path, encoding)) else "conll"


def _file_chunks(files: list[Path], kinds: list[str], encoding: str | None, txt_unit: str):
    """(file, first row, Arrow table) of CHUNK_ROWS rows at a time, the files one after another."""
    import pyarrow as pa

    from hftool.data.tables import (
        _CHUNKERS,
        CHUNK_ROWS,
        SAMPLE_BYTES,
        _first_bad_line,
        _Restart,
        _sample_encoding,
    )

    for path, kind in zip(files, kinds):
        row = 0
        if kind == "parquet":
            import pyarrow.parquet as pq

            for batch in pq.ParquetFile(path).iter_batches(batch_size=CHUNK_ROWS):
                yield str(path), row, pa.Table.from_batches([batch])
                row += batch.num_rows
            continue
        with path.open("rb") as handle:
            chosen, _ = _sample_encoding(handle.read(SAMPLE_BYTES), path, encoding)
        with path.open(encoding=chosen, newline=None) as text:
            chunks = _CHUNKERS[kind](text, path, {}, txt_unit)
            while True:
                try:
                    table = next(chunks)
                except StopIteration:
                    break
                except UnicodeDecodeError:
                    # The whole-file reader reads the file again as Latin-1; a stream has already
                    # handed out the rows before this one.
                    raise HftoolError(f"{path}:{_first_bad_line(path)}: a byte that is not {chosen.removesuffix('-sig')} "
                                      f"past the first MB, which a stream cannot go back and read again; set "
                                      "data.encoding=latin-1 (or the file's encoding)") from None
                except _Restart:
                    raise HftoolError(f"{path}: a column changes type (or JSON lines gain a key) after row {row}, which "
                                      "a stream cannot go back and read again; give the column one type throughout, "
                                      "or train without data.streaming") from None
                if len(table):
                    yield str(path), row, table
                row += len(table)


def _loaded_chunks(ds, name: str):
    """A loaded split's rows as Arrow tables of CHUNK_ROWS rows (slices: no copy)."""
    from hftool.data.tables import CHUNK_ROWS

    table = ds.with_format("arrow")
    for start in range(0, len(ds), CHUNK_ROWS):
        yield name, start, table[start:start + CHUNK_ROWS]


def _iterable_chunks(rows, name: str):
    """A datasets IterableDataset's rows (a hub stream) as Arrow tables of CHUNK_ROWS rows."""
    from hftool.data.tables import CHUNK_ROWS

    start = 0
    for table in rows.with_format("arrow").iter(batch_size=CHUNK_ROWS):
        yield name, start, table
        start += len(table)


def _first_rows(chunks, n: int | None):
    """The first `n` rows (all of them: None) of `chunks` ((name, start, table) each) as one
    Arrow table (fewer when there are fewer)."""
    import pyarrow as pa

    tables, held = [], 0
    for _, _, table in chunks:
        tables.append(table if n is None else table.slice(0, n - held))
        held += len(tables[-1])
        if n is not None and held >= n:
            break
    return pa.concat_tables(tables, promote_options="permissive") if tables else pa.table({})


def _labels(stream: Stream, first, loaded) -> list[str]:
    """The class names of every training row (the hold-out included, as a non-streamed run's come
    from all rows): one pass over the label column keeping its distinct values, then the same
    rules as always (hftool.data.labels.label_names)."""
    import pyarrow as pa

    from hftool.data.columns import find_column
    from hftool.data.labels import LABEL_COLUMNS, label_names

    data, name = stream.cfg.data, stream.names["train"]
    own = stream.task.stream_labels(stream.cfg, ((start, _dataset(table, stream.features_of))
                                                 for _, start, table in stream.chunks()), name)
    if own is not None:
        return own
    column = find_column(_dataset(first[2], stream.features_of), name, getattr(data, "label_column", None), LABEL_COLUMNS,
                         "label", "label_column")
    if loaded is not None:  # already read whole: its own features (ClassLabel names) decide
        return label_names(loaded, column, name)
    if hasattr((stream.features_of or {}).get(column), "names"):  # a hub stream's ClassLabel: no pass needed
        return label_names(_dataset(first[2], stream.features_of), column, name)
    logs.info(f"data.streaming: reading the label column '{column}' of {name} once for its classes")
    distinct = []
    for _, _, table in stream.chunks():
        distinct.append(table.column(column).unique())
    values = pa.chunked_array(distinct).unique() if len(distinct) > 1 else distinct[0]
    return label_names(_dataset(pa.table({column: values}), None), column, name)


def _dataset(table, features):
    """An in-memory Dataset over an Arrow table (with a loaded source's features)."""
    import datasets
    from datasets.table import InMemoryTable

    return datasets.Dataset(InMemoryTable(table), info=datasets.DatasetInfo(features=features) if features else None)


class _quiet:
    """datasets' progress bars off: a bar per group of streamed rows says nothing."""

    def __enter__(self):
        import datasets

        self.was = datasets.is_progress_bar_enabled()
        datasets.disable_progress_bars()

    def __exit__(self, *exc):
        import datasets

        if self.was:
            datasets.enable_progress_bars()
