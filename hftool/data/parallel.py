"""Aligned parallel text files: `{split}.{lang}` or `{split}.{lang}.gz`, one sentence per line.

This is how Multi30k, WMT and most MT corpora ship (train.en + train.de, val.en.gz + val.de.gz):
line N of the source file translates line N of the target file. Split names are normalised as
for other folders (val, dev -> validation).
"""

from __future__ import annotations

from pathlib import Path

from hftool.data.splits import SPLIT_ALIASES
from hftool.data.tables import read_streamed
from hftool.errors import HftoolError


def parallel_files(folder: Path, lang: str) -> dict[str, Path]:
    """Split name -> the file of `lang` in `folder` (`train.en`, `val.en.gz`, ...)."""
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        name = path.name[:-3] if path.name.endswith(".gz") else path.name
        stem, _, suffix = name.rpartition(".")
        split = SPLIT_ALIASES.get(stem.lower())
        if not path.is_file() or suffix != lang or split is None:
            continue
        if split in found:
            raise HftoolError(f"{folder} has two {split} files for '{lang}' ({found[split].name}, {path.name}); keep one")
        found[split] = path
    return found


def read_parallel(folder: Path, source_lang: str, target_lang: str, encoding: str | None = None):
    """A folder of parallel files -> DatasetDict with a column per language (en, de), a row per line pair."""
    import datasets

    sources, targets = parallel_files(folder, source_lang), parallel_files(folder, target_lang)
    if not sources:
        names = ", ".join(p.name for p in sorted(folder.iterdir())[:8]) or "nothing"
        raise HftoolError(f"{folder} has no {{split}}.{source_lang} files (it holds {names}); check data.source_lang "
                          f"or name the files like train.{source_lang} / train.{source_lang}.gz")
    splits = {}
    for split, source_path in sources.items():
        target_path = targets.get(split)
        if target_path is None:
            raise HftoolError(f"{folder}: {source_path.name} has no {target_lang} counterpart; add "
                              f"{source_path.name.replace('.' + source_lang, '.' + target_lang, 1)} or check data.target_lang")
        # Each file read in chunks into a memory-mapped Arrow file; the two sides joined without copying.
        src, tgt = read_streamed(source_path, "lines", encoding), read_streamed(target_path, "lines", encoding)
        if len(src) != len(tgt):
            raise HftoolError(f"{source_path} has {len(src)} lines but {target_path} has {len(tgt)}; parallel files "
                              "need one sentence per line, line N of one translating line N of the other")
        splits[split] = datasets.concatenate_datasets([src.rename_column("text", source_lang),
                                                       tgt.rename_column("text", target_lang)], axis=1)
    if "train" not in splits and len(splits) == 1:
        splits = {"train": next(iter(splits.values()))}
    return datasets.DatasetDict(splits)
