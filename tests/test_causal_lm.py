"""The gpt2 recipe (causal-lm task): packing, perplexity, data forms, tiny:gpt2, runs end to end."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
SMALL = "model.config_overrides={n_layer: 2, n_embd: 64, n_head: 2}"


def build(texts: list[str], *overrides: str):
    """The task, config, prepared rows and parts (a tiny:gpt2 from the gpt2 recipe) for `texts`."""
    import datasets

    from hftool.config import load_config
    from hftool.tasks import get_task

    cfg = load_config("gpt2", overrides=[SMALL, *overrides])
    task = get_task(cfg.task)
    rows, _ = task.prepare(cfg, datasets.Dataset.from_dict({"text": texts}), "test data")
    torch.manual_seed(0)
    return task, cfg, rows, task.build(cfg, None, rows)


def tales(n: int, seed: int) -> list[str]:
    from hftool.samples.tales import generate

    return generate(n, seed)


def test_packing_keeps_every_token_across_map_batches():
    texts = tales(2500, 3) + ["", "x"]  # over two 1000-row map batches; an empty text adds nothing
    task, cfg, rows, parts = build(texts, "data.block_size=48")
    blocks = task.features(parts, cfg, rows)["input_ids"]
    tokenizer, eos = parts.processor, parts.processor.eos_token_id
    expected = [t for text in texts if text for t in tokenizer(text, add_special_tokens=False)["input_ids"] + [eos]]
    assert [t for block in blocks for t in block] == expected
    assert {len(b) for b in blocks[:-1]} == {48} and 0 < len(blocks[-1]) <= 48


def hand_perplexity(model, ids: list[int], block: int, stride: int) -> tuple[float, int]:
    """Mean loss and scored-token count, the sliding-window way (a window scores its last tokens)."""
    nll, count, scored_to = 0.0, 0, 0
    for begin in range(0, len(ids), stride):
        end = min(begin + block, len(ids))
        window = torch.tensor(ids[begin:end])
        with torch.no_grad():
            logits = model(window[None]).logits[0]
        losses = torch.nn.functional.cross_entropy(logits[:-1], window[1:], reduction="none")
        new = min(end - scored_to, len(window) - 1)
        nll, count, scored_to = nll + losses[len(losses) - new:].double().sum().item(), count + new, end
        if end == len(ids):
            break
    return nll / count, count


@pytest.mark.parametrize("stride", [None, 5])
def test_perplexity_matches_a_hand_computation(stride):
    """exp(total token loss / total tokens), whatever the batch size; strided windows score each token once."""
    from accelerate import Accelerator

    from hftool.evaluation import eval_loader, evaluate_model

    texts = tales(3, 4)
    task, cfg, rows, parts = build(texts, "data.block_size=16", f"eval.stride={stride or 'null'}")
    ids = [t for text in texts for t in parts.processor(text)["input_ids"] + [parts.processor.eos_token_id]]
    loss, count = hand_perplexity(parts.model.eval(), ids, 16, stride or 16)
    assert count == (len(ids) - 1 if stride else len(ids) - math.ceil(len(ids) / 16))
    features = task.eval_features(parts, cfg, rows)
    for batch_size in (1, 3):
        loader = eval_loader(features, task.collate(parts), batch_size)
        metrics = evaluate_model(Accelerator(cpu=True), parts.model, loader, task, parts, rows)
        assert metrics["eval_loss"] == pytest.approx(loss, rel=1e-5)
        assert metrics["eval_perplexity"] == pytest.approx(math.exp(loss), rel=1e-5)


def test_tiny_tokenizer_is_the_same_in_every_process():
    """Same texts, same byte-level BPE, whatever the process's hash seed (resume and seeds rely on it)."""
    code = ("import hashlib, json; from hftool.models import byte_bpe_merges; from hftool.samples.tales import generate; "
            "v, m = byte_bpe_merges(generate(400, 1), 500); "
            "print(hashlib.sha256(json.dumps([sorted(v.items()), m]).encode()).hexdigest())")
    digests = set()
    for hash_seed in ("1", "2", "3"):
        env = os.environ | {"PYTHONHASHSEED": hash_seed, "PYTHONPATH": str(REPO)}
        run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
        digests.add(run.stdout.strip())
    assert len(digests) == 1 and len(digests.pop()) == 64


def test_txt_paragraphs_text_folders_and_linebreaks(tmp_path):
    from hftool.data import load_source

    book = tmp_path / "book.txt"
    book.write_text("ROMEO:\nBut soft!\n\n\n  What light\nbreaks?\n \nJULIET:\nAy me.\n", encoding="utf-8")
    assert load_source(str(book), txt_unit="paragraph")["train"]["text"] == [
        "ROMEO:\nBut soft!", "  What light\nbreaks?", "JULIET:\nAy me."]
    assert len(load_source(str(book))["train"]) == 6  # the default: a row per non-empty line
    folder = tmp_path / "docs"
    folder.mkdir()
    for name, text in (("a.txt", "first doc\nline two\n"), ("b.txt", "second doc"), ("empty.txt", "\n")):
        (folder / name).write_text(text, encoding="utf-8")
    assert load_source(str(folder))["train"]["text"] == ["first doc\nline two", "second doc"]
    task, cfg, rows, _ = build(["x"], "data.keep_linebreaks=false")
    import datasets

    joined, _ = task.prepare(cfg, datasets.Dataset.from_dict({"text": ["a hard-\nwrapped  \n line"]}), "t")
    assert joined["text"] == ["a hard- wrapped line"]


def test_finetune_txt_then_evaluate_generate_pipeline_predict(cli, tmp_path):
    """A short run on a txt file: a HF model dir whose generation_config, metrics and outputs agree."""
    from transformers import AutoModelForCausalLM, pipeline

    from hftool.runtime import inference_dtype

    data = tmp_path / "tales.txt"
    data.write_text("\n\n".join(tales(120, 6)), encoding="utf-8")
    run = tmp_path / "run"
    result = cli("finetune", "gpt2", "--data", data, "-o", run, "--max-steps", "4", "--batch-size", "8", SMALL,
                 "data.block_size=64", "eval.stride=32")
    assert result.code == 0, result.err
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["eval_loss"] == pytest.approx(math.log(metrics["eval_perplexity"]))
    evaluated = cli("evaluate", run)
    assert evaluated.code == 0, evaluated.err
    assert json.loads(evaluated.out)["eval_perplexity"] == pytest.approx(metrics["eval_perplexity"], rel=1e-6)

    model = AutoModelForCausalLM.from_pretrained(run)
    saved = model.generation_config  # the recipe's model.generation_config: `generate` samples by default
    assert (saved.do_sample, saved.top_k, saved.max_new_tokens) == (True, 50, 100)
    out = tmp_path / "gen.jsonl"
    assert cli("generate", run, "-p", "Once upon a time", "--greedy", "--max-new-tokens", "12", "-o", out).code == 0
    ours = json.loads(out.read_text())["generated_text"]
    # in the dtype `generate` chose (the run's precision: bf16 where this machine has it natively)
    generator = pipeline("text-generation", model=str(run), dtype=inference_dtype("auto"))
    theirs = generator("Once upon a time", do_sample=False, max_new_tokens=12, return_full_text=False)[0]["generated_text"]
    assert ours == theirs
    predicted = cli("predict", run, "Once upon a time")
    assert predicted.code == 0 and predicted.out.startswith("Once upon a time")


@pytest.mark.parametrize("overrides, message", [
    (("data.text_column=body",), "has no column 'body'"),
    (("data.block_size=64", "eval.stride=100"), "eval.stride=100 is longer than the block (64 tokens)"),
    (("data.block_size=4096",), "data.block_size=4096 is longer than the model's context"),
    (("model.generation_config={topk: 5}",), "did you mean 'top_k'?"),
])
def test_bad_settings_fail_early_with_the_fix(cli, tmp_path, overrides, message):
    result = cli("finetune", "gpt2", "-o", tmp_path / "run", "--max-steps", "1",
                 "model.config_overrides={n_layer: 1, n_embd: 32, n_head: 2, n_positions: 256}", *overrides)
    assert result.code == 2
    assert message in result.err and "Traceback" not in result.err


@pytest.mark.slow
def test_embedded_default_learns(cli, tmp_path):
    """`hftool finetune gpt2` as shipped: perplexity falls from the vocabulary's size to a few, and
    greedy text follows the tales' template."""
    run = tmp_path / "run"
    result = cli("finetune", "gpt2", "-o", run)
    assert result.code == 0, result.err
    metrics = json.loads((run / "metrics.json").read_text())
    vocabulary = len(json.loads((run / "tokenizer.json").read_text())["model"]["vocab"])
    assert metrics["eval_perplexity"] < 4 < vocabulary / 100
    out = tmp_path / "gen.jsonl"
    assert cli("generate", run, "-p", "Once upon a time,", "--greedy", "--stop", "\n", "-o", out).code == 0
    assert " named " in json.loads(out.read_text())["generated_text"]
