"""Typed run configuration: defaults <- recipe YAML <- CLI flags <- `key=value` overrides.

Every field carries its default and a comment saying why. Recipe YAML top-level keys mirror the
dataclasses (`model:`, `data:`, `train:`, `eval:`), and overrides use dotted keys
(`train.warmup_ratio=0.1`). An unknown key is an error that names the closest valid one.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from hftool.errors import HftoolError


@dataclass
class ModelConfig:
    # A local model dir or hftool run dir (wins when it exists), a hub id, or tiny:<arch> for a
    # small randomly initialised model built from a config (tests, demos, air-gapped smoke runs).
    name: str = "tiny:bert"
    # Extra model-config fields, e.g. {hidden_dropout_prob: 0.0}. For tiny:<arch> these also set
    # its size (hidden_size, num_hidden_layers, ...).
    config_overrides: dict = field(default_factory=dict)
    # Vocabulary of the tokenizer that tiny:<arch> trains on the training texts: small keeps the
    # embedding matrix cheap, large enough that common words stay whole.
    tiny_vocab_size: int = 2000
    # generation_config.json fields saved with a generative run: the defaults `hftool generate`
    # uses on it, e.g. {do_sample: true, top_p: 0.95, max_new_tokens: 100}. Empty keeps the
    # model's own (greedy for GPT-2, which loops on repeated phrases).
    generation_config: dict = field(default_factory=dict)
    # Hub access token for private models. Never written anywhere: redacted in config.yaml and
    # in tracker configs.
    token: str | None = None
    # Start from pretrained weights (hub ids, timm:<name>). false builds the architecture with
    # random weights: offline timm runs, or small images where ImageNet features help little.
    pretrained: bool = True
    # Image captioning: build a VisionEncoderDecoderModel from an image encoder and a text
    # decoder (local dirs, hub ids, tiny:vit / tiny:gpt2); cross-attention is added to the
    # decoder. Both unset: model.name is an existing encoder-decoder checkpoint.
    encoder: str | None = None
    decoder: str | None = None


@dataclass
class DataConfig:
    # Training data: a csv/tsv/json/jsonl/parquet/txt file, a CoNLL file (any other extension),
    # a folder of split files, a save_to_disk folder, a hub dataset (`name` or `name:config`)
    # or `sample:<name>` (embedded).
    train: str | None = None
    # Evaluation data in the same forms; None uses the source's own validation split or holds
    # out `validation_split` of the training data.
    eval: str | None = None
    # Column names; None auto-detects the usual ones (text/sentence/..., label/labels/...; for
    # token classification tokens/words and ner_tags/tags).
    text_column: str | None = None
    text_pair_column: str | None = None
    label_column: str | None = None
    # Fraction of the training data held out (seeded) when no validation data exists, so every
    # run reports eval_* metrics. At least one example is held out.
    validation_split: float = 0.1
    # Token budget per example; longer inputs are truncated (token classification splits them
    # into overlapping windows instead). 128 covers most sentence tasks at a fraction of the
    # 512-token cost.
    max_length: int = 128
    # Token classification: tokens shared by consecutive windows of a text longer than
    # max_length. Each word is scored in the window where it has the most context, so 32 gives
    # every word at least ~16 tokens of context on the side where a window was cut.
    stride: int = 32
    # Token classification: also train a word's later subwords (B- becomes I-) instead of only
    # its first. False is the usual choice: the first subword is the one predicted and scored.
    label_all_tokens: bool = False
    # Token classification: tag names for data whose tags are integer ids without names (a
    # hub ClassLabel names them otherwise), e.g. [O, B-PER, I-PER]; index = id. None: tags are
    # names, or the hub's names.
    tag_names: list | None = None
    # How a .txt file becomes rows: `line` (one example per non-empty line: classification
    # inputs) or `paragraph` (blocks between blank lines, line breaks inside kept: the documents
    # of a book or a wiki dump for language modelling, where a lone line is a poor document).
    txt_unit: str = "line"
    # Language modelling: texts are packed (EOS between documents) into blocks of this many
    # tokens. None uses the model's context, at most 1024: attention memory grows with the square
    # of the block, and fine-tuning gains little beyond GPT-2's 1024.
    block_size: int | None = None
    # Language modelling: keep line breaks inside a document (verse, code, dialogue). false joins
    # hard-wrapped lines with a space, so a line end in the middle of a sentence costs no token.
    keep_linebreaks: bool = True
    # File encoding; None reads UTF-8 and falls back to Latin-1 with a warning.
    encoding: str | None = None
    # DataLoader worker processes. Text is tokenized up front, so 0 (no fork cost) is fastest;
    # images are decoded in the workers, and image recipes set their own.
    num_workers: int = 0
    # Image column (paths relative to the data file, or a hub Image feature); None auto-detects
    # image/img/image_path/path/file/filename/file_name.
    image_column: str | None = None
    # Square side of the model's input in pixels; None keeps the model's own (its processor's or
    # timm's input size). Small images (CIFAR's 32) train much faster at their own size.
    image_size: int | None = None
    # Drop unreadable images (counted, first few named) instead of stopping at the first one:
    # stopping is the default because a broken file usually means a broken download.
    skip_bad_images: bool = False
    # Smallest share of the image area a training crop keeps (RandomResizedCrop). 0.08 is the
    # ImageNet recipe; raise it when the object is small and a crop could miss it.
    crop_scale_min: float = 0.08
    # Probability of a horizontal flip in training (0 for text, digits, or left/right classes).
    hflip: float = 0.5
    # RandAugment magnitude (0-30, 9 is timm's usual); None leaves it off: it pays off in long
    # runs and slows the short ones.
    randaugment: int | None = None
    # Object detection: folder the images of a COCO JSON file are in (file_name is relative to
    # it). None looks beside the JSON file, then in the folders below it and beside it (COCO's
    # annotations/ next to train2017/).
    images_dir: str | None = None
    # Object detection: how JSONL and hub boxes are written: xywh (COCO: x, y, width, height) or
    # xyxy (Pascal VOC corners). COCO JSON and VOC XML files say it themselves.
    box_format: str = "xywh"
    # Object detection: boxes in [0, 1] fractions of the image size rather than pixels.
    box_normalized: bool = False
    # Object detection: strength of the training colour jitter (brightness, contrast, saturation;
    # hue a quarter of it); 0 leaves colours alone, which keeps short runs fast.
    color_jitter: float = 0.0
    # Time series: the date column; None takes the first column named like a date (date, ds,
    # timestamp, month, ...), else the first column.
    date_column: str | None = None
    # Time series: the columns to forecast, together; None takes every column but the date.
    value_columns: list | None = None
    # Time series: hourly | daily | weekly | monthly | quarterly | yearly or a pandas alias
    # (15min, W-MON); None infers it from the dates. Missing dates on that grid are added and
    # interpolated.
    freq: str | None = None
    # Time series: past steps the model reads to predict the next one. 30 is the textbook
    # month of daily values; a monthly series wants at least a year (12).
    context_length: int = 30
    # Time series: the seasonal-naive baseline's period; None uses the frequency's usual one
    # (24 hourly, 7 daily, 52 weekly, 12 monthly, 4 quarterly).
    season_length: int | None = None
    # How validation is held out when there is no validation data: random rows (seeded), or
    # tail: the last rows in file order, with data.context_length rows before them as history
    # for the first windows (time series: the model is scored on the future it has not seen).
    holdout: str = "random"
    # Image captioning: the column with a caption or a list of captions per image; None
    # auto-detects captions/caption/sentences/text.
    caption_column: str | None = None
    # Sequence to sequence: source and target columns; None auto-detects source/src/input/...
    # and target/tgt/output/summary/... (and a hub `translation` column of {lang: text}).
    source_column: str | None = None
    target_column: str | None = None
    # Sequence to sequence: languages of parallel text files ({split}.{lang}[.gz] in --data DIR),
    # of columns named after them (en, de) and keys of a hub `translation` column.
    source_lang: str | None = None
    target_lang: str | None = None
    # Sequence to sequence: text put before every source, e.g. "translate English to German: "
    # for T5, which was pretrained with task prefixes; "" for models trained without them.
    source_prefix: str = ""
    # Sequence to sequence: token budget of a target; longer targets are truncated in training,
    # and evaluation generates at most this many tokens unless model.generation_config says.
    max_target_length: int = 128


@dataclass
class TrainConfig:
    # Passes over the training data; ignored when max_steps is set.
    epochs: float = 3.0
    # Optimizer steps to run in total; overrides epochs (handy for smoke tests).
    max_steps: int | None = None
    # Examples per device per forward pass.
    batch_size: int = 32
    # Evaluation batch size; None uses 2x batch_size (no gradients, so twice fits).
    eval_batch_size: int | None = None
    # Peak learning rate (AdamW). 5e-5 is the usual BERT fine-tuning rate.
    lr: float = 5.0e-5
    # Decoupled weight decay, not applied to biases and LayerNorm weights.
    weight_decay: float = 0.01
    # Fraction of the optimizer steps spent warming up linearly from 0 to lr.
    warmup_ratio: float = 0.0
    # transformers scheduler name: linear, cosine, constant, constant_with_warmup, ...
    scheduler: str = "linear"
    # Micro-batches per optimizer step (effective batch = batch_size x this x processes).
    gradient_accumulation_steps: int = 1
    # Gradient-norm clipping; 0 disables it.
    max_grad_norm: float = 1.0
    # no | bf16 | fp16 | auto. auto: bf16 autocast where the GPU or CPU computes it natively
    # (Ampere+ GPUs; CPUs with avx512_bf16 or AMX), fp32 elsewhere. On such a CPU MiniLM trained
    # 1.4x faster at the same accuracy over 22 seeds (benchmarks/README.md); `no` is plain fp32.
    # fp16 needs a GPU.
    mixed_precision: str = "auto"
    # Seeds python, numpy and torch; the data order of epoch e uses seed + e.
    seed: int = 42
    # Batch examples of similar length together so dynamic padding pads little: random groups of
    # up to 50 batches (at least four groups), each sorted longest first, as Trainer does.
    group_by_length: bool = True
    # Evaluate every N optimizer steps; None evaluates at the end of each epoch.
    eval_steps: int | None = None
    # Also checkpoint every N optimizer steps (a checkpoint is always written at each evaluation).
    save_steps: int | None = None
    # Checkpoints kept besides the best one (oldest removed first).
    save_total_limit: int = 2
    # Metric that picks the best checkpoint and drives early stopping, without the eval_ prefix;
    # None uses the task's default (accuracy for classification).
    metric_for_best: str | None = None
    # None infers it: lower is better for loss/perplexity/error-like names, higher otherwise.
    greater_is_better: bool | None = None
    # Save the best checkpoint's weights as the run's model (metrics.json then describes it).
    load_best_at_end: bool = True
    # Stop after this many evaluations without improvement; None never stops early.
    early_stopping_patience: int | None = None
    # Log the mean training loss every N optimizer steps.
    logging_steps: int = 10
    # none | tensorboard | wandb | mlflow (through Accelerate's trackers).
    tracking: str = "none"
    # torch.compile the model (worth it on GPUs for long runs; compile time dominates short ones).
    compile: bool = False
    # Mixup and CutMix alphas (timm); 0 turns each off. They regularise long runs on small data
    # and slow convergence of short ones. Image classification.
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    # Label smoothing of the training targets (0.1 is timm's usual); 0 keeps one-hot targets,
    # so the training loss is the plain cross-entropy that eval_loss reports. Image classification.
    label_smoothing: float = 0.0
    # Learning rate of the vision backbone; None trains it at `lr`. DETR fine-tunes its
    # pretrained ResNet ten times slower than the transformer (1e-5 vs 1e-4).
    backbone_lr: float | None = None


@dataclass
class EvalConfig:
    # Language modelling: score with a window of block_size tokens moved this many tokens at a
    # time, so every scored token sees at least block_size - stride tokens of context (closer to
    # the model's real perplexity, at block_size / stride times the cost). None: plain blocks,
    # as in training, where a block's first tokens are predicted from little context.
    stride: int | None = None
    # Write every evaluated example's prediction (and reference, loss) to predictions.jsonl: in
    # the run dir for the final evaluation of `finetune`, beside --output for `hftool evaluate`.
    save_predictions: bool = False
    # Generative tasks: the metrics to compute, without the eval_ prefix (e.g. [bleu, chrf]);
    # None computes all the task offers.
    metrics: list | None = None
    # `hftool evaluate RUN` on the run's own data: stop when the data's sha256 differs from the one
    # in provenance.json. false warns with both hashes and scores it, since an edited file is
    # sometimes what the user means to score.
    strict: bool = False


@dataclass
class RunConfig:
    # Task name from hftool.tasks.TASKS, e.g. text-classification.
    task: str = "text-classification"
    # One line shown by `hftool recipes`.
    description: str = ""
    # Where the run goes; None means runs/<recipe>-<timestamp>.
    output_dir: str | None = None
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


# --------------------------------------------------------------------------------------------
# Recipes

RECIPES_DIRS = (
    Path(__file__).resolve().parent / "recipes",  # installed wheel: recipes ship in the package
    Path(__file__).resolve().parent.parent / "recipes",  # source checkout / editable install
)


def recipes_dir() -> Path:
    for candidate in RECIPES_DIRS:
        if candidate.is_dir():
            return candidate
    raise HftoolError("the built-in recipes folder is missing from this installation; reinstall hftool")


def builtin_recipes() -> dict[str, Path]:
    """Built-in recipe names -> YAML paths, sorted by name."""
    return {p.stem: p for p in sorted(recipes_dir().glob("*.yaml"), key=lambda p: p.stem)}


def find_recipe(recipe: str) -> Path:
    """A built-in recipe name or a path to a YAML file -> the YAML path."""
    path = Path(recipe)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise HftoolError(f"recipe file {recipe} does not exist; pass a YAML path or a built-in name")
        return path
    recipes = builtin_recipes()
    if recipe in recipes:
        return recipes[recipe]
    close = difflib.get_close_matches(recipe, recipes, n=1)
    hint = f"did you mean '{close[0]}'? " if close else ""
    raise HftoolError(f"unknown recipe '{recipe}': {hint}`hftool recipes` lists them: {', '.join(recipes)}")


class _Loader(yaml.SafeLoader):
    """YAML with only true/false as booleans (as YAML 1.2 reads them): PyYAML's 1.1 rules turn
    `no`, `off`, `yes` and `on` into booleans, and `train.mixed_precision=no` was refused."""


_Loader.yaml_implicit_resolvers = {key: [(tag, regexp) for tag, regexp in resolvers
                                         if tag != "tag:yaml.org,2002:bool"]
                                   for key, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_Loader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                              list("tTfF"))


def load_yaml(text: str):
    return yaml.load(text, Loader=_Loader)


def read_yaml(path: Path) -> dict:
    try:
        loaded = load_yaml(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f":{mark.line + 1}" if mark else ""
        raise HftoolError(f"{path}{where}: not valid YAML ({getattr(err, 'problem', err)})") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise HftoolError(f"{path}: a recipe must be a mapping of sections (model:, data:, train:)")
    return loaded


# --------------------------------------------------------------------------------------------
# Setting values by dotted key, with type checks

SECRET_KEY = re.compile(r"^(hub_)?token$|api_key$|password$|secret$")


def valid_keys(cfg: Any = None, prefix: str = "") -> list[str]:
    """Every dotted key that can be set, e.g. ['task', ..., 'train.lr', ...]."""
    cfg = RunConfig() if cfg is None else cfg
    keys = []
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            keys += valid_keys(value, f"{prefix}{f.name}.")
        else:
            keys.append(prefix + f.name)
    return keys


# Names other tools (transformers' TrainingArguments, the example scripts) use for hftool keys: a
# close spelling match would suggest the wrong key (learning_rate -> logging_steps).
ALIASES = {
    "learning_rate": "train.lr", "num_train_epochs": "train.epochs", "num_epochs": "train.epochs",
    "per_device_train_batch_size": "train.batch_size", "train_batch_size": "train.batch_size",
    "per_device_eval_batch_size": "train.eval_batch_size", "gradient_accumulation": "train.gradient_accumulation_steps",
    "warmup_steps": "train.warmup_ratio", "lr_scheduler_type": "train.scheduler", "max_seq_length": "data.max_length",
    "fp16": "train.mixed_precision", "bf16": "train.mixed_precision", "model_name_or_path": "model.name",
    "train_file": "data.train", "validation_file": "data.eval",
}


def _unknown_key(key: str, source: str) -> HftoolError:
    keys = valid_keys()
    alias = ALIASES.get(key.rsplit(".", 1)[-1])
    if alias:
        note = " (a fraction of the steps)" if alias == "train.warmup_ratio" else ""
        return HftoolError(f"unknown config key '{key}' in {source}: hftool calls it '{alias}'{note}")
    close = difflib.get_close_matches(key, keys, n=1, cutoff=0.5)
    if not close:  # a bare leaf name such as `warmup_ratio` still finds `train.warmup_ratio`
        leaf = key.rsplit(".", 1)[-1]
        by_leaf = {k.rsplit(".", 1)[-1]: k for k in keys}
        leaf_close = difflib.get_close_matches(leaf, by_leaf, n=1, cutoff=0.6)
        close = [by_leaf[leaf_close[0]]] if leaf_close else []
    hint = f"did you mean '{close[0]}'?" if close else "`hftool finetune RECIPE --dry-run` shows every key"
    return HftoolError(f"unknown config key '{key}' in {source}: {hint}")


def _coerce(value: Any, annotation: Any, key: str, source: str) -> Any:
    """Check/convert a YAML or CLI value against a field's type annotation."""
    args = typing.get_args(annotation)
    optional = typing.get_origin(annotation) in (typing.Union, types.UnionType) and type(None) in args
    base = next((a for a in args if a is not type(None)), annotation) if optional else annotation
    if value is None or (isinstance(value, str) and value.lower() in ("none", "null") and optional):
        if optional:
            return None
        raise HftoolError(f"{key} in {source} cannot be empty; set a value")
    try:
        if base is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
                return value.lower() in ("true", "yes", "1")
            raise ValueError
        if base is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(float(value)) if isinstance(value, str) and "e" in value.lower() else int(value)
        if base is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)  # PyYAML reads 2e-5 as a string; float() takes it
        if base is str:
            if isinstance(value, (dict, list)):
                raise ValueError
            return str(value)
        if base is dict:
            if not isinstance(value, dict):
                raise ValueError
            return value
        if base is list:
            if not isinstance(value, list):
                raise ValueError
            return value
    except (TypeError, ValueError):
        kind = {bool: "true/false", int: "an integer", float: "a number", str: "a string", dict: "a mapping",
                list: "a list, e.g. [a, b]"}
        raise HftoolError(f"{key} in {source} expects {kind.get(base, base)}, got {value!r}") from None
    return value


def _set(cfg: RunConfig, key: str, value: Any, source: str) -> None:
    parts = key.split(".")
    target: Any = cfg
    for part in parts[:-1]:
        child = getattr(target, part, None)
        if not dataclasses.is_dataclass(child):
            raise _unknown_key(key, source)
        target = child
    hints = typing.get_type_hints(type(target))
    leaf = parts[-1]
    if leaf not in hints or dataclasses.is_dataclass(getattr(target, leaf)):
        raise _unknown_key(key, source)
    setattr(target, leaf, _coerce(value, hints[leaf], key, source))


def _flatten(mapping: dict, prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in mapping.items():
        dotted = f"{prefix}{key}"
        section = getattr(RunConfig(), str(key), None) if not prefix else None
        if isinstance(value, dict) and dataclasses.is_dataclass(section):
            flat.update(_flatten(value, dotted + "."))
        else:
            flat[dotted] = value
    return flat


def parse_override(text: str) -> tuple[str, Any]:
    """`train.lr=1e-4` -> ('train.lr', '1e-4'); the value is read as YAML (lists, dicts, bools)."""
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise HftoolError(f"override '{text}' is not KEY=VALUE (e.g. train.warmup_ratio=0.1)")
    try:
        value = load_yaml(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.strip(), _fix_flow_mapping(value)


def _fix_flow_mapping(value: Any) -> Any:
    """`{a:0.1}` is YAML for {"a:0.1": None}; on a command line it always means {a: 0.1}."""
    if not isinstance(value, dict):
        return value
    fixed = {}
    for key, item in value.items():
        if item is None and isinstance(key, str) and ":" in key:
            key, _, raw = key.partition(":")
            item = load_yaml(raw)
        fixed[key] = _fix_flow_mapping(item)
    return fixed


def is_override(text: str) -> bool:
    """A command-line word that sets a config key (`section.key=value` or `task=...`)."""
    return re.match(r"^[A-Za-z_][\w]*(\.[A-Za-z_]\w*)*=", text) is not None and (
        "." in text.split("=", 1)[0] or text.split("=", 1)[0] in {"task", "output_dir"}
    )


def load_config(
    recipe: str | Path | dict | None = None,
    flags: dict[str, Any] | None = None,
    overrides: list[str] | None = None,
) -> RunConfig:
    """Resolve a RunConfig: defaults <- recipe (name, path or dict) <- flags <- overrides.

    Args:
        recipe: A built-in recipe name, a YAML path, an already-read mapping, or None.
        flags: Dotted keys set by CLI options; None values are skipped (the option was not given).
        overrides: `key=value` strings, applied last.
    """
    cfg = RunConfig()
    if recipe is not None:
        if isinstance(recipe, dict):
            mapping, source = recipe, "the recipe"
        else:
            path = find_recipe(str(recipe))
            mapping, source = read_yaml(path), str(path)
        for key, value in _flatten(mapping).items():
            _set(cfg, key, value, source)
    for key, value in (flags or {}).items():
        if value is not None:
            _set(cfg, key, value, "the command-line flags")
    for text in overrides or []:
        key, value = parse_override(text)
        _set(cfg, key, value, f"override '{text}'")
    validate(cfg)
    return cfg


CHOICES = {
    "train.mixed_precision": ("no", "bf16", "fp16", "auto"),
    "train.tracking": ("none", "tensorboard", "wandb", "mlflow"),
    "data.txt_unit": ("line", "paragraph"),
    "data.box_format": ("xywh", "xyxy"),
    "data.holdout": ("random", "tail"),
}


def validate(cfg: RunConfig) -> None:
    """Reject values that cannot work, before anything expensive runs."""
    for key, allowed in CHOICES.items():
        section, leaf = key.split(".")
        value = getattr(getattr(cfg, section), leaf)
        if value not in allowed:
            raise HftoolError(f"{key}={value!r} is not one of: {', '.join(allowed)}")
    from hftool.tasks import TASKS  # cheap: the registry imports no task module

    if cfg.task not in TASKS:
        raise HftoolError(f"unknown task '{cfg.task}'; known tasks: {', '.join(TASKS)}")
    t = cfg.train
    positive = {"train.batch_size": t.batch_size, "train.gradient_accumulation_steps": t.gradient_accumulation_steps,
                "train.logging_steps": t.logging_steps, "data.max_length": cfg.data.max_length}
    positive |= {f"train.{k}": getattr(t, k) for k in ("max_steps", "eval_steps", "save_steps", "eval_batch_size")
                 if getattr(t, k) is not None}
    positive |= {key: value for key, value in (("data.block_size", cfg.data.block_size), ("eval.stride", cfg.eval.stride))
                 if value is not None}
    for key, value in positive.items():
        if value <= 0:
            raise HftoolError(f"{key} must be positive, got {value}")
    d = cfg.data
    checks = {"data.stride": (d.stride >= 0, "0 or more"),
              "data.image_size": (d.image_size is None or d.image_size > 0, "positive"),
              "data.crop_scale_min": (0 < d.crop_scale_min <= 1, "in (0, 1]"),
              "data.hflip": (0 <= d.hflip <= 1, "in [0, 1]"),
              "data.randaugment": (d.randaugment is None or 0 <= d.randaugment <= 30, "in [0, 30]"),
              "train.label_smoothing": (0 <= t.label_smoothing < 1, "in [0, 1)"),
              "train.lr": (t.lr >= 0, ">= 0 (0 freezes the weights)"),
              "train.backbone_lr": (t.backbone_lr is None or t.backbone_lr >= 0, ">= 0"),
              "train.warmup_ratio": (0 <= t.warmup_ratio < 1, "in [0, 1)"),
              "train.weight_decay": (t.weight_decay >= 0, ">= 0"),
              "train.max_grad_norm": (t.max_grad_norm >= 0, ">= 0 (0 turns clipping off)"),
              "train.mixup_alpha": (t.mixup_alpha >= 0, ">= 0 (0 turns it off)"),
              "train.cutmix_alpha": (t.cutmix_alpha >= 0, ">= 0 (0 turns it off)")}
    for key, (ok, allowed) in checks.items():
        if not ok:
            section, leaf = key.split(".")
            raise HftoolError(f"{key} must be {allowed}, got {getattr(getattr(cfg, section), leaf)}")
    for key, value in (("data.context_length", cfg.data.context_length), ("data.season_length", cfg.data.season_length)):
        if value is not None and value <= 0:
            raise HftoolError(f"{key} must be positive, got {value}")
    if cfg.data.max_target_length <= 0:
        raise HftoolError(f"data.max_target_length must be positive, got {cfg.data.max_target_length}")
    if not 0 <= cfg.data.validation_split < 1:
        raise HftoolError(f"data.validation_split must be in [0, 1), got {cfg.data.validation_split}")
    if t.max_steps is None and t.epochs <= 0:
        raise HftoolError(f"train.epochs must be positive, got {t.epochs} (or set --max-steps)")


def to_dict(cfg: RunConfig, redact: bool = True) -> dict:
    """The config as plain data, secrets replaced by '***' (for config.yaml and trackers)."""
    data = dataclasses.asdict(cfg)
    return _redact(data) if redact else data


def _redact(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: ("***" if SECRET_KEY.search(str(k)) and v else _redact(v)) for k, v in value.items()}
    if isinstance(value, list):
        return [_redact(v) for v in value]
    return value


def to_yaml(cfg: RunConfig) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False, allow_unicode=True)


def from_dict(mapping: dict, source: str = "config") -> RunConfig:
    """Rebuild a RunConfig from a saved config.yaml mapping."""
    cfg = RunConfig()
    for key, value in _flatten(mapping).items():
        _set(cfg, key, value, source)
    return cfg
