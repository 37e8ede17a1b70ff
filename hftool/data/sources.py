"""Where data comes from: files, folders, save_to_disk folders, hub datasets, embedded samples.

A file is read by its extension: csv, tsv, json, jsonl, parquet and txt are tables (a .txt file
whose lines are token/tag columns is CoNLL); any other extension (`eng.train`, `x.conll`,
`emerging.test.annotated`) is read as CoNLL, the format token classification data ships in.
Every source becomes a `datasets.DatasetDict` whose split names are normalised to train,
validation and test. Bad input raises HftoolError naming the file (and line, where there is one).
"""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

from hftool.data import idx
from hftool.data.checks import Findings
from hftool.data.encoding import read_text
from hftool.data.images import is_image_folder, read_image_folder
from hftool.data.splits import SPLIT_ALIASES
from hftool.errors import HftoolError

TABLE_EXTENSIONS = (".csv", ".tsv", ".json", ".jsonl", ".parquet", ".txt")
# Extensions a folder of split files may also hold (train.conll, dev.conll, test.conll).
FOLDER_EXTENSIONS = (*TABLE_EXTENSIONS, ".conll")
# A shard's number after its split name: train-00001, train-00001-of-00004, train_3.
SHARD_NUMBER = re.compile(r"[-_]\d+(?:-of-\d+)?$")
HUB_ID = re.compile(r"^[\w.-]+(/[\w.-]+)?(:[\w.-]+)?$")


def read_inputs(path: Path, fields: tuple[str, ...] = ("text",)) -> list[str]:
    """Inference inputs from a file: one per non-empty line, or (.jsonl) objects with a string
    under the first of `fields` they have."""
    if not path.is_file():
        raise HftoolError(f"input file {path} does not exist; check the path")
    lines = [(number, line) for number, line in enumerate(read_text(path).split("\n"), 1) if line.strip()]
    example = f'{{"{fields[0]}": ...}}'
    if not lines:
        raise HftoolError(f"input file {path} is empty; write one input per line (or JSONL {example})")
    if path.suffix.lower() != ".jsonl":
        return [line for _, line in lines]
    inputs = []
    for number, line in lines:
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise HftoolError(f"{path}:{number}: not valid JSON ({err.msg}); fix or remove the line") from None
        value = next((record[k] for k in fields if isinstance(record, dict) and k in record), None)
        if not isinstance(value, str):
            raise HftoolError(f"{path}:{number}: expected an object with a \"{fields[0]}\" string, e.g. {example}")
        inputs.append(value)
    return inputs


def _records_to_dataset(records: list[dict], path: Path):
    import datasets
    import pandas as pd

    try:
        return datasets.Dataset.from_pandas(pd.DataFrame.from_records(records), preserve_index=False)
    except Exception as err:  # pyarrow: mixed types in a column, nested values it cannot type
        raise HftoolError(f"{path}: rows do not share one type per column ({str(err).splitlines()[0]}); fix the values") from None


def _columns_to_dataset(columns: dict, path: Path):
    import datasets

    if not all(isinstance(v, list) for v in columns.values()):
        raise HftoolError(f"{path}: expected rows (a list of objects, or JSON lines) or columns ({{\"text\": [...], ...}})")
    lengths = {len(v) for v in columns.values()}
    if len(lengths) > 1:
        raise HftoolError(f"{path}: its columns have different lengths ({', '.join(f'{k}: {len(v)}' for k, v in columns.items())}); "
                          "every column needs one value per row")
    try:
        return datasets.Dataset.from_dict(columns)
    except Exception as err:  # pyarrow: mixed types in a column
        raise HftoolError(f"{path}: rows do not share one type per column ({str(err).splitlines()[0]}); fix the values") from None


def read_file(path: Path, encoding: str | None = None, txt_unit: str = "line"):
    """One data file -> a Dataset. txt files give one `text` row per non-empty line (or per
    paragraph with txt_unit="paragraph"), unless they hold CoNLL columns; files with other
    extensions are CoNLL (tokens, tags, line).

    The file's folder is recorded in the Dataset's info (which survives select, shuffle and
    splitting), so paths inside the file, such as image paths, can be read relative to it.
    """
    ds = _read_table(path, encoding, txt_unit)
    ds.info.homepage = path.resolve().parent.as_uri()
    return ds


def _read_table(path: Path, encoding: str | None = None, txt_unit: str = "line"):
    import datasets

    from hftool.data.conll import looks_like_conll
    from hftool.data.tables import looks_like_json_lines, notes, read_streamed, sample_text

    suffix = path.suffix.lower()
    if suffix == ".parquet":
        try:
            return datasets.Dataset.from_parquet(str(path))
        except Exception as err:
            raise HftoolError(f"{path}: not a readable parquet file ({str(err).splitlines()[0]})") from None
    # Tables are read in chunks into a memory-mapped file (hftool/data/tables.py).
    if suffix in (".csv", ".tsv"):
        sep = "\t" if suffix == ".tsv" else ","
        check_table_text(sample_text(path, encoding), path, sep)  # the header and the first 1000 lines
        ds = read_streamed(path, suffix[1:], encoding)
        # A quoted field runs over lines: did a stray quote merge rows? (This check reads the file
        # whole; files whose fields hold no line breaks are never read that way.)
        if sep == "," and notes(ds)["spans_lines"]:
            check_merged_rows(read_text(path, encoding), path, sep, len(ds.column_names))
        return ds
    if suffix == ".jsonl" or (suffix == ".json" and looks_like_json_lines(path, encoding)):
        return read_streamed(path, "jsonl", encoding)
    if suffix == ".txt" and not looks_like_conll(sample_text(path, encoding)):
        return read_streamed(path, "txt", encoding, txt_unit)
    if suffix != ".json":  # a .txt of token/tag columns, or another extension: CoNLL
        return read_streamed(path, "conll", encoding)
    streamed = _streamed_coco(path, encoding)
    if streamed is not None:
        return streamed
    loaded = _json_document(path, encoding)
    if loaded is None:
        return read_streamed(path, "jsonl", encoding)  # JSON lines with a bad line: its error names the line
    from hftool.data.captions import is_coco_captions, read_coco_captions
    from hftool.data.detection import is_coco, read_coco

    if is_coco_captions(loaded):  # COCO captions: one row per image, its captions listed
        return read_coco_captions(loaded, path)
    if is_coco(loaded):  # a COCO instances file: one row per image, its objects nested
        return read_coco(path, loaded.get("categories"), loaded.pop("images"), loaded.pop("annotations"))
    if isinstance(loaded, dict) and "images" in loaded and ("categories" in loaded or "info" in loaded):
        raise _no_annotations(path)
    records = loaded.get("data", loaded) if isinstance(loaded, dict) else loaded
    if isinstance(records, dict):  # {"column": [values...]}
        return _columns_to_dataset(records, path)
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise HftoolError(f"{path}: expected JSON objects (one per row), e.g. {{\"text\": ..., \"label\": ...}}")
    return _records_to_dataset(records, path)


# How a COCO instances file starts (within its first MB): an object with an "images" list.
COCO_IMAGES = re.compile(rb'^\s*\{.*?"images"\s*:\s*\[', re.DOTALL)
COCO_HEAD_BYTES = 1 << 20


def _streamed_coco(path: Path, encoding: str | None):
    """A COCO instances file read by ijson an image and an annotation at a time (three passes:
    categories, images, annotations), so memory holds the rows' arrays, never the document
    (instances_train2017.json parses into several GB of Python objects). None when the file is
    not one, or is not UTF-8 JSON: the whole-document reader then reads it, and names the line
    of a syntax error."""
    if encoding not in (None, "utf-8", "utf8"):
        return None
    with path.open("rb") as f:
        if not COCO_IMAGES.match(f.read(COCO_HEAD_BYTES)):
            return None
    import ijson

    from hftool.data.detection import read_coco

    def items(prefix: str):
        with path.open("rb") as f:
            yield from ijson.items(f, prefix, use_float=True)

    annotations = 0

    def counted(rows):
        nonlocal annotations
        for row in rows:
            annotations += 1
            yield row

    try:
        categories = list(items("categories.item"))
        first_image = items("images.item")
        found = next(first_image, None)
        first_image.close()
        if not categories or found is None:  # a caption file (no categories), records or columns
            return None
        ds = read_coco(path, categories, items("images.item"), counted(items("annotations.item")))
    except (ijson.JSONError, UnicodeDecodeError):
        return None
    if not annotations and not _mentions(path, b'"annotations"'):
        raise _no_annotations(path)
    return ds


def _no_annotations(path: Path) -> HftoolError:
    return HftoolError(f"{path}: a COCO file needs an \"annotations\" list beside \"images\" (use an empty list "
                       "for images without objects)")


def _mentions(path: Path, word: bytes) -> bool:
    """Whether `word` is anywhere in the file, read 1 MB at a time (the overlap catches it across reads)."""
    tail = b""
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            if word in tail + block:
                return True
            tail = block[-len(word):]
    return False


def _json_document(path: Path, encoding: str | None):
    """One JSON document: records, columns, or a COCO file that _streamed_coco did not take (read
    whole: json cannot stream it); None when it does not parse and is not COCO (JSON lines, then).
    Its text is freed on return, before the rows are built from the document."""
    text = read_text(path, encoding)
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        if text.lstrip().startswith("{") and '"images"' in text[:100000] and '"annotations"' in text:
            raise HftoolError(f"{path}:{err.lineno}: not valid JSON ({err.msg}); fix the file") from None
        return None


def check_table_text(text: str, path: Path, sep: str, findings: Findings | None = None) -> None:
    """Checks of a csv/tsv file before it is parsed: a TSV named .csv, a header naming a column
    twice (pandas would silently rename the second to `name.1`)."""
    import csv

    findings = findings or Findings()
    lines = [line for line in text.split("\n", 1001)[:1000] if line.strip()]
    if not lines:
        return
    if sep == "," and "," not in lines[0] and all("\t" in line for line in lines):
        findings.add("tab_separated_csv", source=path)
        return
    header = next(csv.reader([lines[0]], delimiter=sep, quoting=csv.QUOTE_NONE if sep == "\t" else csv.QUOTE_MINIMAL))
    seen = set()
    for name in header:
        if name in seen:
            findings.add("duplicate_columns", source=path, column=name)
            return
        seen.add(name)


def check_merged_rows(text: str, path: Path, sep: str, columns: int, findings: Findings | None = None) -> None:
    """Find rows an unbalanced quote merged: a field running over several lines where one of
    those lines reads as a whole row of its own (the header's number of fields, ending in a value
    the last column has elsewhere, e.g. a label). Fields that legitimately span lines (a review
    with line breaks) do not end their lines in a label."""
    import csv

    if sep == "\t" or columns < 2:  # a tsv's quotes are text: nothing merges
        return
    reader = csv.reader(io.StringIO(text), delimiter=sep)
    next(reader, None)
    records, start = [], reader.line_num + 1
    for record in reader:
        records.append((start, reader.line_num, record))
        start = reader.line_num + 1
    known = {r[-1].strip() for s, e, r in records if s == e and len(r) == columns and r[-1].strip()}
    for first, last, record in records:
        if first == last:
            continue
        for value in record:
            for piece in value.split("\n"):
                fields = next(csv.reader([piece], delimiter=sep), [])
                if len(fields) == columns and fields[-1].strip() in known:
                    (findings or Findings()).add("merged_rows", source=path, line=first, end=last, preview=piece[:40])
                    return


def _split_name(stem: str) -> str | None:
    return SPLIT_ALIASES.get(SHARD_NUMBER.sub("", stem.lower().split(".")[0]))


def read_folder(path: Path, encoding: str | None = None, txt_unit: str = "line", videos: bool = False):
    """A save_to_disk folder, a folder of split files (train.csv, validation.jsonl, test.tsv; a
    split may be numbered shards, train-00000.jsonl, train-00001.jsonl, ..., read as one), a
    folder of text files (no split names), each file one `text` row: a document, or an image
    folder (class subfolders, optionally inside train/val/test folders); with `videos`, a video
    folder (class subfolders of clips or of frame folders) instead of an image folder."""
    import datasets

    if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
        loaded = datasets.load_from_disk(str(path))
        return _normalise_splits(loaded if isinstance(loaded, datasets.DatasetDict) else datasets.DatasetDict(train=loaded))
    from hftool.data.detection import is_voc, is_yolo, read_voc, read_yolo

    if is_voc(path):  # Pascal VOC: Annotations/*.xml beside JPEGImages/
        return read_voc(path)
    if idx.is_idx_folder(path):  # MNIST-style idx files
        return idx.read_idx_folder(path)
    if is_yolo(path):  # Ultralytics: images/ and labels/, names in data.yaml or classes.txt
        return read_yolo(path)
    files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in FOLDER_EXTENSIONS)
    if not files and videos:  # a clip folder `{class}/{clip}/*.jpg` is also an image folder: videos first
        from hftool.data.videos import read_video_folder

        return read_video_folder(path)
    if not files and is_image_folder(path):
        return read_image_folder(path)
    splits: dict[str, list[Path]] = {}
    for file in files:
        name = _split_name(file.stem)
        if name is None:
            continue
        splits.setdefault(name, []).append(file)
    for name, shards in splits.items():
        if len(shards) > 1 and not all(SHARD_NUMBER.search(p.stem.split(".")[0]) for p in shards):
            raise HftoolError(f"{path} has two {name} files ({shards[0].name}, {shards[1].name}); keep one, or number "
                              f"them as shards ({name}-00000.jsonl, {name}-00001.jsonl, ...)")
    if not splits and len(files) > 1 and all(p.suffix.lower() == ".txt" for p in files):
        documents = [text.strip("\n") for text in (read_text(p, encoding) for p in files) if text.strip()]
        return datasets.DatasetDict(train=datasets.Dataset.from_dict({"text": documents}))
    if not splits and len(files) == 1:
        splits = {"train": files}
    if "train" not in splits:
        found = ", ".join(p.name for p in files) or "no data files"
        raise HftoolError(f"{path} has no train file ({found}); name the files train/validation/test.<csv|jsonl|conll|...> "
                          "(or, for images, one subfolder per class)")
    return datasets.DatasetDict({name: _read_shards(shards, encoding, txt_unit) for name, shards in splits.items()})


def _read_shards(shards: list[Path], encoding: str | None, txt_unit: str):
    """One split from its files, in name order: each read on its own (memory-mapped), then
    concatenated without copying."""
    import datasets

    parts = [read_file(shard, encoding, txt_unit) for shard in shards]
    for shard, part in zip(shards[1:], parts[1:]):
        if part.features != parts[0].features:
            raise HftoolError(f"{shard} has other columns or types than {shards[0].name} "
                              f"({dict(part.features)} vs {dict(parts[0].features)}); shards of a split need the same")
    if len(parts) == 1:
        return parts[0]
    ds = datasets.concatenate_datasets(parts)
    ds.info.homepage = parts[0].info.homepage
    return ds


def _normalise_splits(dd):
    import datasets

    return datasets.DatasetDict(normal_split_names(dd))


def normal_split_names(splits) -> dict:
    """{split: rows} with aliases (dev, valid, ...) under their usual name; the first one wins."""
    renamed = {}
    for name, ds in splits.items():
        renamed.setdefault(SPLIT_ALIASES.get(name, name), ds)
    return renamed


def load_source(spec: str, encoding: str | None = None, token: str | None = None, txt_unit: str = "line",
                langs: tuple[str | None, str | None] = (None, None), videos: bool = False):
    """A data spec -> DatasetDict (split names normalised). A single file is its `train` split.

    Args:
        langs: (data.source_lang, data.target_lang): a folder of parallel text files
            ({split}.{lang}[.gz]) is read as source/target rows when both are set.
        videos: a folder of class folders is read as videos (hftool.data.videos), not images.
    """
    import datasets

    if spec.startswith("sample:"):
        from hftool.samples import load_sample

        return load_sample(spec.removeprefix("sample:"))
    path = Path(spec).expanduser()
    if path.is_file() and path.suffix.lower() in (".yaml", ".yml"):  # an Ultralytics data.yaml
        from hftool.data.detection import read_yolo

        return read_yolo(path.parent, path)
    if path.is_file():
        if idx.is_idx(path):  # MNIST-style images (with their labels file beside them)
            if not idx.IMAGES.match(path.name):
                raise HftoolError(f"{spec} holds idx labels; pass the images file (*-idx3-ubyte) or their folder")
            return datasets.DatasetDict(train=idx.read_idx(path))
        return datasets.DatasetDict(train=read_file(path, encoding, txt_unit))
    if path.is_dir():
        if all(langs) and _is_parallel_folder(path):
            from hftool.data.parallel import read_parallel

            return read_parallel(path, langs[0], langs[1], encoding)
        return read_folder(path, encoding, txt_unit, videos)
    if not is_hub_spec(spec):
        raise HftoolError(f"data file {spec} does not exist; check the path (or pass a hub dataset as name or name:config)")
    return _normalise_splits(load_hub(spec, token))


def load_hub(spec: str, token: str | None = None, streaming: bool = False):
    """A hub dataset `name[:config]`: a DatasetDict, or with `streaming` an IterableDatasetDict
    that reads its files as it is iterated (nothing downloaded up front). Split names as given."""
    import datasets

    from hftool.hub import from_hub

    name, _, config = spec.partition(":")
    return from_hub("dataset", spec, "a local file or folder (--data train.csv, csv/tsv/json/jsonl/parquet/txt)",
                    lambda: datasets.load_dataset(name, config or None, token=token, streaming=streaming))


def is_hub_spec(spec: str) -> bool:
    """Whether load_source reads `spec` from the hub: not a sample, nor a local file or folder."""
    path = Path(spec).expanduser()
    return not (spec.startswith("sample:") or path.exists() or path.suffix.lower() in FOLDER_EXTENSIONS
                or spec.startswith((".", "/", "~")) or not HUB_ID.match(spec))


def _is_parallel_folder(path: Path) -> bool:
    """Neither a save_to_disk folder nor one of table files: parallel text files, or nothing readable."""
    if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
        return False
    return not any(p.is_file() and p.suffix.lower() in FOLDER_EXTENSIONS for p in path.iterdir())


def describe(spec: str, split: str, whole: bool) -> str:
    """How error messages name a split: the file itself, or `spec [split]`."""
    return spec if whole else f"{spec} [{split}]"
