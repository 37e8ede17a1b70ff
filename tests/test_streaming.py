"""data.streaming=true: training rows read as a stream (hftool/data/streaming.py)."""

from __future__ import annotations

import csv
import json
import signal
from pathlib import Path

import pytest

from hftool import api
from hftool.config import load_config

# Tiny, fast and deterministic: evaluation at the end only, a loss logged every step.
TINY = ["train.logging_steps=1", "model.config_overrides={hidden_dropout_prob: 0.0, attention_probs_dropout_prob: 0.0}"]


def write_rows(path: Path, n: int) -> list[dict]:
    """`n` rows whose texts all differ (the row number is a word of each), labelled by a word."""
    rows = [{"text": f"row {i} is {'good' if i % 2 else 'bad'} and {'fine' if i % 2 else 'poor'} indeed",
             "label": "pos" if i % 2 else "neg"} for i in range(n)]
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=["text", "label"])
        writer.writeheader()
        writer.writerows(rows)
    return rows


@pytest.fixture
def data(tmp_path) -> tuple[Path, list[dict]]:
    path = tmp_path / "train.csv"
    return path, write_rows(path, 60)


def streamed(path: Path, run: Path, *overrides: str) -> list[str]:
    return ["finetune", "bert-cls", "--data", str(path), "-o", str(run), "--batch-size", "4", "data.streaming=true",
            "data.max_eval_samples=10", *overrides]


@pytest.fixture
def trained_batches(monkeypatch):
    """The input ids of every example the training loop trains on, in order (padding removed)."""
    from hftool.tasks.base import Task

    seen: list[list[int]] = []
    original = Task.train_loss

    def recording(self, parts, model, batch):
        for ids, mask in zip(batch["input_ids"].tolist(), batch["attention_mask"].tolist()):
            seen.append([i for i, m in zip(ids, mask) if m])
        return original(self, parts, model, batch)

    monkeypatch.setattr(Task, "train_loss", recording)
    return seen


def as_format(path: Path, rows: list[dict], kind: str) -> Path:
    """The rows of csv `path` as another source: jsonl, parquet, or a folder of two jsonl shards."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if kind == "csv":
        return path
    if kind == "parquet":
        pq.write_table(pa.Table.from_pylist(rows), path.with_suffix(".parquet"))
        return path.with_suffix(".parquet")
    folder = path.parent / kind
    folder.mkdir()
    shards = {"jsonl": [("train.jsonl", rows)],
              "shards": [("train-00000.jsonl", rows[:25]), ("train-00001.jsonl", rows[25:])]}[kind]
    for name, part in shards:
        (folder / name).write_text("".join(json.dumps(row) + "\n" for row in part), encoding="utf-8")
    return folder / "train.jsonl" if kind == "jsonl" else folder


@pytest.mark.parametrize("kind", ["csv", "jsonl", "parquet", "shards"])
def test_with_a_buffer_of_one_the_stream_trains_on_the_file_rows_in_order_after_the_holdout(data, tmp_path, cli,
                                                                                         trained_batches, kind):
    from transformers import AutoTokenizer

    path, rows = data
    path = as_format(path, rows, kind)
    run = tmp_path / "run"
    # 15 steps of 4 = 60 examples: the 50 rows after the hold-out, then the stream starts again.
    result = cli(*streamed(path, run, "--max-steps", "15", "data.shuffle_buffer=1", "eval.save_predictions=true"))
    assert result.code == 0, result.err
    assert "holding out the first 10 rows of the stream" in result.err
    tokenizer = AutoTokenizer.from_pretrained(run)
    texts = [row["text"] for row in rows]
    expected = [tokenizer(text, truncation=True, max_length=64)["input_ids"] for text in (texts[10:] + texts[10:])[:60]]
    assert trained_batches == expected
    held_out = [tokenizer(text)["input_ids"] for text in texts[:10]]
    assert not any(ids in held_out for ids in trained_batches)  # training never sees the validation rows
    predictions = [json.loads(line) for line in (run / "predictions.jsonl").read_text().splitlines()]
    assert [p["reference"] for p in predictions] == [row["label"] for row in rows[:10]]  # the validation set, in order


def test_a_shuffled_stream_is_seeded_and_mixes_rows(data, tmp_path, cli, trained_batches):
    path, _ = data
    batches = []
    for name, extra in (("a", []), ("again", []), ("ordered", ["data.shuffle_buffer=1"])):
        trained_batches.clear()
        result = cli(*streamed(path, tmp_path / name, "--max-steps", "5", "data.shuffle_buffer=16", *extra))
        assert result.code == 0, result.err
        batches.append(list(trained_batches))
    assert batches[0] == batches[1]  # the same seed, the same stream
    assert batches[0] != batches[2]  # the buffer mixed the file's order


def test_streaming_without_max_steps_is_a_one_line_error(data, tmp_path, cli):
    path, _ = data
    result = cli(*streamed(path, tmp_path / "run"))
    assert result.code == 2
    assert "a stream has no length, so epochs cannot be counted; pass --max-steps" in result.err
    assert "Traceback" not in result.err and not (tmp_path / "run").exists()


def test_a_task_that_cannot_stream_says_which_can(tmp_path, cli):
    result = cli("finetune", "lstm-forecast", "-o", tmp_path / "run", "--max-steps", "2", "data.streaming=true")
    assert result.code == 2
    assert "time-series-forecasting cannot stream its data" in result.err
    assert "text-classification, token-classification, causal-lm" in result.err


def test_a_bad_byte_past_the_sample_names_the_line_and_the_fix(tmp_path, cli, monkeypatch):
    from hftool.data import tables

    monkeypatch.setattr(tables, "SAMPLE_BYTES", 200)  # the encoding is decided on the first 200 bytes
    monkeypatch.setattr(tables, "CHUNK_ROWS", 8)
    path = tmp_path / "train.csv"
    write_rows(path, 40)
    with open(path, "ab") as f:
        f.write("row 40 is caf\u00e9 and fine indeed,pos\n".encode("latin-1"))
    result = cli(*streamed(path, tmp_path / "run", "--max-steps", "2"))
    assert result.code == 2, result.err
    line = result.err.strip().splitlines()[-1]
    assert f"{path}:42:" in line and "data.encoding=latin-1" in line


def test_resume_of_a_streamed_run_sees_the_batches_an_unbroken_run_sees(data, tmp_path):
    from hftool.training import Trainer, TrainingStopped

    path, _ = data
    # 14 steps of 4 cross the end of the 50 training rows: the second pass reshuffles (seed + 1).
    overrides = [f"data.train={path}", "data.streaming=true", "data.max_eval_samples=10", "data.shuffle_buffer=16",
                 "train.batch_size=4", "train.max_steps=14", "train.eval_steps=7", *TINY]

    def finetune(run: Path, resume: bool = False):
        return api.finetune(load_config("bert-cls", overrides=[*overrides, f"output_dir={run}"]), resume=resume)

    _, unbroken = finetune(tmp_path / "unbroken")
    after_step = Trainer._after_step

    def stopped_at_9(self, end_of_epoch):
        done = after_step(self, end_of_epoch)
        if self.state.global_step == 9:
            self.stop_signal = signal.SIGTERM
        return done

    Trainer._after_step = stopped_at_9
    try:
        with pytest.raises(TrainingStopped):
            finetune(tmp_path / "broken")
    finally:
        Trainer._after_step = after_step
    _, resumed = finetune(tmp_path / "broken", resume=True)

    def losses(run: Path) -> list[tuple[int, float]]:
        records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
        return [(r["step"], r["loss"]) for r in records if r["type"] == "train"]

    assert losses(tmp_path / "broken") == losses(tmp_path / "unbroken")
    assert [step for step, _ in losses(tmp_path / "broken")] == list(range(1, 15))
    assert {k: v for k, v in resumed.items() if k.startswith("eval_")} == \
        {k: v for k, v in unbroken.items() if k.startswith("eval_")}


def test_resume_refuses_other_stream_settings(data, tmp_path, cli):
    path, _ = data
    run = tmp_path / "run"
    assert cli(*streamed(path, run, "--max-steps", "2")).code == 0
    result = cli(*streamed(path, run, "--max-steps", "4", "data.shuffle_buffer=8", "--resume"))
    assert result.code == 2
    assert "was trained with data.shuffle_buffer=10000, this command passes 8" in result.err
    result = cli("finetune", "bert-cls", "--data", path, "-o", run, "--batch-size", "4", "--max-steps", "4", "--resume",
                 "data.max_eval_samples=10")
    assert result.code == 2 and "data.streaming=true, this command passes false" in result.err


def test_eval_data_is_read_whole_and_capped(data, tmp_path, cli):
    path, _ = data
    validation = tmp_path / "val.csv"
    write_rows(validation, 30)
    run = tmp_path / "run"
    result = cli(*streamed(path, run, "--max-steps", "2", "--eval-data", validation, "eval.save_predictions=true"))
    assert result.code == 0, result.err
    assert "holding out" not in result.err
    assert len((run / "predictions.jsonl").read_text().splitlines()) == 10  # data.max_eval_samples


@pytest.mark.slow
def test_a_streamed_run_learns_a_separable_task(tmp_path, cli):
    path = tmp_path / "train.csv"
    write_rows(path, 400)
    result = cli("finetune", "bert-cls", "--data", path, "-o", tmp_path / "run", "--batch-size", "16", "--max-steps", "60",
                 "data.streaming=true", "data.max_eval_samples=40", "data.shuffle_buffer=64")
    assert result.code == 0, result.err
    assert json.loads(result.out)["eval_accuracy"] == 1.0


def test_causal_lm_streams_packed_blocks_and_generates(tmp_path, cli, monkeypatch):
    from hftool.data import streaming
    from hftool.samples.tales import generate
    from hftool.tasks.causal_lm import CausalLM

    monkeypatch.setattr(streaming, "GROUP_ROWS", 7)  # blocks cross groups: the remainder is carried
    path = tmp_path / "tales.txt"
    path.write_text("\n".join(generate(80, 5)) + "\n", encoding="utf-8")
    shapes = []
    original = CausalLM.train_loss
    monkeypatch.setattr(CausalLM, "train_loss", lambda self, parts, model, batch: (
        shapes.append((tuple(batch["input_ids"].shape), int(batch["attention_mask"].sum()))),
        original(self, parts, model, batch))[1])
    run = tmp_path / "run"
    result = cli("finetune", "gpt2", "--data", path, "-o", run, "--max-steps", "4", "--batch-size", "4",
                 "data.streaming=true", "data.txt_unit=line", "data.block_size=32", "data.max_eval_samples=8")
    assert result.code == 0, result.err
    assert shapes == [((4, 32), 4 * 32)] * 4  # full blocks only, whatever the group boundaries
    assert "eval_perplexity" in json.loads(result.out)
    generated = cli("generate", run, "-p", "Once upon a time", "--greedy", "--max-new-tokens", "8")
    assert generated.code == 0, generated.err
    assert generated.out.startswith("Once upon a time")


def test_two_processes_train_on_the_batches_one_process_does(data, tmp_path):
    import os
    import subprocess
    import sys

    from tests.conftest import REPO

    path, _ = data

    def run(name: str, batch_size: int, *extra: str) -> list[float]:
        command = [sys.executable, "-m", "hftool", *streamed(path, tmp_path / name, "--max-steps", "6",
                   "data.shuffle_buffer=16", "--mixed-precision", "no", *TINY), "--batch-size", str(batch_size), *extra]
        done = subprocess.run(command, check=False, cwd=REPO, env={**os.environ, "HF_HUB_OFFLINE": "1"}, capture_output=True,
                              text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        records = [json.loads(line) for line in (tmp_path / name / "log.jsonl").read_text().splitlines()]
        return [r["loss"] for r in records if r["type"] == "train"]

    one = run("one", 8)
    two = run("two", 4, "--num-processes", "2")  # the same global batch: 2 x 4
    assert len(one) == 6 and two == pytest.approx(one, abs=1e-5)


def test_a_streamed_run_writes_no_table_and_evaluate_scores_its_holdout(data, tmp_path, cli, monkeypatch):
    import datasets

    cache = tmp_path / "cache"
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", cache)
    path, _ = data
    run = tmp_path / "run"
    result = cli(*streamed(path, run, "--max-steps", "3"))
    assert result.code == 0, result.err
    assert not (cache / "hftool-tables").exists()  # the training file was never copied
    again = cli("evaluate", run, "-o", tmp_path / "again.json")
    assert again.code == 0, again.err
    metrics = json.loads((run / "metrics.json").read_text())
    scored = json.loads((tmp_path / "again.json").read_text())
    assert scored == pytest.approx({k: v for k, v in metrics.items() if k.startswith("eval_")})


def test_a_class_first_seen_deep_in_the_stream_is_a_class(tmp_path, cli, monkeypatch):
    from hftool.data import tables

    monkeypatch.setattr(tables, "CHUNK_ROWS", 8)  # the label pass crosses chunks; the sample is the first one
    path = tmp_path / "train.csv"
    write_rows(path, 60)
    with open(path, "a", newline="", encoding="utf-8") as f:
        csv.writer(f).writerow(["row 60 is neither here nor there", "mixed"])
    run = tmp_path / "run"
    result = cli(*streamed(path, run, "--max-steps", "2"))
    assert result.code == 0, result.err
    assert "reading the label column 'label'" in result.err
    labels = json.loads((run / "config.json").read_text())["id2label"]
    assert sorted(labels.values()) == ["mixed", "neg", "pos"]


def test_seq2seq_streams_pairs_in_file_order(tmp_path, cli, monkeypatch):
    from hftool.samples.translation import generate
    from hftool.tasks.seq2seq import Seq2Seq

    pairs = generate(40, 3)
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps({"source": s, "target": t}) + "\n" for s, t in zip(pairs["source"], pairs["target"])),
                    encoding="utf-8")
    targets = []
    original = Seq2Seq.train_loss
    monkeypatch.setattr(Seq2Seq, "train_loss", lambda self, parts, model, batch: (
        targets.extend(parts.processor.batch_decode(batch["labels"].clamp(min=0), skip_special_tokens=True)),
        original(self, parts, model, batch))[1])
    run = tmp_path / "run"
    result = cli("finetune", "seq2seq", "--data", path, "-o", run, "--max-steps", "3", "--batch-size", "4",
                 "data.streaming=true", "data.shuffle_buffer=1", "data.max_eval_samples=8")
    assert result.code == 0, result.err
    assert [t.strip() for t in targets] == pairs["target"][8:20]
    assert "eval_bleu" in json.loads(result.out)


def conll(path: Path, sentences: int, late: str | None = None) -> None:
    """`sentences` CoNLL sentences of three tokens (PER, LOC), each four lines with its blank one;
    `late`: one more sentence at the end, tagged with that type."""
    blocks = [f"Anna B-PER\nvisits O\n{'Paris' if i % 2 else 'Rome'} B-LOC" for i in range(sentences)]
    if late:
        blocks.append(f"the O\nAcme B-{late}\nCup I-{late}")
    path.write_text("\n\n".join(blocks) + "\n", encoding="utf-8")


def test_ner_streams_conll_and_takes_a_type_first_seen_deep_in_the_file(tmp_path, cli, monkeypatch):
    from hftool.data import tables

    monkeypatch.setattr(tables, "CHUNK_ROWS", 8)  # the tag pass crosses chunks
    path = tmp_path / "train.conll"
    conll(path, 60, late="MISC")
    run = tmp_path / "run"
    result = cli("finetune", "bert-ner", "--data", path, "-o", run, "--batch-size", "4", "--max-steps", "3",
                 "data.streaming=true", "data.max_eval_samples=10")
    assert result.code == 0, result.err
    assert "reading the tags" in result.err
    labels = json.loads((run / "config.json").read_text())["id2label"]
    assert sorted(labels.values()) == ["B-LOC", "B-MISC", "B-PER", "I-LOC", "I-MISC", "I-PER", "O"]


def test_a_bad_tag_deep_in_a_streamed_conll_file_names_its_line(tmp_path, cli, monkeypatch):
    from hftool.data import tables

    monkeypatch.setattr(tables, "CHUNK_ROWS", 8)
    path = tmp_path / "train.conll"
    conll(path, 60)
    lines = path.read_text(encoding="utf-8").split("\n")
    lines[4 * 50 + 1] = "visits X-PER"  # sentence 50's second token: line 202
    path.write_text("\n".join(lines), encoding="utf-8")
    result = cli("finetune", "bert-ner", "--data", path, "-o", tmp_path / "run", "--max-steps", "2",
                 "data.streaming=true", "data.max_eval_samples=10")
    assert result.code == 2
    assert f"{path} line 202: tag 'X-PER' is not O or B-/I-/E-/S-<type>" in result.err


def hub_stub(monkeypatch, splits) -> list[tuple]:
    """datasets.load_dataset answering for the hub id someone/reviews with `splits()` (what it
    was asked: name and streaming, per call): the hub itself cannot be reached in tests."""
    import datasets

    calls = []

    def load_dataset(name, config=None, **options):
        calls.append((name, options.get("streaming", False)))
        assert name == "someone/reviews", name
        return splits(**options)

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    return calls


def test_a_hub_dataset_trains_from_its_own_stream_as_the_same_local_rows_do(data, tmp_path, cli, monkeypatch,
                                                                                trained_batches):
    import datasets

    _, rows = data
    train, dev = tmp_path / "train.jsonl", tmp_path / "dev.jsonl"
    for path, part in ((train, rows[:50]), (dev, rows[50:])):
        path.write_text("".join(json.dumps(row) + "\n" for row in part), encoding="utf-8")
    json_files = datasets.load_dataset
    calls = hub_stub(monkeypatch, lambda **options: json_files("json", data_files={"train": str(train), "dev": str(dev)},
                                                                **options))
    cache = tmp_path / "cache"
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", cache)
    runs = {}
    for name, source in (("hub", ["--data", "someone/reviews"]), ("files", ["--data", train, "--eval-data", dev])):
        trained_batches.clear()
        result = cli("finetune", "bert-cls", *source, "-o", tmp_path / name, "--batch-size", "4", "--max-steps", "5",
                     "data.streaming=true", "data.shuffle_buffer=16", "eval.save_predictions=true")
        assert result.code == 0, result.err
        assert "holding out" not in result.err  # validation is the hub's dev split
        if name == "hub":  # nothing copied: its validation rows are read into memory
            assert not (cache / "hftool-tables").exists()
        runs[name] = (list(trained_batches), json.loads(result.out)["eval_loss"],
                      len((tmp_path / name / "predictions.jsonl").read_text().splitlines()))
    assert calls == [("someone/reviews", True)]  # streamed, never loaded whole
    (hub_batches, hub_loss, hub_scored), (file_batches, file_loss, file_scored) = runs["hub"], runs["files"]
    assert hub_batches == file_batches and len(hub_batches) == 20
    assert hub_loss == pytest.approx(file_loss) and hub_scored == file_scored == 10


def test_a_hub_stream_with_class_labels_takes_their_names_without_a_pass(tmp_path, cli, monkeypatch):
    import datasets

    features = datasets.Features({"text": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=["negative", "neutral", "positive"])})
    rows = {"text": [f"row {i} is {'good' if i % 2 else 'bad'}" for i in range(40)], "label": [2 * (i % 2) for i in range(40)]}
    table = datasets.Dataset.from_dict(rows, features=features)
    hub_stub(monkeypatch, lambda **options: datasets.IterableDatasetDict(train=table.to_iterable_dataset()))
    run = tmp_path / "run"
    result = cli("finetune", "bert-cls", "--data", "someone/reviews", "-o", run, "--batch-size", "4", "--max-steps", "2",
                 "data.streaming=true", "data.max_eval_samples=8")
    assert result.code == 0, result.err
    assert "reading the label column" not in result.err and "holding out the first 8 rows" in result.err
    labels = json.loads((run / "config.json").read_text())["id2label"]
    assert [labels[str(i)] for i in range(3)] == ["negative", "neutral", "positive"]
