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


class Section:
    """Behaviour every config section shares: allowed values and checks, run by `validate`.

    A task extends a section by subclassing it with its own fields (see hftool/tasks/base.py);
    `choices` and `check` of every class in the chain apply."""

    # The section's key in YAML and dotted overrides (`train`, `data`, ...).
    section: typing.ClassVar[str] = ""
    # field -> allowed values.
    choices: typing.ClassVar[dict[str, tuple]] = {}

    def check(self) -> None:
        """Raise HftoolError for a value that cannot work; subclasses add their fields' checks."""

    def validate(self) -> None:
        for klass in reversed(type(self).__mro__):
            for name, allowed in vars(klass).get("choices", {}).items():
                value = getattr(self, name)
                if value not in allowed:
                    raise HftoolError(f"{self.section}.{name}={value!r} is not one of: {', '.join(map(str, allowed))}")
        self.check()

    def require(self, name: str, ok: bool, allowed: str) -> None:
        """Raise `<section>.<name> must be <allowed>, got <value>` unless `ok`."""
        if not ok:
            raise HftoolError(f"{self.section}.{name} must be {allowed}, got {getattr(self, name)}")


@dataclass
class ModelConfig(Section):
    section: typing.ClassVar[str] = "model"
    choices: typing.ClassVar[dict[str, tuple]] = {"peft": ("none", "lora", "qlora")}
    # A local model dir or hftool run dir (wins when it exists), a hub id, or tiny:<arch> for a
    # small randomly initialised model built from a config (tests, demos, air-gapped smoke runs).
    name: str = "tiny:bert"
    # Extra model-config fields, e.g. {hidden_dropout_prob: 0.0}. For tiny:<arch> these also set
    # its size (hidden_size, num_hidden_layers, ...).
    config_overrides: dict = field(default_factory=dict)
    # Hub access token for private models. Never written anywhere: redacted in config.yaml and
    # in tracker configs.
    token: str | None = None
    # Parameter-efficient fine-tuning (hftool.adapters): none trains every weight; lora trains
    # low-rank adapters (peft.*) plus the task's new heads and saves only those; qlora does the
    # same on a 4-bit base (CUDA and bitsandbytes only). Full fine-tuning is the default: on the
    # models a CPU trains it is the most accurate and memory is rarely what limits it.
    peft: str = "none"


@dataclass
class DataConfig(Section):
    """What every task reads; a task's own data.* fields live in its module (hftool/tasks/)."""

    section: typing.ClassVar[str] = "data"
    # Training data: a csv/tsv/json/jsonl/parquet/txt file, a CoNLL file (any other extension),
    # a folder of split files, a save_to_disk folder, a hub dataset (`name` or `name:config`)
    # or `sample:<name>` (embedded).
    train: str | None = None
    # Evaluation data in the same forms; None uses the source's own validation split or holds
    # out `validation_split` of the training data.
    eval: str | None = None
    # Fraction of the training data held out (seeded) when no validation data exists, so every
    # run reports eval_* metrics. At least one example is held out.
    validation_split: float = 0.1
    # Keep only the first N training / evaluation rows (after any hold-out; a time series keeps
    # its context rows before the first N evaluation steps): quick runs and smoke tests of a
    # recipe on its full data. None keeps them all.
    max_train_samples: int | None = None
    max_eval_samples: int | None = None
    # File encoding; None reads UTF-8 and falls back to Latin-1 with a warning.
    encoding: str | None = None
    # DataLoader worker processes. Text is tokenized up front, so 0 (no fork cost) is fastest;
    # images are decoded in the workers, and image recipes set their own.
    num_workers: int = 0
    # Processes that tokenize text up front (Dataset.map's num_proc). None: one per 50,000 rows,
    # at most one per usable core; fewer rows gain nothing from a second process (benchmarks/README.md).
    num_proc: int | None = None
    # Read the training data as a stream (hftool/data/streaming.py) instead of into the Arrow
    # cache: for data that does not fit on disk twice. Needs train.max_steps (a stream has no
    # length) and gives up length grouping; off by default because a cached table is faster to
    # shuffle exactly and to read again.
    streaming: bool = False
    # With streaming: rows held in the seeded shuffle buffer. 10,000 short texts are a few MB and
    # mix rows from ten thousand lines apart; a file sorted by label needs a buffer larger than
    # its longest run of one label.
    shuffle_buffer: int = 10_000

    def check(self) -> None:
        self.require("validation_split", 0 <= self.validation_split < 1, "in [0, 1)")
        self.require("num_proc", self.num_proc is None or self.num_proc >= 1, "1 or more (or null: by rows and cores)")
        for name in ("max_train_samples", "max_eval_samples"):
            self.require(name, getattr(self, name) is None or getattr(self, name) > 0, "positive")
        self.require("num_workers", self.num_workers >= 0, "0 or more")
        self.require("shuffle_buffer", self.shuffle_buffer > 0, "positive")


@dataclass
class TrainConfig(Section):
    section: typing.ClassVar[str] = "train"
    choices: typing.ClassVar[dict[str, tuple]] = {"mixed_precision": ("no", "bf16", "fp16", "auto"),
                                                   "tracking": ("none", "tensorboard", "wandb", "mlflow"),
                                                   "micro_batch_size": (None, "auto")}
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
    # auto keeps the global batch (batch_size x gradient_accumulation_steps x processes) and picks
    # the largest per-process micro-batch that fits, accumulation making up the rest: measured
    # steps on the longest examples (GPU), or peak memory under memory_budget (CPU). None uses
    # batch_size as it is. A resumed run keeps the choice its checkpoint was written with.
    micro_batch_size: str | None = None
    # GiB the auto micro-batch may peak at on CPU; None: 80% of the memory available at start.
    memory_budget: float | None = None
    # Gradient-norm clipping; 0 disables it.
    max_grad_norm: float = 1.0
    # no | bf16 | fp16 | auto. auto: bf16 autocast where the GPU or CPU computes it natively
    # (Ampere+ GPUs; CPUs with avx512_bf16 or AMX), fp32 elsewhere; on such a CPU it trained
    # faster at the same accuracy (benchmarks/README.md). `no` is plain fp32. fp16 needs a GPU.
    mixed_precision: str = "auto"
    # Seeds python, numpy and torch; the data order of epoch e uses seed + e.
    seed: int = 42
    # Batch examples of similar length together so dynamic padding pads little: random groups of
    # up to 50 batches (at least four groups), each sorted longest first, as Trainer does. Only
    # tasks whose features have a length (text) are grouped.
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
    # Where the tracker writes (TensorBoard events, W&B's local files, MLflow artifacts); None:
    # RUN/logs/<tracker>, beside the model rather than among its files.
    logging_dir: str | None = None
    # torch.compile the model (worth it on GPUs for long runs; compile time dominates short ones).
    compile: bool = False

    def check(self) -> None:
        for name in ("batch_size", "gradient_accumulation_steps", "logging_steps"):
            self.require(name, getattr(self, name) > 0, "positive")
        for name in ("max_steps", "eval_steps", "save_steps", "eval_batch_size", "memory_budget"):
            self.require(name, getattr(self, name) is None or getattr(self, name) > 0, "positive")
        if self.max_steps is None and self.epochs <= 0:
            raise HftoolError(f"train.epochs must be positive, got {self.epochs} (or set --max-steps)")
        self.require("lr", self.lr >= 0, ">= 0 (0 freezes the weights)")
        self.require("warmup_ratio", 0 <= self.warmup_ratio < 1, "in [0, 1)")
        self.require("weight_decay", self.weight_decay >= 0, ">= 0")
        self.require("max_grad_norm", self.max_grad_norm >= 0, ">= 0 (0 turns clipping off)")


@dataclass
class EvalConfig(Section):
    section: typing.ClassVar[str] = "eval"
    # Write every evaluated example's prediction (and reference, loss) to predictions.jsonl: in
    # the run dir for the final evaluation of `finetune`, beside --output for `hftool evaluate`.
    save_predictions: bool = False
    # `hftool evaluate RUN` on the run's own data: stop when the data's sha256 differs from the one
    # in provenance.json. false warns with both hashes and scores it, since an edited file is
    # sometimes what the user means to score.
    strict: bool = False
    # `hftool eval-suite`: resamples of the examples behind each metric's 95% interval and the
    # paired test against the baseline (seeded: the same draws on every run); 0 turns both off.
    # Each resample recomputes the metrics from per-example counts: cheap next to evaluating.
    bootstrap: int = 1000

    def check(self) -> None:
        self.require("bootstrap", self.bootstrap >= 0, "0 (off) or more")


@dataclass(frozen=True)
class Option:
    """A command-line option a task adds to `hftool predict` or `hftool generate`.

    Tasks that take the same option declare the same Option object (shared from a layer
    module), so the CLI shows it once."""

    name: str  # the Python keyword the task's hook receives; the flag is --name-with-dashes
    type: type  # int | float | str | bool | Path | list (a repeatable string option)
    help: str
    flags: tuple[str, ...] = ()  # extra spellings, e.g. ("-k",) or ("--greedy/--sample",)
    default: Any = None  # None: not given (the hook's own default applies)
    min: float | None = None
    # Its values are prompts too (--chat): `hftool generate` shows and streams them like --prompt.
    prompts: bool = False


@dataclass
class PeftConfig(Section):
    """peft.*: the LoRA adapters of model.peft=lora|qlora (ignored with model.peft=none)."""

    section: typing.ClassVar[str] = "peft"
    # Rank of each adapter's update (two matrices of r x width per adapted layer). 8 is the LoRA
    # paper's usual value; higher ranks rarely help on classification-sized data.
    r: int = 8
    # The update is scaled by alpha / r, so alpha = 2r keeps the scale when r changes (peft's
    # and the QLoRA paper's convention).
    alpha: float = 16.0
    # Dropout on each adapter's input: a mild regulariser for small data (the QLoRA paper's 0.05).
    dropout: float = 0.05
    # The layers that get adapters: `auto` puts them on every linear layer but the task's heads
    # and the output layer (the QLoRA paper's choice, which matched full fine-tuning where
    # attention-only adapters fell short; convolutions in a model without linear layers), and the
    # banner prints the names chosen. Or module names: a list such as [query, value], or
    # `query,value` on a command line.
    target_modules: list | str = "auto"

    def check(self) -> None:
        self.require("r", self.r > 0, "positive")
        self.require("alpha", self.alpha > 0, "positive")
        self.require("dropout", 0 <= self.dropout < 1, "in [0, 1)")
        names = self.target_modules
        ok = bool(names) and all(isinstance(n, str) and n.strip() for n in (names if isinstance(names, list) else [names]))
        self.require("target_modules", ok, "auto or module names such as [query, value]")

    def module_names(self) -> list[str] | None:
        """The names asked for; None for auto."""
        if self.target_modules == "auto":
            return None
        names = self.target_modules if isinstance(self.target_modules, list) else self.target_modules.split(",")
        return [n.strip() for n in names if n.strip()]


# The sections a task's Options provide; `peft` is the same for every task.
SECTIONS = ("model", "data", "train", "eval")


@dataclass
class RunConfig:
    # Task name from hftool.tasks.TASKS, e.g. text-classification. It decides which keys the
    # other sections have: each task adds its own (`hftool finetune RECIPE --dry-run` lists them).
    task: str = "text-classification"
    # One line shown by `hftool recipes`.
    description: str = ""
    # Where the run goes; None means runs/<recipe>-<timestamp>.
    output_dir: str | None = None
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    peft: PeftConfig = field(default_factory=PeftConfig)


def new_config(task: str) -> RunConfig:
    """Defaults for `task`: each section is the task's own options class."""
    from hftool.tasks import task_class

    options = task_class(task).options
    return RunConfig(task=task, **{name: getattr(options, name)() for name in SECTIONS})


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
    """Every dotted key that can be set in `cfg` (default: the default task's config), e.g.
    ['task', ..., 'train.lr', ...]."""
    cfg = new_config(RunConfig.task) if cfg is None else cfg
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


def _unknown_key(key: str, source: str, cfg: RunConfig) -> HftoolError:
    keys = valid_keys(cfg)
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
    owners = _tasks_with_key(key)
    if owners:
        hint = f"it is an option of {', '.join(owners)}, and this run's task is {cfg.task}"
    elif close:
        hint = f"did you mean '{close[0]}'?"
    else:
        hint = "`hftool finetune RECIPE --dry-run` shows every key"
    return HftoolError(f"unknown config key '{key}' in {source}: {hint}")


def _tasks_with_key(key: str) -> list[str]:
    """The tasks whose options have `key` (a key that only another task takes)."""
    from hftool.tasks import TASKS

    return [name for name in TASKS if key in valid_keys(new_config(name))]


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
            raise _unknown_key(key, source, cfg)
        target = child
    hints = typing.get_type_hints(type(target))
    leaf = parts[-1]
    if leaf not in hints or dataclasses.is_dataclass(getattr(target, leaf)) or \
            typing.get_origin(hints[leaf]) is typing.ClassVar:
        raise _unknown_key(key, source, cfg)
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

    The task is resolved first (the last of recipe, flags and overrides that sets it), because
    it decides which keys the sections have; every other key is then checked against them.

    Args:
        recipe: A built-in recipe name, a YAML path, an already-read mapping, or None.
        flags: Dotted keys set by CLI options; None values are skipped (the option was not given).
        overrides: `key=value` strings, applied last.
    """
    layers: list[tuple[dict[str, Any], str]] = []
    if recipe is not None:
        if isinstance(recipe, dict):
            mapping, source = recipe, "the recipe"
        else:
            path = find_recipe(str(recipe))
            mapping, source = read_yaml(path), str(path)
        layers.append((_flatten(mapping), source))
    layers.append(({k: v for k, v in (flags or {}).items() if v is not None}, "the command-line flags"))
    for text in overrides or []:
        key, value = parse_override(text)
        layers.append(({key: value}, f"override '{text}'"))
    task = RunConfig.task
    for values, source in layers:
        if "task" in values:
            task = _coerce(values["task"], str, "task", source)
    cfg = _for_task(task, next((s for v, s in reversed(layers) if "task" in v), "the config"))
    for values, source in layers:
        for key, value in values.items():
            _set(cfg, key, value, source)
    validate(cfg)
    return cfg


def _for_task(task: str, source: str) -> RunConfig:
    from hftool.tasks import TASKS

    if task not in TASKS:
        close = difflib.get_close_matches(task, TASKS, n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        raise HftoolError(f"unknown task '{task}' in {source}: {hint}known tasks: {', '.join(TASKS)}")
    return new_config(task)


def validate(cfg: RunConfig) -> None:
    """Reject values that cannot work, before anything expensive runs: each section's choices
    and checks (the task's own included)."""
    for name in (*SECTIONS, "peft"):
        getattr(cfg, name).validate()


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
    """Rebuild a RunConfig from a saved config.yaml mapping.

    Keys the run's task does not have are dropped: runs written before tasks owned their
    options saved every task's fields, with the values those tasks never read."""
    cfg = _for_task(str(mapping.get("task", RunConfig.task)), source)
    keys = set(valid_keys(cfg))
    for key, value in _flatten(mapping).items():
        if key in keys:
            _set(cfg, key, value, source)
    return cfg
