"""The data layer: every file format, folders, encodings, splits, and clear errors."""

from __future__ import annotations

import json

import pytest

from hftool.config import DataConfig
from hftool.data import load_eval_split, load_source, load_splits
from hftool.errors import HftoolError
from hftool.tasks.base import Reading

ROWS = [{"text": "a good film", "label": "pos"}, {"text": "a dull film", "label": "neg"},
        {"text": "great, really", "label": "pos"}]


def write(path, fmt, rows=ROWS):
    if fmt == "csv":
        path.write_text("text,label\n" + "".join(f"\"{r['text']}\",{r['label']}\n" for r in rows))
    elif fmt == "tsv":
        path.write_text("text\tlabel\n" + "".join(f"{r['text']}\t{r['label']}\n" for r in rows))
    elif fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif fmt == "json":
        path.write_text(json.dumps(rows))
    elif fmt == "parquet":
        import pandas as pd

        pd.DataFrame(rows).to_parquet(path)
    return path


@pytest.mark.parametrize("fmt", ["csv", "tsv", "json", "jsonl", "parquet"])
def test_each_table_format_reads_the_same_rows(tmp_path, fmt):
    ds = load_source(str(write(tmp_path / f"train.{fmt}", fmt)))["train"]
    assert ds.to_list() == ROWS


def test_txt_is_one_row_per_non_empty_line(tmp_path):
    path = tmp_path / "inputs.txt"
    path.write_text("first line\n\nsecond line\n")
    assert load_source(str(path))["train"]["text"] == ["first line", "second line"]


def test_json_lines_in_a_json_file(tmp_path):
    ds = load_source(str(write(tmp_path / "t.json", "jsonl")))["train"]
    assert len(ds) == 3


def test_crlf_and_bom_are_handled(tmp_path):
    path = tmp_path / "t.csv"
    path.write_bytes(b"\xef\xbb\xbftext,label\r\nhello,pos\r\nbye,neg")
    ds = load_source(str(path))["train"]
    assert ds.column_names == ["text", "label"] and ds["label"] == ["pos", "neg"]


def test_latin1_falls_back_with_a_warning(tmp_path, capsys):
    path = tmp_path / "t.csv"
    path.write_bytes("text,label\ncaf\u00e9 cr\u00e8me,pos\n".encode("latin-1"))
    ds = load_source(str(path))["train"]
    assert ds["text"] == ["caf\u00e9 cr\u00e8me"]
    assert "not valid UTF-8" in capsys.readouterr().err


def test_encoding_override(tmp_path):
    path = tmp_path / "t.csv"
    path.write_bytes("text,label\n\u00e9t\u00e9,pos\n".encode("cp1252"))
    assert load_source(str(path), encoding="cp1252")["train"]["text"] == ["\u00e9t\u00e9"]


def test_folder_of_split_files(tmp_path):
    write(tmp_path / "train.csv", "csv")
    write(tmp_path / "dev.jsonl", "jsonl", ROWS[:2])
    write(tmp_path / "test.tsv", "tsv", ROWS[:1])
    dd = load_source(str(tmp_path))
    assert {k: len(v) for k, v in dd.items()} == {"train": 3, "validation": 2, "test": 1}


def test_save_to_disk_folder(tmp_path):
    import datasets

    datasets.DatasetDict(train=datasets.Dataset.from_list(ROWS),
                         validation=datasets.Dataset.from_list(ROWS[:1])).save_to_disk(str(tmp_path / "dd"))
    dd = load_source(str(tmp_path / "dd"))
    assert len(dd["train"]) == 3 and len(dd["validation"]) == 1


def test_validation_is_held_out_with_a_message(tmp_path, capsys):
    path = write(tmp_path / "train.csv", "csv", ROWS * 10)
    splits, names = load_splits(DataConfig(train=str(path), validation_split=0.2), Reading(), seed=1)
    assert len(splits["train"]) == 24 and len(splits["validation"]) == 6
    assert "holding out 6 of 30" in capsys.readouterr().err
    again, _ = load_splits(DataConfig(train=str(path), validation_split=0.2), Reading(), seed=1)
    assert again["validation"]["text"] == splits["validation"]["text"]  # seeded


def test_eval_data_wins_over_hold_out(tmp_path):
    train = write(tmp_path / "train.csv", "csv")
    val = write(tmp_path / "val.jsonl", "jsonl", ROWS[:1])
    splits, names = load_splits(DataConfig(train=str(train), eval=str(val)), Reading(), seed=0)
    assert len(splits["train"]) == 3 and len(splits["validation"]) == 1
    assert names["validation"] == str(val)


def test_embedded_sample_has_disjoint_splits():
    dd = load_source("sample:sentiment")
    assert set(dd) == {"train", "validation", "test"}
    assert not set(dd["train"]["text"]) & set(dd["validation"]["text"])


def test_eval_split_selection(tmp_path):
    write(tmp_path / "train.csv", "csv")
    write(tmp_path / "test.csv", "csv", ROWS[:2])
    ds, name = load_eval_split(str(tmp_path), None, None, Reading())
    assert len(ds) == 2 and "test" in name
    with pytest.raises(HftoolError, match="has no split 'validation'"):
        load_eval_split(str(tmp_path), "validation", None, Reading())


@pytest.mark.parametrize("setup, message", [
    (lambda p: None, "data file .*missing.csv does not exist"),
    (lambda p: (p / "missing.csv").write_text(""), "is empty"),
    (lambda p: (p / "missing.csv").write_text("a,b\n1,2,3,4\n"), "fields"),
])
def test_bad_files(tmp_path, setup, message):
    setup(tmp_path)
    with pytest.raises(HftoolError, match=message):
        load_source(str(tmp_path / "missing.csv"))


def test_bad_json_line_names_the_line(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text('{"text": "a", "label": 1}\n{"text": oops}\n')
    with pytest.raises(HftoolError, match=r"t.jsonl:2: not valid JSON"):
        load_source(str(path))


def test_folder_without_train_file(tmp_path):
    write(tmp_path / "a.csv", "csv")
    write(tmp_path / "b.csv", "csv")
    with pytest.raises(HftoolError, match="has no train file"):
        load_source(str(tmp_path))


def test_hub_dataset_offline_fails_fast_with_what_to_pass():
    with pytest.raises(HftoolError, match="pass a local file or folder"):
        load_source("glue:sst2")


# ------------------------------------------------------------------------------------ batching
@pytest.mark.parametrize("n, batch_size, grouped", [(203, 16, True), (203, 16, False), (5, 8, True), (64, 16, True)])
def test_length_grouped_batches_are_full_cover_every_example_and_repeat_by_seed(n, batch_size, grouped):
    import random

    from hftool.data.batching import LengthGroupedBatches

    lengths = [random.Random(i).randint(3, 60) for i in range(n)]
    sampler = LengthGroupedBatches(lengths, batch_size, seed=7, group_by_length=grouped)
    batches = list(sampler)
    assert len(batches) == len(sampler) and all(len(b) == batch_size for b in batches)
    assert set().union(*batches) == set(range(n))  # the short batch is topped up, nothing dropped
    assert list(sampler) == batches  # same seed and epoch, same order
    if n > batch_size:
        sampler.epoch = 1
        assert list(sampler) != batches  # a new epoch, a new order
    sampler.epoch = 0
    if grouped and n > batch_size:
        assert max(lengths[i] for i in batches[0]) == max(lengths)  # the longest batch first


def test_small_data_is_grouped_in_at_least_four_sorted_mega_batches():
    """2000 examples in batches of 32: mega-batches of 2000 // (4 * 32) = 15 batches, each sorted
    longest first, so the batches' longest lengths fall inside a mega-batch and rise only between
    them (sorting the whole set at once would make each batch one band of lengths)."""
    import random

    from hftool.data.batching import LengthGroupedBatches

    lengths = [random.Random(i).randint(3, 60) for i in range(2000)]
    batches = list(LengthGroupedBatches(lengths, 32, seed=3))
    longest = [max(lengths[i] for i in b) for b in batches]
    assert longest[0] == 60
    # The first batch was moved to the front from its mega-batch; the last one is topped up.
    rest = longest[1:-1]
    rises = [k for k in range(1, len(rest)) if rest[k] > rest[k - 1]]
    assert len(rises) == 4, longest  # 5 mega-batches, the last one short
    assert all(b - a >= 14 for a, b in zip(rises, rises[1:])), longest  # 15 sorted batches apart


def test_every_process_gets_every_batch_when_accelerate_splits_them():
    """Accelerate drops a short batch that is not the last when it splits batches across processes:
    with full batches, 2 processes see as many steps as 1."""
    from accelerate.data_loader import BatchSamplerShard

    from hftool.data.batching import LengthGroupedBatches

    sampler = LengthGroupedBatches([i % 37 for i in range(2000)], 64, seed=42)
    shards = [list(BatchSamplerShard(sampler, num_processes=2, process_index=r, split_batches=True)) for r in (0, 1)]
    assert len(shards[0]) == len(shards[1]) == len(sampler) == 32
    assert [a + b for a, b in zip(*shards)] == list(sampler)
