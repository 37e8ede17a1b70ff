"""Tables read in chunks (hftool/data/tables.py): the rows datasets' own readers give, errors
that name the line deep in a file, Latin-1 past the sample, and the cache of parsed files."""

from __future__ import annotations

import json

import pytest

from hftool.data import load_source, tables
from hftool.errors import HftoolError


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch, tmp_path):
    """Chunks of 7 rows and a 64-byte sample, so small files cross every boundary; a cache of
    this test's own."""
    monkeypatch.setattr(tables, "CHUNK_ROWS", 7)
    monkeypatch.setattr(tables, "SAMPLE_BYTES", 64)
    monkeypatch.setattr(tables, "cache_dir", lambda: tmp_path / "cache")


def peer(builder: str, path, **options):
    import datasets

    return datasets.load_dataset(builder, data_files=str(path), split="train", cache_dir=str(path.parent / "peer"),
                                 **options)


def test_csv_rows_match_datasets_across_chunks_and_a_type_that_widens(tmp_path):
    path = tmp_path / "t.csv"
    # n: ints for 30 rows, then a float (the whole column is float); code: ints, then text (all
    # text); mixed: ints, a float in the third chunk, text in the fifth (all text).
    path.write_text("text,n,code,mixed\n" + "".join(f'"row {i}, with a comma",{i},{i},{2.5 if i == 17 else i}\n'
                                                  for i in range(30))
                    + '"multi\nline ""quoted""",2.5,x7,word\n,3,4,5\n')
    ds = load_source(str(path))["train"]
    expected = peer("csv", path, keep_default_na=False)
    assert ds.to_list() == expected.to_list()
    assert ds["n"][-2:] == [2.5, 3.0] and ds["code"][:2] == ["0", "1"] and ds["mixed"][17] == "2.5"


def test_tsv_quotes_are_text(tmp_path):
    path = tmp_path / "t.tsv"
    path.write_text('text\tlabel\n"quoted" start\tpos\nan "open quote\tneg\n' + "plain\tpos\n" * 10)
    ds = load_source(str(path))["train"]
    assert ds["text"][:2] == ['"quoted" start', 'an "open quote'] and len(ds) == 12


def test_json_lines_match_datasets_with_a_key_that_appears_late(tmp_path):
    path = tmp_path / "t.jsonl"
    rows = [{"text": f"t{i}", "n": i} for i in range(20)] + [{"text": "late", "n": 1.5, "extra": {"k": [1, 2]}}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    ds = load_source(str(path))["train"]
    assert ds.to_list() == peer("json", path).to_list()
    assert ds[0]["extra"] is None and ds[-1]["extra"] == {"k": [1, 2]}


def test_txt_lines_and_paragraphs_match_datasets(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("".join(f"line {i}\n" + ("\n \t\n" if i % 3 == 0 else "") for i in range(20)))
    assert load_source(str(path))["train"]["text"] == [t for t in peer("text", path)["text"] if t.strip()]
    paragraphs = load_source(str(path), txt_unit="paragraph")["train"]["text"]
    assert paragraphs[:2] == ["line 0", "line 1\nline 2\nline 3"] and len(paragraphs) == 8


def test_a_malformed_row_deep_in_the_file_is_named_by_its_line(tmp_path):
    path = tmp_path / "big.csv"
    lines = ["text,label"] + [f"row {i},a" for i in range(1, 500)]
    lines[400] = "row 400,a,extra"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(HftoolError, match=r"big.csv: .*Expected 2 fields in line 401, saw 3"):
        load_source(str(path))
    jsonl = tmp_path / "big.jsonl"
    rows = [json.dumps({"text": f"row {i}"}) for i in range(500)]
    rows[300] = '{"text": oops}'
    jsonl.write_text("\n".join(rows) + "\n")
    with pytest.raises(HftoolError, match=r"big.jsonl:301: not valid JSON"):
        load_source(str(jsonl))


def test_mixed_types_in_json_lines_are_one_line_errors(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text("".join(json.dumps({"text": "a", "label": i}) + "\n" for i in range(10)) + '{"text": "b", "label": "x"}\n')
    with pytest.raises(HftoolError, match="rows do not share one type per column"):
        load_source(str(path))


def test_latin1_past_the_sample_rereads_the_file_and_names_the_line(tmp_path, capsys):
    path = tmp_path / "t.csv"
    path.write_bytes(b"text,label\n" + b"".join(b"plain %d,a\n" % i for i in range(40))
                     + "caf\u00e9,b\n".encode("utf-8") + "cr\u00e8me,b\n".encode("latin-1"))
    ds = load_source(str(path))["train"]
    # As the whole-file reader did: every byte Latin-1, the valid UTF-8 row included.
    assert ds["text"][-2:] == ["caf\u00c3\u00a9", "cr\u00e8me"]
    assert "is not valid UTF-8 (line 43); reading it as Latin-1" in capsys.readouterr().err


def test_encoding_override_that_cannot_read_the_file(tmp_path):
    path = tmp_path / "t.csv"
    path.write_bytes(b"text,label\n" + b"x,a\n" * 40 + b"\xff\xfe,b\n")
    with pytest.raises(HftoolError, match="cannot be read as utf-8.*set data.encoding"):
        load_source(str(path), encoding="utf-8")


def test_second_read_maps_the_cached_file_and_a_changed_file_is_read_again(tmp_path, monkeypatch, capsys):
    path = tmp_path / "t.csv"
    path.write_bytes("text,label\ncaf\u00e9,a\nb,b\n".encode("latin-1"))
    first = load_source(str(path))["train"]
    assert "not valid UTF-8" in capsys.readouterr().err
    assert first.cache_files and first.cache_files[0]["filename"].startswith(str(tmp_path / "cache"))

    def no_parsing(*args):
        raise AssertionError("parsed again")

    with monkeypatch.context() as patch:
        patch.setattr(tables, "_write", no_parsing)
        again = load_source(str(path))["train"]
    assert again.to_list() == first.to_list()
    assert "not valid UTF-8" in capsys.readouterr().err  # the warning is given again
    path.write_text("text,label\nchanged,a\nrows,b\nmore,a\n")
    assert load_source(str(path))["train"]["text"] == ["changed", "rows", "more"]


def test_a_folder_of_shards_is_one_split_in_name_order(tmp_path):
    rows = [{"text": f"row {i}", "label": i % 2} for i in range(25)]
    for shard in range(3):
        (tmp_path / f"train-{shard:05d}-of-00003.jsonl").write_text(
            "".join(json.dumps(r) + "\n" for r in rows[shard * 10:(shard + 1) * 10]))
    (tmp_path / "validation_0.jsonl").write_text(json.dumps(rows[0]) + "\n")
    dd = load_source(str(tmp_path))
    assert dd["train"].to_list() == rows and len(dd["validation"]) == 1
    assert dd["train"].cache_files  # memory-mapped, not copied


def test_shards_that_disagree_and_two_unnumbered_files_are_errors(tmp_path):
    (tmp_path / "train-0.jsonl").write_text('{"text": "a", "label": 1}\n')
    (tmp_path / "train-1.jsonl").write_text('{"text": "b", "tag": 1}\n')
    with pytest.raises(HftoolError, match="train-1.jsonl has other columns or types than train-0.jsonl"):
        load_source(str(tmp_path))
    other = tmp_path / "two"
    other.mkdir()
    (other / "train.csv").write_text("text,label\na,1\n")
    (other / "train.jsonl").write_text('{"text": "b", "label": 1}\n')
    with pytest.raises(HftoolError, match="has two train files .* number them as shards"):
        load_source(str(other))


def test_prepared_rows_of_a_split_are_its_rows_in_order_memory_mapped(tmp_path):
    from hftool.config import load_config
    from hftool.tasks import get_task

    path = tmp_path / "t.csv"
    path.write_text("sentence,label\n" + "".join(f"row {i},{'ab'[i % 3 == 0]}\n" for i in range(40)))
    split = load_source(str(path))["train"].train_test_split(test_size=0.25, seed=3)["train"]
    rows, labels = get_task("text-classification").prepare(load_config("bert-cls"), split, "t.csv")
    assert labels == ["a", "b"] and rows.cache_files
    assert rows.to_list() == [{"text": r["sentence"], "label": labels.index(r["label"])} for r in split]


def test_conll_sentences_across_chunks_keep_their_lines_and_errors_name_the_line(tmp_path):
    path = tmp_path / "train.conll"
    sentences = [[f"w{i}", "B-X"] for i in range(20)]
    path.write_text("-DOCSTART- O\n\n" + "".join(f"{w} {t}\nend O\n\n" for w, t in sentences))
    ds = load_source(str(path))["train"]
    assert len(ds) == 20 and ds[9] == {"tokens": ["w9", "end"], "tags": ["B-X", "O"], "line": 3 + 9 * 3}
    path.write_text("".join(f"{w} {t}\n\n" for w, t in sentences) + "lonely\n")
    with pytest.raises(HftoolError, match=r"train.conll:41: token 'lonely' has no tag"):
        load_source(str(path))


# ------------------------------------------------- task readers: a part of the rows at a time
def test_parallel_files_are_their_lines_across_chunks_gzip_crlf_and_latin1_past_the_sample(tmp_path, capsys):
    import gzip

    source = [f"sentence {i}" for i in range(18)] + ["", "caf\xe9 au lait", "last"]
    target = [f"Satz {i}" for i in range(21)]
    (tmp_path / "train.en.gz").write_bytes(gzip.compress("\r\n".join(source).encode("latin-1") + b"\r\n"))
    (tmp_path / "train.de").write_text("\n".join(target), encoding="utf-8")  # no final newline
    ds = load_source(str(tmp_path), langs=("en", "de"))["train"]
    # What the whole-file reader gave: the text split on line breaks, less the empty string after the last one.
    assert ds.to_list() == [{"en": s, "de": t} for s, t in zip(source, target)] and ds.cache_files
    assert "train.en.gz is not valid UTF-8 (line 20); reading it as Latin-1" in capsys.readouterr().err
    (tmp_path / "train.de").write_bytes(gzip.compress(b"x\n")[:-6])
    (tmp_path / "train.de").rename(tmp_path / "train.de.gz")
    with pytest.raises(HftoolError, match=r"train.de.gz: not a readable gzip file .*re-download or decompress it"):
        load_source(str(tmp_path), langs=("en", "de"))


def test_prepared_ner_rows_across_chunks_and_a_bad_tag_in_a_later_chunk_names_its_line(tmp_path):
    from hftool.config import load_config
    from hftool.tasks import get_task

    path = tmp_path / "train.conll"
    kinds = ["B-PER", "O", "B-LOC"]
    sentences = [[(f"w{i}", kind), ("end", "O" if kind == "O" else f"I-{kind[2:]}")] for i, kind in
                 ((i, kinds[i % 3]) for i in range(20))]
    path.write_text("".join("".join(f"{w} {t}\n" for w, t in s) + "\n" for s in sentences))
    task, cfg = get_task("token-classification"), load_config("bert-ner")
    rows, labels = task.prepare(cfg, load_source(str(path))["train"], str(path))
    assert labels == ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"] and rows.cache_files
    assert rows.to_list() == [{"tokens": [w for w, _ in s], "tags": [labels.index(t) for _, t in s]} for s in sentences]
    # Rows 15 on are a later chunk (7 rows each): the error still names the file's line.
    path.write_text(path.read_text().replace("w15 B-PER", "w15 X-PER"))
    with pytest.raises(HftoolError, match=rf"{path} line 46: tag 'X-PER' is not O or B-/I-/E-/S-<type>"):
        task.prepare(cfg, load_source(str(path))["train"], str(path))


def test_seq2seq_rows_across_chunks_and_an_empty_target_in_a_later_chunk_names_its_row(tmp_path):
    from hftool.config import load_config
    from hftool.tasks import get_task

    path = tmp_path / "train.jsonl"
    pairs = [{"source": f"the dog {i}", "target": f"der Hund {i}"} for i in range(16)]
    path.write_text("".join(json.dumps(p) + "\n" for p in pairs))
    task, cfg = get_task("seq2seq"), load_config("seq2seq")
    rows, _ = task.prepare(cfg, load_source(str(path))["train"], str(path))
    assert rows.to_list() == pairs and rows.cache_files
    pairs[12]["target"] = " "
    path.write_text("".join(json.dumps(p) + "\n" for p in pairs))
    with pytest.raises(HftoolError, match=r"train.jsonl row 13: the target column 'target' is empty"):
        task.prepare(cfg, load_source(str(path))["train"], str(path))


def test_causal_lm_blocks_cut_the_token_stream_across_chunks_and_stay_on_disk(tmp_path):
    import datasets
    import numpy as np
    import pyarrow as pa

    from hftool.tasks.causal_lm import _pack

    rng = np.random.default_rng(0)
    documents = [rng.integers(0, 100, rng.integers(0, 9)).astype(np.int32).tolist() for _ in range(40)]
    path = tmp_path / "tokenized.arrow"
    schema = pa.schema({"input_ids": pa.list_(pa.int32())})
    with pa.ipc.new_stream(str(path), schema) as writer:  # record batches of 6 documents: blocks span them
        for start in range(0, 40, 6):
            writer.write_table(pa.table({"input_ids": documents[start:start + 6]}, schema=schema))
    packed = _pack(datasets.Dataset.from_file(str(path)), 5)
    stream = [token for document in documents for token in document]
    assert packed.cache_files and packed["input_ids"] == [stream[i:i + 5] for i in range(0, len(stream), 5)]


def test_tokenized_features_are_reused_by_resume_and_evaluate_and_missed_after_a_change(tmp_path, cli, monkeypatch):
    for name, rows in (("train", 40), ("valid", 12)):
        lines = [f"{'good fine' if i % 2 else 'bad poor'} word{i % 5},{'pos' if i % 2 else 'neg'}" for i in range(rows)]
        (tmp_path / f"{name}.csv").write_text("text,label\n" + "\n".join(lines) + "\n")
    hits: list[bool] = []  # per tokenized split: was its cached file there already?
    real = tables.features_fingerprint

    def recording(ds, tokenizer, *settings):
        fingerprint = real(ds, tokenizer, *settings)
        hits.append((tmp_path / "cache" / f"cache-{fingerprint}.arrow").is_file())
        return fingerprint

    monkeypatch.setattr(tables, "features_fingerprint", recording)
    run = tmp_path / "run"
    common = ("--model", "tiny:bert", "--data", tmp_path / "train.csv", "--eval-data", tmp_path / "valid.csv",
              "--output-dir", run, "--batch-size", "8")
    assert cli("finetune", "bert-cls", *common, "--max-steps", "2").code == 0
    assert hits == [False, False]  # train and validation, tokenized
    hits.clear()
    assert cli("finetune", "bert-cls", *common, "--max-steps", "4", "--resume").code == 0
    assert hits == [True, True]  # the saved tokenizer is the one trained: the same key
    hits.clear()
    scored = cli("evaluate", run, "--data", tmp_path / "valid.csv")
    assert scored.code == 0 and hits == [True]
    hits.clear()
    assert cli("evaluate", run, "--data", tmp_path / "valid.csv", "data.max_length=8").code == 0
    assert hits == [False]  # another setting: tokenized again
    hits.clear()
    (tmp_path / "valid.csv").write_text("text,label\ngood fine word9,pos\nbad poor word8,neg\n")
    assert cli("evaluate", run, "--data", tmp_path / "valid.csv").code == 0
    assert hits == [False]  # other rows: tokenized again


def _write_sample(name: str, folder):
    """The embedded sample `name` as files a user would bring: csv, CoNLL, txt paragraphs, JSON lines."""
    from hftool.samples import load_sample

    folder.mkdir()
    for split, ds in load_sample(name).items():
        if split == "test":
            continue
        if name == "sentiment":
            ds.to_pandas().to_csv(folder / f"{split}.csv", index=False)
        elif name == "ner":
            sentences = ("\n".join(f"{t} {g}" for t, g in zip(row["tokens"], row["tags"])) for row in ds)
            (folder / f"{split}.conll").write_text("\n\n".join(sentences) + "\n")
        elif name == "tales":
            (folder / f"{split}.txt").write_text("\n\n".join(ds["text"]) + "\n")
        else:
            ds.to_json(folder / f"{split}.jsonl", force_ascii=False)


@pytest.mark.parametrize("recipe, sample, options", [
    ("bert-cls", "sentiment", ("data.max_length=64",)), ("bert-ner", "ner", ()),
    ("gpt2", "tales", ("data.txt_unit=paragraph", "data.block_size=64")), ("seq2seq", "translation", ())])
def test_an_embedded_sample_written_to_files_trains_the_same_steps_and_metrics(recipe, sample, options, tmp_path, cli):
    """The chunked reader is invisible: the same rows in files (read a chunk at a time, memory-mapped,
    tokenized in two processes) train step for step as the in-memory sample does, with the same seed."""
    import json

    _write_sample(sample, tmp_path / "files")
    logs = {}
    for side, data in (("sample", ()), ("files", ("--data", tmp_path / "files", "data.num_proc=2"))):
        run = tmp_path / f"run-{side}"
        done = cli("finetune", recipe, *data, "--max-steps", "3", "--output-dir", run, "train.logging_steps=1",
                   "data.max_eval_samples=16", *options)
        assert done.code == 0, done.err
        logs[side] = [{k: v for k, v in json.loads(line).items() if not k.endswith(("per_second", "runtime"))}
                      for line in (run / "log.jsonl").read_text().splitlines()]
    assert logs["files"] == logs["sample"]
    assert [entry["step"] for entry in logs["sample"] if entry["type"] == "train"] == [1, 2, 3]


def test_cache_lists_and_clears_what_no_run_used_lately(tmp_path, cli, monkeypatch):
    import os
    import time

    paths = []
    for name in ("old", "used", "new"):
        path = tmp_path / f"{name}.csv"
        path.write_text(f"text,label\n{name} row,a\nanother,b\n")
        load_source(str(path))
        paths.append(path)
    written = tables.cache_files()
    assert len(written) == 6 and cli("cache").out.startswith(f"{tables.cache_dir()}: 6 files")
    month_ago = time.time() - 30 * 86400
    for file in written:
        os.utime(file, (month_ago, month_ago))
    load_source(str(paths[1]))  # runs read "used" and "new" again: their files are fresh
    load_source(str(paths[2]))
    parsed = []
    monkeypatch.setattr(tables, "_write", lambda path, *rest, write=tables._write: (parsed.append(path.name), write(path, *rest)))
    cleared = cli("cache", "--clear", "--older-than", "7")
    assert cleared.code == 0 and cleared.out.startswith("removed 2 files")
    for path in paths:
        load_source(str(path))
    assert parsed == ["old.csv"]  # only the table no run used for a month is read again
    assert cli("cache", "--clear").out.startswith("removed 6 files")
    assert tables.cache_files() == []


def test_captioning_rows_merge_by_image_in_first_appearance_order_across_chunks(tmp_path):
    from PIL import Image

    from hftool.config import load_config
    from hftool.tasks import get_task

    (tmp_path / "images").mkdir()
    for i in range(9):
        Image.new("RGB", (4, 4), (i * 20, 0, 0)).save(tmp_path / "images" / f"{i}.png")
    (tmp_path / "images" / "bad.png").write_text("not an image")
    # Images come back out of order and far apart (rows 0 and 30, chunks of 7), one caption or several.
    order = [(i * 5) % 9 for i in range(36)]
    records = [{"image": f"images/{n}.png", "caption": [f"a {n} {row}", f"b {row}"] if row % 4 else [f" c {row} "]}
               for row, n in enumerate(order)]
    records.insert(17, {"image": "images/bad.png", "caption": ["skipped"]})
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    task = get_task("image-captioning")
    cfg = load_config("caption", overrides=["data.skip_bad_images=true"])
    split = load_source(str(path))["train"].train_test_split(test_size=0.2, seed=1)["train"]  # a row mapping too
    for ds in (load_source(str(path))["train"], split):
        rows, _ = task.prepare(cfg, ds, str(path))
        merged: dict[str, list[str]] = {}  # what the whole-file merge gave: a dict in first-appearance order
        for r in ds:
            if r["image"] != "images/bad.png":
                merged.setdefault(str(tmp_path / r["image"]), []).extend(t.strip() for t in r["caption"])
        assert rows.cache_files and [(r["image"]["path"], r["captions"]) for r in rows] == list(merged.items())
    records[30]["caption"] = ["fine", ""]  # a later chunk: the error names the file's row
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    with pytest.raises(HftoolError, match=r"train.jsonl row 31: empty caption in column 'caption'"):
        task.prepare(cfg, load_source(str(path))["train"], str(path))


def test_first_seen_codes_number_values_in_the_order_they_first_appear_across_chunks():
    import random

    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    rng = random.Random(0)
    for n, distinct in ((0, 1), (1, 1), (30, 1), (30, 4), (100, 1000)):
        values = pa.array([f"images/{rng.randrange(distinct)}.png" for _ in range(n)], pa.string())
        expected = pc.dictionary_encode(values).indices.to_numpy().astype(np.int64)
        assert tables.first_seen_codes(values).tolist() == expected.tolist()
