"""Reading text files: UTF-8 (BOM stripped), else Latin-1 with a warning; CRLF becomes LF.

A leaf module: every reader of text (tables, CoNLL, parallel files) decodes through it.
"""

from __future__ import annotations

from pathlib import Path

from hftool import logs
from hftool.errors import HftoolError


def read_text(path: Path, encoding: str | None = None) -> str:
    """A text file as a str: UTF-8 (BOM stripped), else Latin-1 with a warning; CRLF becomes LF."""
    return decode_text(path.read_bytes(), path, encoding)


def decode_text(raw: bytes, path: Path, encoding: str | None = None) -> str:
    """The bytes of `path` (read or decompressed) as read_text decodes them."""
    if encoding:
        try:
            text = raw.decode(encoding)
        except (UnicodeDecodeError, LookupError) as err:
            raise HftoolError(f"{path}: cannot be read as {encoding} ({err}); set data.encoding to the file's encoding") from None
    else:
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError as err:
            line = raw[: err.start].count(b"\n") + 1
            logs.warn(f"{path} is not valid UTF-8 (line {line}); reading it as Latin-1 (set data.encoding to override)")
            text = raw.decode("latin-1")
    return text.replace("\r\n", "\n").replace("\r", "\n")
