"""Image captioning: a VisionEncoderDecoderModel built from an image encoder and a text decoder
(`model.encoder=tiny:vit model.decoder=tiny:gpt2`, local dirs or hub ids), or loaded whole.

Training sees every caption of an image as its own example; evaluation generates one caption
per image and scores it against all of that image's references (corpus BLEU-1..4, ROUGE-L,
CIDEr-D; hftool.metrics.captioning). The decoder's start, pad and EOS tokens are set on the
model and its generation config, so `generate` and the loss agree on them out of the box.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import datasets
import evaluate
import torch

from hftool import logs, models
from hftool.data import images
from hftool.errors import HftoolError
from hftool.outputs import atomic_path, check_output
from hftool.tasks.base import Parts, Task, find_column
from hftool.tasks.image_classification import IMAGE_COLUMNS, ImageClassification, ImageTransform, geometry, one_thread

CAPTION_COLUMNS = ("captions", "caption", "sentences", "text")
DEFAULT_SIDE = 64  # tiny:vit's input when data.image_size is unset


class CaptionTransform:
    """Decode and transform images in DataLoader workers; other columns pass through."""

    def __init__(self, geometry, skip_bad: bool):
        self.images = ImageTransform(geometry, train=False, skip_bad=skip_bad)  # no flips: "left of" must stay left

    def __call__(self, batch: dict) -> dict:
        if "image" not in batch:  # a column read on its own, e.g. the loop's `length`
            return batch
        out: dict[str, list] = {"pixel_values": []}
        keys = [k for k in batch if k != "image"]
        out.update({k: [] for k in keys})
        with one_thread():
            for i, entry in enumerate(batch["image"]):
                try:
                    out["pixel_values"].append(self.images.image(entry))
                except images.ImageDecodeError as err:
                    if not self.images.skip_bad:
                        raise
                    logs.warn(f"data.skip_bad_images: skipping {str(err).split('; ')[0]}")
                    continue
                for k in keys:
                    out[k].append(batch[k][i])
        return out


class GeneratedCaptions(evaluate.Metric):
    """Decodes generated token ids and scores them against each image's references.

    Inputs per example: `generated` (token ids, padded) and `index` (the image's row in the
    evaluation data, whose references are `references[index]`).
    """

    def __init__(self, tokenizer=None, references: list[list[str]] | None = None, **kwargs):
        super().__init__(keep_in_memory=True, **kwargs)
        self.tokenizer, self.references = tokenizer, references or []
        self.last_predictions: list[tuple[int, str]] = []  # (index, caption) of the last compute()

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description="Corpus BLEU-1..4, ROUGE-L and CIDEr-D of generated captions.", citation="",
            inputs_description="generated: token ids; index: the image's row in the evaluation data",
            features=datasets.Features({"generated": datasets.Sequence(datasets.Value("int64")),
                                        "index": datasets.Value("int64")}),
        )

    def _compute(self, generated, index) -> dict[str, float]:
        from hftool.metrics.captioning import caption_scores

        texts = [caption_text(self.tokenizer, ids) for ids in generated]
        self.last_predictions = list(zip(index, texts))
        return caption_scores(texts, [self.references[i] for i in index])


def caption_text(tokenizer, ids) -> str:
    """Generated ids (without the start token) -> text, up to the first EOS or padding."""
    ids = [int(i) for i in ids]
    stops = {tokenizer.eos_token_id, tokenizer.pad_token_id, -100} - {None}
    end = next((n for n, i in enumerate(ids) if i in stops), len(ids))
    return tokenizer.decode(ids[:end], skip_special_tokens=True).strip()


class ImageCaptioning(Task):
    name = "image-captioning"
    default_metric = "cider"
    pipeline_task = "image-text-to-text"  # transformers 5 has no "image-to-text" pipeline
    meta_keys = ("index",)

    # ------------------------------------------------------------------------------ data
    def prepare(self, cfg, ds, source, labels=None, require_captions=True):
        """Rows -> columns image (datasets Image, not decoded) and captions (list of str).

        Rows naming the same image file are merged, so an image is evaluated once against all
        of its captions. Image paths are read relative to the data file and checked up front.
        """
        column = find_column(ds, source, cfg.data.image_column, IMAGE_COLUMNS, "image", "image_column")
        feature = ds.features[column]
        captions = None
        if require_captions:
            caption_column = find_column(ds, source, cfg.data.caption_column, CAPTION_COLUMNS, "caption",
                                         "caption_column")
            captions = [_captions(value, source, row, caption_column) for row, value in enumerate(ds[caption_column], 1)]
        image_type = datasets.Image(decode=False)
        if isinstance(feature, datasets.Image) or isinstance(feature, dict) and {"bytes", "path"} <= set(feature):
            rows = ds.select_columns([column]).cast_column(column, image_type)
            rows = rows if column == "image" else rows.rename_column(column, "image")
            return (rows if captions is None else rows.add_column("captions", captions)), None
        if not (isinstance(feature, datasets.Value) and feature.dtype in ("string", "large_string")):
            raise HftoolError(f"{source}: column '{column}' holds {feature}, not image paths or images; "
                              "set data.image_column to the column with the images")
        from hftool.data.sources import source_dir

        given = ds[column]
        paths = images.resolve_paths(("" if v is None else v for v in given), source_dir(ds))
        keep = ImageClassification()._check_images(paths, given, source, column, cfg.data.skip_bad_images)
        merged: dict[str, list[str]] = {}
        for i in keep:
            merged.setdefault(paths[i], []).extend(captions[i] if captions is not None else [])
        table = {"image": list(merged)}
        if captions is not None:
            table["captions"] = list(merged.values())
        return datasets.Dataset.from_dict(table).cast_column("image", image_type), None

    def _encode(self, parts, cfg, texts: list[str]) -> list[list[int]]:
        """Caption token ids ending in EOS, at most data.max_length tokens."""
        tokenizer = parts.processor
        eos = parts.model.config.eos_token_id
        encoded = tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]
        return [ids[: cfg.data.max_length - 1] + [eos] for ids in encoded]

    def _transform(self, parts, cfg) -> CaptionTransform:
        return CaptionTransform(geometry(parts.extra["image_processor"]), cfg.data.skip_bad_images)

    def train_features(self, parts, cfg, ds):
        """One example per (image, caption): every caption is trained on."""
        owners = [i for i, texts in enumerate(ds["captions"]) for _ in texts]
        labels = self._encode(parts, cfg, [t for texts in ds["captions"] for t in texts])
        rows = ds.select_columns(["image"]).select(owners).flatten_indices()
        rows = rows.add_column("labels", labels).add_column("length", [len(ids) for ids in labels])
        return rows.with_transform(self._transform(parts, cfg))

    def features(self, parts, cfg, ds):
        """One example per image; its first caption gives eval_loss, all of them the metrics."""
        parts.extra["references"] = list(ds["captions"])
        labels = self._encode(parts, cfg, [texts[0] for texts in ds["captions"]])
        rows = ds.select_columns(["image"]).add_column("labels", labels).add_column("index", list(range(len(ds))))
        return rows.with_transform(self._transform(parts, cfg))

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
            texts = [t for texts in train_ds["captions"] for t in texts] if train_ds is not None else []
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
        if getattr(model.encoder, "pooler", None) is not None:
            # The decoder reads the encoder's hidden states, never its pooled output; parameters
            # that get no gradient make DDP fail on the next step.
            model.encoder.pooler = None
        set_special_tokens(model, tokenizer)
        generation = model.generation_config
        if model_path is None and generation.max_new_tokens is None:
            generation.max_new_tokens = cfg.data.max_length  # captions are short; 100 would slow evaluation
        from hftool.tasks.causal_lm import _update_generation_config

        _update_generation_config(generation, m.generation_config)  # a run's saved ones, or predict's overrides
        return Parts(model, tokenizer, extra={"image_processor": image_processor})

    def save(self, parts, run_dir, model=None, state_dict=None):
        """Weights + config, tokenizer and image processor; with the final model, captions.jsonl:
        the captions of its last evaluation beside their references."""
        if model is not None:
            model.save_pretrained(str(run_dir), state_dict=state_dict, safe_serialization=True)
            metric = parts.extra.get("metric")
            if metric is not None and metric.last_predictions:
                import json

                with open(Path(run_dir) / "captions.jsonl", "w", encoding="utf-8") as f:
                    for index, text in sorted(metric.last_predictions):
                        f.write(json.dumps({"caption": text, "references": metric.references[index]},
                                           ensure_ascii=False) + "\n")
        # One processor (image processor + tokenizer) so AutoProcessor and the image-text-to-text
        # pipeline load the run dir; an empty text prompt then encodes to the start token.
        from transformers import VisionTextDualEncoderProcessor

        tokenizer = parts.processor
        if tokenizer.bos_token_id is not None and tokenizer.bos_token_id == parts.model.config.decoder_start_token_id:
            tokenizer.add_bos_token = True
        VisionTextDualEncoderProcessor(parts.extra["image_processor"], tokenizer).save_pretrained(str(run_dir))

    # --------------------------------------------------------------------------- metrics
    def metric(self, parts):
        metric = GeneratedCaptions(parts.processor, parts.extra.get("references"))
        parts.extra["metric"] = metric  # save() writes its captions
        return metric

    def eval_outputs(self, parts, outputs, batch):
        return {"index": batch["index"]}

    def eval_generate(self, parts, model, batch):
        """Greedy or beam captions per the model's generation config, padded to max_new_tokens
        so every process gathers the same width."""
        from hftool.generation import GenerationOptions

        kwargs = GenerationOptions().generate_kwargs(model.generation_config)
        kwargs["num_return_sequences"] = 1
        ids = model.generate(pixel_values=batch["pixel_values"], **kwargs)[:, 1:]  # drop the start token
        width = kwargs.get("max_new_tokens") or model.generation_config.max_new_tokens
        padded = torch.full((ids.shape[0], width), -100, dtype=torch.long, device=ids.device)
        padded[:, : min(width, ids.shape[1])] = ids[:, :width]
        return {"generated": padded}

    def prediction_records(self, parts, batches, order):
        """Per image (eval.save_predictions): the generated caption beside all its references."""
        metric = parts.extra.get("metric")
        records = []
        for b in batches:
            for index, ids in zip(b["index"], b["generated"]):
                text = caption_text(parts.processor, ids)
                records.append({"index": int(index), "caption": text,
                                "references": metric.references[int(index)] if metric is not None else None})
        return sorted(records, key=lambda r: r["index"])

    # ------------------------------------------------------------------------- inference
    def predict(self, parts, cfg, inputs, batch_size, attention_map: str | None = None):
        """Image files or folders (searched recursively) -> {image, caption} each.

        Args:
            attention_map: Also draw the decoder's cross-attention over the image patches for
                each generated token into this PNG (PATH-<n>.png for the n-th of several images).
        """
        from hftool.generation import GenerationOptions

        paths = images.input_paths(inputs)
        rows, _ = self.prepare(cfg, datasets.Dataset.from_dict({"image": paths}), "input", require_captions=False)
        transform = self._transform(parts, cfg).images
        model = parts.model.eval()
        kwargs = GenerationOptions(batch_size=batch_size).generate_kwargs(model.generation_config)
        device = next(model.parameters()).device
        entries, results = list(rows["image"]), []
        for start in range(0, len(entries), batch_size):
            chunk = entries[start:start + batch_size]
            with one_thread():
                pixels = torch.stack([transform.image(e) for e in chunk])
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

    def format_prediction(self, prediction):
        return f"{prediction['caption']}\t{prediction['image']}"


def collate(features: list[dict]) -> dict[str, torch.Tensor]:
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


def _overrides(cfg, part: str) -> SimpleNamespace:
    """A cfg stand-in whose model.config_overrides are the encoder's or the decoder's."""
    return SimpleNamespace(model=SimpleNamespace(config_overrides=dict(cfg.model.config_overrides.get(part) or {})))


def _encoder(cfg, spec: str):
    """An image encoder (its base model, no head) and its image processor."""
    from transformers import AutoConfig, AutoImageProcessor, AutoModel

    if models.tiny_arch(spec) is not None:
        models.check_tiny(spec, ("vit",), "model.encoder: image captioning")
        from hftool.tasks.image_classification import _tiny_vit

        model, processor = _tiny_vit(_overrides(cfg, "encoder"), {}, cfg.data.image_size or DEFAULT_SIDE)
        return model.vit, processor
    token, overrides = cfg.model.token, _overrides(cfg, "encoder").model.config_overrides
    config = models.load("model", AutoConfig, spec, token, **overrides)
    models.check_config_overrides(config, overrides)
    model = (models.load("model", AutoModel, spec, token, config=config) if cfg.model.pretrained
             else AutoModel.from_config(config))
    return model, models.load("image processor", AutoImageProcessor, spec, token)


def _decoder(cfg, spec: str, texts: list[str], run_dir):
    """A causal LM with cross-attention layers (new, randomly initialised) and its tokenizer."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GPT2LMHeadModel

    overrides = _overrides(cfg, "decoder").model.config_overrides
    if models.tiny_arch(spec) is not None:
        models.check_tiny(spec, ("gpt2",), "model.decoder: image captioning")
        if not texts and run_dir is None:
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


def draw_attention(model, tokenizer, pixels: torch.Tensor, ids: list[int], entry: dict, path: Path) -> None:
    """One panel per generated token: the image under the decoder's cross-attention (mean over
    layers and heads) on the encoder's grid of patches."""
    import math

    import matplotlib

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
