"""Reading text files: UTF-8, UTF-16 or UTF-32 as the byte-order mark says (BOM stripped), else
UTF-8, else Latin-1 with a warning; CRLF becomes LF.

A leaf module: every reader of text (tables, CoNLL, parallel files) decodes through it.
"""

from __future__ import annotations

import codecs
from pathlib import Path

from hftool import logs
from hftool.errors import HftoolError

# Byte-order marks, longest first: UTF-32 LE's begins with UTF-16 LE's.
BOMS = ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"), (codecs.BOM_UTF16_LE, "utf-16"),
        (codecs.BOM_UTF16_BE, "utf-16"))


def read_text(path: Path, encoding: str | None = None) -> str:
    """A text file as a str: UTF-8, UTF-16 or UTF-32 as its byte-order mark says (BOM stripped),
    else UTF-8, else Latin-1 with a warning; CRLF becomes LF."""
    return decode_text(path.read_bytes(), path, encoding)


def decode_text(raw: bytes, path: Path, encoding: str | None = None) -> str:
    """The bytes of `path` (read or decompressed) as read_text decodes them."""
    if encoding:
        try:
            text = raw.decode(encoding)
        except (UnicodeDecodeError, LookupError) as err:
            raise HftoolError(f"{path}: cannot be read as {encoding} ({err}); set data.encoding to the file's encoding") from None
    elif (bom := marked_encoding(raw)) is not None:
        try:
            text = raw.decode(bom)  # the codec reads the byte order from the mark and drops it
        except UnicodeDecodeError as err:
            raise not_what_it_is_marked(path, bom, err) from None
    else:
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError as err:
            logs.warn(latin1_warning(path, raw[: err.start].count(b"\n") + 1))
            text = raw.decode("latin-1")
        check_no_nul(text, path)
    return text.replace("\r\n", "\n").replace("\r", "\n")


# The pieces of decode_text that the chunked reader (hftool/data/tables.py) applies to a file's
# start and to its stream, so both readers decide and say the same.
def marked_encoding(raw: bytes) -> str | None:
    """utf-16 or utf-32 where `raw` starts with their byte-order mark."""
    return next((name for mark, name in BOMS if raw.startswith(mark)), None)


def not_what_it_is_marked(path: Path, bom: str, err: UnicodeDecodeError) -> HftoolError:
    return HftoolError(f"{path}: starts with a {bom.upper()} byte-order mark but is not {bom.upper()} text "
                       f"({err.reason}); set data.encoding to the file's encoding")


def latin1_warning(path: Path, line: int) -> str:
    return f"{path} is not valid UTF-8 (line {line}); reading it as Latin-1 (set data.encoding to override)"


def check_no_nul(text: str, path: Path) -> None:
    """ASCII in UTF-16/32 without a mark: every other byte is NUL."""
    if "\x00" in text[:10000]:
        raise HftoolError(f"{path}: holds NUL bytes, as UTF-16/UTF-32 text without a byte-order mark does; "
                          "set data.encoding (e.g. utf-16-le), or save the file as UTF-8")
