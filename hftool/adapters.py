"""LoRA adapters for every task (model.peft=lora|qlora), through the peft library.

    adapters.check(cfg, task)                # before any data is read: unsupported task, qlora on CPU
    adapters.wrap(cfg, task, parts, run_dir)  # after build, before the optimizer: parts.model -> PeftModel
    models.load(..., RUN_DIR)                # an adapter run: its base with the adapter on it (adapters.load)
    adapters.merge(model)                    # a plain transformers model (`hftool export --merge`)

What trains: low-rank adapters on `peft.target_modules` (auto: every linear layer but the heads
and the output layer), and in full the task's new heads (Task.peft_heads) and any batch-norm
layer (its running statistics change in training, so they are saved with the adapters).

An adapter run dir holds adapter_config.json and adapter_model.safetensors (adapters and heads)
beside config.json and the tokenizer or processor. The frozen base loads again from where the run
got it (adapter_config.json's base_model_name_or_path); a base the run built itself (tiny:<arch>,
from scratch) is kept in the run dir's base/ folder. Checkpoints keep the trainable weights only.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import shutil
from contextvars import ContextVar
from pathlib import Path
from typing import Any

from hftool.errors import HftoolError

ADAPTER_CONFIG = "adapter_config.json"
BASE_DIR = "base"  # inside an adapter run dir: the base weights of a run that built its base

_QUANTIZED: ContextVar[bool] = ContextVar("hftool_quantized_base", default=False)


def is_adapter_dir(path: str | Path) -> bool:
    return (Path(path).expanduser() / ADAPTER_CONFIG).is_file()


def is_peft(model: Any) -> bool:
    """A model with adapters (a peft PeftModel), unwrapped of DDP or torch.compile or not."""
    model = getattr(model, "module", model)  # DDP
    model = getattr(model, "_orig_mod", model)  # torch.compile
    return hasattr(model, "peft_config") and hasattr(model, "get_base_model")


# ------------------------------------------------------------------------------------ training
def check(cfg, task) -> None:
    """Fail before any data is read when model.peft cannot work here, naming the fix."""
    kind = cfg.model.peft
    if is_adapter_dir(cfg.model.name):  # its weights are frozen adapters on a base: nothing would train
        raise HftoolError(f"--model {cfg.model.name} is an adapter run; merge it first (hftool export "
                          f"{cfg.model.name} --format safetensors --merge -o DIR) and train on DIR")
    if kind == "none":
        return
    if task.peft_unsupported:
        raise HftoolError(f"model.peft={kind}: {cfg.task} cannot train adapters: {task.peft_unsupported}; "
                          "use model.peft=none")
    if kind == "qlora":
        import torch

        if not torch.cuda.is_available():
            raise HftoolError("model.peft=qlora quantizes the base to 4 bits with bitsandbytes, which needs a CUDA "
                              "GPU; on this machine use model.peft=lora")
        if importlib.util.find_spec("bitsandbytes") is None:
            raise HftoolError("model.peft=qlora needs the bitsandbytes package: pip install bitsandbytes")
        if task.peft_base(cfg) is None:
            raise HftoolError(f"model.peft=qlora quantizes a pretrained base loaded from a model dir or the hub; "
                              f"{cfg.model.name} is built here in full precision: use model.peft=lora")


@contextlib.contextmanager
def loading(cfg):
    """Models that models.load loads inside this block come in 4 bits when cfg.model.peft=qlora."""
    token = _QUANTIZED.set(cfg.model.peft == "qlora")
    try:
        yield
    finally:
        _QUANTIZED.reset(token)


def load_kwargs() -> dict:
    """from_pretrained arguments for a 4-bit base inside `loading(cfg)` with qlora, else none."""
    return _four_bits() if _QUANTIZED.get() else {}


def _four_bits() -> dict:
    """NF4 weights with double quantization, computing in bf16 where the GPU has it (the QLoRA recipe)."""
    import torch
    from transformers import BitsAndBytesConfig

    compute = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"quantization_config": BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                                      bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=compute),
            "device_map": {"": torch.cuda.current_device()}}


def wrap(cfg, task, parts, run_dir: Path, main_process: bool = True, resume: bool = False) -> Path | None:
    """Put adapters on parts.model (model.peft=lora|qlora); a no-op for model.peft=none.

    Called after the task built its model and before any optimizer exists, so the optimizer gets
    the adapters' and heads' parameters only. A base the run built itself is saved first (main
    process), so the adapter can be loaded again: into a staging folder beside the run dir, whose
    path is returned, since the run dir may not change before every check has passed (the
    trainer moves it in with `place_base`). A resumed run keeps the base it has.
    """
    if cfg.model.peft == "none":
        return None
    from peft import LoraConfig, get_peft_model

    model = parts.model
    full = present(model, task.peft_heads(parts)) + statistics_modules(model)
    targets = target_modules(model, cfg.peft.module_names(), full)
    base = task.peft_base(cfg)
    staged = None
    if base is None and main_process and not (resume and (Path(run_dir) / BASE_DIR / "config.json").is_file()):
        staged = staging(run_dir)
        save_base(model, staged)
    if cfg.model.peft == "qlora":
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    config = LoraConfig(r=cfg.peft.r, lora_alpha=cfg.peft.alpha, lora_dropout=cfg.peft.dropout,
                        target_modules=targets, modules_to_save=full or None,
                        exclude_modules=_output_layer(model))
    try:
        with _quiet():
            parts.model = get_peft_model(model, config)
    except ValueError as err:  # e.g. a target that peft has no adapter for (a LayerNorm)
        if staged is not None:
            shutil.rmtree(staged, ignore_errors=True)
        raise HftoolError(f"peft.target_modules={targets}: {' '.join(str(err).split())}") from None
    # Where `load` finds the base again (get_peft_model filled in the model's own name_or_path).
    parts.model.peft_config["default"].base_model_name_or_path = base or BASE_DIR
    return staged


def present(model, names: list[str]) -> list[str]:
    """Those of `names` that name a module of `model` (its name or a dotted suffix of it)."""
    keys = [key for key, _ in model.named_modules()]
    return [name for name in names if any(key == name or key.endswith("." + name) for key in keys)]


def statistics_modules(model) -> list[str]:
    """Batch-norm layers that keep running statistics: training changes them even when frozen, so
    they train in full and are saved with the adapters (timm CNNs; transformers models freeze theirs)."""
    from torch.nn.modules.batchnorm import _BatchNorm

    return [name for name, module in model.named_modules()
            if isinstance(module, _BatchNorm) and module.track_running_stats]


def _under(name: str, modules: list[str]) -> bool:
    """`name` is one of `modules` or inside one (peft's own rule for modules_to_save)."""
    return any(re.match(rf"(^|.*\.){re.escape(m)}($|\..*)", name) for m in modules)


def _output_layer(model) -> list[str] | None:
    """The output (vocabulary) layer's name: adapters stay off it, as peft's all-linear does."""
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if output is None:
        return None
    return [name for name, module in model.named_modules() if module is output] or None


def target_modules(model, asked: list[str] | None, full: list[str]) -> list[str]:
    """The module names adapters go on: `asked` when each names a module, else an error listing
    the names there are; for auto the names of every linear layer outside `full` and the output
    layer (convolutions when the model has no such linear layer)."""
    import torch
    from transformers.pytorch_utils import Conv1D

    kinds = {"linear": (torch.nn.Linear, Conv1D), "convolution": (torch.nn.Conv2d,)}
    output = set(_output_layer(model) or ())
    leaves = {kind: sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                            if isinstance(module, types) and not _under(name, full) and name not in output})
              for kind, types in kinds.items()}
    if asked is None:
        kind = "linear" if leaves["linear"] else "convolution"
        if not leaves[kind]:
            raise HftoolError(f"peft.target_modules=auto: {type(model).__name__} has no linear or convolution layer "
                              "outside its heads to put adapters on; use model.peft=none")
        return _unambiguous(model, leaves[kind], kinds[kind], full, output)
    keys = [name for name, _ in model.named_modules()]
    for name in asked:
        if not any(key == name or key.endswith("." + name) for key in keys):
            candidates = sorted({*leaves["linear"], *leaves["convolution"]})
            raise HftoolError(f"peft.target_modules: no module of {type(model).__name__} is named '{name}'; "
                              f"candidates: {', '.join(candidates)}")
    return list(asked)


def _unambiguous(model, leaves: list[str], types: tuple, full: list[str], output: set[str]) -> list[str]:
    """`leaves` as peft's target_modules: a short name where every module it names (peft matches
    a name or a dotted suffix) is a target, else the full names of its targets (timm's
    `downsample.0` convolution shares "0" with `layer1.0`, a block peft cannot adapt)."""
    def target(name: str, module) -> bool:
        return isinstance(module, types) and not _under(name, full) and name not in output

    named = list(model.named_modules())
    chosen = []
    for leaf in leaves:
        matches = [(name, module) for name, module in named if name == leaf or name.endswith("." + leaf)]
        if all(target(name, module) for name, module in matches):
            chosen.append(leaf)
        else:
            chosen += [name for name, module in matches if target(name, module)]
    return chosen


def staging(run_dir: Path) -> Path:
    """Where a run's base waits until the run dir may change: a hidden folder beside it."""
    run_dir = Path(run_dir)
    return run_dir.parent / f".{run_dir.name}.{BASE_DIR}.staged"


def place_base(staged: Path | None, run_dir: Path) -> None:
    """Move a staged base into run_dir/base (after the run's marker); a resumed run keeps its own."""
    if staged is None or not staged.is_dir():
        return
    if (Path(run_dir) / BASE_DIR / "config.json").is_file():
        shutil.rmtree(staged, ignore_errors=True)
        return
    os.replace(staged, Path(run_dir) / BASE_DIR)


def save_base(model, path: Path) -> None:
    """The frozen base (config + weights), written atomically: a resumed run rebuilds the same base
    from its seed, and evaluate/predict load this copy."""
    tmp = path.with_name(f".{path.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(str(tmp), safe_serialization=True)
    os.replace(tmp, path)


def save(model, run_dir: Path, state_dict: dict | None = None) -> None:
    """An adapter run's model files: the adapters and heads (peft's save_pretrained), and the
    config.json (labels, sizes, architecture) and generation_config.json peft leaves out."""
    # save_embedding_layers=False: hftool never resizes the vocabulary, and peft's "auto" looks
    # the base up on the hub to find out (a 25 s wait offline without HF_HUB_OFFLINE).
    model.save_pretrained(str(run_dir), state_dict=state_dict, safe_serialization=True, save_embedding_layers=False)
    base = model.get_base_model()
    base.config.save_pretrained(str(run_dir))
    if base.can_generate():
        base.generation_config.save_pretrained(str(run_dir))


def parameter_counts(models) -> tuple[int, int]:
    """(trainable, total) parameters of `models`, each tensor counted once (tied weights)."""
    seen, trainable, total = set(), 0, 0
    for model in models:
        for param in model.parameters():
            if id(param) in seen:
                continue
            seen.add(id(param))
            total += param.numel()
            trainable += param.numel() if param.requires_grad else 0
    return trainable, total


def describe(model) -> str | None:
    """One line on the adapters of `model` (None without): rank, scale, where, what trains in full."""
    if not is_peft(model):
        return None
    config = next(iter(model.peft_config.values()))
    kind = "QLoRA (4-bit base)" if getattr(model, "is_loaded_in_4bit", False) else "LoRA"
    heads = sorted(config.modules_to_save or ())
    return (f"{kind} r={config.r}, alpha={config.lora_alpha:g}, dropout={config.lora_dropout:g} on "
            f"{', '.join(sorted(config.target_modules))}; trained in full: {', '.join(heads) if heads else 'nothing else'}")


# --------------------------------------------------------------------------------- checkpoints
def slim_checkpoints(accelerator) -> None:
    """Checkpoints of an adapter run keep what training changes (trainable weights and buffers),
    not the frozen base: a 7B base would otherwise add 28 GB to every checkpoint."""

    def keep_trainable(models, weights, output_dir) -> None:
        for i, model in enumerate(models):
            if is_peft(model):
                kept = {n for n, p in model.named_parameters() if p.requires_grad} | {n for n, _ in model.named_buffers()}
                weights[i] = {key: value for key, value in weights[i].items() if key in kept}

    accelerator.register_save_state_pre_hook(keep_trainable)


def load_state(accelerator, models, path: Path) -> None:
    """accelerator.load_state, which for adapter runs fills the trainable weights only (the base is
    rebuilt as it was); a checkpoint without them is an error rather than a silent restart."""
    if not any(is_peft(model) for model in models):
        accelerator.load_state(str(path))
        return
    from safetensors import safe_open

    for i, model in enumerate(models):
        file = path / ("model.safetensors" if i == 0 else f"model_{i}.safetensors")
        with safe_open(str(file), "pt") as saved:  # names without DDP's "module." on either side
            missing = ({n.removeprefix("module.") for n, p in model.named_parameters() if p.requires_grad}
                       - {key.removeprefix("module.") for key in saved.keys()})
        if missing:
            raise HftoolError(f"--resume: {path} lacks {len(missing)} trainable weights of this run's adapters (e.g. "
                              f"{sorted(missing)[0]}); it was written with other peft.* settings: start a new run")
    accelerator.load_state(str(path), strict=False)


# ------------------------------------------------------------------------------------- loading
def load(loader, run_dir: Path, token: str | None = None, **kwargs):
    """An adapter run's model: the base (base/, or adapter_config.json's base_model_name_or_path)
    built with the run's config.json (its labels and sizes), the adapters and trained heads on it.
    A QLoRA run's base loads in 4 bits again where CUDA and bitsandbytes are there."""
    from peft import PeftModel
    from transformers import AutoConfig

    from hftool import models

    run_dir = Path(run_dir)
    base = run_dir / BASE_DIR
    if not (base / "config.json").is_file():
        base = json.loads((run_dir / ADAPTER_CONFIG).read_text(encoding="utf-8")).get("base_model_name_or_path")
        if not base:
            raise HftoolError(f"{run_dir}: {ADAPTER_CONFIG} names no base model and there is no {BASE_DIR}/ folder; "
                              "the adapter cannot be loaded")
        kwargs["ignore_mismatched_sizes"] = True  # the base's own head may have other labels: the adapter brings the run's
        if _trained_in_4_bits(run_dir) and _can_quantize():
            kwargs |= _four_bits()
    kwargs.setdefault("config", models.load("model", AutoConfig, str(run_dir), token))
    with _quiet():
        model = models.load("model", loader, str(base), token, **kwargs)
        if (run_dir / "generation_config.json").is_file():  # the run's (model.generation_config), not the base's
            from transformers import GenerationConfig

            model.generation_config = GenerationConfig.from_pretrained(str(run_dir))
        return PeftModel.from_pretrained(model, str(run_dir))


def _trained_in_4_bits(run_dir: Path) -> bool:
    from hftool.config import read_yaml

    saved = run_dir / "config.yaml"
    return saved.is_file() and (read_yaml(saved).get("model") or {}).get("peft") == "qlora"


def _can_quantize() -> bool:
    import torch

    return torch.cuda.is_available() and importlib.util.find_spec("bitsandbytes") is not None


def merge(model):
    """A plain transformers model: each adapter's update added to its layer's weight, the heads'
    trained copies in place of the originals (peft's merge_and_unload)."""
    with _quiet():
        return model.merge_and_unload()


@contextlib.contextmanager
def _quiet():
    """transformers' notes on weights a checkpoint lacks (the heads, which the adapter brings),
    peft's layer-by-layer notes and deprecation chatter are expected here; errors still show."""
    import warnings

    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            # GPT-2's Conv1D layers store weights transposed; peft notices and sets fan_in_fan_out per layer.
            warnings.filterwarnings("ignore", message="fan_in_fan_out is set")
            yield
    finally:
        hf_logging.set_verbosity(level)


def card_section(trainable: int, total: int, adapters: str | None) -> str:
    """The model card's training paragraph: trainable parameters, and for an adapter run what it
    holds and how to load it."""
    text = f"Trainable parameters: {trainable:,} of {total:,} ({100 * trainable / max(total, 1):.2f}%).\n"
    if adapters:
        text += (f"\nAdapters: {adapters}. This folder holds the adapters (`{ADAPTER_CONFIG}`, "
                 "`adapter_model.safetensors`), not a full model: `hftool evaluate`, `predict` and `generate` load it "
                 "as it is, and `hftool export . --format safetensors --merge -o merged` writes a plain model "
                 "folder with the adapters merged, for `transformers` and `pipeline()`.\n")
    return text


# Opens the card's first python block of an adapter run: what it loads is the merged folder.
_MERGE_FIRST = ("from pathlib import Path\n\nfrom hftool import api\n\n"
                "if not Path(\"merged\").is_dir():  # once: the adapters added into a plain model folder\n"
                "    api.export(\".\", \"merged\", \"safetensors\", merge=True)\n")


def card_usage(usage: str) -> str:
    """A task's card "Use" section (code that loads ".") for an adapter run: the code loads the
    merged folder, which its first python block writes once."""
    usage = usage.replace('"."', '"merged"')
    return usage.replace("```python\n", "```python\n" + _MERGE_FIRST + "\n", 1)

