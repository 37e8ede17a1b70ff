"""Causal language modelling: GPT-2, Llama and any AutoModelForCausalLM, on plain text or chats.

Plain text: documents are tokenized, joined with EOS between them and cut into blocks of
`data.block_size` tokens over the whole split at once, so no token is lost at a batch boundary
(run_clm drops each 1000-row map batch's remainder); the last block may be shorter. Evaluation
reports perplexity = exp(total token loss / total tokens), optionally over strided windows.

Chat data (a `messages` column, or `prompt`/`completion`; hftool.data.chat): each conversation
is rendered with the chat template, the loss falls on the assistant's tokens (data.train_on), and
conversations are packed into blocks without attending to each other. Evaluation also answers
each held-out conversation's last question greedily: eval_exact_match against the reference.
Why one task for both: the model, loss, perplexity and generation are the same; only the rows
differ, and the rows say which they are.
"""

from __future__ import annotations

from dataclasses import dataclass

from pathlib import Path

from hftool import models
from hftool.config import DataConfig, EvalConfig, Option
from hftool.data import chat as chat_data
from hftool.data.columns import column_values
from hftool.data.tables import column_texts, tokenize
from hftool.errors import HftoolError
from hftool.generation import TEXT_GENERATION_OPTIONS, GenerativeModel, update_generation_config
from hftool.tasks.base import Options, Parts, Reading, Task, find_column

TEXT_COLUMNS = ("text", "content", "document", "story", "body", "sentence")
MAX_BLOCK = 1024  # data.block_size=None: the model's context, capped here (see CausalLMData)
CHAT_OPTION = Option("chat", list, "A user message for a chat model: rendered with its chat template and answered "
                                   "(repeatable; streamed unless --no-stream).", prompts=True)


@dataclass
class CausalLMData(DataConfig):
    choices = {"txt_unit": ("line", "paragraph"), "train_on": ("assistant", "all")}
    # The documents' column; None auto-detects text/content/document/story/body/sentence.
    text_column: str | None = None
    # How a .txt file becomes documents: `line` (one per non-empty line) or `paragraph` (blocks
    # between blank lines, line breaks inside kept: the documents of a book or a wiki dump, where
    # a lone line is a poor document).
    txt_unit: str = "line"
    # Texts are packed (EOS between documents) into blocks of this many tokens. None uses the
    # model's context, at most 1024: attention memory grows with the square of the block, and
    # fine-tuning gains little beyond GPT-2's 1024.
    block_size: int | None = None
    # Keep line breaks inside a document (verse, code, dialogue). false joins hard-wrapped lines
    # with a space, so a line end in the middle of a sentence costs no token.
    keep_linebreaks: bool = True
    # Chat data: a Jinja chat-template file for a tokenizer that has none (it is saved with the
    # run's tokenizer, so generate --chat uses it too). None: the tokenizer's own template.
    chat_template: str | None = None
    # Chat data: the tokens the loss is on. assistant: its replies and the end-of-turn marker after
    # each, so the model learns to answer rather than to write the user's side too; all: the
    # whole rendered conversation.
    train_on: str = "assistant"
    # Chat data: several conversations per block of block_size tokens, each attending only to
    # itself (position ids restart at each, and transformers masks between them). false gives
    # each conversation a row of its own, padded to its batch's longest (figures in
    # benchmarks/README.md). Plain text is always packed, documents joined by EOS.
    packing: bool = True

    def check(self) -> None:
        super().check()
        self.require("block_size", self.block_size is None or self.block_size > 0, "positive")


@dataclass
class CausalLMEval(EvalConfig):
    # Score with a window of block_size tokens moved this many tokens at a time, so every scored
    # token sees at least block_size - stride tokens of context (closer to the model's real
    # perplexity, at block_size / stride times the cost). None: plain blocks, as in training,
    # where a block's first tokens are predicted from little context.
    stride: int | None = None

    def check(self) -> None:
        super().check()
        self.require("stride", self.stride is None or self.stride > 0, "positive")


class CausalLM(Task):
    name = "causal-lm"
    recipe = "gpt2"
    options = Options(model=GenerativeModel, data=CausalLMData, eval=CausalLMEval)
    architectures = ("ForCausalLM", "LMHeadModel")
    default_metric = "perplexity"
    pipeline_task = "text-generation"
    generate_options = (*TEXT_GENERATION_OPTIONS, CHAT_OPTION)
    meta_keys = ("prompt_ids", "prompt_mask", "index")  # chat evaluation: what eval_generate answers from
    peft_unsupported = ""  # no new head: the LM head is the pretrained one (tied to the embeddings)
    streams = True

    def reading(self, cfg):
        return Reading(txt_unit=cfg.data.txt_unit)

    def prepare(self, cfg, ds, source, labels=None, require_labels=True):
        """Rows -> one `text` column of documents (line breaks joined when data.keep_linebreaks is
        false), or for chat data one `messages` column of checked conversations."""
        import datasets

        conversations = chat_data.conversations(ds, source)
        if conversations is not None:
            return datasets.Dataset.from_dict({"messages": conversations}), None
        import pyarrow as pa

        from hftool.data.tables import row_parts, write_rows

        column = find_column(ds, source, cfg.data.text_column, TEXT_COLUMNS, "text", "text_column")

        def tables():  # a part of the rows at a time: memory stays flat in the number of rows
            for start, part in row_parts(ds):
                texts = column_values(part, column).to_pylist()  # one Arrow read, not a formatted row at a time
                bad = next((i for i, v in enumerate(texts) if not isinstance(v, str)), None)
                if bad is not None:
                    raise HftoolError(f"{source} row {start + bad + 1}: column '{column}' holds {texts[bad]!r}, not "
                                      "text; fix or remove the row")
                if not cfg.data.keep_linebreaks:
                    texts = [" ".join(line.strip() for line in t.split("\n") if line.strip()) for t in texts]
                yield pa.table({"text": pa.array(texts, pa.string())})
            if not len(ds):
                yield pa.table({"text": pa.array([], pa.string())})

        return write_rows(ds, tables(), f"{column}|{cfg.data.keep_linebreaks}"), None

    def build(self, cfg, labels, train_ds=None, model_path=None, run_dir=None) -> Parts:
        spec = model_path or cfg.model.name
        overrides = dict(cfg.model.config_overrides)
        if models.tiny_arch(spec) is not None:
            arch = models.check_tiny(spec, ("gpt2", "llama"), self.name)
            from transformers import GPT2LMHeadModel, LlamaForCausalLM

            texts = ((m["content"] for messages in column_texts(train_ds, ["messages"]) for m in messages)
                     if "messages" in train_ds.column_names else column_texts(train_ds, ["text"]))
            train = models.train_chat_tokenizer if arch == "llama" else models.train_byte_bpe
            tokenizer = models.tiny_tokenizer(run_dir, lambda: train(texts, cfg.model.tiny_vocab_size))
            if arch == "llama":
                fields = {"max_position_embeddings": cfg.data.block_size} if cfg.data.block_size else {}
                model = LlamaForCausalLM(models.tiny_llama_config(tokenizer, overrides, **fields))
            else:
                fields = {"n_positions": cfg.data.block_size} if cfg.data.block_size else {}
                model = GPT2LMHeadModel(models.tiny_gpt2_config(tokenizer, overrides, **fields))
        else:
            from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

            token = cfg.model.token
            tokenizer = models.load("tokenizer", AutoTokenizer, spec, token)
            config = models.load("model", AutoConfig, spec, token, **overrides)
            # Training keeps fp32 master weights (mixed precision autocasts); inference loads the
            # checkpoint's own dtype.
            import torch

            model = models.load("model", AutoModelForCausalLM, spec, token, config=config,
                                dtype=torch.float32 if model_path is None else "auto")
        if tokenizer.pad_token is None:  # GPT-2 has none; padded positions are masked out anyway
            tokenizer.pad_token = tokenizer.eos_token
        generation = model.generation_config
        if generation.pad_token_id is None:
            generation.pad_token_id = tokenizer.pad_token_id
        if model_path is None:  # a new run: the recipe's defaults for `hftool generate`
            update_generation_config(generation, cfg.model.generation_config)
            if cfg.data.chat_template:
                tokenizer.chat_template = _read_template(cfg.data.chat_template)
            if train_ds is not None and "messages" in train_ds.column_names:
                _templated(tokenizer, spec)  # before any data is tokenized
        return Parts(model, tokenizer)

    # ---------------------------------------------------------------------------- features
    def features(self, parts, cfg, ds):
        if "messages" in ds.column_names:
            return self._conversations(parts, cfg, ds, pack=cfg.data.packing)
        return _pack(self._tokenized(parts, cfg, ds), self._block_size(parts, cfg))

    def eval_features(self, parts, cfg, ds):
        if "messages" in ds.column_names:  # one conversation a row, with the question it ends in
            return self._conversations(parts, cfg, ds, pack=False, prompts=True)
        stride, block = cfg.eval.stride, self._block_size(parts, cfg)
        if stride is None:
            return self.features(parts, cfg, ds)
        if stride > block:
            raise HftoolError(f"eval.stride={stride} is longer than the block ({block} tokens), so tokens between "
                              f"windows would go unscored; set eval.stride to at most {block}")
        return _windows(self._token_stream(parts, cfg, ds).to_numpy(), block, stride)

    def _block_size(self, parts, cfg) -> int:
        context = getattr(parts.model.config, "max_position_embeddings", None) or MAX_BLOCK
        if cfg.data.block_size is None:
            return min(context, MAX_BLOCK)
        if cfg.data.block_size > context:
            raise HftoolError(f"data.block_size={cfg.data.block_size} is longer than the model's context "
                              f"({context} tokens); set data.block_size to at most {context}")
        return cfg.data.block_size

    def stream_features(self, parts, cfg, groups):
        """Plain text packs as `features` does, but a group of rows at a time: each group's tokens
        follow what the last group left over, and only full blocks go out (the stream's last
        block may be shorter), so packing holds one group, never the split. Chats: packed a
        group at a time."""
        import numpy as np

        block, carried = self._block_size(parts, cfg), np.zeros(0, dtype=np.int64)
        for rows in groups:
            if "messages" in rows.column_names:
                yield from self.train_features(parts, cfg, rows)
                continue
            ids = np.concatenate([carried, self._token_stream(parts, cfg, rows).to_numpy()])
            full = len(ids) - len(ids) % block
            for start in range(0, full, block):
                yield {"input_ids": ids[start:start + block].tolist()}
            carried = ids[full:]
        if len(carried):
            yield {"input_ids": carried.tolist()}

    def _conversations(self, parts, cfg, ds, pack: bool, prompts: bool = False):
        """Rendered conversations with labels on the assistant's tokens (data.train_on): packed into
        blocks, or a row each with its length; with `prompts` also the ids of each conversation
        before its last answer (left-cut to the block) and its row index."""
        import datasets

        tokenizer, block = _templated(parts.processor, "the model"), self._block_size(parts, cfg)
        examples = chat_data.fit([chat_data.encode(tokenizer, messages, cfg.data.train_on)
                                  for messages in ds["messages"]], block)
        if pack:
            return datasets.Dataset.from_dict(chat_data.pack(examples, block))
        rows = {"input_ids": [ids for ids, _ in examples], "labels": [labels for _, labels in examples]}
        rows["length"] = [len(ids) for ids in rows["input_ids"]]
        if prompts:
            rows["prompt_ids"] = [chat_data.prompt_ids(tokenizer, messages)[-block:] for messages in ds["messages"]]
            rows["index"] = list(range(len(ds)))
        return datasets.Dataset.from_dict(rows)

    def _token_stream(self, parts, cfg, ds):
        """Every document's tokens followed by EOS, as one flat Arrow array in memory (no Python ints)."""
        return self._tokenized(parts, cfg, ds).data.column("input_ids").combine_chunks().flatten()

    def _tokenized(self, parts, cfg, ds):
        """A row of token ids per document, each followed by EOS (memory-mapped where `ds` is)."""
        tokenizer = parts.processor
        eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []

        def encode(batch):
            # verbose=False: documents longer than the context are expected here; packing cuts them.
            encoded = tokenizer(batch["text"], add_special_tokens=False, verbose=False)["input_ids"]
            return {"input_ids": [ids + eos if ids else [] for ids in encoded]}

        return tokenize(ds, encode, tokenizer, ("documents+eos",), cfg.data.num_proc)

    def collate(self, parts):
        import torch

        from hftool.data.batching import pad_collate

        pad_id = parts.processor.pad_token_id
        pad = pad_collate({"input_ids": pad_id, "labels": -100})

        def collate(features):
            if "position_ids" in features[0]:
                # Packed conversations: no attention mask, so transformers reads the restarting
                # position ids as sequence boundaries. Padding gets position 0 each: alone too.
                return pad([{k: f[k] for k in ("input_ids", "labels", "position_ids")} for f in features])
            # Labels are the inputs (the model shifts them); strided windows and chats bring their own.
            batch = pad([{"input_ids": f["input_ids"], "attention_mask": [1] * len(f["input_ids"]),
                          "labels": f.get("labels", f["input_ids"])} for f in features])
            if "prompt_ids" in features[0]:  # left-padded: generation continues every row at its end
                width = max(len(f["prompt_ids"]) for f in features)
                batch["prompt_ids"] = torch.full((len(features), width), pad_id, dtype=torch.long)
                batch["prompt_mask"] = torch.zeros((len(features), width), dtype=torch.long)
                for row, f in enumerate(features):
                    batch["prompt_ids"][row, width - len(f["prompt_ids"]):] = torch.as_tensor(f["prompt_ids"])
                    batch["prompt_mask"][row, width - len(f["prompt_ids"]):] = 1
                batch["index"] = torch.tensor([f["index"] for f in features], dtype=torch.long)
            return batch

        return collate

    def train_loss(self, parts, model, batch):
        # No KV cache in training: it would only take memory, and with one transformers ignores
        # the restarting position ids of packed conversations.
        return model(**batch, use_cache=False).loss

    # -------------------------------------------------------------------------- evaluation
    def metric(self, parts, rows):
        from hftool.metrics import GeneratedExactMatch, Perplexity, combine

        if "messages" not in rows.column_names:
            return Perplexity()
        return combine([Perplexity(), GeneratedExactMatch(parts.processor, [_answer(m) for m in rows["messages"]])])

    def eval_forward(self, parts, model, batch):
        return model(**self.model_inputs(batch), use_cache=False)

    def eval_outputs(self, parts, outputs, batch):
        """Per example: summed loss of its scored tokens and their count (pooled by the metric)."""
        import torch

        logits, labels = outputs.logits[:, :-1].float(), batch["labels"][:, 1:]
        losses = torch.nn.functional.cross_entropy(logits.transpose(1, 2), labels, ignore_index=-100, reduction="none")
        scored = labels != -100
        loss_sum, tokens = (losses * scored).sum(1).double(), scored.sum(1)
        # eval_loss itself is the metric's token-weighted mean; "loss" is each block's own mean
        # for its record (the model's loss would be the batch's).
        return {"loss_sum": loss_sum, "tokens": tokens, "loss": loss_sum / tokens.clamp(min=1)}

    def eval_generate(self, parts, model, batch):
        """Chat evaluation: each conversation's last answer, greedy (the exact match of a sample
        would be noise), padded to max_new_tokens so every process gathers one width."""
        if "prompt_ids" not in batch:
            return {}
        import torch

        from hftool.generation import GenerationOptions

        kwargs = GenerationOptions(do_sample=False).generate_kwargs(model.generation_config)
        kwargs["num_return_sequences"] = 1
        prompt = batch["prompt_ids"]
        ids = model.generate(input_ids=prompt, attention_mask=batch["prompt_mask"], **kwargs)[:, prompt.shape[1]:]
        width = kwargs.get("max_new_tokens") or model.generation_config.max_new_tokens
        padded = torch.full((ids.shape[0], width), -100, dtype=torch.long, device=ids.device)
        padded[:, : min(width, ids.shape[1])] = ids[:, :width]
        return {"generated": padded, "index": batch["index"]}

    def prediction_records(self, parts, batches, order, rows):
        """Chat runs: per conversation the question, the answer generated and the reference."""
        if not batches or "generated" not in batches[0]:
            return super().prediction_records(parts, batches, order, rows)
        from hftool.metrics.captioning import caption_text

        records = []
        for b in batches:
            for index, ids, loss in zip(b["index"], b["generated"], b["loss"]):
                messages = rows[int(index)]["messages"]
                answer, reference = caption_text(parts.processor, ids), _answer(messages)
                question = next(m["content"] for m in reversed(messages[: _last_answer(messages)]) if m["role"] == "user")
                records.append({"index": int(index), "question": question, "prediction": answer, "reference": reference,
                                "exact_match": answer == reference.strip(), "loss": round(float(loss), 6)})
        return sorted(records, key=lambda r: r["index"])

    def resampler(self, parts, rows):
        from hftool.metrics.resampling import PerplexityStats

        return PerplexityStats()

    # ---------------------------------------------------------------------------- inference
    def predict(self, parts, cfg, inputs, batch_size):
        from hftool.generation import GenerationOptions, generate

        return generate(parts.model, parts.processor, inputs, GenerationOptions(batch_size=batch_size))

    def card_usage(self, parts, cfg):
        return ('```python\nfrom transformers import pipeline\n\ngenerator = pipeline("text-generation", model=".")\n'
                'print(generator("Once upon a time,", max_new_tokens=40)[0]["generated_text"])\n```\n\n'
                'or `hftool generate . -p "Once upon a time," --stream`.\n')

    def format_prediction(self, prediction):
        return prediction["prompt"] + prediction["generated_text"]

    def generate(self, parts, cfg, prompts, on_text=None, options=None, chat=None, **flags):
        """Continue prompts, then answer `chat` messages (each a one-turn conversation rendered
        with the chat template, on_text's indices after the prompts'); `options`
        (GenerationOptions) or the command's flags say how."""
        from hftool.generation import GenerationOptions, generate

        options = options or GenerationOptions.from_flags(**flags)
        results = generate(parts.model, parts.processor, prompts, options, on_text) if prompts else []
        if chat:
            tokenizer = _templated(parts.processor, "the model")
            texts = [chat_data.render(tokenizer, [{"role": "user", "content": question}], generation_prompt=True)
                     for question in chat]
            shifted = None if on_text is None else (lambda i, piece: on_text(len(prompts) + i, piece))
            answers = generate(parts.model, tokenizer, texts, options, shifted, add_special_tokens=False)
            per_question = len(answers) // len(chat)
            results += [{**r, "prompt": chat[n // per_question]} for n, r in enumerate(answers)]
        return results


def _last_answer(messages: list[dict]) -> int:
    return max(i for i, m in enumerate(messages) if m["role"] == "assistant")


def _answer(messages: list[dict]) -> str:
    """The reference answer of a chat evaluation: the last assistant turn."""
    return messages[_last_answer(messages)]["content"].strip()


def _read_template(path: str) -> str:
    file = Path(path).expanduser()
    if not file.is_file():
        raise HftoolError(f"data.chat_template={path}: no such file; pass a Jinja chat-template file")
    return file.read_text(encoding="utf-8")


def _templated(tokenizer, name: str):
    """`tokenizer`, which must have a chat template for chat data."""
    if not tokenizer.chat_template:
        raise HftoolError(f"{name}'s tokenizer has no chat template, which chat data and --chat need; set "
                          "data.chat_template=FILE (a Jinja template) when fine-tuning")
    return tokenizer

    # -------------------------------------------------------------------------------- export
    def onnx_graphs(self, parts, cfg, batch):
        """decoder.onnx: prompt or new tokens + past key/values -> logits + present key/values."""
        from hftool.export import causal_lm_graphs

        return causal_lm_graphs(parts.model, batch["input_ids"][:, :5])

    def onnx_feed(self, parts, batch):
        """Prompts for the parity check's generation: the first 4 to 12 tokens of each block, left
        padded as `hftool generate` pads a batch, so padding and positions are checked too."""
        import torch

        blocks, real = batch["input_ids"], batch["attention_mask"].sum(-1).tolist()
        lengths = [max(1, min(4 + (row * 5) % 9, int(n))) for row, n in enumerate(real)]
        width = max(lengths)
        ids = torch.full((len(blocks), width), parts.processor.pad_token_id, dtype=torch.long)
        mask = torch.zeros(len(blocks), width, dtype=torch.long)
        for row, n in enumerate(lengths):
            ids[row, width - n:], mask[row, width - n:] = blocks[row, :n], 1
        return {"input_ids": ids, "attention_mask": mask}


def _pack(tokenized, block: int):
    """Cut the documents of `tokenized` (rows of token ids), as one flat stream, into rows of
    `block` tokens; the last row keeps the remainder. Written a part at a time (write_rows): the
    stream is never whole in memory."""
    import numpy as np
    import pyarrow as pa

    from hftool.data.tables import write_rows

    column = tokenized.data.column("input_ids")
    if not sum(len(chunk.flatten()) for chunk in column.chunks):
        raise HftoolError("the data holds no text to train or score a language model on; check data.text_column")

    def rows(ids):
        offsets = np.append(np.arange(0, len(ids), block), len(ids)).astype(np.int64)
        return pa.table({"input_ids": pa.LargeListArray.from_arrays(pa.array(offsets), ids)})  # views of `ids`

    def tables():
        carry = None  # tokens after the last whole block so far
        for chunk in column.chunks:
            ids = chunk.flatten() if carry is None else pa.concat_arrays([carry, chunk.flatten()])
            whole = len(ids) // block * block
            if whole:
                yield rows(ids.slice(0, whole))
            carry = ids.slice(whole)
        if carry is not None and len(carry):
            yield rows(carry)

    return write_rows(tokenized, tables(), f"pack|{block}")


def _windows(ids, block: int, stride: int):
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
