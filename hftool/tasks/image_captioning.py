"""Image captioning: a VisionEncoderDecoderModel built from an image encoder and a text decoder
(`model.encoder=tiny:vit model.decoder=tiny:gpt2`, local dirs or hub ids), or loaded whole.

Training sees every caption of an image as its own example; evaluation generates one caption
per image and scores it against all of that image's references (corpus BLEU-1..4, ROUGE-L,
CIDEr-D; hftool.metrics.captioning). The decoder's start, pad and EOS tokens are set on the
model and its generation config, so `generate` and the loss agree on them out of the box.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from hftool import models, vision
from hftool.config import Option
from hftool.data import images
from hftool.data.columns import column_values
from hftool.data.tables import column_texts
from hftool.errors import HftoolError
from hftool.generation import GenerativeModel, update_generation_config
from hftool.outputs import atomic_path, check_output
from hftool.tasks.base import Options, Parts, Task, find_column

CAPTION_COLUMNS = ("captions", "caption", "sentences", "text")
DEFAULT_SIDE = 64  # tiny:vit's input when data.image_size is unset
REPORT = "captions.jsonl"
ENCODE_ROWS = 1_000  # images whose captions are tokenized in one call


@dataclass
class CaptionData(images.ImageData):
    # The column with a caption or a list of captions per image; None auto-detects
    # captions/caption/sentences/text.
    caption_column: str | None = None
    # Token budget of a caption (EOS included); longer captions are cut. Evaluation generates at
    # most this many tokens unless model.generation_config says.
    max_length: int = 128

    def check(self) -> None:
        super().check()
        self.require("max_length", self.max_length > 0, "positive")


@dataclass
class CaptionModel(GenerativeModel, vision.VisionModel):
    # An image encoder and a text decoder to build a VisionEncoderDecoderModel from (local dirs,
    # hub ids, tiny:vit / tiny:gpt2); cross-attention is added to the decoder. Both unset:
    # model.name is an existing encoder-decoder checkpoint.
    encoder: str | None = None
    decoder: str | None = None


@dataclass
class CaptioningState:
    image_processor: object  # the encoder's; saved with the tokenizer as one processor


class ImageCaptioning(Task):
    name = "image-captioning"
    recipe = "caption"
    options = Options(model=CaptionModel, data=CaptionData)
    architectures = ("VisionEncoderDecoderModel",)
    default_metric = "cider"
    pipeline_task = "image-text-to-text"  # transformers 5 has no "image-to-text" pipeline
    meta_keys = ("index",)
    predict_options = (
        Option("attention_map", Path, "Captioning: draw where the decoder looks for each word into this PNG."),
    )
    peft_unsupported = ""

    def model_specs(self, cfg):
        m = cfg.model
        return [spec for spec in (m.encoder, m.decoder) if spec] if m.encoder or m.decoder else [m.name]

    # ------------------------------------------------------------------------------ data
    def prepare(self, cfg, ds, source, labels=None, require_labels=True):
        """Rows -> columns image (datasets Image, not decoded) and captions (list of str).

        Rows naming the same image file are merged (in the order each file first appears), so an
        image is evaluated once against all of its captions. Image paths are read relative to the
        data file and checked up front, every time. Captions are checked and the merged rows
        written a part at a time, memory-mapped from the cache when `ds` is on disk.
        """
        import datasets
        import numpy as np
        import pyarrow as pa
        import pyarrow.compute as pc

        from hftool.data import tables
        from hftool.data.tables import write_rows

        texts = None
        if require_labels:
            caption_column = find_column(ds, source, cfg.data.caption_column, CAPTION_COLUMNS, "caption",
                                         "caption_column")

            def normalised():
                for start, part in tables.column_parts(ds, [caption_column]):
                    values = part.column(0).to_pylist()
                    yield pa.table({"captions": pa.array(
                        [_captions(value, source, row, caption_column) for row, value in enumerate(values, start + 1)],
                        pa.list_(pa.string()))})

            texts = write_rows(ds, normalised(), f"captions|{caption_column}")
        rows, kept = images.image_rows(ds, source, cfg.data.image_column, cfg.data.skip_bad_images)
        if kept is None:  # images stored in the data: one row each
            return (rows if texts is None else rows.add_column("captions", texts.data.column("captions"))), None
        entries = column_values(rows, "image").combine_chunks()
        # Codes number the paths in the order each first appears; a stable sort by code lists each
        # image's rows together, in file order: the merge in Arrow and numpy, not a dict of every path.
        codes = tables.first_seen_codes(entries.field("path"))
        order = np.argsort(codes, kind="stable")
        sizes = np.bincount(codes, minlength=0)
        ends = np.cumsum(sizes)
        kept = np.asarray(kept, dtype=np.int64)

        def merged():
            for start in range(0, max(len(sizes), 1), tables.CHUNK_ROWS):  # one table at least, if empty
                part = sizes[start:start + tables.CHUNK_ROWS]
                begin = ends[start] - sizes[start] if len(part) else 0
                mine = order[begin:begin + part.sum()]  # the kept rows of these images, image by image
                starts = np.cumsum(part) - part
                columns = {"image": entries.take(pa.array(mine[starts]))}
                if texts is not None:
                    lists = pa.concat_tables(t for _, t in tables.column_parts(texts, ["captions"], kept[mine]))
                    lists = lists.column(0).combine_chunks()
                    lengths = pc.list_value_length(lists).to_numpy()
                    totals = np.add.reduceat(lengths, starts) if len(part) else lengths
                    offsets = pa.array(np.concatenate(([0], np.cumsum(totals))), pa.int32())
                    columns["captions"] = pa.ListArray.from_arrays(offsets, lists.flatten())
                yield pa.table(columns)

        # What decides the rows beyond ds: the resolved paths (data folder, image column), which
        # were kept (skip_bad_images), the captions read. The image files' contents are not in them.
        digest = hashlib.sha256(f"{texts._fingerprint if texts is not None else ''}".encode())
        for buffer in entries.field("path").buffers():
            if buffer is not None:
                digest.update(buffer)
        digest.update(kept.tobytes())
        return write_rows(ds, merged(), f"merged|{digest.hexdigest()}").cast_column(
            "image", datasets.Image(decode=False)), None

    def validate_rows(self, cfg, ds, source, findings, labels=None):
        """Missing, empty, unreadable and unusual images; empty captions (each, with its row)."""
        from hftool.data import validation

        column = find_column(ds, source, cfg.data.image_column, images.IMAGE_COLUMNS, "image", "image_column")
        summary = validation.Summary(rows=len(ds))
        summary.keys = validation.images(validation.image_entries(ds, column), source, findings, summary)
        if cfg.data.caption_column in ds.column_names or any(c in ds.column_names for c in CAPTION_COLUMNS):
            caption = find_column(ds, source, cfg.data.caption_column, CAPTION_COLUMNS, "caption", "caption_column")
            lengths = summary.values.setdefault("caption length (words)", [])
            for row, value in enumerate(ds[caption], 1):
                texts = [value] if isinstance(value, str) else value if isinstance(value, list) else []
                for text in texts:
                    if isinstance(text, str) and not text.strip():
                        findings.add("empty_caption", source=source, row=row, column=caption)
                    elif isinstance(text, str):
                        lengths.append(len(text.split()))
        return summary

    def _encode(self, parts, cfg, texts: list[str]) -> list[list[int]]:
        """Caption token ids ending in EOS, at most data.max_length tokens."""
        tokenizer = parts.processor
        eos = parts.model.config.eos_token_id
        encoded = tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]
        return [ids[: cfg.data.max_length - 1] + [eos] for ids in encoded]

    def _transform(self, parts, cfg) -> vision.ImageTransform:
        # No flips or crops: "left of" must stay left, and the whole scene is the caption's.
        return vision.ImageTransform(vision.geometry(parts.state.image_processor), train=False,
                                     skip_bad=cfg.data.skip_bad_images)

    def train_features(self, parts, cfg, ds):
        """One example per (image, caption): every caption is trained on."""
        return self._caption_rows(parts, cfg, ds, every=True).with_transform(self._transform(parts, cfg))

    def features(self, parts, cfg, ds):
        """One example per image; its first caption gives eval_loss, all of them the metrics."""
        return self._caption_rows(parts, cfg, ds, every=False).with_transform(self._transform(parts, cfg))

    def _caption_rows(self, parts, cfg, ds, every: bool):
        """Rows image, labels (caption ids) and length (`every` caption) or index (the first caption
        of each image), built a part of the rows at a time as Arrow: no Python list of every caption."""
        import datasets
        import pyarrow as pa

        from hftool.data.tables import column_parts, features_fingerprint, write_rows

        id_lists = pa.list_(pa.int64())

        def rows(start, part):
            captions, entries = part.column("captions").to_pylist(), part.column("image")
            if every:
                owners = [i for i, texts in enumerate(captions) for _ in texts]
                labels = self._encode(parts, cfg, [t for texts in captions for t in texts])
                return pa.table({"image": entries.take(owners), "labels": pa.array(labels, id_lists),
                                 "length": pa.array([len(ids) for ids in labels], pa.int64())})
            labels = self._encode(parts, cfg, [texts[0] for texts in captions])
            return pa.table({"image": entries, "labels": pa.array(labels, id_lists),
                             "index": pa.array(range(start, start + len(labels)), pa.int64())})

        def tables():
            # The tokenizer sees ENCODE_ROWS images at a time: its encodings of a whole part (tens
            # of thousands of captions, each with its tokens, offsets and masks) would be the peak.
            for start, part in column_parts(ds, ["captions", "image"]):
                pieces = [rows(start + offset, part.slice(offset, ENCODE_ROWS))
                          for offset in range(0, part.num_rows, ENCODE_ROWS)]
                yield pa.concat_tables(pieces).combine_chunks()

        # What the tokenizer does, not where it was loaded from: --resume and `evaluate` reuse the rows.
        key = features_fingerprint(ds, parts.processor, "captions", every, cfg.data.max_length,
                                   parts.model.config.eos_token_id)
        return write_rows(ds, tables(), key).cast_column("image", datasets.Image(decode=False))

    def collate(self, parts):
        return collate

    # ----------------------------------------------------------------------------- model
    def build(self, cfg, labels, train_ds=None, model_path=None, run_dir=None) -> Parts:
        from transformers import AutoImageProcessor, AutoTokenizer, VisionEncoderDecoderModel

        m = cfg.model
        if model_path is None and (m.encoder or m.decoder):
            if not (m.encoder and m.decoder):
                raise HftoolError("set both model.encoder and model.decoder (e.g. model.encoder=tiny:vit "
                                  "model.decoder=tiny:gpt2), or neither to load model.name as an encoder-decoder")
            if m.name != type(m)().name:
                raise HftoolError(f"model.name={m.name} and model.encoder/model.decoder are both set; pass "
                                  "model.encoder=null model.decoder=null to load the encoder-decoder model.name")
            unknown = set(m.config_overrides) - {"encoder", "decoder"}
            if unknown:
                raise HftoolError(f"model.config_overrides: an encoder-decoder takes {{encoder: {{...}}, decoder: "
                                  f"{{...}}}}, not '{sorted(unknown)[0]}'")
            encoder, image_processor = _encoder(cfg, m.encoder)
            texts = ((t for texts in column_texts(train_ds, ["captions"]) for t in texts)
                     if train_ds is not None and len(train_ds) else None)
            decoder, tokenizer = _decoder(cfg, m.decoder, texts, run_dir)
            model = VisionEncoderDecoderModel(encoder=encoder, decoder=decoder)
        else:
            spec = model_path or m.name
            if models.tiny_arch(spec) is not None:
                raise HftoolError(f"model '{spec}': build a tiny captioner with model.encoder=tiny:vit "
                                  "model.decoder=tiny:gpt2")
            model = models.load("model", VisionEncoderDecoderModel, spec, m.token)
            tokenizer = models.load("tokenizer", AutoTokenizer, spec, m.token)
            image_processor = models.load("image processor", AutoImageProcessor, spec, m.token)
        if getattr(getattr(model, "encoder", None), "pooler", None) is not None:  # (an ONNX export has no encoder module)
            # The decoder reads the encoder's hidden states, never its pooled output: frozen, as
            # DDP fails on trainable parameters that get no gradient. Kept (not dropped) so the run
            # saves it and reloads without "newly initialized" weights.
            model.encoder.pooler.requires_grad_(False)
        set_special_tokens(model, tokenizer)
        generation = model.generation_config
        if model_path is None and generation.max_new_tokens is None:
            generation.max_new_tokens = cfg.data.max_length  # captions are short; 100 would slow evaluation
        update_generation_config(generation, m.generation_config)  # a run's saved ones, or predict's overrides
        return Parts(model, tokenizer, state=CaptioningState(image_processor))

    def peft_heads(self, parts):
        """The decoder's cross-attention (and its layer norm), and the projection between encoder
        and decoder widths: what joining the two adds."""
        return ["crossattention", "ln_cross_attn", "enc_to_dec_proj"]

    def peft_base(self, cfg):
        """A captioner built from model.encoder and model.decoder has new cross-attention: kept in base/."""
        return None if cfg.model.encoder or cfg.model.decoder else super().peft_base(cfg)

    def save(self, parts, run_dir, model=None, state_dict=None):
        """Weights + config, and the tokenizer with the image processor as one processor."""
        if model is not None:
            model.save_pretrained(str(run_dir), state_dict=state_dict, safe_serialization=True)
        # One processor (image processor + tokenizer) so AutoProcessor and the image-text-to-text
        # pipeline load the run dir; an empty text prompt then encodes to the start token.
        from transformers import VisionTextDualEncoderProcessor

        tokenizer = parts.processor
        if tokenizer.bos_token_id is not None and tokenizer.bos_token_id == parts.model.config.decoder_start_token_id:
            tokenizer.add_bos_token = True
        VisionTextDualEncoderProcessor(parts.state.image_processor, tokenizer).save_pretrained(str(run_dir))

    def write_reports(self, parts, run_dir, metrics, records):
        """captions.jsonl: the final evaluation's caption of each image beside its references."""
        from hftool.outputs import write_jsonl

        write_jsonl(Path(run_dir) / REPORT, [{"caption": r["caption"], "references": r["references"]} for r in records])

    # --------------------------------------------------------------------------- metrics
    def metric(self, parts, rows):
        from hftool.metrics import GeneratedCaptions

        return GeneratedCaptions(parts.processor, list(rows["captions"]))

    def eval_outputs(self, parts, outputs, batch):
        return {"index": batch["index"]}

    def eval_generate(self, parts, model, batch):
        """Greedy or beam captions per the model's generation config, padded to max_new_tokens
        so every process gathers the same width."""
        import torch

        from hftool.generation import GenerationOptions

        kwargs = GenerationOptions().generate_kwargs(model.generation_config)
        kwargs["num_return_sequences"] = 1
        ids = model.generate(pixel_values=batch["pixel_values"], **kwargs)[:, 1:]  # drop the start token
        width = kwargs.get("max_new_tokens") or model.generation_config.max_new_tokens
        padded = torch.full((ids.shape[0], width), -100, dtype=torch.long, device=ids.device)
        padded[:, : min(width, ids.shape[1])] = ids[:, :width]
        return {"generated": padded}

    def resampler(self, parts, rows):
        from hftool.metrics.resampling import CaptionStats

        return CaptionStats(list(rows["captions"]), parts.processor)

    def prediction_records(self, parts, batches, order, rows):
        """Per image: the generated caption beside all its references."""
        from hftool.metrics.captioning import caption_text

        references = rows["captions"]
        records = []
        for b in batches:
            for index, ids in zip(b["index"], b["generated"]):
                records.append({"index": int(index), "caption": caption_text(parts.processor, ids),
                                "references": references[int(index)]})
        return sorted(records, key=lambda r: r["index"])

    # ------------------------------------------------------------------------- inference
    def predict(self, parts, cfg, inputs, batch_size, attention_map: str | None = None):
        """Image files or folders (searched recursively) -> {image, caption} each.

        Args:
            attention_map: Also draw the decoder's cross-attention over the image patches for
                each generated token into this PNG (PATH-<n>.png for the n-th of several images).
        """
        import datasets
        import torch

        from hftool.generation import GenerationOptions
        from hftool.metrics.captioning import caption_text

        from hftool.export import OnnxModel

        if attention_map and isinstance(parts.model, OnnxModel):
            raise HftoolError("--attention-map reads the PyTorch decoder's attention weights; draw it with the run dir, "
                              "not its ONNX export")
        paths = images.input_paths(inputs)
        rows, _ = self.prepare(cfg, datasets.Dataset.from_dict({"image": paths}), "input", require_labels=False)
        transform = self._transform(parts, cfg)
        model = parts.model.eval()
        kwargs = GenerationOptions(batch_size=batch_size).generate_kwargs(model.generation_config)
        device = next(model.parameters()).device
        entries, results = list(rows["image"]), []
        for start in range(0, len(entries), batch_size):
            done = transform.images(entries[start:start + batch_size])
            if not done:
                continue
            chunk = [entries[start + i] for i, _ in done]
            pixels = torch.stack([p for _, p in done])
            with torch.inference_mode():
                out = model.generate(pixel_values=pixels.to(device), **kwargs)[:, 1:]
            per_image = out.shape[0] // len(chunk)
            for row, ids in enumerate(out.tolist()):
                results.append({"image": chunk[row // per_image]["path"], "caption": caption_text(parts.processor, ids)})
                if attention_map and row % per_image == 0:
                    n = len(results) - 1
                    target = Path(attention_map) if len(entries) == 1 else Path(attention_map).with_name(
                        f"{Path(attention_map).stem}-{n}{Path(attention_map).suffix or '.png'}")
                    check_output(target, what="--attention-map")
                    draw_attention(model, parts.processor, pixels[row // per_image], ids, chunk[row // per_image], target)
                    results[-1]["attention_map"] = str(target)
        return results

    def card_metadata(self, parts, cfg):
        """The Hub's captioning tag; the encoder's and the decoder's origins when they were built
        from two models."""
        from hftool.reports import model_origin

        meta = super().card_metadata(parts, cfg)
        m = cfg.model
        if m.encoder and m.decoder:
            meta["base_model"] = [*model_origin(m.encoder), *model_origin(m.decoder)] if m.pretrained else []
            meta["model"] = f"encoder `{m.encoder}` + decoder `{m.decoder}`"
        return {**meta, "pipeline_tag": "image-to-text"}

    def card_usage(self, parts, cfg):
        return ('```python\nfrom transformers import pipeline\n\n'
                'captioner = pipeline("image-text-to-text", model=".")\n'
                'print(captioner(images="image.png", text=""))\n```\n\n'
                'transformers 5 runs captioners as `image-text-to-text` (`image-to-text` maps to it): the empty '
                'text prompt becomes the decoder\'s start token.\n')

    def format_prediction(self, prediction):
        return f"{prediction['caption']}\t{prediction['image']}"

    def onnx_graphs(self, parts, cfg, batch):
        """encoder.onnx: pixel_values -> encoder_hidden_states; decoder.onnx: caption tokens +
        encoder_hidden_states + past key/values -> logits + present key/values."""
        from hftool.export import encoder_decoder_graphs

        return encoder_decoder_graphs(parts.model, {"pixel_values": batch["pixel_values"]}, {"pixel_values": {0: "batch"}})


def collate(features: list[dict]) -> dict:
    import torch

    batch = {"pixel_values": torch.stack([f["pixel_values"] for f in features])}
    if "labels" in features[0]:
        width = max(len(f["labels"]) for f in features)
        labels = torch.full((len(features), width), -100, dtype=torch.long)  # -100: not scored
        for row, f in enumerate(features):
            labels[row, : len(f["labels"])] = torch.as_tensor(f["labels"])
        batch["labels"] = labels
    if "index" in features[0]:
        batch["index"] = torch.tensor([f["index"] for f in features], dtype=torch.long)
    return batch


def _captions(value, source: str, row: int, column: str) -> list[str]:
    """A caption or a list of captions -> a list of non-empty stripped strings; else an error naming the row."""
    texts = [value] if isinstance(value, str) else value
    if not isinstance(texts, (list, tuple)) or not texts or not all(isinstance(t, str) for t in texts):
        raise HftoolError(f"{source} row {row}: column '{column}' holds {value!r}, not a caption or a list of "
                          "captions; fix or remove the row")
    texts = [t.strip() for t in texts]
    if not all(texts):
        raise HftoolError(f"{source} row {row}: empty caption in column '{column}'; write the caption or remove it")
    return texts


def set_special_tokens(model, tokenizer) -> None:
    """Start, pad and EOS ids on the model config and its generation config (kept where set).

    GPT-2 has no pad token (EOS pads, masked from the loss anyway) and starts from its BOS;
    BERT-like decoders start from [CLS] and end with [SEP].
    """
    eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
    if eos is None:
        raise HftoolError(f"the decoder's tokenizer ({type(tokenizer).__name__}) has no EOS or SEP token to end a "
                          "caption; use a decoder whose tokenizer has one")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.convert_ids_to_tokens(eos)
    start = next((t for t in (tokenizer.bos_token_id, tokenizer.cls_token_id) if t is not None), eos)
    wanted = {"decoder_start_token_id": start, "pad_token_id": tokenizer.pad_token_id, "eos_token_id": eos}
    for config in (model.config, model.generation_config):
        for key, value in wanted.items():
            if getattr(config, key, None) is None:
                setattr(config, key, value)


def _encoder(cfg, spec: str):
    """An image encoder (its base model, no head) and its image processor."""
    from transformers import AutoConfig, AutoImageProcessor, AutoModel

    overrides = dict(cfg.model.config_overrides.get("encoder") or {})
    if models.tiny_arch(spec) is not None:
        models.check_tiny(spec, ("vit",), "model.encoder: image captioning")
        model, processor = vision.tiny_vit(overrides, {}, cfg.data.image_size or DEFAULT_SIDE)
        # Built as the encoder-decoder rebuilds it when it loads (AutoModel: with its pooler), so
        # the run saves every weight a reload expects.
        return AutoModel.from_config(model.config), processor
    token = cfg.model.token
    config = models.load("model", AutoConfig, spec, token, **overrides)
    models.check_config_overrides(config, overrides)
    model = (models.load("model", AutoModel, spec, token, config=config) if cfg.model.pretrained
             else AutoModel.from_config(config))
    return model, models.load("image processor", AutoImageProcessor, spec, token)


def _decoder(cfg, spec: str, texts, run_dir):
    """A causal LM with cross-attention layers (new, randomly initialised) and its tokenizer; a
    tiny:gpt2 decoder's tokenizer is learned from `texts` (the training captions; None: none)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GPT2LMHeadModel

    overrides = dict(cfg.model.config_overrides.get("decoder") or {})
    if models.tiny_arch(spec) is not None:
        models.check_tiny(spec, ("gpt2",), "model.decoder: image captioning")
        if texts is None and run_dir is None:
            raise HftoolError("tiny:gpt2 learns its tokenizer from the training captions; none were given")
        tokenizer = models.tiny_tokenizer(run_dir, lambda: models.train_byte_bpe(texts, cfg.model.tiny_vocab_size))
        return GPT2LMHeadModel(models.tiny_gpt2_config(tokenizer, overrides, add_cross_attention=True)), tokenizer
    token = cfg.model.token
    tokenizer = models.load("tokenizer", AutoTokenizer, spec, token)
    config = models.load("model", AutoConfig, spec, token, is_decoder=True, add_cross_attention=True, **overrides)
    models.check_config_overrides(config, overrides)
    model = (models.load("model", AutoModelForCausalLM, spec, token, config=config) if cfg.model.pretrained
             else AutoModelForCausalLM.from_config(config))
    return model, tokenizer


def draw_attention(model, tokenizer, pixels, ids: list[int], entry: dict, path: Path) -> None:
    """One panel per generated token: the image under the decoder's cross-attention (mean over
    layers and heads) on the encoder's grid of patches."""
    import math

    import matplotlib
    import torch

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    start = model.config.decoder_start_token_id
    stops = {tokenizer.eos_token_id, tokenizer.pad_token_id, -100} - {None}
    end = next((n for n, i in enumerate(ids) if i in stops), None)
    ids = ids[: len(ids) if end is None else end + 1]  # the EOS panel too: where it looks when it stops
    device = next(model.parameters()).device
    previous = model.config._attn_implementation
    model.set_attn_implementation("eager")  # SDPA kernels return no attention weights
    try:
        with torch.inference_mode():
            out = model(pixel_values=pixels[None].to(device), decoder_input_ids=torch.tensor([[start, *ids]], device=device),
                        output_attentions=True)
    finally:
        model.set_attn_implementation(previous)
    weights = torch.stack(out.cross_attentions).float().mean(dim=(0, 2))[0, :-1]  # token t attends, then emits ids[t]
    side = math.isqrt(weights.shape[-1])
    if side * side != weights.shape[-1]:
        side = math.isqrt(weights.shape[-1] - 1)
        if side * side != weights.shape[-1] - 1:
            raise HftoolError(f"the encoder's {weights.shape[-1]} outputs are not a square grid of patches; "
                              "--attention-map needs a ViT-like encoder")
        weights = weights[:, 1:]  # the [CLS] token
    image = images.decode(entry).permute(1, 2, 0).numpy()
    words = [tokenizer.decode([i], skip_special_tokens=True).strip() or ("<end>" if i in stops else repr(tokenizer.decode([i])))
             for i in ids]
    columns = min(6, len(words) + 1)
    rows = math.ceil((len(words) + 1) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(2.2 * columns, 2.4 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    axes.flat[0].imshow(image)
    axes.flat[0].set_title("image", fontsize=9)
    height, width = image.shape[:2]
    for ax, word, grid in zip(list(axes.flat)[1:], words, weights.reshape(-1, side, side).cpu().numpy()):
        ax.imshow(image)
        ax.imshow(grid, cmap="jet", alpha=0.5, extent=(0, width, height, 0), interpolation="bilinear")
        ax.set_title(word, fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=80)
    plt.close(fig)
