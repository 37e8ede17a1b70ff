"""Where and in what precision models run: the Accelerator and the dtype that training, evaluate,
predict and generate use, resolved on the machine they run on."""

from __future__ import annotations

import torch


def resolve_mixed_precision(setting: str) -> str:
    """`auto` -> bf16 where it is native: a CUDA GPU that supports it, or a CPU with avx512_bf16 or
    AMX (faster at the same accuracy: benchmarks/README.md; CPUs without them emulate bf16 and get
    slower). Other settings pass through."""
    if setting != "auto":
        return setting
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "no"
    return "bf16" if cpu_has_native_bf16() else "no"


def inference_precision(setting: str) -> str:
    """train.mixed_precision resolved on this machine for inference: fp16 (GPU only) becomes
    fp32 (`no`) on a CPU, so a run trained in fp16 on a GPU still runs here."""
    precision = resolve_mixed_precision(setting)
    return "no" if precision == "fp16" and not torch.cuda.is_available() else precision


def inference_accelerator(setting: str):
    """The Accelerator `hftool evaluate` and `hftool predict` run a model with: in its run's
    precision (inference_precision), so they reproduce the run's metrics. Prepared models return
    fp32 outputs."""
    return make_accelerator(mixed_precision=inference_precision(setting))


def inference_dtype(setting: str) -> torch.dtype:
    """The dtype `hftool generate` casts a model's weights to: the run's precision
    (inference_precision), fp32 for `no`. Generation runs its weights in bf16 rather than under
    autocast, as inference usually does: autocast would cast every weight again at every new
    token, and the cast weights take half the memory (figures: benchmarks/README.md)."""
    return {"no": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[inference_precision(setting)]


def cpu_has_native_bf16() -> bool:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:  # not Linux: no way to tell, stay in fp32
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def make_accelerator(**kwargs):
    """An Accelerator that also joins CPU process groups started by torchrun.

    Accelerate only treats RANK/WORLD_SIZE as a CPU process group when told it runs on CPU;
    without that every torchrun worker would train alone.
    """
    from accelerate import Accelerator

    from hftool.launch import in_distributed_run

    cpu = in_distributed_run() and not torch.cuda.is_available()
    from accelerate.state import AcceleratorState

    wanted = kwargs.get("mixed_precision") or "no"
    current = AcceleratorState._shared_state.get("_mixed_precision")
    if not in_distributed_run() and current not in (None, wanted):
        # One process may train several times (library use, tests) with different mixed precision;
        # Accelerate keeps the first run's in a process-wide state and refuses any other.
        AcceleratorState._reset_state()
    return Accelerator(cpu=cpu, **kwargs)
