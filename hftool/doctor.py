"""`hftool doctor`: whether a run can start here, checked before it does, without downloading.

It takes the same recipe, flags and overrides as `finetune` and looks at what that run needs:
the library versions, the device and the precision `auto` picks, the Accelerate config in use,
the free disk for its checkpoints, and, for each artifact (model, tokenizer or processor, timm
weights, data files, hub datasets), whether it resolves from what is on this machine. Each
problem comes with the exact fix.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path

from hftool.config import RunConfig

PACKAGES = ("torch", "transformers", "datasets", "accelerate", "evaluate", "timm", "tokenizers", "peft",
            "onnxruntime")
# Model weights are written with every checkpoint next to two AdamW moments of the same size.
CHECKPOINT_FACTOR = 3


@dataclass
class Check:
    """One finding: `ok`, `warn` (the run can start) or `fail` (it cannot)."""

    name: str
    status: str
    message: str
    fix: str = ""


def environment(cfg: RunConfig) -> list[Check]:
    """The machine: versions, device, the precision cfg's setting picks here, the Accelerate config."""
    return [_versions(), *_device(cfg), _accelerate_config()]


def diagnose(cfg: RunConfig) -> list[Check]:
    """Every check for the run `cfg` describes: the machine, then what the run needs."""
    checks = environment(cfg)
    weights = 0
    for spec in _model_specs(cfg):
        found, size = _model(spec, cfg)
        checks += found
        weights += size
    checks += _adapters(cfg)
    checks += [_data(cfg.data.train, "data.train", "--data")] if cfg.data.train else [
        Check("data.train", "fail", "no training data is set", "pass --data FILE (or set data.train in the recipe)")]
    if cfg.data.eval:
        checks.append(_data(cfg.data.eval, "data.eval", "--eval-data"))
    checks.append(_disk(cfg, weights))
    return checks


def _versions() -> Check:
    found = []
    for name in PACKAGES:
        try:
            found.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            pass
    from hftool import __version__

    return Check("versions", "ok", f"hftool {__version__}, " + ", ".join(found))


def _device(cfg: RunConfig) -> list[Check]:
    import torch

    from hftool.runtime import cpu_has_native_bf16, resolve_mixed_precision

    if torch.cuda.is_available():
        names = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
        device = Check("device", "ok", f"{torch.cuda.device_count()} CUDA GPU(s): {names}; bf16 "
                       f"{'supported' if torch.cuda.is_bf16_supported() else 'not supported'}, fp16 supported")
    else:
        device = Check("device", "ok", f"CPU ({os.cpu_count()} cores), no CUDA GPU; native bf16 "
                       f"{'yes (avx512_bf16/AMX)' if cpu_has_native_bf16() else 'no (emulated: slower)'}; fp16 no")
    setting = cfg.train.mixed_precision
    if setting == "fp16" and not torch.cuda.is_available():
        precision = Check("precision", "fail", "train.mixed_precision=fp16 needs a CUDA GPU",
                          "train.mixed_precision=auto (bf16 where native) or no")
    else:
        chosen = resolve_mixed_precision(setting)
        precision = Check("precision", "ok", f"train.mixed_precision={setting} trains in "
                          f"{'fp32' if chosen == 'no' else chosen + ' autocast'} here")
    return [device, precision]


def _accelerate_config() -> Check:
    from accelerate.commands.config.config_args import default_config_file

    path = Path(os.environ.get("ACCELERATE_CONFIG_FILE") or default_config_file)
    if not path.is_file():
        return Check("accelerate config", "ok", f"none ({path} does not exist): one process unless "
                     "--num-processes or a launcher says otherwise")
    import yaml

    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        return Check("accelerate config", "fail", f"{path} is not valid YAML ({err})",
                     "fix it, or run `accelerate config` again")
    keys = ("distributed_type", "num_processes", "num_machines", "mixed_precision")
    return Check("accelerate config", "ok", f"{path}: " + ", ".join(f"{k} {config.get(k)}" for k in keys if k in config))


def _model_specs(cfg: RunConfig) -> list[str]:
    from hftool.tasks import get_task

    return get_task(cfg.task).model_specs(cfg)


def _model(spec: str, cfg: RunConfig) -> tuple[list[Check], int]:
    """Checks for one model spec, and its weights' size in bytes (0 when unknown)."""
    from hftool import models

    if models.tiny_arch(spec) is not None:
        return [Check(f"model {spec}", "ok", "built from a config, with a tokenizer trained on the data: "
                      "nothing to download")], 0
    path = Path(spec).expanduser()
    if path.exists():
        return _local_model(spec, path)
    if spec.startswith("timm:"):
        return _timm(spec, cfg)
    return _hub_model(spec)


def _adapters(cfg: RunConfig) -> list[Check]:
    """model.peft: what would stop the run before it reads any data (hftool.adapters.check)."""
    from hftool import adapters
    from hftool.errors import HftoolError
    from hftool.tasks import get_task

    try:
        adapters.check(cfg, get_task(cfg.task))
    except HftoolError as err:
        problem, _, fix = str(err).rpartition("; ")  # its messages end with the fix
        return [Check("adapters", "fail", problem, fix)]
    if cfg.model.peft == "none":
        return []
    return [Check("adapters", "ok", f"model.peft={cfg.model.peft}: r={cfg.peft.r}, alpha={cfg.peft.alpha}, "
                  f"target_modules={cfg.peft.target_modules}")]


def _local_model(spec: str, path: Path) -> tuple[list[Check], int]:
    if not path.is_dir() or not (path / "config.json").is_file():
        return [Check(f"model {spec}", "fail", f"{spec} is not a model directory (no config.json)",
                      "pass a folder written by save_pretrained or by `hftool finetune`")], 0
    from hftool.errors import HftoolError
    from hftool.models import check_model_dir, read_config_json

    try:  # a broken config.json, or one that needs the dir's own Python (never run)
        check_model_dir(path)
    except HftoolError as err:
        return [Check(f"model {spec}", "fail", str(err))], 0  # the message says the fix
    weights = [p for p in path.iterdir() if p.suffix in (".safetensors", ".bin") and p.is_file()]
    size = sum(p.stat().st_size for p in weights)
    checks = [Check(f"model {spec}", "ok" if weights else "fail",
                    f"local, {human_size(size)} of weights" if weights else "no weights (*.safetensors, *.bin)",
                    "" if weights else "copy the model's weights into the folder")]
    tokenizer = [n for n in ("tokenizer.json", "vocab.txt", "spiece.model", "vocab.json", "tokenizer_config.json")
                 if (path / n).is_file()]
    processor = [n for n in ("preprocessor_config.json", "processor_config.json") if (path / n).is_file()]
    if tokenizer or processor:
        checks.append(Check(f"tokenizer/processor {spec}", "ok", ", ".join(tokenizer + processor)))
    else:
        timm = read_config_json(path).get("architecture") is not None
        checks.append(Check(f"tokenizer/processor {spec}", "ok" if timm else "fail",
                            "timm model: its processor is in config.json" if timm else
                            "no tokenizer or image processor files",
                            "" if timm else "copy the tokenizer/processor files next to the weights "
                            "(tokenizer.json, preprocessor_config.json, ...)"))
    return checks, size


def _hub_model(spec: str) -> tuple[list[Check], int]:
    """A hub id: only what the local HF cache holds counts (doctor never downloads)."""
    from huggingface_hub import scan_cache_dir, try_to_load_from_cache

    config = try_to_load_from_cache(spec, "config.json")
    if not isinstance(config, str):
        return [Check(f"model {spec}", "fail", f"'{spec}' is not a local folder and not in the HF cache",
                      f"download it where there is network (`hf download {spec}`) and copy the folder "
                      "here, then pass --model path/to/it")], 0
    size = 0
    try:
        for repo in scan_cache_dir().repos:
            if repo.repo_id == spec:
                size = repo.size_on_disk
    except Exception:  # a cache scan error must not stop the doctor  # noqa: BLE001
        pass
    has_tokenizer = any(isinstance(try_to_load_from_cache(spec, n), str)
                        for n in ("tokenizer.json", "tokenizer_config.json", "preprocessor_config.json"))
    return [Check(f"model {spec}", "ok", f"in the HF cache ({human_size(size)}); set HF_HUB_OFFLINE=1 "
                  "to use it without network"),
            Check(f"tokenizer/processor {spec}", "ok" if has_tokenizer else "fail",
                  "in the HF cache" if has_tokenizer else "no tokenizer or processor files in the HF cache",
                  "" if has_tokenizer else f"download the whole repository: `hf download {spec}`")], size


def _timm(spec: str, cfg: RunConfig) -> tuple[list[Check], int]:
    name = spec.removeprefix("timm:")
    import timm

    if not timm.is_model(name):
        return [Check(f"model {spec}", "fail", f"timm has no model '{name}'", "check the name: timm.list_models()")], 0
    if not getattr(cfg.model, "pretrained", True):  # timm: specs come with image models, which have it
        return [Check(f"model {spec}", "ok", "built from timm's architecture with random weights "
                      "(model.pretrained=false): nothing to download")], 0
    from huggingface_hub import try_to_load_from_cache
    from timm.models import get_pretrained_cfg

    hub_id = getattr(get_pretrained_cfg(name), "hf_hub_id", None)
    cached = hub_id and any(isinstance(try_to_load_from_cache(hub_id, f), str)
                            for f in ("model.safetensors", "pytorch_model.bin"))
    if cached:
        return [Check(f"model {spec}", "ok", f"timm weights {hub_id} are in the HF cache")], 0
    return [Check(f"model {spec}", "fail", f"timm weights for '{name}' ({hub_id or 'no hub id'}) are not in the HF cache",
                  "model.pretrained=false (random weights), or download them where there is network and copy the "
                  "HF cache here")], 0


def _data(spec: str, key: str, flag: str) -> Check:
    if spec.startswith("sample:"):
        from hftool.samples import SAMPLES

        name = spec.removeprefix("sample:")
        return (Check(key, "ok", f"{spec}: embedded, generated here") if name in SAMPLES else
                Check(key, "fail", f"unknown sample '{spec}'", f"one of: {', '.join('sample:' + s for s in SAMPLES)}"))
    path = Path(spec).expanduser()
    if path.exists():
        files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
        size = sum(p.stat().st_size for p in files)
        return Check(key, "ok", f"{spec}: {len(files)} file(s), {size / 2**20:.1f} MiB")
    from hftool.data.sources import FOLDER_EXTENSIONS, HUB_ID

    if path.suffix.lower() in FOLDER_EXTENSIONS or spec.startswith((".", "/", "~")) or not HUB_ID.match(spec):
        return Check(key, "fail", f"{spec} does not exist", f"check the path given to {flag} (or {key})")
    import datasets.config

    name = spec.partition(":")[0]
    cached = [Path(datasets.config.HF_DATASETS_CACHE) / name.replace("/", "___"),
              Path(datasets.config.HF_DATASETS_CACHE).parent / "hub" / f"datasets--{name.replace('/', '--')}"]
    if any(p.exists() for p in cached):
        return Check(key, "ok", f"hub dataset {spec}: in the local cache; set HF_DATASETS_OFFLINE=1 to use it offline")
    return Check(key, "fail", f"hub dataset {spec} is not in the local cache",
                 f"download it where there is network and save it (`ds.save_to_disk(DIR)`), then pass {flag} DIR")


def _disk(cfg: RunConfig, weights: int) -> Check:
    """Free disk where the run will be written, against what its checkpoints take."""
    target = Path(cfg.output_dir or "runs").expanduser().resolve()
    existing = next(p for p in (target, *target.parents) if p.exists())
    free = shutil.disk_usage(existing).free
    kept = cfg.train.save_total_limit + 2  # the best and the final model besides the kept checkpoints
    need = weights * CHECKPOINT_FACTOR * kept
    if not weights:
        return Check("disk", "ok", f"{human_size(free)} free at {existing} (model size unknown before it is built)")
    status = "ok" if free > need else "fail"
    return Check("disk", status, f"{human_size(free)} free at {existing}; the run's checkpoints need about "
                 f"{human_size(need)} ({kept} x weights and AdamW state)",
                 "" if status == "ok" else "free some space, choose another --output-dir, or lower train.save_total_limit")


def human_size(n: float) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


def report(checks: list[Check]) -> str:
    marks = {"ok": "ok  ", "warn": "warn", "fail": "FAIL"}
    lines = []
    for check in checks:
        lines.append(f"{marks[check.status]}  {check.name}: {check.message}")
        if check.fix:
            lines.append(f"      fix: {check.fix}")
    failed = sum(c.status == "fail" for c in checks)
    lines.append("the run can start" if not failed else f"{failed} problem(s) stop this run; fix them first")
    return "\n".join(lines)


def as_json(checks: list[Check]) -> dict:
    return {"ok": not any(c.status == "fail" for c in checks), "checks": [asdict(c) for c in checks]}
