"""Sequence to sequence: translation and summarization with any AutoModelForSeq2SeqLM (T5, BART,
Marian, mBART), or tiny:mbart / tiny:t5 from scratch.

Rows are source/target text pairs: table columns, aligned parallel files ({split}.{lang}), or a
hub `translation` column. Training minimises the model's own teacher-forced loss; evaluation
also generates a text per source (the model's generation_config: greedy unless it says beams)
and scores it against the reference with BLEU, chrF and ROUGE (hftool.metrics.TextOverlap).
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Iterable
from dataclasses import dataclass

from hftool import models
from hftool.config import DataConfig, EvalConfig
from hftool.data.columns import column_values
from hftool.data.tables import column_texts, tokenize
from hftool.errors import HftoolError
from hftool.generation import TEXT_GENERATION_OPTIONS, GenerativeModel, update_generation_config
from hftool.tasks.base import Options, Parts, Reading, Task, find_column

SOURCE_COLUMNS = ("source", "src", "input", "inputs", "text", "document", "article", "dialogue", "question")
# A pair whose target/source word ratio is this many times off the split's median ratio is
# reported (Moses' clean-corpus-n.perl drops translation pairs past 9; measured against the median,
# summaries, far shorter than their articles by design, are judged against each other).
LENGTH_RATIO = 9
TARGET_COLUMNS = ("target", "tgt", "output", "outputs", "summary", "highlights", "answer", "translation")
MODEL_INPUTS = ("input_ids", "attention_mask", "labels")
PAD, EOS, UNK = "<pad>", "</s>", "<unk>"  # T5's special tokens, in T5's order (pad 0 starts the decoder)


@dataclass
class Seq2SeqData(DataConfig):
    # Source and target columns; None auto-detects source/src/input/... and
    # target/tgt/output/summary/... (and a hub `translation` column of {lang: text}).
    source_column: str | None = None
    target_column: str | None = None
    # Languages of parallel text files ({split}.{lang}[.gz] in --data DIR), of columns named after
    # them (en, de) and keys of a hub `translation` column.
    source_lang: str | None = None
    target_lang: str | None = None
    # Text put before every source, e.g. "translate English to German: " for T5, which was
    # pretrained with task prefixes; "" for models trained without them.
    source_prefix: str = ""
    # Token budget of a source; longer sources are truncated. 128 covers sentence pairs at a
    # fraction of the 512-token cost.
    max_length: int = 128
    # Token budget of a target; longer targets are truncated in training, and evaluation
    # generates at most this many tokens unless model.generation_config says.
    max_target_length: int = 128

    def check(self) -> None:
        super().check()
        for name in ("max_length", "max_target_length"):
            self.require(name, getattr(self, name) > 0, "positive")


@dataclass
class Seq2SeqEval(EvalConfig):
    # The metrics to compute, without the eval_ prefix (e.g. [bleu, chrf]); None computes all
    # that the task offers.
    metrics: list | None = None


@dataclass
class Seq2SeqState:
    """What evaluation reads from the run's config: the metrics to compute and how long a
    generated text may get."""

    metrics: list[str]
    max_new_tokens: int


class Seq2Seq(Task):
    name = "seq2seq"
    recipe = "seq2seq"
    options = Options(model=GenerativeModel, data=Seq2SeqData, eval=Seq2SeqEval)
    architectures = ("ForConditionalGeneration", "MTModel")  # T5, BART, mBART; Marian
    default_metric = "bleu"
    pipeline_task = "text2text-generation"  # the hub's tag; transformers 5 has no such pipeline
    generate_options = TEXT_GENERATION_OPTIONS
    generation_separator = "\n"  # the output is a new text, not a continuation: it goes below its input
    peft_unsupported = ""  # no new head: the LM head is the pretrained one
    streams = True

    def reading(self, cfg):
        return Reading(langs=(cfg.data.source_lang, cfg.data.target_lang))

    # ----------------------------------------------------------------------------- data
    def prepare(self, cfg, ds, source, labels=None, require_labels=True):
        """Rows -> columns `source` and `target`, both non-empty text (predict takes raw texts)."""
        import pyarrow as pa

        from hftool.data.tables import row_parts, write_rows

        data = cfg.data
        if not (data.source_column or data.target_column) and _is_translation_dict(ds):
            def columns(part, start):
                return _from_translation(part, source, data.source_lang, data.target_lang, start)
            key = ["translation", data.source_lang, data.target_lang]
        else:
            # A column named after a language (parallel files, Multi30k-style tables) is that side.
            by_lang = {k: lang if lang in ds.column_names else None
                       for k, lang in (("source", data.source_lang), ("target", data.target_lang))}
            text = find_column(ds, source, data.source_column or by_lang["source"], SOURCE_COLUMNS, "source",
                               "source_column")
            candidates = tuple(c for c in TARGET_COLUMNS if c != text)
            target = find_column(ds, source, data.target_column or by_lang["target"], candidates, "target",
                                 "target_column")

            def columns(part, start):
                return {"source": _texts(column_values(part, text).to_pylist(), source, text, "source", start),
                        "target": _texts(column_values(part, target).to_pylist(), source, target, "target", start)}
            key = [text, target]

        def tables():  # a part of the rows at a time: memory stays flat in the number of rows
            for start, part in row_parts(ds):
                yield pa.table({k: pa.array(v, pa.string()) for k, v in columns(part, start).items()})
            if not len(ds):
                yield pa.table({k: pa.array([], pa.string()) for k in ("source", "target")})

        return write_rows(ds, tables(), repr(key)), None

    def validate_rows(self, cfg, ds, source, findings, labels=None):
        """Empty sources or targets, pairs whose lengths are too far apart, repeated pairs."""
        from hftool.data import validation

        data = cfg.data
        if not (data.source_column or data.target_column) and _is_translation_dict(ds):
            pairs = ds["translation"]
            sides = {"source": (f"translation.{data.source_lang}", [p.get(data.source_lang) for p in pairs]),
                     "target": (f"translation.{data.target_lang}", [p.get(data.target_lang) for p in pairs])}
        else:
            by_lang = {k: lang if lang in ds.column_names else None
                       for k, lang in (("source", data.source_lang), ("target", data.target_lang))}
            text = find_column(ds, source, data.source_column or by_lang["source"], SOURCE_COLUMNS, "source",
                               "source_column")
            target = find_column(ds, source, data.target_column or by_lang["target"],
                                 tuple(c for c in TARGET_COLUMNS if c != text), "target", "target_column")
            sides = {"source": (text, ds[text]), "target": (target, ds[target])}
        summary = validation.Summary(rows=len(ds))
        lengths = {}
        for side, (column, values) in sides.items():
            for row, value in enumerate(values, 1):
                if isinstance(value, str) and not value.strip() or value is None:
                    findings.add("empty_side", source=source, row=row, side=side, column=column)
            lengths[side] = [len(v.split()) if isinstance(v, str) else 0 for v in values]
            summary.values[f"{side} length (words)"] = lengths[side]
        ratios = [(row, a, b, math.log(b / a)) for row, (a, b) in enumerate(zip(lengths["source"], lengths["target"]), 1)
                  if a and b]
        usual = statistics.median(r for *_, r in ratios) if ratios else 0.0
        for row, a, b, ratio in ratios:
            if abs(ratio - usual) > math.log(LENGTH_RATIO):
                findings.add("length_ratio", source=source, row=row, target=b, source_words=a, limit=LENGTH_RATIO,
                             usual=round(math.exp(usual), 2))
        summary.keys = [validation.fingerprint(a, b) for a, b in zip(sides["source"][1], sides["target"][1])]
        summary.counts["repeated pairs"] = validation.duplicates(summary.keys, source, findings, "source and target")
        return summary

    # ---------------------------------------------------------------------------- model
    def build(self, cfg, labels, train_ds=None, model_path=None, run_dir=None) -> Parts:
        spec = model_path or cfg.model.name
        overrides = dict(cfg.model.config_overrides)
        if models.tiny_arch(spec) is not None:
            arch = models.check_tiny(spec, ("mbart", "t5"), self.name)
            from transformers import MBartForConditionalGeneration, T5ForConditionalGeneration

            tokenizer = models.tiny_tokenizer(run_dir, lambda: train_tokenizer(
                column_texts(train_ds, ["source", "target"]), cfg.model.tiny_vocab_size))
            if arch == "mbart":
                model = MBartForConditionalGeneration(tiny_mbart_config(tokenizer, overrides))
            else:
                model = T5ForConditionalGeneration(tiny_t5_config(tokenizer, overrides))
        else:
            from transformers import AutoConfig, AutoModelForSeq2SeqLM, AutoTokenizer

            token = cfg.model.token
            tokenizer = models.load("tokenizer", AutoTokenizer, spec, token)
            config = models.load("model", AutoConfig, spec, token, **overrides)
            models.check_config_overrides(config, overrides)
            if not getattr(config, "is_encoder_decoder", False):
                raise HftoolError(f"model '{spec}' ({type(config).__name__}) is not an encoder-decoder model; the seq2seq "
                                  "recipe needs one such as T5, BART or Marian (a decoder-only model: use the gpt2 recipe)")
            # fp32 master weights for training (mixed precision autocasts); inference keeps the checkpoint's dtype.
            import torch

            model = models.load("model", AutoModelForSeq2SeqLM, spec, token, config=config,
                                dtype=torch.float32 if model_path is None else "auto")
        generation = model.generation_config
        for key, value in (("pad_token_id", tokenizer.pad_token_id), ("eos_token_id", tokenizer.eos_token_id),
                           ("decoder_start_token_id", model.config.decoder_start_token_id)):
            if getattr(generation, key) is None:
                setattr(generation, key, value)
        if model_path is None:  # a new run: the recipe's decoding settings, used by evaluation and predict
            update_generation_config(generation, cfg.model.generation_config)
        from hftool.metrics.text_overlap import check_names

        state = Seq2SeqState(metrics=check_names(cfg.eval.metrics), max_new_tokens=cfg.data.max_target_length)
        best = cfg.train.metric_for_best or self.default_metric
        if model_path is None and best not in (*state.metrics, "loss", "gen_len"):  # else found after training
            raise HftoolError(f"eval.metrics leaves out {best}, which picks the best checkpoint; add it, or set "
                              f"train.metric_for_best to one of {', '.join(state.metrics)}")
        return Parts(model, tokenizer, state=state)

    # ------------------------------------------------------------------------- features
    def features(self, parts, cfg, ds):
        tokenizer, prefix = parts.processor, cfg.data.source_prefix
        max_source, max_target = cfg.data.max_length, cfg.data.max_target_length

        def encode(batch):
            encoded = tokenizer([prefix + s for s in batch["source"]], truncation=True, max_length=max_source)
            rows = {k: encoded[k] for k in ("input_ids", "attention_mask")}
            if "target" in batch:
                rows["labels"] = tokenizer(text_target=batch["target"], truncation=True, max_length=max_target)["input_ids"]
            # Both sides cost compute: batches group pairs of similar total length.
            rows["length"] = [len(ids) + len(out) for ids, out in
                              zip(rows["input_ids"], rows.get("labels", [[]] * len(rows["input_ids"])))]
            return rows

        return tokenize(ds, encode, tokenizer, (prefix, max_source, max_target), cfg.data.num_proc)

    def collate(self, parts):
        from hftool.data.batching import pad_collate

        pad = pad_collate({"input_ids": parts.processor.pad_token_id, "labels": -100})

        def collate(features):
            return pad([{k: f[k] for k in MODEL_INPUTS if k in f} for f in features])

        return collate

    # ----------------------------------------------------------------------- evaluation
    def metric(self, parts, rows):
        from hftool.metrics import TextOverlap

        return TextOverlap(parts.state.metrics, tokenizer=parts.processor)

    def eval_outputs(self, parts, outputs, batch):
        """Reference ids and per-example loss (the generated ids come from eval_generate)."""
        import torch
        from accelerate.utils import pad_across_processes

        labels = batch["labels"]
        token_losses = torch.nn.functional.cross_entropy(outputs.logits.float().transpose(1, 2), labels, reduction="none")
        losses = token_losses.sum(-1) / (labels != -100).sum(-1).clamp(min=1)
        # Widths differ between processes; -100 pads (dropped before decoding) make them one.
        return {"references": pad_across_processes(labels, dim=1, pad_index=-100), "loss": losses}

    def eval_generate(self, parts, model, batch):
        """A generated text per source for the metric, without the decoder start token."""
        from accelerate.utils import pad_across_processes

        generated = model.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                   **generate_limits(model.generation_config, parts.state.max_new_tokens))
        return {"predictions": pad_across_processes(generated[:, 1:], dim=1, pad_index=-100)}

    def resampler(self, parts, rows):
        from hftool.metrics.resampling import TextOverlapStats

        return TextOverlapStats(parts.state.metrics, parts.processor)

    def prediction_records(self, parts, batches, order, rows):
        """Per example (eval.save_predictions): the generated text beside the reference."""
        texts = {}
        for key in ("predictions", "references"):
            rows = [[int(t) for t in row if t >= 0] for b in batches for row in b[key]]
            texts[key] = [t.strip() for t in parts.processor.batch_decode(rows, skip_special_tokens=True)]
        losses = [float(v) for b in batches for v in b.get("loss", [])]
        records = [{"index": int(order[row]) if order is not None else row, "prediction": prediction,
                    "reference": reference, **({"loss": round(losses[row], 6)} if losses else {})}
                   for row, (prediction, reference) in enumerate(zip(texts["predictions"], texts["references"]))]
        return sorted(records, key=lambda r: r["index"])

    # ------------------------------------------------------------------------ inference
    def predict(self, parts, cfg, inputs, batch_size):
        from hftool.generation import GenerationOptions, generate

        prefix = cfg.data.source_prefix
        limits = generate_limits(parts.model.generation_config, cfg.data.max_target_length)
        results = generate(parts.model, parts.processor, [prefix + text for text in inputs],
                           GenerationOptions(batch_size=batch_size, **limits))
        return [{"source": r["prompt"][len(prefix):], "generated_text": r["generated_text"]} for r in results]

    def card_usage(self, parts, cfg):
        """The model and its generate(): transformers 5 has no text2text or translation pipeline."""
        source = json.dumps(cfg.data.source_prefix + "The red dog sees the old table.", ensure_ascii=False)
        limits = "".join(f", {k}={v}" for k, v in generate_limits(parts.model.generation_config,
                                                                   cfg.data.max_target_length).items())
        return ("```python\nfrom transformers import AutoModelForSeq2SeqLM, AutoTokenizer\n\n"
                'tokenizer = AutoTokenizer.from_pretrained(".")\nmodel = AutoModelForSeq2SeqLM.from_pretrained(".")\n'
                f"inputs = tokenizer([{source}], return_tensors=\"pt\")\n"
                f"print(tokenizer.batch_decode(model.generate(**inputs{limits}), skip_special_tokens=True))\n```\n\n"
                "Generation settings come from `generation_config.json`; `hftool generate . -p TEXT` "
                "takes beams, sampling and streaming flags.\n")

    def format_prediction(self, prediction):
        return prediction["generated_text"]

    def generate(self, parts, cfg, prompts, on_text=None, options=None, **flags):
        """Transform prompts (each after data.source_prefix, as in training)."""
        from hftool.generation import GenerationOptions, generate

        prefix = cfg.data.source_prefix
        options = options or GenerationOptions.from_flags(**flags)
        results = generate(parts.model, parts.processor, [prefix + p for p in prompts], options, on_text)
        return [{**r, "prompt": r["prompt"][len(prefix):]} for r in results]

    def onnx_graphs(self, parts, cfg, batch):
        """encoder.onnx: source tokens -> encoder_hidden_states; decoder.onnx: target tokens +
        encoder_hidden_states + its mask + past key/values -> logits + present key/values."""
        from hftool.export import encoder_decoder_graphs

        inputs = {name: batch[name] for name in ("input_ids", "attention_mask")}
        return encoder_decoder_graphs(parts.model, inputs, {name: {0: "batch", 1: "sequence"} for name in inputs})


def _is_translation_dict(ds) -> bool:
    """A hub translation dataset: one `translation` column of {lang: text} (wmt, opus_books, ...)."""
    return "translation" in ds.column_names and len(ds) > 0 and isinstance(ds[0]["translation"], dict)


def generate_limits(generation, max_new_tokens: int | None) -> dict:
    """max_new_tokens for generate when the model's generation_config sets no length of its own
    (transformers would stop at 20 tokens)."""
    if generation.max_new_tokens is not None or max_new_tokens is None:
        return {}
    return {"max_new_tokens": max_new_tokens}


def _texts(values: list, source: str, column: str, what: str, offset: int = 0) -> list[str]:
    """`values`, checked to be non-empty texts (rows from `offset` + 1 on, as errors name them)."""
    for row, value in enumerate(values, offset + 1):
        if not isinstance(value, str) or not value.strip():
            problem = "is empty" if isinstance(value, str) or value is None else f"holds {value!r}, not text"
            raise HftoolError(f"{source} row {row}: the {what} column '{column}' {problem}; every row needs a {what} text "
                              "(fix or remove the row)")
    return list(values)


def _from_translation(ds, source: str, source_lang: str | None, target_lang: str | None,
                      offset: int = 0) -> dict[str, list[str]]:
    """A hub `translation` column of {lang: text} -> source and target texts (`ds` starts at row `offset` + 1)."""
    pairs = ds["translation"]
    languages = sorted(pairs[0]) if pairs and isinstance(pairs[0], dict) else []
    if not (source_lang and target_lang):
        raise HftoolError(f"{source} has a translation column with languages {', '.join(languages) or '(none)'}; "
                          "set data.source_lang and data.target_lang to two of them")
    columns = {}
    for key, lang in (("source", source_lang), ("target", target_lang)):
        if lang not in languages:
            raise HftoolError(f"{source}: the translation column has no '{lang}' (languages: {', '.join(languages)}); "
                              f"fix data.{key}_lang")
        columns[key] = _texts([p.get(lang) for p in pairs], source, f"translation.{lang}", key, offset)
    return columns


def train_tokenizer(texts: Iterable[str], vocab_size: int, model_max_length: int = 512):
    """A byte-level BPE tokenizer with T5's special tokens (<pad> 0, </s> 1, <unk> 2) learned from
    `texts` (source and target: the model shares one vocabulary), for tiny:mbart and tiny:t5.

    Every byte is in the vocabulary, so any text encodes; </s> ends every encoded text, as T5's
    tokenizer does. The BPE trainer is deterministic (see models.byte_bpe_merges).
    """
    from tokenizers import Tokenizer, decoders, pre_tokenizers, processors, trainers
    from tokenizers import models as tokenizer_models
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(tokenizer_models.BPE())
    # A word is the same token at the start of a text as inside it; decoding drops that one space.
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tokenizer.decoder = decoders.Sequence([decoders.ByteLevel(), decoders.Strip(" ", 1, 0)])
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[PAD, EOS, UNK], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(texts, trainer)
    tokenizer.post_processor = processors.TemplateProcessing(single=f"$A {EOS}", pair=f"$A {EOS} $B {EOS}",
                                                             special_tokens=[(EOS, tokenizer.token_to_id(EOS))])
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token=PAD, eos_token=EOS, unk_token=UNK,
                                   model_max_length=model_max_length)


def tiny_mbart_config(tokenizer, overrides: dict):
    """A small mBART config: 2+2 layers of width 128.

    Why mBART: learned absolute positions give word order from the first steps, and its pre-norm
    layers get past the early plateau where the decoder models the target language without
    reading the source; BART and T5 of the same size stalled on it (benchmarks/README.md).
    Dropout is off: runs that short do not overfit.
    """
    from transformers import MBartConfig

    sizes = dict(d_model=128, encoder_ffn_dim=256, decoder_ffn_dim=256, encoder_layers=2, decoder_layers=2,
                 encoder_attention_heads=4, decoder_attention_heads=4, dropout=0.0, attention_dropout=0.0,
                 activation_dropout=0.0, max_position_embeddings=tokenizer.model_max_length)
    models.check_config_overrides(MBartConfig(), overrides)
    pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
    # Decoding starts from </s>, as mBART's training shift does (it wraps the labels' last token,
    # here </s>, to the front). The tokenizer has no <s>; </s> stands in for it.
    return MBartConfig(vocab_size=len(tokenizer), pad_token_id=pad, bos_token_id=eos, eos_token_id=eos,
                       decoder_start_token_id=eos, forced_eos_token_id=eos, **(sizes | overrides))


def tiny_t5_config(tokenizer, overrides: dict):
    """A small T5 config: 2+2 layers of width 128. Dropout is off: short runs do not overfit."""
    from transformers import T5Config

    sizes = dict(d_model=128, d_ff=256, d_kv=32, num_layers=2, num_decoder_layers=2, num_heads=4, dropout_rate=0.0)
    models.check_config_overrides(T5Config(), overrides)
    return T5Config(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                    decoder_start_token_id=tokenizer.pad_token_id, **(sizes | overrides))
