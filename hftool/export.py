"""`hftool export`: a run as ONNX graphs beside its tokenizer or processor, checked against PyTorch.

    from hftool import api

    report = api.export("runs/bert-cls", "exports/bert-cls")   # raises ParityError (exit 1) on a mismatch
    api.predict("exports/bert-cls", ["a wonderful film"])      # onnxruntime, no PyTorch weights

What differs between tasks (which graphs, their inputs and outputs, what a batch feeds them) is
the task's `onnx_graphs` / `onnx_feed` hooks; this module exports those graphs with
`torch.onnx.export` (the dynamo exporter), runs them in onnxruntime, checks them against the run's
PyTorch model on its validation examples, and quantizes them. An export dir loads as an
`OnnxModel` wherever hftool loads a model (hftool.models.load), so each task's own `predict`
(and `evaluate`, for one-graph tasks) runs on onnxruntime unchanged.

Graphs, by task:
    model.onnx      one forward pass: classifiers' logits, DETR's scores/labels/boxes in pixels
                    (post-processing in the graph), the forecaster's next values
    decoder.onnx    causal LM: one decoding step with a KV cache (prompt or new tokens + past
                    key/values -> logits + present key/values)
    encoder.onnx + decoder.onnx
                    seq2seq and captioning: the encoder once, then decoding steps with the
                    decoder's self-attention cache
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import os
import re
import shutil
import warnings
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hftool import adapters, logs
from hftool.errors import HftoolError

FORMATS = ("onnx", "safetensors")
QUANTIZATIONS = ("dynamic-int8",)
MANIFEST = "export.json"
WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
DEFAULT_ATOL = 1e-4  # fp32 graphs differ from PyTorch by rounding only: ~1e-7 on logits (benchmarks/README.md)


class ParityError(HftoolError):
    """The exported graphs compute something else than the run: exit 1, files kept for inspection."""

    exit_code = 1


@dataclass
class Graph:
    """One ONNX file a task exports.

    `module(*inputs.values())` computes the graph's outputs in PyTorch; `inputs` are example
    tensors to trace it with (batch and sequence of at least 2: torch.export fixes sizes 0 and 1).
    """

    name: str  # the file's stem: model | encoder | decoder
    module: Any  # a torch.nn.Module taking the inputs positionally, returning the outputs in order
    inputs: dict[str, Any]
    outputs: list[str]
    axes: dict[str, dict[int, str]] = field(default_factory=dict)  # input -> {axis: name}: the dynamic axes
    # The transformers model to trace with eager attention: its SDPA path passes a symbolic
    # `is_causal` flag that torch.export cannot give to the SDPA kernel (transformers' own TODO).
    eager: Any = None


class Forward(torch.nn.Module):
    """`model(**inputs)` as a graph: named positional inputs in, the named outputs out, or what
    `post(outputs, inputs)` makes of them (post-processing inside the graph)."""

    def __init__(self, model, inputs: list[str], outputs: list[str], post=None, model_inputs: list[str] | None = None):
        super().__init__()
        self.model, self.names, self.outputs, self.post = model, list(inputs), list(outputs), post
        self.model_inputs = list(model_inputs or inputs)

    def forward(self, *tensors):
        given = dict(zip(self.names, tensors))
        out = self.model(**{name: given[name] for name in self.model_inputs})
        if self.post is not None:
            return self.post(out, given)
        return tuple(out[name] for name in self.outputs)


def model_graph(model, batch: dict, axes: dict[str, dict[int, str]], outputs: list[str]) -> Graph:
    """model.onnx of a one-pass model: `model(**inputs)` -> its named outputs; the inputs are
    the keys of `axes` (their dynamic axes), taken from `batch`."""
    return Graph("model", Forward(model, list(axes), outputs), {name: batch[name] for name in axes}, outputs, axes)


def _cache_keyword(model) -> str:
    """The forward keyword of the KV cache: `cache` in transformers >= 5.2, `past_key_values` before."""
    import inspect

    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _flat(cache) -> list:
    """A DynamicCache's tensors: key 0, value 0, key 1, ..."""
    return [t for layer in cache.layers for t in (layer.keys, layer.values)]


def _past_names(count: int) -> list[str]:
    return [f"past_key_values.{i // 2}.{'key' if i % 2 == 0 else 'value'}" for i in range(count)]


class DecoderStep(torch.nn.Module):
    """One decoding step with a self-attention cache, the past passed as flat tensors.

    Decoder-only: (input_ids, attention_mask, position_ids, *past) -> (logits, *present).
    Encoder-decoder: (decoder_input_ids, encoder_hidden_states[, encoder_attention_mask], *past)
    -> (logits, *present). Cross-attention keys and values are recomputed from
    encoder_hidden_states at every step: a hidden cost of one projection per layer and step,
    which keeps the graph to one cache and one file.
    """

    def __init__(self, model, encoder_decoder: bool, encoder_mask: bool):
        super().__init__()
        self.model, self.encoder_decoder, self.encoder_mask = model, encoder_decoder, encoder_mask
        self.keyword = _cache_keyword(model)

    def forward(self, *tensors):
        from transformers import DynamicCache, EncoderDecoderCache

        fixed = 3 if not self.encoder_decoder else (3 if self.encoder_mask else 2)
        head, past = tensors[:fixed], tensors[fixed:]
        self_cache = DynamicCache([(past[i], past[i + 1]) for i in range(0, len(past), 2)])
        if not self.encoder_decoder:
            input_ids, attention_mask, position_ids = head
            out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                             use_cache=True, **{self.keyword: self_cache})
        else:
            ids, hidden = head[0], head[1]
            # A mask over past + new tokens makes the decoder build an explicit causal mask (see Graph.eager).
            mask = torch.ones(ids.shape[0], past[0].shape[2] + ids.shape[1], dtype=torch.long, device=ids.device)
            extra = {"attention_mask": head[2]} if self.encoder_mask else {}
            cache = EncoderDecoderCache(self_cache, DynamicCache())
            out = self.model(decoder_input_ids=ids, decoder_attention_mask=mask, encoder_outputs=(hidden,),
                             use_cache=True, **extra, **{self.keyword: cache})
        return (out.logits, *_flat(self_cache))  # the cache was updated in place


def _example_cache(model, **inputs) -> list:
    """Real past key/values for tracing: the model run once on `inputs`."""
    from transformers import DynamicCache, EncoderDecoderCache

    cache = DynamicCache()
    if getattr(model.config, "is_encoder_decoder", False):
        cache = EncoderDecoderCache(cache, DynamicCache())
    with torch.no_grad():
        model(**inputs, use_cache=True, **{_cache_keyword(model): cache})
    return [t.clone() for t in _flat(cache.self_attention_cache if hasattr(cache, "self_attention_cache") else cache)]


def causal_lm_graphs(model, input_ids) -> list[Graph]:
    """decoder.onnx of a causal LM: prompt (or new) tokens + past -> logits + present.

    Args:
        input_ids: Example tokens, (batch >= 2, sequence >= 2).
    """
    batch, steps = input_ids.shape
    past = _example_cache(model, input_ids=input_ids[:, :3])
    mask = torch.ones(batch, 3 + steps, dtype=torch.long)
    positions = torch.arange(3, 3 + steps).repeat(batch, 1)
    names = _past_names(len(past))
    inputs = {"input_ids": input_ids, "attention_mask": mask, "position_ids": positions, **dict(zip(names, past))}
    axes = {"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "total_sequence"},
            "position_ids": {0: "batch", 1: "sequence"}} | {n: {0: "batch", 2: "past_sequence"} for n in names}
    outputs = ["logits", *(n.replace("past_key_values", "present") for n in names)]
    return [Graph("decoder", DecoderStep(model, False, False), inputs, outputs, axes, eager=model)]


def encoder_decoder_graphs(model, encoder_inputs: dict[str, Any], axes: dict[str, dict[int, str]]) -> list[Graph]:
    """encoder.onnx (encoder_inputs -> encoder_hidden_states) and decoder.onnx (decoding steps
    with a self-attention cache) of an encoder-decoder model (T5, BART, VisionEncoderDecoder).

    Args:
        encoder_inputs: Example encoder inputs by name (input_ids + attention_mask, or pixel_values), batch >= 2.
        axes: Their dynamic axes.
    """
    encoder = Forward(model.get_encoder(), list(encoder_inputs), ["last_hidden_state"])
    with torch.no_grad():
        hidden = encoder(*encoder_inputs.values())[0]
    batch = hidden.shape[0]
    start = torch.full((batch, 3), model.config.decoder_start_token_id, dtype=torch.long)
    mask = encoder_inputs.get("attention_mask")
    past = _example_cache(model, decoder_input_ids=start, encoder_outputs=(hidden,),
                          **({"attention_mask": mask} if mask is not None else {}))
    names = _past_names(len(past))
    inputs = {"decoder_input_ids": start[:, :2], "encoder_hidden_states": hidden}
    decoder_axes = {"decoder_input_ids": {0: "batch", 1: "decoder_sequence"},
                    "encoder_hidden_states": {0: "batch", 1: "encoder_sequence"}}
    if mask is not None:
        inputs["encoder_attention_mask"] = mask
        decoder_axes["encoder_attention_mask"] = {0: "batch", 1: "encoder_sequence"}
    inputs |= dict(zip(names, past))
    decoder_axes |= {n: {0: "batch", 2: "past_sequence"} for n in names}
    outputs = ["logits", *(n.replace("past_key_values", "present") for n in names)]
    return [Graph("encoder", encoder, dict(encoder_inputs), ["encoder_hidden_states"], axes, eager=model),
            Graph("decoder", DecoderStep(model, True, mask is not None), inputs, outputs, decoder_axes, eager=model)]


# ------------------------------------------------------------------------------ onnxruntime side
def _providers() -> list[str]:
    import onnxruntime as ort

    available = ort.get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]


def session(path: Path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    # PyTorch's thread count (the physical cores): onnxruntime's own default also took the second
    # hyperthread of a core here and ran 1.7x slower than with one thread (benchmarks/README.md).
    options.intra_op_num_threads = torch.get_num_threads()
    return ort.InferenceSession(str(path), options, providers=_providers())


def _numpy(value) -> np.ndarray:
    return value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)


class OnnxModel(torch.nn.Module):
    """An export dir's graphs in onnxruntime, in the place of the PyTorch model.

    `model(**inputs)` runs model.onnx and returns its outputs by name (logits, ...), so a task's
    predict and evaluate run on it as on the PyTorch model; `model.generate(...)` decodes with
    decoder.onnx (and encoder.onnx): greedy, or sampling with temperature / top-k / top-p.
    """

    def __init__(self, sessions: dict[str, Any], config, generation_config=None):
        super().__init__()
        self.sessions, self.config, self.generation_config = sessions, config, generation_config
        # Callers read the device from the first parameter (hftool.evaluation.run_batches);
        # onnxruntime takes and returns host arrays.
        self.anchor = torch.nn.Parameter(torch.empty(0), requires_grad=False)

    @classmethod
    def load(cls, path: str | Path, config=None) -> OnnxModel:
        """The graphs an export dir's export.json names, with its config (and generation config)."""
        path = Path(path)
        manifest = read_manifest(path)
        if config is None:
            from transformers import AutoConfig

            config = AutoConfig.from_pretrained(str(path), trust_remote_code=False)
        generation = None
        if (path / "generation_config.json").is_file():
            from transformers import GenerationConfig

            generation = GenerationConfig.from_pretrained(str(path))
        if not manifest.get("parity", {}).get("passed", False):
            logs.warn(f"{path} failed its parity check when it was exported ({MANIFEST}); its outputs may differ "
                      "from the run's")
        return cls({name: session(path / file) for name, file in manifest["graphs"].items()}, config, generation)

    def run(self, graph: str, feed: dict) -> dict[str, np.ndarray]:
        """Run graph `graph` on the inputs of `feed` it takes (others are ignored)."""
        if graph not in self.sessions:
            raise HftoolError(f"this ONNX export has no {graph}.onnx (it has {', '.join(self.sessions)}); "
                              "run this on the PyTorch run instead")
        runner = self.sessions[graph]
        names = [i.name for i in runner.get_inputs()]
        missing = [n for n in names if n not in feed]
        if missing:
            raise HftoolError(f"{graph}.onnx needs input '{missing[0]}', which was not given; run this on the PyTorch "
                              "run instead")
        outputs = runner.run(None, {n: _numpy(feed[n]) for n in names})
        return dict(zip((o.name for o in runner.get_outputs()), outputs))

    def forward(self, **inputs):
        from transformers.utils import ModelOutput

        return ModelOutput(**{k: torch.from_numpy(v) for k, v in self.run("model", inputs).items()})

    def generate(self, input_ids=None, attention_mask=None, pixel_values=None, streamer=None, **settings):
        """Token ids as `transformers` generate returns them (the prompt, or the decoder's start
        token, then the new tokens); `settings` override the generation config."""
        return self.decode(input_ids, attention_mask, pixel_values, streamer, **settings)[0]

    def decode(self, input_ids=None, attention_mask=None, pixel_values=None, streamer=None, **settings):
        """generate, also returning each step's raw logits (batch, vocab) for the parity check."""
        g = self._settings(settings)
        eos = [g.eos_token_id] if isinstance(g.eos_token_id, int) else list(g.eos_token_id or [])
        pad = g.pad_token_id if g.pad_token_id is not None else (eos[0] if eos else 0)
        copies = g.num_return_sequences or 1
        if "encoder" in self.sessions:
            encoder_inputs = {"input_ids": input_ids, "attention_mask": attention_mask, "pixel_values": pixel_values}
            hidden = self.run("encoder", {k: v for k, v in encoder_inputs.items() if v is not None})
            hidden = np.repeat(hidden["encoder_hidden_states"], copies, axis=0)
            start = g.decoder_start_token_id if g.decoder_start_token_id is not None else self.config.decoder_start_token_id
            ids = torch.full((hidden.shape[0], 1), start, dtype=torch.long)
            fixed = {"encoder_hidden_states": hidden}
            if attention_mask is not None:
                fixed["encoder_attention_mask"] = _numpy(attention_mask).repeat(copies, axis=0)
            feed = {"decoder_input_ids": ids}
        else:
            ids = input_ids.repeat_interleave(copies, dim=0)
            mask = (torch.ones_like(ids) if attention_mask is None else attention_mask.repeat_interleave(copies, dim=0))
            positions = (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 0)  # as transformers: left padding
            fixed, feed = {}, {"input_ids": ids, "attention_mask": mask, "position_ids": positions}
        feed |= self._empty_past(ids.shape[0])
        start_length = ids.shape[1]
        limit = start_length + g.max_new_tokens if g.max_new_tokens is not None else g.max_length or 20
        processors = _processors(g, start_length, limit, eos)
        finished = torch.zeros(ids.shape[0], dtype=torch.bool)
        step_logits = []
        if streamer is not None:
            streamer.put(ids.cpu())
        while ids.shape[1] < limit and not finished.all():
            out = self.run("decoder", {**fixed, **feed})
            logits = torch.from_numpy(out.pop("logits")[:, -1, :]).float()
            step_logits.append(logits)
            scores = processors(ids, logits)
            if g.do_sample:
                chosen = torch.multinomial(torch.softmax(scores, dim=-1), num_samples=1).squeeze(1)
            else:
                chosen = scores.argmax(-1)
            chosen = torch.where(finished, torch.full_like(chosen, pad), chosen)
            ids = torch.cat([ids, chosen[:, None]], dim=1)
            if streamer is not None:
                streamer.put(chosen.cpu())
            if eos:
                finished |= torch.isin(chosen, torch.tensor(eos, dtype=torch.long))
            past = {name.replace("present", "past_key_values"): value for name, value in out.items()}
            if "encoder" in self.sessions:
                feed = {"decoder_input_ids": chosen[:, None], **past}
            else:
                mask = torch.cat([feed["attention_mask"], torch.ones(ids.shape[0], 1, dtype=torch.long)], dim=1)
                feed = {"input_ids": chosen[:, None], "attention_mask": mask,
                        "position_ids": feed["position_ids"][:, -1:] + 1, **past}
        if streamer is not None:
            streamer.end()
        return ids, step_logits

    def _empty_past(self, batch: int) -> dict[str, np.ndarray]:
        """Zero-length past key/values, shaped as decoder.onnx declares them (batch, heads, 0, head size)."""
        return {i.name: np.zeros((batch, i.shape[1], 0, i.shape[3]), dtype=np.float32)
                for i in self.sessions["decoder"].get_inputs() if i.name.startswith("past_key_values.")}

    def _settings(self, settings: dict):
        """The generation config updated with `settings`; what onnxruntime decoding cannot do is an error."""
        from transformers import GenerationConfig

        g = copy.deepcopy(self.generation_config or GenerationConfig.from_model_config(self.config))
        # Transformers' generate options with no meaning here: compilation and the cache's kind
        # concern PyTorch; stop strings cut the text afterwards (hftool.generation.continuation).
        for name in ("tokenizer", "stop_strings", "cache_implementation", "compile_config", "disable_compile"):
            settings.pop(name, None)
        g.update(**settings)
        if (g.num_beams or 1) > 1:
            raise HftoolError(f"beam search (num_beams={g.num_beams}) does not run on an ONNX export, which decodes "
                              "greedily or samples; pass --num-beams 1 to hftool generate, set \"num_beams\": 1 in the "
                              "export's generation_config.json, or use the PyTorch run")
        defaults = GenerationConfig()
        unsupported = [name for name in UNSUPPORTED if getattr(g, name, None) != getattr(defaults, name, None)]
        if unsupported:
            raise HftoolError(f"generation setting {unsupported[0]}={getattr(g, unsupported[0])!r} is not applied on an "
                              "ONNX export (greedy or sampling with temperature/top-k/top-p, min/max new tokens); "
                              "leave it out or use the PyTorch run")
        return g


# Generation settings whose logits processors onnxruntime decoding does not apply (it applies
# temperature, top-k, top-p, min_new_tokens and forced BOS/EOS, with transformers' own processors).
UNSUPPORTED = ("penalty_alpha", "repetition_penalty", "no_repeat_ngram_size", "encoder_repetition_penalty",
               "encoder_no_repeat_ngram_size", "bad_words_ids", "sequence_bias", "guidance_scale", "min_length",
               "min_p", "typical_p", "epsilon_cutoff", "eta_cutoff", "top_h", "suppress_tokens",
               "begin_suppress_tokens", "exponential_decay_length_penalty", "watermarking_config",
               "renormalize_logits", "remove_invalid_values")


def _processors(g, start_length: int, max_length: int, eos: list[int]):
    """transformers' logits processors for the settings hftool's onnxruntime decoding supports,
    in the order transformers applies them."""
    from transformers import (ForcedBOSTokenLogitsProcessor, ForcedEOSTokenLogitsProcessor, LogitsProcessorList,
                              MinNewTokensLengthLogitsProcessor, TemperatureLogitsWarper, TopKLogitsWarper,
                              TopPLogitsWarper)

    processors = LogitsProcessorList()
    if g.min_new_tokens and eos:
        processors.append(MinNewTokensLengthLogitsProcessor(start_length, g.min_new_tokens, eos))
    if g.forced_bos_token_id is not None:
        processors.append(ForcedBOSTokenLogitsProcessor(g.forced_bos_token_id))
    if g.forced_eos_token_id is not None:
        processors.append(ForcedEOSTokenLogitsProcessor(max_length, g.forced_eos_token_id))
    if g.do_sample:
        if g.temperature is not None and g.temperature != 1.0:
            processors.append(TemperatureLogitsWarper(g.temperature))
        if g.top_k:
            processors.append(TopKLogitsWarper(g.top_k))
        if g.top_p is not None and g.top_p < 1.0:
            processors.append(TopPLogitsWarper(g.top_p))
    return processors


# --------------------------------------------------------------------------------- the export
def read_manifest(path: Path) -> dict:
    try:
        return json.loads((Path(path) / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise HftoolError(f"{path}: cannot read {MANIFEST} ({err}); export the run again") from None


def is_export(path: str | Path) -> bool:
    return (Path(path).expanduser() / MANIFEST).is_file()


def export(run: str | Path, output: str | Path, fmt: str = "onnx", overwrite: bool = False, atol: float = DEFAULT_ATOL,
           examples: int = 16, batch_size: int = 8, quantize: str | None = None, merge: bool = False) -> dict:
    """Export a run dir to ONNX in `output`, check it against PyTorch, optionally quantize it; or
    (fmt "safetensors" with `merge`) write a LoRA run as a plain model dir, adapters merged.

    Args:
        atol: Largest absolute difference allowed between an onnxruntime output and PyTorch's.
        examples: Validation examples of the run the check runs on.
        quantize: "dynamic-int8": also write int8 graphs (onnxruntime dynamic quantisation), which
            predict then runs, and report the validation metrics they lose.
        merge: Fold a LoRA run's adapters into its base (ONNX of a LoRA run merges them anyway).

    Returns:
        The export.json written beside the graphs (parity figures, quantisation metrics); for
        a merged safetensors dir, what was written (no export.json: it is a plain model dir).

    Raises:
        ParityError: An output differs by more than `atol` (or a generated token differs); the
            files are kept in `output` for inspection.
    """
    run, output = Path(run).expanduser(), Path(output).expanduser()
    cfg, task = _checked_request(run, output, fmt, overwrite, atol, examples, batch_size, quantize, merge)
    parts = task.build(cfg, None, model_path=str(run))
    if adapters.is_peft(parts.model):  # a LoRA run: both formats take its merged model
        parts.model = adapters.merge(parts.model)
    if fmt == "safetensors":
        return _export_merged(run, output, task, parts)
    parts.model = parts.model.float().eval()
    features = task.features(parts, cfg, _validation_rows(task, cfg, parts, limit=examples))
    features = features.select(range(min(examples, len(features))))
    collate = task.collate(parts)
    batches = [collate([features[i] for i in range(start, min(start + batch_size, len(features)))])
               for start in range(0, len(features), batch_size)]
    example = collate([features[i % len(features)] for i in range(2)])  # batch 2: torch.export fixes size 1

    # Written in a staging folder renamed into place at the end: a failed export leaves nothing.
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = output.with_name(f".{output.name}.partial-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        manifest = _export_into(staging, run, task, cfg, parts, example, batches, atol)
        if manifest["parity"]["passed"] and quantize:
            manifest["quantization"] = _quantize(task, cfg, parts, staging, manifest, batch_size)
        from hftool.outputs import write_json

        write_json(staging / MANIFEST, manifest)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if output.exists():
        shutil.rmtree(output)  # _checked_request allowed it: --overwrite of an earlier export
    os.replace(staging, output)
    if not manifest["parity"]["passed"]:
        raise ParityError(f"parity check failed: {manifest['parity']['failed']}, above --atol {atol:g}; the export is "
                          f"kept in {output} for inspection ({MANIFEST} has the figures)")
    logs.info(f"exported {cfg.task} to {output}: {', '.join(manifest['graphs'].values())}")
    return manifest


def _export_merged(run: Path, output: Path, task, parts) -> dict:
    """A LoRA run's merged model as a plain model dir (weights, config, tokenizer or processor,
    generation config), written in a staging folder renamed into place."""
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = output.with_name(f".{output.name}.partial-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        task.save(parts, staging, model=parts.model)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if output.exists():
        shutil.rmtree(output)  # _checked_request allowed it: empty
    os.replace(staging, output)
    logs.info(f"exported {run} to {output} with its adapters merged")
    return {"format": "safetensors", "run": str(run.resolve()), "merged": True}


def _checked_request(run: Path, output: Path, fmt: str, overwrite: bool, atol: float, examples: int, batch_size: int,
                     quantize: str | None, merge: bool = False):
    """Every reason to refuse the export, before anything is loaded. Returns (the run's config in fp32, its task)."""
    from hftool.api import run_config
    from hftool.tasks import get_task
    from hftool.tasks.base import Task

    if fmt not in FORMATS:
        raise HftoolError(f"unknown --format {fmt!r}; choose one of: {', '.join(FORMATS)}")
    if fmt == "safetensors" and not merge:
        raise HftoolError("--format safetensors writes a LoRA run's model with its adapters merged: add --merge (a run "
                          "trained in full is such a model dir already)")
    if quantize is not None and quantize not in QUANTIZATIONS:
        raise HftoolError(f"unknown --quantize {quantize!r}; choose one of: {', '.join(QUANTIZATIONS)}")
    if atol <= 0 or examples < 1 or batch_size < 1:
        raise HftoolError("--atol must be positive and --examples and --batch-size at least 1")
    if not (run / "config.yaml").is_file():
        raise HftoolError(f"{run} is not an hftool run dir (no config.yaml); the parity check needs the run's "
                          "validation data: pass the folder `hftool finetune` wrote")
    cfg = run_config(str(run), ["train.mixed_precision=no"])  # the check compares fp32 to fp32
    task = get_task(cfg.task)
    lora = adapters.is_adapter_dir(run)
    if merge and not lora:
        raise HftoolError(f"--merge: {run} has no adapters to merge (it was trained with model.peft=none); leave out "
                          "--merge")
    if fmt == "onnx" and type(task).onnx_graphs is Task.onnx_graphs:
        task.onnx_graphs(None, cfg, None)  # the base class's one-line "not exportable yet"
    if quantize and not task.quantizable:
        raise HftoolError(f"--quantize {quantize} is for text and image classifiers; {cfg.task} exports in fp32 only")
    if not lora and not any((run / name).is_file() for name in WEIGHTS):
        raise HftoolError(f"{run} has no model weights ({WEIGHTS[0]}): the run did not finish; finish it with "
                          "`hftool finetune ... --resume -o RUN` or export another run")
    _check_output(output, run, overwrite)
    return cfg, task


def _export_into(folder: Path, run: Path, task, cfg, parts, example: dict, batches: list[dict], atol: float) -> dict:
    """The task's graphs and what they need beside them into `folder`, checked; returns the manifest."""
    graphs = task.onnx_graphs(parts, cfg, example)
    for graph in graphs:
        logs.info(f"exporting {graph.name}.onnx with torch.onnx.export (dynamo)")
        _export_graph(graph, folder / f"{graph.name}.onnx")
    _write_beside(task, parts, run, folder)
    sessions = {g.name: session(folder / f"{g.name}.onnx") for g in graphs}
    onnx_model = OnnxModel(sessions, parts.model.config, getattr(parts.model, "generation_config", None))
    if "decoder" in sessions:
        parity = _generation_parity(task, parts, onnx_model, batches, atol)
    else:
        parity = _tensor_parity(task, parts, graphs[0], onnx_model, batches, atol)
    _print_parity(parity)
    return {"format": "onnx", "task": cfg.task, "run": str(run.resolve()),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "versions": _versions(),
            "graphs": {g.name: f"{g.name}.onnx" for g in graphs},
            "signatures": {g.name: _signature(folder / f"{g.name}.onnx") for g in graphs},
            "labels": parts.labels, "parity": parity}


def _check_output(output: Path, run: Path, overwrite: bool) -> None:
    if output.exists() and not output.is_dir():
        raise HftoolError(f"output {output} is a file; choose another -o")
    if output.is_dir() and any(output.iterdir()):
        if not overwrite:
            raise HftoolError(f"output dir {output} already exists and is not empty; pass --overwrite to replace it or "
                              "choose another -o")
        if not is_export(output):
            raise HftoolError(f"output dir {output} is not an hftool export (no {MANIFEST}); refusing to delete it with "
                              "--overwrite: choose another -o")
    if output.resolve() == run.resolve():
        raise HftoolError("-o is the run dir itself; choose another folder for the export")


def _validation_rows(task, cfg, parts, limit: int | None):
    """The run's validation rows (its first `limit`, with the history a time series needs), prepared."""
    import dataclasses

    from hftool.data import load_splits

    data = cfg.data
    if limit is not None:
        data = dataclasses.replace(data, max_eval_samples=min(limit, data.max_eval_samples or limit))
    splits, names = load_splits(data, task.reading(cfg), cfg.train.seed, cfg.model.token)
    rows, _ = task.prepare(cfg, splits["validation"], names["validation"], parts.labels)
    return rows


def _export_graph(graph: Graph, path: Path) -> None:
    """torch.onnx.export (dynamo) of one graph; a failure becomes one line naming the operator."""
    names = list(graph.inputs)
    shapes = (tuple(graph.axes.get(name) for name in names),)  # forward(*tensors): one tuple of inputs
    previous = None
    if graph.eager is not None:
        previous = graph.eager.config._attn_implementation
        graph.eager.set_attn_implementation("eager")
    quiet = io.StringIO()
    try:
        # The exporter prints its progress and, on a failure, whole graphs: kept for HFTOOL_DEBUG.
        with warnings.catch_warnings(), contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet):
            warnings.filterwarnings("ignore", message=r"# The axis name")  # dims it merged: cosmetic
            program = torch.onnx.export(graph.module.eval(), tuple(graph.inputs.values()), dynamo=True,
                                        dynamic_shapes=shapes, input_names=names, output_names=graph.outputs,
                                        verbose=False)
            program.save(str(path))
    except Exception as err:
        if os.environ.get("HFTOOL_DEBUG"):
            print(quiet.getvalue())
            raise
        raise export_failure(err, f"{graph.name}.onnx") from None
    finally:
        if previous is not None:
            graph.eager.set_attn_implementation(previous)


def export_failure(err: Exception, what: str) -> HftoolError:
    """An exporter exception as one line: the operator (or traced call) that failed and a hint."""
    text = str(err)
    op = re.search(r"No ONNX function found for <OpOverload\(op='([^']+)', overload='([^']+)'\)>", text)
    if op or "target=torch.ops." in text:
        name = f"{op[1]}.{op[2]}" if op else re.search(r"target=torch\.ops\.([\w.]+)", text)[1]
        import onnxscript

        return HftoolError(f"ONNX export of {what} failed: operator {name} has no ONNX translation (torch "
                           f"{torch.__version__}, onnxscript {onnxscript.__version__}); hint: a newer torch or "
                           "onnxscript may translate it, else the model must avoid it (HFTOOL_DEBUG=1 shows the trace)")
    summary = re.search(r"## Exception summary\s+<class '[\w.]*?(\w+)'>: ([^\n]+)", text)
    call = re.search(r'The following call raised this error:\s+File "([^"]+)", line (\d+), in \w+\s+([^\n]+)', text)
    reason = f"{summary[1]}: {summary[2][:160]}" if summary else (text.strip().splitlines() or [type(err).__name__])[0]
    where = f" at {Path(call[1]).name}:{call[2]} ({call[3].strip()})" if call else ""
    return HftoolError(f"ONNX export of {what} failed in torch.export{where}: {reason}; hint: the traced code branches "
                       "on tensor values or sizes torch.export cannot follow (HFTOOL_DEBUG=1 shows the trace)")


def _signature(path: Path) -> dict:
    """A graph's inputs and outputs with their shapes (named dynamic axes), for export.json."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph

    def shape(value) -> list:
        return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]

    return {"inputs": {v.name: shape(v) for v in graph.input}, "outputs": {v.name: shape(v) for v in graph.output}}


def _write_beside(task, parts, run: Path, out: Path) -> None:
    """What the graphs need to be used: tokenizer or processor files, config.json (label names in
    id2label), generation_config.json, and the run's config.yaml (hftool reads the task and its
    data settings from it)."""
    task.save(parts, out, model=None)  # the processor files, as the run has them
    parts.model.config.save_pretrained(str(out))
    generation = getattr(parts.model, "generation_config", None)
    if generation is not None and parts.model.can_generate():
        generation.save_pretrained(str(out))
    shutil.copy2(run / "config.yaml", out / "config.yaml")


def _versions() -> dict:
    import onnx
    import onnxruntime
    import transformers

    import hftool

    return {"hftool": hftool.__version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__}


# ---------------------------------------------------------------------------------- the check
def _difference(name: str, ours: np.ndarray, theirs: np.ndarray, atol: float) -> dict:
    """How far onnxruntime's `ours` is from PyTorch's `theirs`: max absolute and relative
    difference (relative to |value|, values below atol counted as atol) for floats, the count
    of differing entries for integers."""
    if ours.shape != theirs.shape:
        return {"output": name, "passed": False, "shape": [list(ours.shape), list(theirs.shape)]}
    if not np.issubdtype(theirs.dtype, np.floating):
        differing = int((ours != theirs).sum())
        return {"output": name, "passed": differing == 0, "differing": differing, "of": int(theirs.size)}
    gap = np.abs(ours.astype(np.float64) - theirs.astype(np.float64))
    worst = float(gap.max()) if gap.size else 0.0
    relative = float((gap / np.maximum(np.abs(theirs), atol)).max()) if gap.size else 0.0
    return {"output": name, "passed": bool(worst <= atol), "max_abs": worst, "max_rel": relative}


def _verdict(rows: list[dict], examples: int, atol: float) -> dict:
    failed = [r for r in rows if not r["passed"]]
    described = ""
    if failed:
        r = failed[0]
        described = (f"{r['output']} differs by up to {r['max_abs']:.3g}" if "max_abs" in r else
                     f"{r['output']}: {r['differing']} of {r['of']} values differ" if "differing" in r else
                     f"{r['output']} has shape {r['shape'][0]} in onnxruntime, {r['shape'][1]} in PyTorch")
    return {"examples": examples, "atol": atol, "passed": not failed, "outputs": rows,
            **({"failed": described} if failed else {})}


def _merge(rows: list[dict]) -> list[dict]:
    """Per-batch differences -> one row per output: the worst differences, the counts summed."""
    merged: dict[str, dict] = {}
    for row in rows:
        seen = merged.get(row["output"])
        if seen is None or "shape" in row:  # a shape mismatch says more than any number
            merged[row["output"]] = dict(row)
            continue
        seen["passed"] = seen["passed"] and row["passed"]
        for key, combine in (("max_abs", max), ("max_rel", max), ("differing", sum), ("of", sum)):
            if key in row and key in seen:
                seen[key] = combine((seen[key], row[key]))
    return list(merged.values())


def _tensor_parity(task, parts, graph: Graph, model: OnnxModel, batches: list[dict], atol: float) -> dict:
    """model.onnx in onnxruntime vs its PyTorch module, output by output, on the example batches."""
    rows, count = [], 0
    for batch in batches:
        feed = task.onnx_feed(parts, batch)
        with torch.no_grad():
            expected = graph.module(*(feed[name] for name in graph.inputs))
        expected = expected if isinstance(expected, tuple) else (expected,)
        got = model.run(graph.name, feed)
        for name, value in zip(graph.outputs, expected):
            rows.append(_difference(f"{graph.name}.{name}", got[name], _numpy(value), atol))
        count += len(next(iter(feed.values())))
    return _verdict(_merge(rows), count, atol)


def _generation_parity(task, parts, model: OnnxModel, batches: list[dict], atol: float) -> dict:
    """Greedy decoding in onnxruntime vs transformers' generate on the PyTorch model: the same
    tokens, and each step's logits within atol."""
    from hftool.generation import DEFAULT_MAX_NEW_TOKENS

    torch_model = parts.model
    limit = torch_model.generation_config.max_new_tokens or DEFAULT_MAX_NEW_TOKENS
    greedy = {"do_sample": False, "num_beams": 1, "num_return_sequences": 1, "max_new_tokens": limit,
              "top_k": None, "top_p": None, "temperature": None}
    rows, count = [], 0
    for batch in batches:
        feed = task.onnx_feed(parts, batch)
        with torch.no_grad():
            expected = torch_model.generate(**feed, **greedy, output_logits=True, return_dict_in_generate=True)
        ids, logits = model.decode(**feed, **greedy)
        rows.append(_difference("generated tokens", ids.numpy(), expected.sequences.numpy(), atol))
        if len(logits) == len(expected.logits):
            rows.append(_difference("decoder.logits (each step)", torch.stack(logits).numpy(),
                                    torch.stack(expected.logits).float().numpy(), atol))
        count += ids.shape[0]
    return _verdict(_merge(rows), count, atol)


def _print_parity(parity: dict) -> None:
    logs.info(f"parity: onnxruntime vs PyTorch (fp32) on {parity['examples']} validation examples")
    for row in parity["outputs"]:
        if "max_abs" in row:
            text = f"max abs diff {row['max_abs']:.3g}, max rel diff {row['max_rel']:.3g}"
        elif "differing" in row:
            text = f"{row['differing']} of {row['of']} differ" if row["differing"] else f"all {row['of']} identical"
        else:
            text = f"shapes differ: {row['shape'][0]} vs {row['shape'][1]}"
        logs.info(f"  {row['output']}: {text}")
    logs.info(f"parity {'passed' if parity['passed'] else 'FAILED'} (--atol {parity['atol']:g})")


# ------------------------------------------------------------------------------ quantisation
def _quantize(task, cfg, parts, staging: Path, manifest: dict, batch_size: int) -> dict:
    """model.int8.onnx (onnxruntime dynamic quantisation: int8 weights, activations quantized per
    batch at run time), which predict then runs; and the run's validation metrics in PyTorch,
    fp32 ONNX and int8 ONNX, so the accuracy it costs is known, not only the size it saves."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    source, target = staging / "model.onnx", staging / "model.int8.onnx"
    quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8)
    rows = _validation_rows(task, cfg, parts, limit=None)
    sides = {"pytorch": parts.model, "onnx": OnnxModel({"model": session(source)}, parts.model.config),
             "onnx_int8": OnnxModel({"model": session(target)}, parts.model.config)}
    metrics = {side: score(task, cfg, parts, model, rows, batch_size) for side, model in sides.items()}
    manifest["graphs"]["model"] = target.name
    report = {"method": "dynamic-int8", "file": target.name, "fp32_file": source.name,
              "size_mb": {"fp32": round(source.stat().st_size / 2**20, 2), "int8": round(target.stat().st_size / 2**20, 2)},
              "validation_examples": len(rows), "metrics": metrics}
    key = f"eval_{task.default_metric}"
    logs.info(f"dynamic int8 on {len(rows)} validation examples: {key} {metrics['onnx_int8'].get(key, float('nan')):.4f} "
              f"(fp32 ONNX {metrics['onnx'].get(key, float('nan')):.4f}, PyTorch {metrics['pytorch'].get(key, float('nan')):.4f}); "
              f"{report['size_mb']['int8']} MB vs {report['size_mb']['fp32']} MB")
    return report


def score(task, cfg, parts, model, rows, batch_size: int) -> dict[str, float]:
    """The task's validation metrics of `model` (PyTorch, or an OnnxModel) on prepared `rows`."""
    from hftool.evaluation import eval_loader, evaluate_model
    from hftool.runtime import inference_accelerator

    loader = eval_loader(task.eval_features(parts, cfg, rows), task.collate(parts), batch_size, cfg.data.num_workers)
    return evaluate_model(inference_accelerator("no"), model, loader, task, parts, rows)
