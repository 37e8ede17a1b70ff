"""The seq2seq recipe: data forms (tables, parallel files, hub translation columns), BLEU/chrF/ROUGE
against sacrebleu and hand computations, generation in evaluation, predict/generate on a run dir."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

# A small tiny:mbart (the recipe's model) keeps each test's training to seconds.
SMALL = ("model.config_overrides={d_model: 32, encoder_ffn_dim: 64, decoder_ffn_dim: 64, encoder_attention_heads: 2, "
         "decoder_attention_heads: 2}")
SMALL_T5 = "model.config_overrides={d_model: 32, d_ff: 64, d_kv: 16, num_heads: 2}"


def pairs(n: int, seed: int) -> dict[str, list[str]]:
    from hftool.samples.translation import generate

    return generate(n, seed)


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def write_parallel(folder: Path, split: str, rows: dict[str, list[str]], compress: bool = False) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for lang, column in (("en", "source"), ("de", "target")):
        text = "".join(line + "\n" for line in rows[column]).encode()
        name = folder / f"{split}.{lang}{'.gz' if compress else ''}"
        name.write_bytes(gzip.compress(text) if compress else text)


def read_metrics(run: Path) -> dict:
    return json.loads((run / "metrics.json").read_text())


def prepared(data: str, *overrides: str):
    """(task, cfg, splits, names) for the seq2seq recipe on `data`, rows prepared."""
    from hftool.config import load_config
    from hftool.data import load_splits
    from hftool.tasks import get_task

    cfg = load_config("seq2seq", {"data.train": data}, list(overrides))
    task = get_task(cfg.task)
    splits, names = load_splits(cfg.data, get_task(cfg.task).reading(cfg), cfg.train.seed)
    rows = {k: task.prepare(cfg, splits[k], names[k])[0] for k in ("train", "validation")}
    return task, cfg, rows


# ------------------------------------------------------------------------------------ metrics
def test_bleu_and_chrf_are_sacrebleus_corpus_scores():
    import sacrebleu

    from hftool.metrics import TextOverlap

    predictions = ["Der Hund sieht die Katze.", "Heute mag das Kind den Ball.", "Ein Haus."]
    references = ["Der Hund sieht die Katze.", "Heute mag der Mann den Ball.", "Das alte Haus."]
    metric = TextOverlap()
    metric.add_batch(predictions=predictions[:2], references=references[:2])
    metric.add_batch(predictions=predictions[2:], references=references[2:])
    scores = metric.compute()
    assert scores["bleu"] == pytest.approx(sacrebleu.corpus_bleu(predictions, [references]).score)
    assert scores["chrf"] == pytest.approx(sacrebleu.corpus_chrf(predictions, [references]).score)
    assert 0 < scores["bleu"] < 100 and scores["gen_len"] == pytest.approx((5 + 6 + 2) / 3)


def test_rouge_matches_hand_computation():
    from hftool.metrics.text_overlap import rouge, words

    prediction, reference = "The cat sat on the mat.", "the cat is on the mat"
    # unigrams: the x2, cat, on, mat shared of 6 each; bigrams: the-cat, on-the, the-mat of 5 each;
    # longest common subsequence: the cat on the mat (5 of 6).
    assert rouge("rouge1", prediction, reference) == pytest.approx(5 / 6)
    assert rouge("rouge2", prediction, reference) == pytest.approx(3 / 5)
    assert rouge("rougeL", prediction, reference) == pytest.approx(5 / 6)
    assert rouge("rougeLsum", prediction, reference) == pytest.approx(5 / 6)  # one sentence: same as rougeL
    # Lin (2004), summary-level LCS: reference w1..w5, candidate sentences whose LCSs with it are
    # w1 w2 and w1 w3 w5; their union w1 w2 w3 w5 gives recall 4/5 and precision 4/10.
    assert rouge("rougeLsum", "w1 w2 w6 w7 w8\nw1 w3 w8 w9 w5", "w1 w2 w3 w4 w5") == pytest.approx(
        2 * 0.8 * 0.4 / 1.2)
    # Sentences in the other order: one LCS over the whole text finds half; per sentence, all.
    assert rouge("rougeL", "w3 w4\nw1 w2", "w1 w2 w3 w4") == pytest.approx(0.5)
    assert rouge("rougeLsum", "w3 w4\nw1 w2", "w1 w2 w3 w4") == pytest.approx(1.0)
    assert words("Männer, Frauen_und 2 Kinder!") == ["männer", "frauen", "und", "2", "kinder"]
    assert rouge("rouge1", "", "the cat") == 0.0


def test_token_ids_decode_to_the_same_scores_and_metrics_narrow():
    from hftool.errors import HftoolError
    from hftool.metrics import TextOverlap
    from hftool.tasks.seq2seq import train_tokenizer

    predictions, references = ["Der Hund mag die Katze.", "Das Kind."], ["Der Hund sieht die Katze.", "Das Kind."]
    tokenizer = train_tokenizer(predictions + references, 300)
    ids = [tokenizer(t)["input_ids"] for t in predictions]
    width = max(map(len, ids))
    padded = [row + [-100] * (width - len(row)) for row in ids]  # as gathered across processes
    as_text, as_ids = TextOverlap(), TextOverlap(tokenizer=tokenizer)
    as_text.add_batch(predictions=predictions, references=references)
    as_ids.add_batch(predictions=padded, references=[tokenizer(t)["input_ids"] for t in references])
    assert as_ids.compute() == pytest.approx(as_text.compute())

    narrow = TextOverlap(["bleu", "rougeL"])
    narrow.add_batch(predictions=predictions, references=references)
    assert set(narrow.compute()) == {"bleu", "rougeL", "gen_len"}
    with pytest.raises(HftoolError, match="eval.metrics: meteor is not a metric"):
        TextOverlap(["bleu", "meteor"])


# --------------------------------------------------------------------------------------- data
def test_jsonl_and_csv_with_mapped_columns(tmp_path):
    import pandas as pd

    rows = pairs(30, 5)
    write_jsonl(tmp_path / "train.jsonl", [{"source": s, "target": t} for s, t in zip(rows["source"], rows["target"])])
    _, _, got = prepared(str(tmp_path / "train.jsonl"))
    assert len(got["train"]) + len(got["validation"]) == 30
    assert set(zip(got["train"]["source"], got["train"]["target"])) <= set(zip(rows["source"], rows["target"]))

    pd.DataFrame({"id": range(30), "en": rows["source"], "de": rows["target"]}).to_csv(tmp_path / "t.csv", index=False)
    _, _, got = prepared(str(tmp_path / "t.csv"), "data.source_column=en", "data.target_column=de")
    assert set(zip(got["validation"]["source"], got["validation"]["target"])) <= set(zip(rows["source"], rows["target"]))


@pytest.mark.parametrize("compress", [False, True])
def test_parallel_files_by_language(tmp_path, compress):
    train, val = pairs(40, 1), pairs(10, 2)
    write_parallel(tmp_path, "train", train, compress)
    write_parallel(tmp_path, "val", val, compress)  # val -> validation, as Multi30k names it
    (tmp_path / "train.fr").write_text("".join(f"phrase {i}\n" for i in range(40)), encoding="utf-8")
    (tmp_path / "README.md").write_text("not data\n")
    _, _, got = prepared(str(tmp_path), "data.source_lang=en", "data.target_lang=de")
    assert got["train"]["source"] == train["source"] and got["train"]["target"] == train["target"]
    assert got["validation"]["target"] == val["target"]
    _, _, got = prepared(str(tmp_path), "data.source_lang=fr", "data.target_lang=en")
    # No val.fr: a held-out part of train, still aligned line by line.
    for rows in got.values():
        assert all(t == train["source"][int(s.split()[1])] for s, t in zip(rows["source"], rows["target"]))


def test_hub_style_translation_column(tmp_path):
    import datasets

    rows = pairs(20, 3)
    translation = [{"de": t, "en": s} for s, t in zip(rows["source"], rows["target"])]
    datasets.DatasetDict(train=datasets.Dataset.from_dict({"translation": translation})).save_to_disk(tmp_path / "wmt")
    _, _, got = prepared(str(tmp_path / "wmt"), "data.source_lang=en", "data.target_lang=de")
    assert set(got["train"]["source"]) <= set(rows["source"])
    from hftool.errors import HftoolError

    with pytest.raises(HftoolError, match="languages de, en; set data.source_lang and data.target_lang"):
        prepared(str(tmp_path / "wmt"))
    with pytest.raises(HftoolError, match="no 'fr' .*fix data.target_lang"):
        prepared(str(tmp_path / "wmt"), "data.source_lang=en", "data.target_lang=fr")


def test_embedded_sample_is_disjoint_and_follows_the_grammar():
    from hftool.samples.translation import load

    data = load()
    assert {k: len(v) for k, v in data.items()} == {"train": 3000, "validation": 200, "test": 200}
    assert not set(data["train"]["source"]) & set(data["validation"]["source"])
    assert load()["validation"]["target"] == data["validation"]["target"]  # deterministic
    targets = " ".join(data["train"]["target"])
    assert "den roten Hund" in targets and "Heute sieht der" in targets


# ---------------------------------------------------------------------------------- bad input
def test_missing_target_names_the_row(tmp_path, cli):
    rows = [{"source": "The dog sees the cat.", "target": "Der Hund sieht die Katze."}] * 4
    data = write_jsonl(tmp_path / "train.jsonl", rows[:2] + [{"source": "The cat."}] + rows[2:])
    result = cli("finetune", "seq2seq", "--data", data, "-o", tmp_path / "run")
    assert result.code == 2
    last = result.err.strip().splitlines()[-1]
    assert last.startswith("error: ") and "train.jsonl row 3: the target column 'target' is empty; every row needs a " \
        "target text (fix or remove the row); run `hftool validate seq2seq --data" in last

    data = write_jsonl(tmp_path / "no_target.jsonl", [{"source": "The dog."}] * 4)
    result = cli("finetune", "seq2seq", "--data", data, "-o", tmp_path / "run")
    assert result.code == 2 and "no_target.jsonl has no target column (columns: source); set data.target_column" in result.err


def test_misaligned_parallel_files_give_both_line_counts(tmp_path, cli):
    rows = pairs(20, 1)
    write_parallel(tmp_path, "train", rows, compress=True)
    (tmp_path / "train.de.gz").write_bytes(gzip.compress("".join(t + "\n" for t in rows["target"][:-1]).encode()))
    result = cli("finetune", "seq2seq", "--data", tmp_path, "data.source_lang=en", "data.target_lang=de",
                 "-o", tmp_path / "run")
    assert result.code == 2
    assert f"{tmp_path / 'train.en.gz'} has 20 lines but {tmp_path / 'train.de.gz'} has 19" in result.err

    result = cli("finetune", "seq2seq", "--data", tmp_path, "data.source_lang=en", "data.target_lang=cs",
                 "-o", tmp_path / "run")
    assert result.code == 2 and "train.en.gz has no cs counterpart; add train.cs.gz" in result.err


def test_a_decoder_only_model_or_unknown_tiny_arch_is_refused(tmp_path, cli):
    result = cli("finetune", "seq2seq", "--model", "tiny:gpt2", "--max-steps", "1", "-o", tmp_path / "run")
    assert result.code == 2 and "seq2seq builds tiny models for tiny:mbart, tiny:t5" in result.err
    result = cli("finetune", "seq2seq", "--max-steps", "1", "eval.metrics=[bleu, cider]", "-o", tmp_path / "run2")
    assert result.code == 2 and "eval.metrics: cider is not a metric of this task" in result.err
    result = cli("finetune", "seq2seq", "--max-steps", "1", "eval.metrics=[chrf]", "-o", tmp_path / "run3")
    assert result.code == 2 and "eval.metrics leaves out bleu, which picks the best checkpoint" in result.err


# ------------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A tiny:mbart trained briefly on JSONL pairs with a source prefix; returns (run dir, data dir)."""
    from hftool import api
    from hftool.config import load_config

    folder = tmp_path_factory.mktemp("seq2seq")
    for name, n, seed in (("train", 200, 7), ("validation", 24, 8)):
        rows = pairs(n, seed)
        write_jsonl(folder / f"{name}.jsonl", [{"source": s, "target": t} for s, t in zip(rows["source"], rows["target"])])
    cfg = load_config("seq2seq", {"data.train": str(folder), "output_dir": str(folder / "run")},
                      [SMALL, "train.max_steps=12", "train.batch_size=16", "data.max_target_length=16",
                       "data.source_prefix='translate: '", "eval.metrics=[bleu, chrf, rouge1]"])
    run, metrics = api.finetune(cfg)
    return run, folder, metrics


def test_tiny_t5_trains_and_reloads_with_the_same_scores(tmp_path, cli):
    run = tmp_path / "run"
    result = cli("finetune", "seq2seq", "--model", "tiny:t5", SMALL_T5, "--max-steps", "3", "--batch-size", "8",
                 "data.max_target_length=16", "-o", run)
    assert result.code == 0, result.err
    assert json.loads((run / "config.json").read_text())["model_type"] == "t5"
    result = cli("evaluate", run, "--split", "validation")
    assert result.code == 0, result.err
    again, metrics = json.loads(result.out), read_metrics(run)
    for key in ("eval_loss", "eval_bleu", "eval_chrf"):
        assert again[key] == pytest.approx(metrics[key], abs=1e-4)


def test_run_scores_generated_text_and_reloads_the_same(trained_run, cli):
    run, folder, metrics = trained_run
    assert {"eval_loss", "eval_bleu", "eval_chrf", "eval_rouge1", "eval_gen_len"} <= set(metrics)
    assert "eval_rouge2" not in metrics  # eval.metrics narrowed them
    assert (run / "model.safetensors").is_file() and (run / "generation_config.json").is_file()

    result = cli("evaluate", run)  # the reloaded model generates the same texts: the same scores
    assert result.code == 0, result.err
    again = json.loads(result.out)
    for key in ("eval_loss", "eval_bleu", "eval_chrf", "eval_gen_len"):
        assert again[key] == pytest.approx(metrics[key], abs=1e-4)

    # The same pairs as gzipped parallel files, languages given on the command line: the same scores.
    rows = [json.loads(line) for line in (folder / "validation.jsonl").read_text().splitlines()]
    write_parallel(folder / "parallel", "test", {k: [r[k] for r in rows] for k in ("source", "target")}, compress=True)
    out = folder / "parallel-metrics.json"
    result = cli("evaluate", run, "--data", folder / "parallel", "data.source_lang=en", "data.target_lang=de",
                 "-o", out, "eval.save_predictions=true")
    assert result.code == 0, result.err
    assert json.loads(result.out)["eval_bleu"] == pytest.approx(metrics["eval_bleu"], abs=1e-4)
    # per-pair predictions in file order, each reference the file's target
    records = [json.loads(line) for line in (folder / "parallel-metrics.predictions.jsonl").read_text().splitlines()]
    assert [r["index"] for r in records] == list(range(len(rows)))
    assert all(r["reference"] and isinstance(r["prediction"], str) for r in records)
    import sacrebleu

    bleu = sacrebleu.corpus_bleu([r["prediction"] for r in records], [[r["reference"] for r in records]]).score
    assert bleu == pytest.approx(metrics["eval_bleu"], abs=1e-4)


def test_predict_and_generate_on_the_run_dir_agree_and_use_the_prefix(trained_run, cli):
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    run, _, _ = trained_run
    sources = ["The dog sees the cat.", "Today the red bird likes the old table."]
    out = run.parent / "pred.jsonl"
    result = cli("predict", run, *sources, "--output", out)
    assert result.code == 0, result.err
    predictions = [json.loads(line) for line in out.read_text().splitlines()]
    assert [p["source"] for p in predictions] == sources
    assert result.out.splitlines() == [p["generated_text"] for p in predictions]

    # By hand: transformers on the run dir, the run's prefix before the source, greedy, no start token.
    tokenizer, model = AutoTokenizer.from_pretrained(run), AutoModelForSeq2SeqLM.from_pretrained(run)
    for source, prediction in zip(sources, predictions):
        ids = model.generate(**tokenizer("translate: " + source, return_tensors="pt"), max_new_tokens=16)
        assert tokenizer.decode(ids[0], skip_special_tokens=True) == prediction["generated_text"]

    result = cli("generate", run, "--prompt", sources[0], "--prompt", sources[1], "--greedy", "--max-new-tokens", "16",
                 "--batch-size", "2")
    assert result.code == 0, result.err
    expected = "\n\n".join(f"{s}\n{p['generated_text']}" for s, p in zip(sources, predictions))
    assert result.out == expected + "\n"

    result = cli("generate", run, "--prompt", sources[1], "--greedy", "--max-new-tokens", "16", "--stream")
    assert result.code == 0, result.err
    assert result.out == f"{sources[1]}\n{predictions[1]['generated_text']}\n"  # streamed pieces join to the same text


def test_a_local_bart_dir_fine_tunes_and_generates_after_its_eos_start(trained_run, tmp_path, cli):
    """A model dir that is not a tiny model: BART starts decoding from EOS, which must not end the text."""
    import torch
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer, BartConfig, BartForConditionalGeneration

    from hftool.tasks.seq2seq import train_tokenizer
    from hftool.runtime import inference_dtype

    _, folder, _ = trained_run
    rows = pairs(200, 7)
    tokenizer = train_tokenizer(rows["source"] + rows["target"], 300)
    eos = tokenizer.eos_token_id
    config = BartConfig(vocab_size=len(tokenizer), d_model=32, encoder_layers=1, decoder_layers=1,
                        encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64,
                        max_position_embeddings=64, pad_token_id=tokenizer.pad_token_id, bos_token_id=eos,
                        eos_token_id=eos, decoder_start_token_id=eos, forced_eos_token_id=eos)
    torch.manual_seed(0)
    base = tmp_path / "bart"
    BartForConditionalGeneration(config).save_pretrained(base)
    tokenizer.save_pretrained(base)
    run = tmp_path / "run"
    result = cli("finetune", "seq2seq", "--model", base, "--data", folder, "-o", run, "--max-steps", "4",
                 "--batch-size", "16", "data.max_target_length=16", "eval.metrics=[chrf]", "train.metric_for_best=chrf")
    assert result.code == 0, result.err
    assert {"eval_chrf", "eval_loss"} <= set(read_metrics(run))

    source = "The dog sees the cat."
    result = cli("generate", run, "-p", source, "--greedy", "--min-new-tokens", "3", "--max-new-tokens", "8")
    assert result.code == 0, result.err
    # in the dtype `generate` chose (bf16 where this machine has it natively)
    model = AutoModelForSeq2SeqLM.from_pretrained(run, dtype=inference_dtype("auto"))
    loaded = AutoTokenizer.from_pretrained(run)
    ids = model.generate(**loaded(source, return_tensors="pt"), do_sample=False, min_new_tokens=3, max_new_tokens=8)
    assert ids[0, 0].item() == eos
    generated = ids[0, 1:].tolist()  # after the start token, up to the first EOS
    text = loaded.decode(generated[: generated.index(eos) if eos in generated else None], skip_special_tokens=True)
    assert text and result.out == f"{source}\n{text}\n"


def untrained_scores(run: Path, rows: int) -> dict[str, float]:
    """The scores of the run's tiny model with fresh random weights (the run's tokenizer) on the
    run's first validation rows."""
    import torch

    from hftool.api import run_config
    from hftool.data import load_splits
    from hftool.evaluation import eval_loader, evaluate_model
    from hftool.tasks import get_task
    from hftool.runtime import make_accelerator

    import yaml

    cfg = run_config(str(run))
    cfg.model.name = yaml.safe_load((run / "config.yaml").read_text())["model"]["name"]  # the tiny spec, not the run
    assert cfg.model.name.startswith("tiny:")
    task = get_task(cfg.task)
    splits, names = load_splits(cfg.data, get_task(cfg.task).reading(cfg), cfg.train.seed)
    validation, _ = task.prepare(cfg, splits["validation"].select(range(rows)), names["validation"])
    torch.manual_seed(0)
    parts = task.build(cfg, None, validation, run_dir=run)
    loader = eval_loader(task.eval_features(parts, cfg, validation), task.collate(parts), 50)
    return evaluate_model(make_accelerator(), parts.model, loader, task, parts, validation)


@pytest.mark.slow
def test_embedded_default_learns(tmp_path, cli):
    run = tmp_path / "run"
    result = cli("finetune", "seq2seq", "-o", run)
    assert result.code == 0, result.err
    metrics = read_metrics(run)
    before = untrained_scores(run, 50)
    assert before["eval_bleu"] < 5  # random weights: a few shared words by chance at most (0.0 measured)
    # Measured (seeds 0, 1, 2, 42): BLEU 99.8-100 and chrF 100 after 8 epochs; the jump past BLEU
    # 90 came in epoch 3, 3, 3 and 5.
    assert metrics["eval_bleu"] >= 90 and metrics["eval_chrf"] >= 95
    # Unseen sentences (the test split) come out right from the reloaded run.
    from hftool.samples.translation import load

    test = load()["test"].select(range(8))
    result = cli("predict", run, *test["source"])
    assert result.code == 0, result.err
    assert sum(got == want for got, want in zip(result.out.splitlines(), test["target"])) >= 7, result.out
