"""Model specs -> models: an existing local path | a hub id | tiny:<arch>.

A local path always wins (a model dir or an hftool run dir, which is one; an `hftool export` dir
loads as its onnxruntime graphs, hftool.export.OnnxModel). Hub ids fail fast when offline, saying
what to pass instead. `tiny:<arch>` builds a small randomly initialised
model from a config, with a tokenizer trained on the run's own training text.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hftool.config import ModelConfig
from hftool.errors import HftoolError

TINY_PREFIX = "tiny:"


@dataclass
class TextModel(ModelConfig):
    """model.* options of tasks with a tokenizer."""

    # Vocabulary of the tokenizer that tiny:<arch> trains on the training texts: small keeps the
    # embedding matrix cheap, large enough that common words stay whole.
    tiny_vocab_size: int = 2000

    def check(self) -> None:
        super().check()
        self.require("tiny_vocab_size", self.tiny_vocab_size > 0, "positive")


def tiny_arch(spec: str) -> str | None:
    """'tiny:bert' -> 'bert'; anything else -> None."""
    return spec[len(TINY_PREFIX):] if spec.startswith(TINY_PREFIX) else None


def is_local(spec: str) -> bool:
    return Path(spec).expanduser().exists()


def is_run_dir(path: str | Path) -> bool:
    """An hftool run dir: a model dir with hftool's resolved config.yaml beside the weights."""
    path = Path(path)
    return (path / "config.yaml").is_file() and (path / "config.json").is_file()


NO_REMOTE_CODE = "hftool never runs code shipped in a model dir"


def read_config_json(path: str | Path) -> dict:
    """A model dir's config.json as a dict; a broken one is an error blaming config.json."""
    file = Path(path).expanduser() / "config.json"
    try:
        loaded = json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise HftoolError(f"{file} is not valid JSON (line {err.lineno}: {err.msg}); restore the file") from None
    except UnicodeDecodeError:
        raise HftoolError(f"{file} is not UTF-8 text; restore the file") from None
    if not isinstance(loaded, dict):
        raise HftoolError(f"{file} is not a JSON object of model settings; restore the file")
    return loaded


def check_model_dir(path: Path) -> None:
    """Fail before transformers reads a local model dir that cannot load without running code:
    a config.json whose model_type transformers does not know but whose auto_map names Python
    files of the dir. transformers would ask on stdin whether to run them; hftool never does."""
    if not (path / "config.json").is_file():
        files = ", ".join(sorted(p.name for p in path.iterdir())[:5]) or "it is empty"
        raise HftoolError(f"{path} is not a model directory (no config.json; {files}); pass a saved model or run dir")
    config = read_config_json(path)
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    model_type = config.get("model_type")
    if model_type in CONFIG_MAPPING:
        return
    if config.get("auto_map"):
        classes = ", ".join(f"{k}: {v}" for k, v in config["auto_map"].items())
        raise HftoolError(f"{path} needs custom code (config.json auto_map: {classes}); {NO_REMOTE_CODE}: use a model "
                          "whose architecture transformers includes")
    if model_type is None:
        return  # old configs without one: transformers guesses from the name, or says what is wrong
    import transformers

    raise HftoolError(f"{path / 'config.json'}: model_type {model_type!r} is not one transformers "
                      f"{transformers.__version__} knows; upgrade transformers or pass another model")


def load(kind: str, loader: Any, spec: str, token: str | None = None, **kwargs: Any) -> Any:
    """`loader.from_pretrained(spec, ...)` for a local path or a hub id, with clear errors. A run
    dir with adapters (model.peft=lora) loads as its base with the adapters on it.

    Auto classes get trust_remote_code=False: transformers otherwise asks on stdin whether to run
    a model's own Python files (and waits for an answer) - hftool never runs them.

    Args:
        kind: What is loaded, for messages ("model", "tokenizer").
        loader: A class with from_pretrained (AutoConfig, AutoTokenizer, AutoModelFor...).
        spec: A local directory or a hub id.
        token: Hub token for private models.
    """
    if getattr(loader, "__name__", "").startswith("Auto"):
        kwargs["trust_remote_code"] = False
    path = Path(spec).expanduser()
    weights = kind == "model" and not loader.__name__.endswith("Config")  # a model, not its config
    if weights:
        from hftool import adapters

        kwargs = {**kwargs, **adapters.load_kwargs()}  # a 4-bit base under model.peft=qlora
        if adapters.is_adapter_dir(path):
            return adapters.load(loader, path, token, **kwargs)
    if path.exists():
        if not path.is_dir():
            raise HftoolError(f"{spec} is not a model directory (no config.json); pass a saved model or run dir")
        check_model_dir(path)
        if kind == "model" and _loads_weights(loader):
            from hftool.export import OnnxModel, is_export

            if is_export(path):  # the export's graphs stand in for the weights it does not have
                return OnnxModel.load(path, kwargs.get("config"))
        try:
            loaded = loader.from_pretrained(str(path), **kwargs)
        except (OSError, ValueError) as err:
            if kind == "tokenizer" and "instantiate the backend tokenizer" in str(err):  # no vocabulary file at all
                raise HftoolError(_no_vocabulary(path)) from None
            raise HftoolError(_load_error(spec, kind, err)) from None
        if kind == "tokenizer":
            check_vocabulary(loaded, path)
        return loaded
    # "runs/mine" is a path when ./runs exists, though it reads like a hub id "owner/name".
    if spec.startswith((".", "/", "~")) or spec.count("/") > 1 or (path.parent != Path(".") and path.parent.is_dir()):
        raise HftoolError(f"model directory {spec} does not exist; check the path")
    from hftool.hub import from_hub

    def from_hub_id():
        try:
            return loader.from_pretrained(spec, token=token, **kwargs)
        except ValueError as err:
            if "custom code" in str(err):
                raise HftoolError(_load_error(spec, kind, err)) from None
            raise

    return from_hub(kind, spec, "a local model directory (--model path/to/model) or a tiny:<arch> model", from_hub_id)


def _load_error(spec: str, kind: str, err: Exception) -> str:
    text = str(err)
    if "custom code" in text or "trust_remote_code" in text:  # a tokenizer or processor class in the dir's files
        return f"{spec}: the {kind} needs custom code; {NO_REMOTE_CODE}: use a model whose {kind} transformers includes"
    return f"{spec}: the {kind} cannot be loaded ({text.strip().splitlines()[0]})"


TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "spiece.model", "sentencepiece.bpe.model",
                   "tokenizer.model", "source.spm")


def check_vocabulary(tokenizer: Any, path: Path) -> None:
    """A tokenizer whose files are gone loads without error but knows only its special tokens,
    so every word would become [UNK]: an error naming the missing file instead."""
    if len(tokenizer.get_vocab()) <= len(set(tokenizer.all_special_tokens)):
        raise HftoolError(_no_vocabulary(path))


def _no_vocabulary(path: Path) -> str:
    present = [name for name in TOKENIZER_FILES if (path / name).is_file()]
    return (f"{path / (present[0] if present else 'tokenizer.json')}: missing or empty, so the tokenizer has no "
            "vocabulary; restore the model's tokenizer files (tokenizer.json)")


def _loads_weights(loader: Any) -> bool:
    """Whether `loader` loads a model (not its config)."""
    from transformers import AutoConfig, PretrainedConfig

    return loader is not AutoConfig and not (isinstance(loader, type) and issubclass(loader, PretrainedConfig))


def check_reachable(spec: str, token: str | None = None) -> None:
    """Fail before any data is read when a hub model cannot be loaded (offline, not cached).

    Specs with a scheme (tiny:bert, timm:resnet18) and local paths are left to the task.
    """
    if ":" in spec or is_local(spec):
        return
    from transformers import AutoConfig

    load("model", AutoConfig, spec, token)  # a small file; cached for the real load


def train_wordpiece(texts: Iterable[str], vocab_size: int, model_max_length: int = 512):
    """A lower-cased BERT WordPiece tokenizer whose vocabulary comes from `texts` (for tiny:bert).

    The vocabulary is every character seen (as `c` and `##c`, so nothing is ever [UNK]) plus
    the most frequent words, ties broken alphabetically. Unlike the `tokenizers` WordPiece
    trainer, whose merges depend on thread timing, the same texts always give the same
    vocabulary, so a seeded run is reproducible down to its embedding rows.
    """
    from collections import Counter

    from tokenizers import normalizers, pre_tokenizers
    from transformers import BertTokenizer

    normalizer, splitter = normalizers.BertNormalizer(lowercase=True), pre_tokenizers.BertPreTokenizer()
    counts: Counter[str] = Counter()
    for text in texts:
        counts.update(word for word, _ in splitter.pre_tokenize_str(normalizer.normalize_str(text)))
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    chars = sorted({c for word in counts for c in word})
    vocab = specials + chars + [f"##{c}" for c in chars]
    budget = max(0, vocab_size - len(vocab))
    words = [w for w, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])) if len(w) > 1][:budget]
    vocab = {token: i for i, token in enumerate(vocab + words)}
    return BertTokenizer(vocab=vocab, do_lower_case=True, model_max_length=model_max_length)


END_OF_TEXT = "<|endoftext|>"


def byte_bpe_merges(texts: Iterable[str], vocab_size: int,
                    specials: tuple[str, ...] = (END_OF_TEXT,)) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Vocabulary and merges of a GPT-2-style byte-level BPE learned from `texts`, `specials` first.

    Every byte is in the vocabulary, so any text encodes. The `tokenizers` BPE trainer breaks
    ties between equally frequent pairs by the pair itself, so the same texts give the same
    merges in every process (checked by a test), which seeded runs and `--resume` rely on.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(specials), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(texts, trainer)
    model = json.loads(tokenizer.to_str())["model"]
    return model["vocab"], [tuple(merge) for merge in model["merges"]]


def train_byte_bpe(texts: Iterable[str], vocab_size: int, model_max_length: int = 1024):
    """A GPT-2 tokenizer (byte-level BPE, <|endoftext|> as bos/eos/pad) learned from `texts` (for tiny:gpt2)."""
    from transformers import GPT2Tokenizer

    vocab, merges = byte_bpe_merges(texts, vocab_size)
    # pad = eos: batches pad with it and mask it out, as GPT-2 itself has no pad token.
    return GPT2Tokenizer(vocab=vocab, merges=merges, pad_token=END_OF_TEXT, model_max_length=model_max_length)


BOS, EOS, PAD = "<s>", "</s>", "<pad>"
ROLE_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>")
# tiny:llama's chat template (Zephyr's layout): a role marker and a line break before each turn,
# EOS after it, so generation stops where the assistant's turn ends.
CHAT_TEMPLATE = ("{{ bos_token }}{% for message in messages %}"
                 "{{ '<|' + message['role'] + '|>\n' + message['content'] + eos_token }}{% endfor %}"
                 "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}")


def train_chat_tokenizer(texts: Iterable[str], vocab_size: int, model_max_length: int = 2048):
    """The tokenizer of tiny:llama: a byte-level BPE learned from `texts` with <s>, </s>, <pad> and
    the role markers of its chat template (CHAT_TEMPLATE, set on it) as special tokens."""
    from transformers import GPT2Tokenizer

    vocab, merges = byte_bpe_merges(texts, vocab_size, specials=(PAD, BOS, EOS, *ROLE_TOKENS))
    tokenizer = GPT2Tokenizer(vocab=vocab, merges=merges, bos_token=BOS, eos_token=EOS, pad_token=PAD, unk_token=EOS,
                              model_max_length=model_max_length)
    tokenizer.add_special_tokens({"additional_special_tokens": list(ROLE_TOKENS)})  # never split, dropped on decode
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def tiny_llama_config(tokenizer, overrides: dict, **fields: Any):
    """A small Llama config: 4 layers of width 128 with rotary positions, embeddings tied to the
    output layer (the vocabulary is small) and no dropout, like tiny:gpt2."""
    from transformers import LlamaConfig

    sizes = dict(hidden_size=128, intermediate_size=344, num_hidden_layers=4, num_attention_heads=4,
                 num_key_value_heads=4, max_position_embeddings=512, tie_word_embeddings=True)
    check_config_overrides(LlamaConfig(), overrides)
    return LlamaConfig(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                       eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                       **(sizes | fields | overrides))


def tiny_gpt2_config(tokenizer, overrides: dict, **fields: Any):
    """A small GPT-2 config: 4 layers of width 128, which learns templated or Shakespearean text
    within minutes on a CPU. Dropout is off: runs that short do not overfit, and dropout slows them."""
    from transformers import GPT2Config

    eos = tokenizer.eos_token_id  # GPT2Config's defaults (50256) lie outside a small vocabulary
    sizes = dict(n_embd=128, n_layer=4, n_head=4, n_positions=256, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    return GPT2Config(vocab_size=len(tokenizer), bos_token_id=eos, eos_token_id=eos, pad_token_id=tokenizer.pad_token_id,
                      **(sizes | fields | overrides))


def tiny_bert_config(tokenizer, overrides: dict, **fields: Any):
    """A small BERT config: 2 layers of width 128, enough to learn sentence-level cues in a minute."""
    from transformers import BertConfig

    sizes = dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=2, intermediate_size=256,
                 max_position_embeddings=512)
    check_config_overrides(BertConfig(), overrides)
    return BertConfig(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, **(sizes | fields | overrides))


def check_config_overrides(config: Any, overrides: dict) -> None:
    """Reject model.config_overrides keys the model's config does not have (typos train silently)."""
    import difflib

    known = set(config.to_dict()) | set(getattr(config, "attribute_map", {}))
    for key in overrides:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f"did you mean '{close[0]}'?" if close else "see the model's config.json for its fields"
            raise HftoolError(f"model.config_overrides: {type(config).__name__} has no field '{key}'; {hint}")


def tiny_tokenizer(run_dir: str | Path | None, train: Callable[[], Any]):
    """The tokenizer of a tiny:<arch> model: a resumed run's saved one, so token ids match its
    checkpoint, else a new one from `train()`."""
    if run_dir is not None and (Path(run_dir) / "tokenizer.json").is_file():
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(run_dir), trust_remote_code=False)
    return train()


def label_maps(labels: list[str]) -> dict:
    """Config fields that give a classifier its class names (they survive save/load)."""
    return {"num_labels": len(labels), "id2label": dict(enumerate(labels)),
            "label2id": {name: i for i, name in enumerate(labels)}}


def classifier_config(spec: str, token: str | None, labels: list[str] | None, overrides: dict):
    """A pretrained classifier's config with the run's labels; with labels=None (evaluate,
    predict) the model's own. Returns (config, labels)."""
    from transformers import AutoConfig

    config = load("model", AutoConfig, spec, token, **(label_maps(labels) if labels else {}), **overrides)
    check_config_overrides(config, overrides)
    return config, labels or [config.id2label[i] for i in range(config.num_labels)]


def pretrained_with_head(cfg, spec: str, auto_model: Any, fields: dict, new_head: bool):
    """A pretrained model with the run's label fields (num_labels, id2label, ...) in its config.

    With `new_head` (a new label set) the mismatched head is re-initialised; with
    model.pretrained=false the architecture is built from the config with random weights.
    Returns (config, model).
    """
    token, overrides = cfg.model.token, dict(cfg.model.config_overrides)
    from transformers import AutoConfig

    config = load("model", AutoConfig, spec, token, **fields, **overrides)
    check_config_overrides(config, overrides)
    if cfg.model.pretrained or not new_head:
        model = load("model", auto_model, spec, token, config=config, ignore_mismatched_sizes=new_head)
    else:
        model = auto_model.from_config(config)
    return config, model


def check_tiny(spec: str, supported: tuple[str, ...], task: str) -> str:
    arch = tiny_arch(spec)
    if arch not in supported:
        raise HftoolError(f"model '{spec}': {task} builds tiny models for {', '.join(TINY_PREFIX + a for a in supported)}")
    return arch


def cast_for_inference(model: Any, dtype: Any, device: Any) -> Any:
    """`model.to(device, dtype)`, keeping in fp32 what transformers keeps there when it loads a
    checkpoint in that dtype: `_keep_in_fp32_modules` in fp16 (T5's `wo`, which overflows in
    fp16), `_keep_in_fp32_modules_strict` in fp16 and bf16 (the router gates of mixture-of-experts
    models). A name matches whole dotted parts of a parameter's name ("gate.weight" is
    `...mlp.gate.weight`, not `...gate_proj.weight`). Returns the model."""
    import re

    import torch

    model.to(device=device, dtype=dtype)
    keep = set()
    if dtype in (torch.float16, torch.bfloat16):
        keep |= set(getattr(model, "_keep_in_fp32_modules_strict", None) or ())
    if dtype == torch.float16:
        keep |= set(getattr(model, "_keep_in_fp32_modules", None) or ())
    if keep:
        pattern = re.compile(r"(^|\.)(" + "|".join(re.escape(name) for name in sorted(keep)) + r")(\.|$)")
        for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
            if pattern.search(name) and tensor.is_floating_point():
                tensor.data = tensor.data.float()
    return model
