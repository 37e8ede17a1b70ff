"""train.micro_batch_size=auto: the largest micro-batch that fits, with the global batch kept.

The global batch is `train.batch_size x train.gradient_accumulation_steps x processes`; the
planner chooses the per-process micro-batch and makes up the rest with accumulation, so a run
gives the result of the same global batch set by hand (Trainer's auto_find_batch_size halves the
batch and changes the result instead). Candidates divide batch_size x accumulation, largest
first, and are measured on the longest training examples (the batch that peaks):

- on CUDA, with real forward and backward passes: an out-of-memory backs off to the next
  candidate, and the cache is emptied;
- on CPU, against train.memory_budget: the peak resident memory of a forward and backward pass
  is measured at each candidate, smallest first, plus the optimizer's state, until one goes over.

Probing changes nothing a run depends on: it runs under a forked random state, restores the
model's buffers (batch norm statistics) and drops its gradients.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import torch

from hftool import logs
from hftool.data.batching import lengths_of
from hftool.errors import HftoolError

CLEAR_REFS = Path("/proc/self/clear_refs")  # writing 5 resets the peak resident size (VmHWM)
BUDGET_SHARE = 0.8  # train.memory_budget=None: this share of the memory available now


def candidates(per_process: int) -> list[int]:
    """Micro-batch sizes that divide the per-process batch, largest first."""
    return [m for m in range(per_process, 0, -1) if per_process % m == 0]


def available_memory() -> int:
    """Bytes the system can give now (MemAvailable), or 0 when it cannot say."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _peak_rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


@contextlib.contextmanager
def _untouched(model):
    """Run probe passes without leaving a trace: random state, buffers and gradients as before."""
    buffers = {name: b.detach().clone() for name, b in model.named_buffers()}
    with torch.random.fork_rng(devices=list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []):
        try:
            yield
        finally:
            model.zero_grad(set_to_none=True)
            with torch.no_grad():
                for name, b in model.named_buffers():
                    b.copy_(buffers[name])


def plan(trainer) -> int:
    """Choose the micro-batch for `trainer` (set up as far as its features and model) and apply it
    to its config; returns the micro-batch. `train.batch_size x gradient_accumulation_steps` is
    the per-process batch the choice divides."""
    t, task, parts, acc = trainer.cfg.train, trainer.task, trainer.parts, trainer.accelerator
    if len(task.updates(parts, trainer.cfg)) != 1:
        raise HftoolError(f"train.micro_batch_size=auto plans one model's batch; the {task.name} task trains "
                          "several: set train.batch_size and train.gradient_accumulation_steps instead")
    per_process = t.batch_size * t.gradient_accumulation_steps
    features = trainer.train_features
    longest = np.argsort(-lengths_of(features), kind="stable")
    collate = task.collate(parts)
    model = parts.model.to(acc.device).train()

    def step(size: int) -> None:
        rows = [features[int(i)] for i in longest[np.arange(size) % len(longest)]]  # the longest rows, repeated if few
        batch = {k: v.to(acc.device) if isinstance(v, torch.Tensor) else v for k, v in collate(rows).items()}
        with acc.autocast():
            loss = task.train_loss(parts, model, task.model_inputs(batch))
        loss.backward()

    with _untouched(model):
        if acc.device.type == "cuda":
            chosen = _plan_cuda(step, candidates(per_process))
            where = "on the GPU"
        else:
            budget = int((t.memory_budget or 0) * 2**30) or int(BUDGET_SHARE * available_memory())
            # Memory the run adds after the probe: AdamW's two fp32 moments per trainable weight,
            # and a checkpoint's copy of weights and moments while it is saved or loaded back
            # (the best one, at the end). Left out, runs peaked over the budget (benchmarks/README.md).
            trainable = 4 * sum(p.numel() for p in model.parameters() if p.requires_grad)
            chosen = _plan_cpu(step, candidates(per_process), budget, reserve=5 * trainable)
            where = f"within train.memory_budget {budget / 2**30:.1f} GiB"
    t.batch_size, t.gradient_accumulation_steps = chosen, per_process // chosen
    acc.gradient_accumulation_steps = t.gradient_accumulation_steps
    logs.info(f"train.micro_batch_size=auto: {chosen} per process x {t.gradient_accumulation_steps} accumulation "
              f"(the largest that fits {where}); the global batch stays {per_process * acc.num_processes}")
    return chosen


def _plan_cuda(step, sizes: list[int]) -> int:
    for size in sizes:
        try:
            step(size)
            return size
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()
    raise HftoolError("train.micro_batch_size=auto: even one example per step runs out of GPU memory; use a smaller "
                      "model, a shorter data.max_length, or bf16 (--mixed-precision bf16)")


def _plan_cpu(step, sizes: list[int], budget: int, reserve: int = 0) -> int:
    """The largest size whose measured peak, plus `reserve` bytes the run adds later (AdamW's
    moments), stays under `budget` bytes of resident memory.

    Sizes are measured smallest first, one forward and backward pass each, until one goes over:
    the allocator keeps what a pass freed, so each measurement starts where the last one peaked,
    as training steps do. The passes together cost about two steps of the full batch."""
    if not CLEAR_REFS.exists():
        raise HftoolError("train.micro_batch_size=auto on CPU measures memory through /proc (Linux); set "
                          "train.batch_size and train.gradient_accumulation_steps by hand here")

    def peak(size: int) -> int:
        CLEAR_REFS.write_text("5")
        step(size)
        return _peak_rss() + reserve

    ascending = sorted(sizes)
    step(ascending[0])  # first-use allocations (kernels, autograd) belong to no size
    chosen, first = None, peak(ascending[0])
    if first > budget:
        raise HftoolError(f"train.micro_batch_size=auto: one example per step already peaks at "
                          f"{first / 2**30:.2f} GiB with the optimizer's state, over train.memory_budget "
                          f"({budget / 2**30:.2f} GiB); raise the budget or use a smaller model or data.max_length")
    chosen = ascending[0]
    for size in ascending[1:]:
        if peak(size) > budget:
            break
        chosen = size
    return chosen
