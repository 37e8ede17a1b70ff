"""Chat fine-tuning (the `chat` recipe, causal-lm task): the loss mask, packing without
cross-attention, data and template errors, `generate --chat`, merging, and that it learns."""

from __future__ import annotations

import json

import pytest
import torch

from hftool import api
from hftool.config import load_config

TINY = ["train.max_steps=3", "train.batch_size=4", "data.max_train_samples=64", "data.max_eval_samples=8",
        "train.eval_steps=3", "train.logging_steps=1"]
CONVERSATION = [{"role": "system", "content": "Answer briefly."},
                {"role": "user", "content": "Remember the word lantern."},
                {"role": "assistant", "content": "Okay."},
                {"role": "user", "content": "Which word did I ask you to remember?"},
                {"role": "assistant", "content": "lantern"}]
# A ChatML-style template file (tiny:gpt2's tokenizer has none of its own).
CHATML = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + "
          "'<|im_end|>\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")


def tiny_parts(*overrides: str):
    """The chat recipe's task, config, prepared rows and parts, on 64 conversations of the sample."""
    from hftool.data import load_splits
    from hftool.tasks import get_task

    cfg = load_config("chat", overrides=["data.max_train_samples=64", *overrides])
    task = get_task(cfg.task)
    raw, sources = load_splits(cfg.data, task.reading(cfg), 0, None)
    rows, _ = task.prepare(cfg, raw["train"], sources["train"])
    torch.manual_seed(0)
    return task, cfg, rows, task.build(cfg, None, rows)


@pytest.mark.parametrize("train_on", ["assistant", "all"])
def test_loss_mask_token_by_token_against_the_rendered_template(train_on):
    """Labels are the ids of each assistant reply and its end-of-turn token, -100 on every other
    token (the BOS, role markers, system and user turns); train_on=all labels every token."""
    from hftool.data import chat

    _, _, _, parts = tiny_parts()
    tokenizer = parts.processor
    pieces = [(tokenizer.bos_token, False)]  # the template, written out turn by turn
    for message in CONVERSATION:
        pieces += [(f"<|{message['role']}|>\n", False), (message["content"] + tokenizer.eos_token,
                                                          message["role"] == "assistant")]
    assert "".join(text for text, _ in pieces) == chat.render(tokenizer, CONVERSATION)
    expected_ids, expected_labels = [], []
    for text, learned in pieces:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        expected_ids += ids
        expected_labels += ids if learned or train_on == "all" else [-100] * len(ids)
    ids, labels = chat.encode(tokenizer, CONVERSATION, train_on)
    assert ids == expected_ids
    assert labels == expected_labels
    if train_on == "assistant":
        learned = [tokenizer.decode([i]) for i in labels if i != -100]
        assert "".join(learned) == "Okay.</s>lantern</s>"


def test_the_mask_follows_a_template_file_too(tmp_path):
    """tiny:gpt2 (no template of its own) with data.chat_template: the assistant's text and the
    template's end-of-turn after it are learned, nothing else."""
    from hftool.data import chat

    template = tmp_path / "chatml.jinja"
    template.write_text(CHATML)
    _, _, _, parts = tiny_parts("model.name=tiny:gpt2", f"data.chat_template={template}")
    ids, labels = chat.encode(parts.processor, CONVERSATION)
    runs, current = [], []
    for token, label in zip(ids, labels):
        if label != -100:
            current.append(token)
        elif current:
            runs, current = runs + [current], []
    runs += [current] if current else []
    assert [parts.processor.decode(r) for r in runs] == ["Okay.<|im_end|>\n", "lantern<|im_end|>\n"]


def test_packed_conversations_do_not_see_each_other():
    """Each conversation's logits in a packed block equal its logits alone, to float rounding."""
    task, cfg, rows, parts = tiny_parts("data.block_size=256")
    packed = task.features(parts, cfg, rows.select(range(6)))
    first = packed[0]
    starts = [i for i, p in enumerate(first["position_ids"]) if p == 0] + [len(first["position_ids"])]
    assert len(starts) > 2  # several conversations share the block
    batch = task.collate(parts)([first])
    model = parts.model.eval()
    with torch.no_grad():
        together = model(**task.model_inputs(batch), use_cache=False).logits[0]
        for start, end in zip(starts, starts[1:]):
            alone = model(input_ids=torch.tensor([first["input_ids"][start:end]])).logits[0]
            assert torch.allclose(together[start:end], alone, atol=1e-5), (start, end)


def test_prompt_completion_rows_are_one_turn_conversations():
    import datasets

    task, cfg, _, _ = tiny_parts()
    rows, _ = task.prepare(cfg, datasets.Dataset.from_dict({"prompt": ["What is 2 plus 2?"], "completion": ["4"]}), "pc")
    assert rows[0]["messages"] == [{"role": "user", "content": "What is 2 plus 2?"},
                                   {"role": "assistant", "content": "4"}]


@pytest.mark.parametrize("messages, problem", [
    ([{"role": "user", "content": "hi"}, {"role": "robot", "content": "beep"}],
     "row 2: message 2 has role 'robot'; roles are system, user, assistant"),
    ([{"role": "user", "content": "hi"}], "row 2: the conversation has no assistant turn"),
])
def test_a_bad_conversation_is_one_line_naming_its_row(cli, tmp_path, messages, problem):
    good = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    data = tmp_path / "chats.jsonl"
    data.write_text("".join(json.dumps({"messages": m}) + "\n" for m in (good, messages, good, good)))
    result = cli("finetune", "chat", "--data", data, "-o", tmp_path / "run", *TINY)
    assert result.code == 2 and "Traceback" not in result.err
    assert problem in result.err.strip().splitlines()[-1]


def test_a_tokenizer_without_a_chat_template_needs_data_chat_template(cli, tmp_path):
    result = cli("finetune", "chat", "--model", "tiny:gpt2", "-o", tmp_path / "run", *TINY)
    assert result.code == 2 and "Traceback" not in result.err
    assert "tokenizer has no chat template" in result.err and "data.chat_template=FILE" in result.err


@pytest.fixture(scope="module")
def chat_run(tmp_path_factory):
    """A few LoRA steps of the chat recipe in fp32 (the template is tiny:llama's own)."""
    run = tmp_path_factory.mktemp("chat") / "run"
    api.finetune(load_config("chat", overrides=[*TINY, "model.peft=lora", "train.mixed_precision=no", "train.lr=1e-2",
                                                f"output_dir={run}"]))
    return run


def test_generate_chat_renders_the_template_and_streams_the_answer(chat_run, cli, monkeypatch):
    from transformers import AutoTokenizer, LlamaForCausalLM

    from hftool.data import chat

    seen, original = [], LlamaForCausalLM.generate
    monkeypatch.setattr(LlamaForCausalLM, "generate",
                        lambda self, *a, **kw: seen.append(kw["input_ids"][0].tolist()) or original(self, *a, **kw))
    pieces = []
    question = "What is 3 plus 4?"
    results = api.generate(str(chat_run), [], on_text=lambda i, piece: pieces.append((i, piece)),
                           mixed_precision="no", chat=[question], max_new_tokens=4, min_new_tokens=4)
    tokenizer = AutoTokenizer.from_pretrained(chat_run)
    rendered = chat.render(tokenizer, [{"role": "user", "content": question}], generation_prompt=True)
    assert seen == [tokenizer(rendered, add_special_tokens=False)["input_ids"]]  # one BOS: the template's
    assert rendered.endswith("<|assistant|>\n")
    assert results[0]["prompt"] == question and results[0]["generated_text"]
    assert "".join(p for _, p in pieces) == results[0]["generated_text"]  # streamed, piece by piece
    result = cli("generate", chat_run, "--chat", question, "--max-new-tokens", "4", "--min-new-tokens", "4",
                 "--mixed-precision", "no")
    assert result.code == 0, result.err
    assert result.out.startswith(question + "\n" + results[0]["generated_text"])


def test_generate_chat_on_a_model_without_a_template_says_so(tmp_path, cli):
    from transformers import GPT2LMHeadModel

    from hftool import models

    tokenizer = models.train_byte_bpe(["some text to learn from"] * 20, 300)
    GPT2LMHeadModel(models.tiny_gpt2_config(tokenizer, {"n_layer": 1})).save_pretrained(tmp_path / "m")
    tokenizer.save_pretrained(tmp_path / "m")
    result = cli("generate", tmp_path / "m", "--chat", "hi")
    assert result.code == 2 and "tokenizer has no chat template" in result.err


def test_merged_chat_model_answers_in_pipeline_as_in_hftool(chat_run, tmp_path):
    """The merged dir keeps the chat template: pipeline() on messages gives hftool's greedy answer."""
    from transformers import pipeline

    out = tmp_path / "merged"
    api.export(str(chat_run), out, "safetensors", merge=True)
    question = "What is the capital of Vornia?"
    settings = {"max_new_tokens": 6, "min_new_tokens": 6}  # six tokens, not an early end-of-turn: a real comparison
    ours = api.generate(str(chat_run), [], mixed_precision="no", chat=[question], **settings)[0]["generated_text"]
    pipe = pipeline("text-generation", model=str(out))
    theirs = pipe([{"role": "user", "content": question}], do_sample=False, **settings)[0]["generated_text"][-1]
    assert ours.strip() and theirs["role"] == "assistant" and theirs["content"].strip() == ours.strip()


@pytest.mark.slow
def test_sample_chat_learns_answers_an_untrained_model_does_not_give(tmp_path):
    """The embedded recipe: held-out exact-answer accuracy well above the same model untrained."""
    run, _ = api.finetune(load_config("chat", overrides=[f"output_dir={tmp_path / 'run'}"]))
    trained = api.evaluate(str(run), data="sample:chat", split="test")["eval_exact_match"]
    untrained, _ = api.finetune(load_config("chat", overrides=["train.max_steps=1", "train.lr=1e-12",
                                                                f"output_dir={tmp_path / 'untrained'}"]))
    before = api.evaluate(str(untrained), data="sample:chat", split="test")["eval_exact_match"]
    assert before < 0.05 and trained > 0.6, (before, trained)


def test_chat_evaluation_is_reproduced_and_exact_across_processes(chat_run, tmp_path):
    """evaluate on the run dir gives metrics.json again; two processes give what one does, each
    conversation's answer once (generated answers are gathered at one width)."""
    from tests.conftest import evaluate_in_processes

    metrics = json.loads((chat_run / "metrics.json").read_text())
    outputs = {processes: evaluate_in_processes(chat_run, tmp_path / f"{processes}.json", processes)
               for processes in (1, 2)}
    assert outputs[1][0] == pytest.approx({k: v for k, v in metrics.items() if k.startswith("eval_")}, rel=1e-5)
    assert outputs[2][0] == pytest.approx(outputs[1][0], rel=1e-5)
    records = outputs[1][1]
    assert [r["index"] for r in records] == list(range(8)) and outputs[2][1] == outputs[1][1]
    assert {"question", "prediction", "reference", "exact_match"} <= set(records[0])
