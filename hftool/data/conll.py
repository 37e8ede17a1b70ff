"""CoNLL-style token/tag files: one token per line, sentences separated by blank lines.

The token is the first column and the tag the last (`EU B-ORG` or CoNLL-2003's `EU NNP B-NP
B-ORG`), separated by spaces or tabs; every line of a file has the same number of columns.
`-DOCSTART-` lines are document markers, not sentences. Tags are read as written: the token
classification task checks and normalises their scheme.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from pathlib import Path

from hftool.errors import HftoolError

# A tag as the last column: O, or a B-/I-/E-/S- prefixed type (checked again by the task).
TAG = re.compile(r"^(O|[BIES]-\S+)$")
FORMAT = "CoNLL lines are 'TOKEN [more columns] TAG' with a blank line between sentences"


def looks_like_conll(text: str, lines: int = 20) -> bool:
    """Whether a .txt file holds CoNLL columns rather than free text: its first non-blank lines
    (a `-DOCSTART-` line, or tokens each ending in a tag) decide."""
    sample = [line.split() for line in text.split("\n") if line.strip()][:lines]
    if not sample:
        return False
    if sample[0][0] == "-DOCSTART-":
        return True
    return all(len(fields) >= 2 and TAG.match(fields[-1]) for fields in sample)


def conll_sentences(path: Path, lines: Iterable[str], chunk: int) -> Iterator[dict[str, list]]:
    """CoNLL lines -> columns tokens, tags (strings) and line (the 1-based line of each
    sentence's first token, so later checks can name the exact line of a bad tag), `chunk`
    sentences at a time, so a large file is written out as it is read (hftool/data/tables.py)."""
    tokens: list[list[str]] = []
    tags: list[list[str]] = []
    starts: list[int] = []
    columns = first_line = None
    sentence: list[str] = []
    sentence_tags: list[str] = []
    found = False

    def flush() -> None:
        if sentence:
            tokens.append(list(sentence))
            tags.append(list(sentence_tags))
            sentence.clear()
            sentence_tags.clear()

    for number, line in enumerate(lines, 1):
        fields = line.split()
        if not fields or fields[0] == "-DOCSTART-":
            flush()
            if len(tokens) >= chunk:
                yield {"tokens": tokens, "tags": tags, "line": starts}
                tokens, tags, starts, found = [], [], [], True
            continue
        if len(fields) == 1:
            raise HftoolError(f"{path}:{number}: token {fields[0]!r} has no tag; {FORMAT} "
                              "(the file is read as CoNLL because its extension is not csv/tsv/json/jsonl/parquet)")
        if columns is None:
            columns, first_line = len(fields), number
        elif len(fields) != columns:
            raise HftoolError(f"{path}:{number}: {len(fields)} columns, but line {first_line} has {columns}; "
                              f"every line needs the same columns ({FORMAT})")
        if not sentence:
            starts.append(number)
        sentence.append(fields[0])
        sentence_tags.append(fields[-1])
    flush()
    if not tokens and not found:
        raise HftoolError(f"{path} has no sentences; {FORMAT}")
    if tokens:
        yield {"tokens": tokens, "tags": tags, "line": starts}
