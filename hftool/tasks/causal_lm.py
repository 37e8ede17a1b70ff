"""Causal language modelling: GPT-2 and any AutoModelForCausalLM, trained on packed blocks.

Documents are tokenized, joined with EOS between them and cut into blocks of `data.block_size`
tokens over the whole split at once, so no token is lost at a batch boundary (run_clm drops
each 1000-row map batch's remainder); the last block may be shorter. Evaluation reports
perplexity = exp(total token loss / total tokens), optionally over strided windows.
"""

from __future__ import annotations


import numpy as np
import torch

from hftool import models
from hftool.data.batching import pad_collate
from hftool.errors import HftoolError
from hftool.tasks.base import Parts, Task, find_column

TEXT_COLUMNS = ("text", "content", "document", "story", "body", "sentence")
MAX_BLOCK = 1024  # data.block_size=None: the model's context, capped here (see config.py)


class CausalLM(Task):
    name = "causal-lm"
    default_metric = "perplexity"
    pipeline_task = "text-generation"

    def prepare(self, cfg, ds, source, labels=None):
        """Rows -> one `text` column of documents (line breaks joined when data.keep_linebreaks is false)."""
        import datasets

        column = find_column(ds, source, cfg.data.text_column, TEXT_COLUMNS, "text", "text_column")
        texts = ds[column]
        bad = next((i for i, v in enumerate(texts) if not isinstance(v, str)), None)
        if bad is not None:
            raise HftoolError(f"{source} row {bad + 1}: column '{column}' holds {texts[bad]!r}, not text; "
                              "fix or remove the row")
        if not cfg.data.keep_linebreaks:
            texts = [" ".join(line.strip() for line in t.split("\n") if line.strip()) for t in texts]
        return datasets.Dataset.from_dict({"text": texts}), None

    def build(self, cfg, labels, train_ds=None, model_path=None, run_dir=None) -> Parts:
        spec = model_path or cfg.model.name
        overrides = dict(cfg.model.config_overrides)
        if models.tiny_arch(spec) is not None:
            models.check_tiny(spec, ("gpt2",), self.name)
            from transformers import GPT2LMHeadModel

            tokenizer = models.tiny_tokenizer(run_dir, lambda: models.train_byte_bpe(train_ds["text"],
                                                                                   cfg.model.tiny_vocab_size))
            fields = {"n_positions": cfg.data.block_size} if cfg.data.block_size else {}
            model = GPT2LMHeadModel(models.tiny_gpt2_config(tokenizer, overrides, **fields))
        else:
            from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

            token = cfg.model.token
            tokenizer = models.load("tokenizer", AutoTokenizer, spec, token)
            config = models.load("model", AutoConfig, spec, token, **overrides)
            # Training keeps fp32 master weights (mixed precision autocasts); inference loads the
            # checkpoint's own dtype.
            model = models.load("model", AutoModelForCausalLM, spec, token, config=config,
                                dtype=torch.float32 if model_path is None else "auto")
        if tokenizer.pad_token is None:  # GPT-2 has none; padded positions are masked out anyway
            tokenizer.pad_token = tokenizer.eos_token
        generation = model.generation_config
        if generation.pad_token_id is None:
            generation.pad_token_id = tokenizer.pad_token_id
        if model_path is None:  # a new run: the recipe's defaults for `hftool generate`
            _update_generation_config(generation, cfg.model.generation_config)
        return Parts(model, tokenizer)

    # ---------------------------------------------------------------------------- features
    def features(self, parts, cfg, ds):
        ids = self._token_stream(parts, ds)
        return _pack(ids, self._block_size(parts, cfg))

    def eval_features(self, parts, cfg, ds):
        stride, block = cfg.eval.stride, self._block_size(parts, cfg)
        if stride is None:
            return self.features(parts, cfg, ds)
        if stride > block:
            raise HftoolError(f"eval.stride={stride} is longer than the block ({block} tokens), so tokens between "
                              f"windows would go unscored; set eval.stride to at most {block}")
        return _windows(self._token_stream(parts, ds).to_numpy(), block, stride)

    def _block_size(self, parts, cfg) -> int:
        context = getattr(parts.model.config, "max_position_embeddings", None) or MAX_BLOCK
        if cfg.data.block_size is None:
            return min(context, MAX_BLOCK)
        if cfg.data.block_size > context:
            raise HftoolError(f"data.block_size={cfg.data.block_size} is longer than the model's context "
                              f"({context} tokens); set data.block_size to at most {context}")
        return cfg.data.block_size

    def _token_stream(self, parts, ds):
        """Every document's tokens followed by EOS, as one flat Arrow array (no Python ints)."""
        tokenizer = parts.processor
        eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []

        def encode(batch):
            # verbose=False: documents longer than the context are expected here; packing cuts them.
            encoded = tokenizer(batch["text"], add_special_tokens=False, verbose=False)["input_ids"]
            return {"input_ids": [ids + eos if ids else [] for ids in encoded]}

        tokenized = ds.map(encode, batched=True, remove_columns=ds.column_names, desc="Tokenizing")
        return tokenized.data.column("input_ids").combine_chunks().flatten()

    def collate(self, parts):
        pad = pad_collate({"input_ids": parts.processor.pad_token_id, "labels": -100})

        def collate(features):
            # Labels are the inputs (the model shifts them); strided windows bring their own.
            return pad([{"input_ids": f["input_ids"], "attention_mask": [1] * len(f["input_ids"]),
                         "labels": f.get("labels", f["input_ids"])} for f in features])

        return collate

    # -------------------------------------------------------------------------- evaluation
    def metric(self, parts):
        from hftool.metrics import Perplexity

        return Perplexity()

    def eval_outputs(self, parts, outputs, batch):
        """Per example: summed loss of its scored tokens and their count (pooled by the metric)."""
        logits, labels = outputs.logits[:, :-1].float(), batch["labels"][:, 1:]
        losses = torch.nn.functional.cross_entropy(logits.transpose(1, 2), labels, ignore_index=-100, reduction="none")
        scored = labels != -100
        return {"loss_sum": (losses * scored).sum(1).double(), "tokens": scored.sum(1)}

    def resampler(self, parts):
        from hftool.metrics.resampling import PerplexityStats

        return PerplexityStats()

    # ---------------------------------------------------------------------------- inference
    def predict(self, parts, cfg, inputs, batch_size):
        from hftool.generation import GenerationOptions, generate

        return generate(parts.model, parts.processor, inputs, GenerationOptions(batch_size=batch_size))

    def format_prediction(self, prediction):
        return prediction["prompt"] + prediction["generated_text"]


def _pack(ids, block: int):
    """Cut a flat token array into rows of `block` tokens; the last row keeps the remainder."""
    import datasets
    import pyarrow as pa

    if len(ids) == 0:
        raise HftoolError("the data holds no text to train or score a language model on; check data.text_column")
    offsets = np.append(np.arange(0, len(ids), block), len(ids)).astype(np.int64)
    rows = pa.LargeListArray.from_arrays(pa.array(offsets), ids)  # zero-copy views of the flat array
    return datasets.Dataset(pa.table({"input_ids": rows}))


def _windows(ids: np.ndarray, block: int, stride: int):
    """Windows of `block` tokens every `stride` tokens; each scores only the tokens the previous
    one did not, so every token after the first is scored once, with at least block - stride of context."""
    import datasets

    if len(ids) == 0:
        raise HftoolError("the evaluation data holds no text to score; check data.text_column")
    inputs, labels, scored_to = [], [], 0
    for start in range(0, len(ids), stride):
        end = min(start + block, len(ids))
        window = ids[start:end].tolist()
        inputs.append(window)
        labels.append([-100] * (scored_to - start) + window[scored_to - start:])
        scored_to = end
        if end == len(ids):
            break
    return datasets.Dataset.from_dict({"input_ids": inputs, "labels": labels})


def _update_generation_config(generation, fields: dict) -> None:
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
