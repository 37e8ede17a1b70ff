"""Text generation: options over the model's generation_config.json, batched prompts, exact stop
strings and streaming. Used by `hftool generate` and by `hftool predict` on language models.

    from hftool import api
    from hftool.generation import GenerationOptions

    api.generate("runs/gpt2", ["Once upon a time"], GenerationOptions(do_sample=False, max_new_tokens=40))
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field

from hftool import logs
from hftool.config import Option
from hftool.errors import HftoolError
from hftool.models import TextModel

# transformers stops at 20 tokens (prompt included) when a model sets no length: too short to judge.
DEFAULT_MAX_NEW_TOKENS = 100
SAMPLING = ("temperature", "top_k", "top_p")


@dataclass
class GenerativeModel(TextModel):
    """model.* options of tasks whose models write text."""

    # generation_config.json fields saved with a generative run: the defaults `hftool generate`
    # and evaluation use on it, e.g. {do_sample: true, top_p: 0.95, max_new_tokens: 100}. Empty
    # keeps the model's own (greedy for GPT-2, which loops on repeated phrases).
    generation_config: dict = field(default_factory=dict)


def update_generation_config(generation, fields: dict) -> None:
    """Apply model.generation_config, rejecting names GenerationConfig does not have."""
    import difflib

    if not fields:
        return
    known = [k for k in vars(generation) if not k.startswith("_")]
    for key, value in fields.items():
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f"did you mean '{close[0]}'?" if close else "see transformers.GenerationConfig"
            raise HftoolError(f"model.generation_config has no field '{key}': {hint}")
        setattr(generation, key, value)
    try:
        generation.validate(strict=True)
    except ValueError as err:
        raise HftoolError(f"model.generation_config is invalid: {' '.join(str(err).split())}") from None


# `hftool generate` options of the tasks that write text (causal LM, seq2seq); each becomes the
# GenerationOptions field of the same name (--greedy/--sample sets do_sample).
TEXT_GENERATION_OPTIONS = (
    Option("max_new_tokens", int, "Tokens to generate at most.", min=1),
    Option("min_new_tokens", int, "Tokens to generate before EOS may end a text.", min=0),
    Option("greedy", bool, "Greedy decoding or sampling (default: the model's generation_config.json).",
           flags=("--greedy/--sample",)),
    Option("temperature", float, "Sampling temperature (implies --sample)."),
    Option("top_k", int, "Sample from the k most likely tokens (implies --sample).", min=0),
    Option("top_p", float, "Sample from the smallest set with this probability (implies --sample)."),
    Option("repetition_penalty", float, "Above 1.0 discourages repeating tokens."),
    Option("no_repeat_ngram_size", int, "Never repeat an n-gram of this size.", min=0),
    Option("num_beams", int, "Beam search with this many beams.", min=1),
    Option("num_return_sequences", int, "Texts per prompt.", min=1),
    Option("stop", list, "End each text right before this string (repeatable)."),
    Option("cache", str, "KV cache: dynamic (default) or static (allocated once; lets --compile keep one graph)."),
    Option("compile", bool, "torch.compile the decoding step (needs --cache static; default: compiled with a static "
                            "cache on GPUs only).", flags=("--compile/--no-compile",)),
)


@dataclass
class GenerationOptions:
    """What to change from the model's generation_config.json; None keeps the model's value
    (a fine-tuned run saved its recipe's model.generation_config there)."""

    max_new_tokens: int | None = None  # None: the model's, else DEFAULT_MAX_NEW_TOKENS
    min_new_tokens: int | None = None
    do_sample: bool | None = None  # False: greedy (beam search with num_beams > 1); a sampling knob implies True
    temperature: float | None = None
    top_k: int | None = None
    top_p: float | None = None
    repetition_penalty: float | None = None
    no_repeat_ngram_size: int | None = None
    num_beams: int | None = None
    num_return_sequences: int | None = None
    # Each text ends right before the first of these strings (dropped), and generation stops there.
    stop: list[str] = field(default_factory=list)
    # Seeds sampling: the same seed, prompts and batch size give the same text.
    seed: int | None = None
    # Prompts per generate call; prompts are sorted by length first, so little padding is needed.
    batch_size: int = 8
    # KV cache: "dynamic" grows with each token; "static" is allocated once at its full length,
    # which lets torch.compile keep one graph for the whole generation (the GPU speed-up).
    cache: str | None = None
    # torch.compile the decoding step (needs cache="static"). None: transformers' own choice, which
    # compiles with a static cache on GPUs only; True also compiles on CPU; False never compiles.
    compile: bool | None = None

    @classmethod
    def from_flags(cls, greedy: bool | None = None, **flags) -> GenerationOptions:
        """From `hftool generate`'s flags (TEXT_GENERATION_OPTIONS, seed, batch_size): None is not
        given; --greedy/--sample set do_sample."""
        given = {k: v for k, v in flags.items() if v is not None}
        if greedy is not None:
            given["do_sample"] = not greedy
        if "stop" in given:
            given["stop"] = list(given["stop"])
        return cls(**given)

    def generate_kwargs(self, model_defaults) -> dict:
        """The settings to pass to `model.generate`, checked before any model runs.

        Args:
            model_defaults: The model's GenerationConfig; it fills what is not given here.
        """
        names = [f.name for f in dataclasses.fields(self)
                 if f.name not in ("stop", "seed", "batch_size", "cache", "compile")]
        given = {k: getattr(self, k) for k in names if getattr(self, k) is not None}
        sampling = [k for k in SAMPLING if k in given]
        if sampling and self.do_sample is False:
            raise HftoolError(f"--greedy does not sample, so --{sampling[0].replace('_', '-')} would be ignored; "
                              "drop one of them")
        if sampling:
            given["do_sample"] = True
        if any(not s for s in self.stop):
            raise HftoolError("--stop needs a non-empty string")
        if self.batch_size < 1:
            raise HftoolError(f"--batch-size must be at least 1, got {self.batch_size}")
        merged = copy.deepcopy(model_defaults)  # e.g. several sequences are fine when the model samples
        merged.update(**given)
        try:  # conflicts count only where the user set a flag: a model's own odd defaults are its business
            merged.validate(strict=True, user_set_attributes=set(given))
        except ValueError as err:
            raise HftoolError(f"invalid generation settings: {' '.join(str(err).split())}") from None
        if "max_new_tokens" not in given and model_defaults.max_new_tokens is None:
            given["max_new_tokens"] = DEFAULT_MAX_NEW_TOKENS
        if self.stop:
            given["stop_strings"] = list(self.stop)
        return given | self._cache_kwargs()

    def _cache_kwargs(self) -> dict:
        if self.cache not in (None, "dynamic", "static"):
            raise HftoolError(f"--cache must be dynamic or static, got {self.cache!r}")
        if self.compile and self.cache != "static":
            raise HftoolError("--compile needs --cache static: a dynamic cache changes shape with every token, "
                              "so the compiled step would recompile each time")
        out = {}
        if self.cache == "static":
            out["cache_implementation"] = "static"
        if self.compile is False:
            out["disable_compile"] = True
        elif self.compile:
            from transformers import CompileConfig

            config = CompileConfig()
            config._compile_all_devices = True  # CPUs too: transformers compiles only on accelerators by itself
            out["compile_config"] = config
        return out


def continuation(tokenizer, ids: list[int], eos_ids: set[int], stop: list[str]) -> str:
    """The text of generated `ids`: up to the first EOS, and cut right before the first stop string."""
    end = next((i for i, t in enumerate(ids) if t in eos_ids), len(ids))
    text = tokenizer.decode(ids[:end], skip_special_tokens=True)
    cuts = [text.find(s) for s in stop if s in text]
    return text[: min(cuts)] if cuts else text


def generate(model, tokenizer, prompts: list[str], options: GenerationOptions | None = None,
             on_text: Callable[[int, str], None] | None = None, add_special_tokens: bool = True) -> list[dict]:
    """Continue each prompt.

    Args:
        model: A causal LM, or an encoder-decoder model (T5, BART, Marian), whose prompts are its
            inputs (on the device it should run on).
        tokenizer: Its tokenizer; a causal LM's padding is set to the left, so every row ends where
            generation starts.
        prompts: Texts to continue (encoder-decoder: to transform); an empty one starts from the BOS token.
        options: What to change from the model's generation_config.
        on_text: Streaming: called as on_text(prompt_index, piece) with each new piece of text as
            it is generated, prompts one at a time (at least one call per prompt). The pieces
            of a prompt join into its generated_text.
        add_special_tokens: False for prompts that carry their own (a rendered chat template).

    Returns:
        One {"prompt", "generated_text"} per returned sequence (the continuation only; an
        encoder-decoder model's whole output), grouped by prompt in prompt order.
    """
    import torch

    options = options or GenerationOptions()
    defaults = model.generation_config
    kwargs = options.generate_kwargs(defaults)
    per_prompt = kwargs.get("num_return_sequences") or defaults.num_return_sequences or 1
    if on_text is not None and (per_prompt > 1 or (kwargs.get("num_beams") or defaults.num_beams or 1) > 1):
        raise HftoolError("--stream shows one sequence as it grows; drop --num-beams/--num-return-sequences or --stream")
    eos = defaults.eos_token_id if defaults.eos_token_id is not None else tokenizer.eos_token_id
    eos_ids = set(eos) if isinstance(eos, list) else {eos} - {None}
    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    # An encoder-decoder model generates from its decoder's start token, not after the prompt:
    # the prompt keeps the usual right padding, is not cut from the output, and does not count
    # against the decoder's positions.
    encoder_decoder = bool(getattr(model.config, "is_encoder_decoder", False))
    if not encoder_decoder:
        tokenizer.padding_side = "left"
    encoded = [ids or [start] for ids in tokenizer(list(prompts), add_special_tokens=add_special_tokens)["input_ids"]]
    size = 1 if on_text is not None else options.batch_size
    order = list(range(len(prompts)))
    if size > 1:
        order.sort(key=lambda i: len(encoded[i]))  # similar lengths share a batch: little padding
    texts: list[list[str]] = [[] for _ in prompts]
    device = next(model.parameters()).device
    if options.seed is not None:
        torch.manual_seed(options.seed)  # every device's generator
    model.eval()
    context = None if encoder_decoder else getattr(model.config, "max_position_embeddings", None)
    limit = kwargs.get("max_new_tokens") or defaults.max_new_tokens
    for first in range(0, len(order), size):
        rows = order[first:first + size]
        batch = tokenizer.pad({"input_ids": [encoded[i] for i in rows]}, return_tensors="pt").to(device)
        call = kwargs
        width = batch["input_ids"].shape[1]
        if context and limit and width + limit > context:  # past the position table GPT-2 fails with an IndexError
            room = context - width
            if room < 1:
                raise HftoolError(f"prompt {rows[0] + 1} is {width} tokens long, and the model's context is {context} "
                                  "tokens; shorten the prompt")
            logs.warn(f"the model's context is {context} tokens: generating at most {room} new tokens after "
                      f"{width} prompt tokens (asked for {limit})")
            call = {**kwargs, "max_new_tokens": room,
                    "min_new_tokens": min(kwargs.get("min_new_tokens") or defaults.min_new_tokens or 0, room)}
        streamer = None
        if on_text is not None:
            streamer = _Streamer(lambda ids: continuation(tokenizer, ids, eos_ids, options.stop),
                                 lambda piece, i=rows[0]: on_text(i, piece), options.stop)
        try:
            with torch.inference_mode():
                out = model.generate(**batch, **call, tokenizer=tokenizer, streamer=streamer)
        except ValueError as err:  # settings the model cannot honour, e.g. greedy with several sequences
            raise HftoolError(f"generation failed: {' '.join(str(err).split())}") from None
        start = 1 if encoder_decoder else batch["input_ids"].shape[1]  # after the decoder start token / the prompt
        for row, ids in enumerate(out[:, start:].tolist()):
            texts[rows[row // per_prompt]].append(continuation(tokenizer, ids, eos_ids, options.stop))
    return [{"prompt": p, "generated_text": t} for p, generated in zip(prompts, texts) for t in generated]


class _Streamer:
    """Receives tokens from `model.generate` and hands on each piece of text once it is settled.

    Text is recomputed from all tokens with the same function as the final text, so the pieces
    join into exactly that. A piece is held back while it may still change: a partial UTF-8
    character, trailing spaces (tokenizers may tidy them), or the start of a stop string.
    """

    def __init__(self, text_of: Callable[[list[int]], str], on_piece: Callable[[str], None], stop: list[str]):
        self.text_of, self.on_piece, self.stop = text_of, on_piece, stop
        self.ids: list[int] | None = None  # None until the prompt (generate's first put) has passed
        self.shown = 0

    def put(self, value) -> None:
        if self.ids is None:
            self.ids = []
            return
        self.ids += value.reshape(-1).tolist()
        text = self.text_of(self.ids)
        settled = len(text.rstrip(" \t\n\ufffd"))
        held = max((n for s in self.stop for n in range(1, len(s)) if text.endswith(s[:n])), default=0)
        settled = min(settled, len(text) - held)
        if settled > self.shown:
            self.on_piece(text[self.shown:settled])
            self.shown = settled

    def end(self) -> None:
        text = self.text_of(self.ids or [])
        self.on_piece(text[self.shown:])
        self.ids, self.shown = None, 0
