"""`hftool generate`: equal to model.generate, seeds, stop strings, streaming, batching, bad input."""

from __future__ import annotations

import json

import pytest
import torch

PROMPTS = ["Once upon a time", "Every morning, Leo", "One day"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A tiny random GPT-2 saved as a plain model dir (no hftool config.yaml), tokenizer learned from tales."""
    from transformers import GPT2LMHeadModel

    from hftool import models
    from hftool.samples.tales import generate

    tokenizer = models.train_byte_bpe(generate(300, 5), 400)
    torch.manual_seed(0)
    model = GPT2LMHeadModel(models.tiny_gpt2_config(tokenizer, {"n_layer": 2, "n_embd": 64, "n_head": 2}))
    path = tmp_path_factory.mktemp("tiny-gpt2")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture
def reference(model_dir):
    """model.generate on the same model, device and dtype as hftool's (bf16 where this machine has
    it natively): (new token ids, their text), greedy."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hftool.runtime import inference_dtype

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = AutoModelForCausalLM.from_pretrained(model_dir).to(device, inference_dtype("auto")).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)

    def run(prompt: str, **kwargs) -> tuple[list[int], str]:
        inputs = tokenizer(prompt, return_tensors="pt").to(device)
        out = model.generate(**inputs, do_sample=False, pad_token_id=tokenizer.eos_token_id, **kwargs)
        ids = out[0, inputs["input_ids"].shape[1]:].tolist()
        if tokenizer.eos_token_id in ids:
            ids = ids[: ids.index(tokenizer.eos_token_id)]
        return ids, tokenizer.decode(ids)

    return run


@pytest.fixture
def spy(monkeypatch):
    """Records the token ids every model.generate call returns (calls pass through unchanged)."""
    from transformers import GPT2LMHeadModel

    calls = []
    original = GPT2LMHeadModel.generate

    def recording(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        calls.append((kwargs["input_ids"].shape[1], out))
        return out

    monkeypatch.setattr(GPT2LMHeadModel, "generate", recording)
    return calls


@pytest.fixture
def dtypes(monkeypatch):
    """Records the dtype of the model at every model.generate call."""
    from transformers import GPT2LMHeadModel

    seen, original = [], GPT2LMHeadModel.generate
    monkeypatch.setattr(GPT2LMHeadModel, "generate",
                        lambda self, *a, **kw: seen.append(self.dtype) or original(self, *a, **kw))
    return seen


def read_jsonl(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_greedy_equals_model_generate_token_for_token(cli, model_dir, reference, spy, tmp_path):
    out = tmp_path / "out.jsonl"
    result = cli("generate", model_dir, "--prompt", PROMPTS[0], "--greedy", "--max-new-tokens", "24", "-o", out)
    assert result.code == 0, result.err
    (prompt_len, generated), = spy
    ids, text = reference(PROMPTS[0], max_new_tokens=24)
    assert generated[0, prompt_len:prompt_len + len(ids)].tolist() == ids
    assert read_jsonl(out) == [{"prompt": PROMPTS[0], "generated_text": text}]
    assert result.out.startswith(PROMPTS[0] + text)


def test_batched_prompts_are_left_padded_and_match_one_by_one(cli, model_dir, reference, tmp_path):
    out = tmp_path / "out.jsonl"
    result = cli("generate", model_dir, *[a for p in PROMPTS for a in ("-p", p)], "--greedy",
                 "--max-new-tokens", "16", "--batch-size", "3", "-o", out)
    assert result.code == 0, result.err
    rows = read_jsonl(out)
    assert [r["prompt"] for r in rows] == PROMPTS
    assert [r["generated_text"] for r in rows] == [reference(p, max_new_tokens=16)[1] for p in PROMPTS]


def test_static_cache_gives_the_same_tokens_as_the_dynamic_one(cli, model_dir, reference, monkeypatch, tmp_path):
    """--cache static (what --compile needs) changes where the cache lives, never the text."""
    from transformers import GPT2LMHeadModel

    caches, original = [], GPT2LMHeadModel.generate
    monkeypatch.setattr(GPT2LMHeadModel, "generate",
                        lambda self, *a, **kw: caches.append(kw.get("cache_implementation")) or original(self, *a, **kw))
    out = tmp_path / "out.jsonl"
    result = cli("generate", model_dir, *[a for p in PROMPTS for a in ("-p", p)], "--greedy", "--cache", "static",
                 "--max-new-tokens", "16", "--batch-size", "3", "-o", out)
    assert result.code == 0, result.err
    assert caches and set(caches) == {"static"}
    assert [r["generated_text"] for r in read_jsonl(out)] == [reference(p, max_new_tokens=16)[1] for p in PROMPTS]


@pytest.mark.parametrize("native, flags, expected", [
    (True, (), torch.bfloat16),  # auto: bf16 where the CPU computes it natively
    (False, (), torch.float32),
    (True, ("--mixed-precision", "no"), torch.float32),
    (False, ("--mixed-precision", "bf16"), torch.bfloat16),
])
def test_weights_are_cast_to_the_precision_asked_else_the_machines_auto(cli, model_dir, monkeypatch, dtypes,
                                                                          native, flags, expected):
    from hftool import runtime

    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: native)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # auto on a GPU follows the GPU
    result = cli("generate", model_dir, "-p", PROMPTS[0], "--greedy", "--max-new-tokens", "4", *flags)
    assert result.code == 0, result.err
    assert dtypes == [expected]
    assert f"generating in {'bf16' if expected == torch.bfloat16 else 'fp32'} on cpu" in result.err


def test_a_run_trained_in_fp32_generates_in_fp32_unless_asked(cli, model_dir, monkeypatch, dtypes, tmp_path):
    """A run dir's train.mixed_precision is the default; --mixed-precision overrides it; a bad value is named."""
    import shutil

    from hftool import runtime

    run = tmp_path / "run"
    shutil.copytree(model_dir, run)
    (run / "config.yaml").write_text("task: causal-lm\ntrain:\n  mixed_precision: 'no'\n", encoding="utf-8")
    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for flags in ((), ("--mixed-precision", "auto")):
        result = cli("generate", run, "-p", PROMPTS[0], "--greedy", "--max-new-tokens", "4", *flags)
        assert result.code == 0, result.err
    assert dtypes == [torch.float32, torch.bfloat16]

    for value, message in (("fp8", "'fp8' is not one of: no, bf16, fp16, auto"),
                           ("fp16", "--mixed-precision fp16 needs a CUDA GPU; use bf16 (or no) on this machine")):
        result = cli("generate", run, "-p", PROMPTS[0], "--mixed-precision", value)
        assert result.code == 2
        assert message in result.err and "Traceback" not in result.err


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_the_cast_keeps_in_fp32_what_transformers_keeps_when_it_loads_in_that_dtype(tmp_path, dtype):
    """T5's `wo` stays fp32 in fp16; a `_keep_in_fp32_modules_strict` module stays fp32 in both."""
    from transformers import GPT2Config, GPT2LMHeadModel, T5Config, T5ForConditionalGeneration

    from hftool.models import cast_for_inference

    class StrictGPT2(GPT2LMHeadModel):
        _keep_in_fp32_modules_strict = ["ln_f", "mlp.c_proj"]

    models = [T5ForConditionalGeneration(T5Config(vocab_size=64, d_model=16, d_kv=8, d_ff=32, num_layers=1,
                                                  num_heads=2)),
              StrictGPT2(GPT2Config(vocab_size=64, n_positions=32, n_embd=16, n_layer=2, n_head=2))]
    seen = set()
    for index, model in enumerate(models):
        model.save_pretrained(tmp_path / str(index))
        loaded = type(model).from_pretrained(tmp_path / str(index), dtype=dtype)
        ours = cast_for_inference(model, dtype, "cpu")
        theirs = {name: p.dtype for name, p in loaded.named_parameters()}
        assert {name: p.dtype for name, p in ours.named_parameters()} == theirs
        seen |= set(theirs.values())
    assert seen == {torch.float32, dtype}  # some parameters were kept in fp32, the rest cast


def test_sampling_with_a_seed_is_reproducible(cli, model_dir, tmp_path):
    def sample(seed: int) -> list[dict]:
        out = tmp_path / f"seed{seed}.jsonl"
        args = ("generate", model_dir, "-p", PROMPTS[0], "-p", PROMPTS[1], "--top-k", "0", "--temperature", "1.5",
                "--max-new-tokens", "20", "--num-return-sequences", "2", "--seed", str(seed), "-o", out, "--overwrite")
        assert cli(*args).code == 0
        return read_jsonl(out)

    first = sample(7)
    assert len(first) == 4 and [r["prompt"] for r in first] == [PROMPTS[0]] * 2 + [PROMPTS[1]] * 2
    assert sample(7) == first
    assert sample(8) != first


def test_stop_string_cuts_exactly_there_and_nothing_else(model_dir):
    from hftool import api
    from hftool.generation import GenerationOptions

    full = api.generate(str(model_dir), [PROMPTS[1]], GenerationOptions(do_sample=False, max_new_tokens=30))
    text = full[0]["generated_text"]
    stop = text[8:11]
    cut = api.generate(str(model_dir), [PROMPTS[1]], GenerationOptions(do_sample=False, max_new_tokens=30, stop=[stop]))
    assert cut[0]["generated_text"] == text[: text.find(stop)]
    absent = api.generate(str(model_dir), [PROMPTS[1]],
                          GenerationOptions(do_sample=False, max_new_tokens=30, stop=["\x00never"]))
    assert absent[0]["generated_text"] == text  # a stop string that never appears loses nothing


def test_stream_shows_text_while_generating(model_dir):
    """Pieces arrive between forward passes (not all at the end) and join into the final text."""
    from hftool import api
    from hftool.generation import GenerationOptions

    forwards, pieces = [0], []

    def count(module, args, output):
        if type(module).__name__ == "GPT2LMHeadModel":
            forwards[0] += 1

    handle = torch.nn.modules.module.register_module_forward_hook(count)
    try:
        options = GenerationOptions(do_sample=False, max_new_tokens=30)
        results = api.generate(str(model_dir), PROMPTS[:2], options,
                               on_text=lambda i, piece: pieces.append((i, piece, forwards[0])))
    finally:
        handle.remove()
    total = forwards[0]
    assert sum(1 for i, piece, seen in pieces if piece and seen < total) >= 2
    for i, result in enumerate(results):
        assert "".join(piece for j, piece, _ in pieces if j == i) == result["generated_text"]
    assert results == api.generate(str(model_dir), PROMPTS[:2], options)  # streaming changes nothing


def test_stream_with_a_stop_string_never_shows_it(model_dir):
    from hftool import api
    from hftool.generation import GenerationOptions

    text = api.generate(str(model_dir), [PROMPTS[0]], GenerationOptions(do_sample=False, max_new_tokens=30))[0]["generated_text"]
    stop = text[10:13]
    pieces = []
    result = api.generate(str(model_dir), [PROMPTS[0]], GenerationOptions(do_sample=False, max_new_tokens=30, stop=[stop]),
                          on_text=lambda i, piece: pieces.append(piece))
    assert "".join(pieces) == result[0]["generated_text"] == text[: text.find(stop)]


def test_cli_stream_prints_prompt_and_continuation(cli, model_dir, tmp_path):
    out = tmp_path / "out.jsonl"
    result = cli("generate", model_dir, "-p", PROMPTS[0], "-p", PROMPTS[2], "--greedy", "--max-new-tokens", "10",
                 "--stream", "-o", out)
    assert result.code == 0, result.err
    rows = read_jsonl(out)
    assert result.out == "\n\n".join(r["prompt"] + r["generated_text"] for r in rows) + "\n"


def test_generation_config_json_gives_the_defaults(cli, model_dir, tmp_path, spy):
    """A model dir's generation_config.json (as a fine-tuned run saves it) sets what flags do not."""
    import shutil

    from transformers import GenerationConfig

    local = tmp_path / "model"
    shutil.copytree(model_dir, local)
    GenerationConfig(do_sample=False, max_new_tokens=5, min_new_tokens=5, eos_token_id=0, pad_token_id=0).save_pretrained(local)
    assert cli("generate", local, "-p", PROMPTS[0]).code == 0
    (prompt_len, generated), = spy
    assert generated.shape[1] - prompt_len == 5
    GenerationConfig(do_sample=True, max_new_tokens=5, eos_token_id=0, pad_token_id=0).save_pretrained(local)
    out = tmp_path / "out.jsonl"
    result = cli("generate", local, "-p", PROMPTS[0], "--num-return-sequences", "2", "--seed", "1", "-o", out)
    assert result.code == 0, result.err  # sampling comes from the model's config, so two sequences are fine
    assert len(read_jsonl(out)) == 2


def test_beams_return_sequences_per_prompt_in_order(cli, model_dir, tmp_path):
    out = tmp_path / "out.jsonl"
    result = cli("generate", model_dir, "-p", PROMPTS[0], "-p", PROMPTS[1], "--num-beams", "3",
                 "--num-return-sequences", "2", "--max-new-tokens", "8", "-o", out)
    assert result.code == 0, result.err
    assert [r["prompt"] for r in read_jsonl(out)] == [PROMPTS[0]] * 2 + [PROMPTS[1]] * 2


def test_prompts_file_lines_and_jsonl(cli, model_dir, tmp_path):
    lines, records = tmp_path / "prompts.txt", tmp_path / "prompts.jsonl"
    lines.write_text(f"{PROMPTS[0]}\n\n{PROMPTS[1]}\n", encoding="utf-8")
    records.write_text(json.dumps({"prompt": PROMPTS[2]}) + "\n" + json.dumps({"text": PROMPTS[0]}) + "\n", encoding="utf-8")
    for path, expected in ((lines, [PROMPTS[2], PROMPTS[0], PROMPTS[1]]), (records, [PROMPTS[2], PROMPTS[2], PROMPTS[0]])):
        out = tmp_path / f"{path.name}.out"
        result = cli("generate", model_dir, "-p", PROMPTS[2], "--prompts-file", path, "--greedy",
                     "--max-new-tokens", "4", "-o", out)
        assert result.code == 0, result.err
        assert [r["prompt"] for r in read_jsonl(out)] == expected


@pytest.mark.parametrize("case, message", [
    ("empty prompts file", "prompts.txt is empty"),
    ("bad jsonl line", "prompts.jsonl:2: not valid JSON"),
    ("missing model dir", "does-not-exist does not exist"),
    ("no prompts", "nothing to generate"),
    ("greedy with top-k", "--greedy does not sample, so --top-k"),
    ("stream with beams", "--stream shows one sequence"),
    ("not a language model", "is a text-classification model"),
    ("compile without a static cache", "--compile needs --cache static"),
    ("unknown cache", "--cache must be dynamic or static"),
])
def test_bad_input_is_one_clear_line(cli, model_dir, tmp_path, case, message):
    empty, jsonl = tmp_path / "prompts.txt", tmp_path / "prompts.jsonl"
    empty.write_text("\n  \n", encoding="utf-8")
    jsonl.write_text('{"prompt": "a"}\n{"prompt": \n', encoding="utf-8")
    classifier = tmp_path / "classifier"
    classifier.mkdir()
    (classifier / "config.json").write_text(json.dumps({"architectures": ["BertForSequenceClassification"]}))
    args = {
        "empty prompts file": (model_dir, "--prompts-file", empty),
        "bad jsonl line": (model_dir, "--prompts-file", jsonl),
        "missing model dir": (tmp_path / "does-not-exist", "-p", "hi"),
        "no prompts": (model_dir,),
        "greedy with top-k": (model_dir, "-p", "hi", "--greedy", "--top-k", "5"),
        "stream with beams": (model_dir, "-p", "hi", "--stream", "--num-beams", "2"),
        "not a language model": (classifier, "-p", "hi"),
        "compile without a static cache": (model_dir, "-p", "hi", "--compile"),
        "unknown cache": (model_dir, "-p", "hi", "--cache", "paged"),
    }[case]
    result = cli("generate", *args)
    assert result.code == 2
    assert message in result.err
    assert "Traceback" not in result.err and result.err.count("error:") == 1
