"""THE training loop, one for every task (Accelerate).

    trainer = Trainer(cfg, run_dir, recipe="bert-cls", resume=False)
    trainer.setup()      # data, model, optimizer, schedule; resume state
    trainer.train()      # accumulate, clip, schedule, evaluate, checkpoint, early stop
    trainer.finish()     # best weights, metrics.json, curves, model card

Checkpoints live in RUN_DIR/checkpoints/step-NNNNNNN. Each is written to a hidden temporary
folder and renamed into place when complete, so a kill at any moment leaves either the whole
checkpoint or none; `--resume` only ever sees complete ones.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import shutil
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from hftool import adapters, logs
from hftool.config import RunConfig, to_dict, to_yaml
from hftool.errors import HftoolError
from hftool.outputs import atomic_write_text, honour_umask, write_json, write_jsonl
from hftool.runtime import make_accelerator, resolve_mixed_precision

CHECKPOINT = re.compile(r"^step-(\d+)$")
STATE_FILE = "trainer_state.json"
LOG_FILE = "log.jsonl"
LOWER_IS_BETTER = re.compile(r"loss|perplexity|error|wer|cer|mae|mse|rmse|mape|bits_per|fid|kid")


@dataclass
class TrainerState:
    """Where training stands; saved with every checkpoint."""

    global_step: int = 0
    epoch: int = 0  # the epoch the next batch belongs to
    batches_in_epoch: int = 0  # micro-batches of `epoch` already consumed
    best_metric: float | None = None
    best_step: int | None = None
    evals_without_improvement: int = 0
    last_eval: dict = field(default_factory=dict)
    num_processes: int = 1
    gradient_accumulation_steps: int = 1
    batch_size: int = 0


class TrainingStopped(HftoolError):
    """A signal stopped training after saving a checkpoint; the exit code is 128 + signal."""

    collective = True  # every process stops at the same step: only rank 0 says so

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first (temporary folders of interrupted saves are ignored)."""
    root = run_dir / "checkpoints"
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if CHECKPOINT.match(p.name) and (p / STATE_FILE).is_file()]
    return sorted(found, key=lambda p: int(CHECKPOINT.match(p.name).group(1)))


class Trainer:
    def __init__(self, cfg: RunConfig, run_dir: Path, recipe: str = "", resume: bool = False, command: str = "",
                 replace: bool = False):
        """
        Args:
            replace: run_dir holds an hftool run to replace (--overwrite): it is moved aside once
                the new run's data and model have loaded, and deleted at its first checkpoint.
        """
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.recipe = recipe
        self.resume = resume
        self.command = command
        self.replace = replace
        self.replaced: Path | None = None  # where the replaced run waits for the first checkpoint
        self.staged_base: Path | None = None  # a LoRA run's built base, until the run dir may change
        self.finished = False  # --resume found the run already at its last step: nothing to do
        self.resume_from: Path | None = None
        self.state = TrainerState()
        self.stop_signal = 0
        self.metric_name = ""
        self.greater_is_better = True

    # ---------------------------------------------------------------------------------- setup
    def setup(self) -> None:
        from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration, set_seed

        from hftool import validate
        from hftool.data import load_splits
        from hftool.tasks import get_task

        cfg, t = self.cfg, self.cfg.train
        if t.mixed_precision == "fp16" and not torch.cuda.is_available():
            raise HftoolError("train.mixed_precision=fp16 needs a CUDA GPU; use bf16 (or no) on this machine")
        tracking = None if t.tracking == "none" else t.tracking
        if tracking == "tensorboard":
            _require("tensorboard", "tensorboard", "tracking=tensorboard")
        elif tracking is not None:
            _require(tracking, tracking, f"tracking={tracking}")
        self.mixed_precision = resolve_mixed_precision(t.mixed_precision)
        # Logs live beside the model, never among its files: RUN/logs/<tracker> or train.logging_dir.
        self.logging_dir = (Path(t.logging_dir) if t.logging_dir else self.run_dir / "logs" / tracking) if tracking else None
        self.accelerator = acc = make_accelerator(
            mixed_precision=self.mixed_precision,
            gradient_accumulation_steps=t.gradient_accumulation_steps,
            log_with=tracking,
            # TensorBoard writes into logging_dir/<project name>: give it the folder as those two parts.
            project_config=ProjectConfiguration(project_dir=str(self.run_dir),
                                                logging_dir=str(self.logging_dir.parent) if tracking else None),
            # The sampler yields global batches that Accelerate slices across processes, so N
            # processes see exactly the batches one process would (same data order, same result).
            dataloader_config=DataLoaderConfiguration(split_batches=True),
        )
        set_seed(t.seed)
        self.task = task = get_task(cfg.task)
        adapters.check(cfg, task)
        self.metric_name = t.metric_for_best or task.default_metric
        self.greater_is_better = (t.greater_is_better if t.greater_is_better is not None
                                  else not LOWER_IS_BETTER.search(self.metric_name))

        from hftool.models import check_reachable

        check_reachable(cfg.model.name, cfg.model.token)
        if self.resume:  # before the data loads: a refused resume costs nothing and writes nothing
            self.resume_from = self._check_resume()
        self.streaming = cfg.data.streaming
        if self.streaming:
            from hftool.data import streaming
            from hftool.tasks import TASKS

            streaming.check(cfg, task, [name for name, kind in TASKS.items() if kind.streams])
        with acc.main_process_first():
            if self.streaming:  # the training rows stay a stream; a sample and the validation rows are read
                stream = streaming.open_stream(cfg, task, cfg.model.token)
                self.sources, train_rows, labels, self.eval_rows = stream.names, stream.sample, stream.labels, stream.validation
            else:
                raw, self.sources = load_splits(cfg.data, task.reading(cfg), t.seed, cfg.model.token)
                with validate.hint(self.recipe, cfg):  # a bad row's error names the command that lists them all
                    labels = task.label_set(cfg, raw["full"], self.sources["train"]) if "full" in raw else None
                    train_rows, labels = task.prepare(cfg, raw["train"], self.sources["train"], labels)
                    self.eval_rows, _ = task.prepare(cfg, raw["validation"], self.sources["validation"], labels)
            with adapters.loading(cfg):  # a 4-bit base under model.peft=qlora
                self.parts = parts = task.build(cfg, labels, train_rows, run_dir=self.run_dir if self.resume else None)
            # Adapters go on after the task built its model and before any optimizer exists.
            self.staged_base = adapters.wrap(cfg, task, parts, self.run_dir, main_process=acc.is_main_process,
                                            resume=self.resume)
            self.train_features = stream.features(parts) if self.streaming else task.train_features(parts, cfg, train_rows)
            self.eval_features = task.eval_features(parts, cfg, self.eval_rows)
        if self.resume:
            from hftool.runs import shown, trained_labels

            trained = trained_labels(self.run_dir)
            if trained is not None and labels is not None and [str(label) for label in labels] != trained:
                raise HftoolError(f"--resume: the data's labels ({shown(labels)}) are not the run's ({shown(trained)}); "
                                  "resume with the run's data or start a new run")
        if t.micro_batch_size == "auto":
            self._plan_micro_batch()
        self._build_loaders()
        self._build_optimizer()
        if adapters.is_peft(parts.model):
            adapters.slim_checkpoints(acc)
        for kept in task.checkpointed(parts):  # registered before a resume loads the checkpoint
            if isinstance(kept, torch.nn.Module):
                kept.to(acc.device)
            acc.register_for_checkpointing(kept)
        self.state.num_processes = acc.num_processes
        self.state.gradient_accumulation_steps = t.gradient_accumulation_steps
        self.state.batch_size = t.batch_size
        self.first_bad_step = torch.full((), -1, dtype=torch.long, device=acc.device)
        if self.resume_from is not None:
            self._load_checkpoint(self.resume_from)
            if self.finished:
                return
        # Every check has passed and the model is built: only now does the run dir change.
        self._write_run_files()
        if tracking:
            if acc.is_main_process:
                self.logging_dir.mkdir(parents=True, exist_ok=True)
            project = self.logging_dir.name if tracking == "tensorboard" else "hftool"  # W&B project, MLflow experiment
            acc.init_trackers(project, config=_flat_scalars(to_dict(cfg)),
                              init_kwargs={"wandb": {"dir": str(self.logging_dir)},
                                           "mlflow": {"logging_dir": str(self.logging_dir)}})

    def _write_run_files(self) -> None:
        """Move a run being replaced aside, then write the marker (a new run's first file), the
        tokenizer/processor (a resumed run reuses it) and config.yaml; a resumed run's log loses
        the records written after its checkpoint."""
        from hftool.runs import MARKER, move_aside, recorded, write_marker

        if self.accelerator.is_main_process:
            if self.replace and self.run_dir.is_dir():
                self.replaced = move_aside(self.run_dir)
                logs.info(f"--overwrite: moved the previous run to {self.replaced}; it is deleted when this run "
                          "saves its first checkpoint")
            if not (self.run_dir / MARKER).is_file():
                write_marker(self.run_dir, self.parts.labels)
            adapters.place_base(self.staged_base, self.run_dir)
            self.staged_base = None
            self.task.save(self.parts, self.run_dir)
            atomic_write_text(self.run_dir / "config.yaml", to_yaml(recorded(self.cfg)))
            if self.resume:
                self._truncate_log(self.state.global_step)
        self.accelerator.wait_for_everyone()

    def abandon(self) -> None:
        """Undo what a run that stopped early left outside its own files: a LoRA base staged beside
        the run dir, and a run that --overwrite moved aside, which is put back when the new run
        stopped before its first checkpoint (the new run's partial files go): the user keeps a
        whole run either way."""
        if self.staged_base is not None:  # the run stopped before its dir could change
            shutil.rmtree(self.staged_base, ignore_errors=True)
            self.staged_base = None
        if self.replaced is None:
            return
        shutil.rmtree(self.run_dir, ignore_errors=True)
        os.rename(self.replaced, self.run_dir)
        logs.info(f"--overwrite: the new run stopped before its first checkpoint; the previous run is back in {self.run_dir}")
        self.replaced = None

    def _drop_replaced(self) -> None:
        if self.replaced is not None:
            from hftool.runs import remove_aside

            remove_aside(self.replaced)
            self.replaced = None

    def _plan_micro_batch(self) -> None:
        """train.micro_batch_size=auto: a resumed run takes the split its checkpoint was written
        with; a new one measures (hftool/planner.py). Either way the global batch is kept."""
        t = self.cfg.train
        checkpoints = list_checkpoints(self.run_dir) if self.resume else []
        if checkpoints:
            saved = json.loads((checkpoints[-1] / STATE_FILE).read_text())
            if saved["batch_size"] * saved["gradient_accumulation_steps"] == t.batch_size * t.gradient_accumulation_steps:
                t.batch_size, t.gradient_accumulation_steps = saved["batch_size"], saved["gradient_accumulation_steps"]
                self.accelerator.gradient_accumulation_steps = t.gradient_accumulation_steps
                return
        from hftool.planner import plan

        plan(self)

    def _build_loaders(self) -> None:
        from torch.utils.data import DataLoader

        from hftool.evaluation import eval_loader

        cfg, t = self.cfg, self.cfg.train
        collate = self.task.collate(self.parts)
        from hftool.data.batching import EpochKeys, LengthGroupedBatches, SeededLoading, lengths_of

        processes = self.accelerator.num_processes
        if self.streaming:
            # Global batches, as the sampler's: Accelerate reads them in the main process and
            # sends each process its slice, so N processes train on what one would. No workers:
            # each would read the whole stream again.
            self.sampler = None
            train_loader = DataLoader(self.train_features, batch_size=t.batch_size * processes, collate_fn=collate)
        else:
            lengths = lengths_of(self.train_features)
            self.sampler = EpochKeys(LengthGroupedBatches(lengths, t.batch_size * processes, t.seed, t.group_by_length))
            # Own generators: a DataLoader without one draws its base seed from the global RNG at
            # every iter(), which would shift dropout masks between a resumed and an unbroken run.
            train_loader = DataLoader(SeededLoading(self.train_features, t.seed), batch_sampler=self.sampler,
                                      collate_fn=collate, num_workers=cfg.data.num_workers, generator=torch.Generator(),
                                      pin_memory=torch.cuda.is_available())
        loader = eval_loader(self.eval_features, collate, (t.eval_batch_size or 2 * t.batch_size) * processes,
                             cfg.data.num_workers)
        self.train_loader, self.eval_loader = self.accelerator.prepare(train_loader, loader)

    def _build_optimizer(self) -> None:
        """An AdamW and a schedule for each model the task trains (one unless it owns its step),
        all prepared, so checkpoints and --resume cover every one of them."""
        from transformers import get_scheduler

        from hftool.tasks.base import Step

        t, acc = self.cfg.train, self.accelerator
        # A stream is one endless epoch (passes over it are not counted): max_steps ends it.
        per_epoch = t.max_steps if self.streaming else math.ceil(len(self.train_loader) / t.gradient_accumulation_steps)
        self.steps_per_epoch = per_epoch
        self.total_steps = t.max_steps or max(1, math.ceil(t.epochs * per_epoch))
        self.num_epochs = math.ceil(self.total_steps / per_epoch)
        fused = acc.device.type in ("cuda", "cpu")  # one kernel per step instead of one per tensor (Trainer fuses on CPU too)
        names, objects = [], []
        for update in self.task.updates(self.parts, self.cfg):
            # On the device before the optimizer exists: fused AdamW checks where its tensors live.
            model = update.model.to(acc.device)
            if t.compile:
                model = torch.compile(model, dynamic=True)
            if model is not update.model:  # the parameter groups must name the compiled model's tensors
                update.param_groups = self.task.param_groups(self.parts, self.cfg, model)
            optimizer = torch.optim.AdamW(update.param_groups, lr=update.lr or t.lr, betas=update.betas, fused=fused)
            # With split batches a prepared scheduler steps once per optimizer step.
            scheduler = get_scheduler(t.scheduler, optimizer, num_warmup_steps=int(t.warmup_ratio * self.total_steps),
                                      num_training_steps=self.total_steps)
            names.append(update.name)
            objects += [model, optimizer, scheduler]
        prepared = acc.prepare(*objects)
        models, optimizers, schedulers = (dict(zip(names, prepared[i::3])) for i in range(3))
        self.models, self.optimizers = models, optimizers
        self.model = next(iter(models.values()))  # evaluated, and saved as the run's model
        self.step = Step(acc, models, optimizers, schedulers, t.max_grad_norm)

    # ---------------------------------------------------------------------------------- train
    def train(self) -> None:
        """Run the loop. SIGTERM/SIGINT save a checkpoint at the next optimizer step and stop."""
        previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
        in_main_thread = threading.current_thread() is threading.main_thread()
        if in_main_thread:
            for sig in previous:
                signal.signal(sig, self._on_signal)
        # Dynamically padded text brings new tensor shapes nearly every batch.
        varying_shapes = "length" in self.train_features.column_names
        try:
            with bounded_kernel_caches(varying_shapes and self.accelerator.device.type == "cpu"):
                self._train()
        finally:
            if getattr(self, "progress", None) is not None:
                self.progress.close()  # now, not when collected: after the error line it would bury it
            if in_main_thread:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)

    def _on_signal(self, signum, frame) -> None:
        if self.stop_signal:  # a second Ctrl-C means now
            raise KeyboardInterrupt
        self.stop_signal = signum
        logs.info(f"{signal.Signals(signum).name} received: saving a checkpoint at the end of this step")

    def _stop_requested(self) -> bool:
        flag = torch.tensor(int(self.stop_signal), device=self.accelerator.device)
        if self.accelerator.num_processes > 1:  # every process must stop at the same step
            flag = self.accelerator.reduce(flag, "max")
        return bool(flag.item())

    def _check_finite(self) -> None:
        """Raise if any loss since the last check was NaN/inf, before it reaches a checkpoint."""
        step = int(self.accelerator.reduce(self.first_bad_step, "max").item())
        if step >= 0:
            good = list_checkpoints(self.run_dir)
            kept = f"the last good checkpoint is {good[-1]}" if good else "no checkpoint was written"
            precision = {"fp16": ", or use bf16 rather than fp16",
                         "bf16": ", or train in fp32 (--mixed-precision no)"}.get(self.mixed_precision, "")
            raise HftoolError(f"the training loss became NaN/inf at step {step}; lower train.lr, keep "
                              f"train.max_grad_norm > 0{precision} ({kept})")

    def _train(self) -> None:
        acc, t, state = self.accelerator, self.cfg.train, self.state
        self._banner()
        progress = self.progress = tqdm(total=self.total_steps, initial=state.global_step, desc="Training",
                                        dynamic_ncols=True, disable=not acc.is_local_main_process)
        self.model.train()
        running_loss = torch.zeros((), device=acc.device)
        running_parts: dict = {}  # a task's other losses (a GAN's generator and discriminator)
        running_batches, window_examples, window_start = 0, 0, time.perf_counter()
        self.train_start = time.perf_counter()
        stop = state.global_step >= self.total_steps
        while not stop and state.epoch < self.num_epochs:
            if self.sampler is not None:
                self.sampler.epoch = state.epoch
            loader = self.train_loader
            if state.batches_in_epoch:  # resume mid-epoch at the next unseen batch
                loader = acc.skip_first_batches(self.train_loader, state.batches_in_epoch)
            for batch in loader:
                self.step.number = state.global_step
                with acc.accumulate(*self.models.values()):
                    losses = self.task.train_step(self.parts, batch, self.step)
                loss = losses["loss"]
                state.batches_in_epoch += 1
                # Both stay on the device: no sync per batch. The first non-finite loss's step is
                # kept so the error can name it when the next check reads it.
                running_loss += loss.detach()
                for name, value in losses.items():
                    if name != "loss":
                        running_parts[name] = running_parts.get(name, 0.0) + value.detach()
                self.first_bad_step = torch.where(~torch.isfinite(loss.detach()) & (self.first_bad_step < 0),
                                                  state.global_step + 1, self.first_bad_step)
                running_batches += 1
                window_examples += _batch_examples(batch) * acc.num_processes  # approximate on the last batch
                if not acc.sync_gradients:
                    continue
                state.global_step += 1
                if not self.streaming and state.batches_in_epoch == len(self.train_loader):
                    state.epoch, state.batches_in_epoch = state.epoch + 1, 0
                progress.update(1)
                if state.global_step % t.logging_steps == 0 or state.global_step == self.total_steps:
                    # .item() forces a device sync: once per logging window, not per step.
                    self._check_finite()
                    mean_loss = acc.reduce(running_loss, "mean").item() / running_batches
                    elapsed = time.perf_counter() - window_start
                    record = {"loss": round(mean_loss, 6),
                              **{name: round(acc.reduce(value, "mean").item() / running_batches, 6)
                                 for name, value in running_parts.items()},
                              "lr": self.step.learning_rate(),
                              **({} if self.streaming else {"epoch": round(state.global_step / self.steps_per_epoch, 4)}),
                              "samples_per_second": round(window_examples / max(elapsed, 1e-9), 2)}
                    self._log("train", record)
                    progress.set_postfix(loss=f"{mean_loss:.4f}", samples_s=f"{record['samples_per_second']:.1f}")
                    self.last_train_loss = mean_loss
                    running_loss.zero_()
                    running_parts.clear()
                    running_batches, window_examples, window_start = 0, 0, time.perf_counter()
                paused = time.perf_counter()
                stop = self._after_step(end_of_epoch=state.batches_in_epoch == 0)
                window_start += time.perf_counter() - paused  # throughput counts training time only
                if self._stop_requested():
                    checkpoint = self.save_checkpoint()
                    progress.close()
                    name = signal.Signals(self.stop_signal).name
                    raise TrainingStopped(f"stopped by {name} at step {state.global_step}; checkpoint saved in "
                                          f"{checkpoint}; run the same command with --resume to continue",
                                          exit_code=128 + self.stop_signal)
                if stop:
                    break
            else:
                if state.batches_in_epoch:  # fewer batches than len(loader): the epoch still ends here
                    state.epoch, state.batches_in_epoch = state.epoch + 1, 0
        progress.close()
        self.train_runtime = time.perf_counter() - self.train_start
        if state.last_eval.get("step") != state.global_step:
            self._evaluate_and_checkpoint()

    def _after_step(self, end_of_epoch: bool) -> bool:
        """Evaluate/checkpoint when due. Returns True when training should stop."""
        t, state = self.cfg.train, self.state
        done = state.global_step >= self.total_steps
        due_eval = (state.global_step % t.eval_steps == 0) if t.eval_steps else end_of_epoch
        if due_eval or done:
            if self._evaluate_and_checkpoint():
                logs.info(f"early stopping: no improvement in eval_{self.metric_name} for "
                          f"{t.early_stopping_patience} evaluations (best {state.best_metric:.4f} at step {state.best_step})")
                return True
        elif t.save_steps and state.global_step % t.save_steps == 0:
            self.save_checkpoint()
        return done

    def _evaluate_and_checkpoint(self) -> bool:
        """Evaluate, track the best, checkpoint. Returns True when patience has run out."""
        t, state = self.cfg.train, self.state
        metrics = self.evaluate(state.global_step)
        state.last_eval = {"step": state.global_step, **metrics}
        self._log("eval", metrics)
        key = f"eval_{self.metric_name}"
        if key not in metrics:
            raise HftoolError(f"train.metric_for_best={self.metric_name}: the evaluation has no {key} "
                              f"(it has {', '.join(k.removeprefix('eval_') for k in metrics)})")
        value = metrics[key]
        better = state.best_metric is None or (value > state.best_metric if self.greater_is_better
                                               else value < state.best_metric)
        if better:
            state.best_metric, state.best_step, state.evals_without_improvement = value, state.global_step, 0
        else:
            state.evals_without_improvement += 1
        self.save_checkpoint()
        return t.early_stopping_patience is not None and state.evals_without_improvement >= t.early_stopping_patience

    def evaluate(self, step: int) -> dict[str, float]:
        """Metrics on the eval data of the model as it is after `step` optimizer steps. The
        gathered per-example outputs of the latest evaluation are kept (self.eval_batches):
        finish() turns the final one into records for the task's report files and, with
        eval.save_predictions, predictions.jsonl. The task's `evaluated` hook then writes what
        shows the model at that step; the last call is always the run's final model."""
        from hftool.evaluation import evaluate_model

        self.eval_batches = []
        metrics = evaluate_model(self.accelerator, self.model, self.eval_loader, self.task, self.parts, self.eval_rows,
                                 batches=self.eval_batches)
        if self.accelerator.is_main_process:
            self.task.evaluated(self.parts, self.accelerator.unwrap_model(self.model), self.run_dir, step)
        return metrics

    # ----------------------------------------------------------------------------- checkpoints
    def save_checkpoint(self) -> Path:
        """Write RUN_DIR/checkpoints/step-N atomically: a temporary folder, then one rename."""
        acc, state = self.accelerator, self.state
        root = self.run_dir / "checkpoints"
        final = root / f"step-{state.global_step:07d}"
        if final.exists():
            return final
        self._check_finite()  # a NaN-poisoned model never becomes a checkpoint
        tmp = root / f".tmp-step-{state.global_step:07d}"
        if acc.is_main_process:
            for stale in root.glob(".tmp-*"):  # left by a killed save
                shutil.rmtree(stale, ignore_errors=True)
            tmp.mkdir(parents=True)
        acc.wait_for_everyone()
        with _without_shared_tensor_notes():
            acc.save_state(str(tmp))
        acc.wait_for_everyone()
        if acc.is_main_process:
            write_json(tmp / STATE_FILE, state.__dict__)
            honour_umask(tmp)
            _fsync_dir(tmp)
            os.replace(tmp, final)
            _fsync_dir(root)
            self._rotate_checkpoints()
            self._drop_replaced()  # the new run can now be resumed: the old one goes
        acc.wait_for_everyone()
        return final

    def _rotate_checkpoints(self) -> None:
        keep_best = self.state.best_step
        checkpoints = list_checkpoints(self.run_dir)
        removable = [c for c in checkpoints if int(CHECKPOINT.match(c.name).group(1)) != keep_best]
        for old in removable[: max(0, len(removable) - self.cfg.train.save_total_limit)]:
            shutil.rmtree(old, ignore_errors=True)

    def _check_resume(self) -> Path | None:
        """The checkpoint --resume continues from (None: none complete yet), after checking that
        this command's data and setup are the run's. Reads only: a refused resume changes nothing."""
        from hftool.config import read_yaml
        from hftool.runs import same_spec

        saved_config = self.run_dir / "config.yaml"
        if saved_config.is_file():
            saved = read_yaml(saved_config).get("data") or {}
            for key in ("train", "eval"):
                wanted = getattr(self.cfg.data, key)
                if not same_spec(saved.get(key), wanted):
                    raise HftoolError(f"--resume: {self.run_dir} was trained with data.{key}={saved.get(key)}, this "
                                      f"command passes {wanted}; resume with the run's data or start a new run")
            if saved.get("streaming") or self.cfg.data.streaming:  # these decide which rows a stream's batches hold
                from hftool.config import DataConfig

                for key in ("streaming", "shuffle_buffer", "max_eval_samples", "max_train_samples"):
                    was, wanted = saved.get(key, getattr(DataConfig, key)), getattr(self.cfg.data, key)
                    if was != wanted:
                        was, wanted = json.dumps(was), json.dumps(wanted)  # as YAML and overrides write them
                        raise HftoolError(f"--resume: {self.run_dir} was trained with data.{key}={was}, this command "
                                          f"passes {wanted}; a stream resumes only with the same settings: pass "
                                          f"data.{key}={was} or start a new run")
        checkpoints = list_checkpoints(self.run_dir)
        if not checkpoints:
            logs.warn(f"--resume: no complete checkpoint in {self.run_dir / 'checkpoints'}; starting from scratch")
            return None
        latest = checkpoints[-1]
        saved_state = TrainerState(**json.loads((latest / STATE_FILE).read_text()))
        current = TrainerState(num_processes=self.accelerator.num_processes,
                               gradient_accumulation_steps=self.cfg.train.gradient_accumulation_steps,
                               batch_size=self.cfg.train.batch_size)
        def setup(state: TrainerState) -> dict:
            if self.cfg.train.micro_batch_size == "auto":  # the split is the checkpoint's (_plan_micro_batch)
                return {"num_processes": state.num_processes,
                        "global batch": state.batch_size * state.gradient_accumulation_steps}
            return {k: getattr(state, k) for k in ("num_processes", "gradient_accumulation_steps", "batch_size")}

        diffs = [f"{k} {was} -> {now}" for (k, was), now in zip(setup(saved_state).items(), setup(current).values())
                 if was != now]
        if diffs:
            raise HftoolError(f"--resume: {latest} was written with a different setup ({'; '.join(diffs)}); "
                              "resume with the original settings or start a new run")
        return latest

    def _load_checkpoint(self, latest: Path) -> None:
        """Load `latest` into the model, optimizer and schedule (in memory only); a run already
        at its last step with its metrics.json is `finished` instead."""
        saved = TrainerState(**json.loads((latest / STATE_FILE).read_text()))
        if saved.global_step >= self.total_steps and (self.run_dir / "metrics.json").is_file():
            self.state, self.finished = saved, True
            return
        try:
            adapters.load_state(self.accelerator, self.models.values(), latest)
        except RuntimeError as err:  # the checkpoint's tensors have other shapes than this run's model
            mismatch = next((line.strip() for line in str(err).splitlines() if "size mismatch" in line),
                            str(err).splitlines()[0])
            raise HftoolError(f"--resume: {latest} does not fit the model this command builds ({mismatch.rstrip('.')}); "
                              "the labels or the model differ from the run's: resume with its data and model, "
                              "or start a new run") from None
        self.state = saved
        logs.info(f"resuming from {latest.name}: step {saved.global_step}, epoch {saved.epoch}, "
                  f"batch {saved.batches_in_epoch} of the epoch")

    # ---------------------------------------------------------------------------------- finish
    def finish(self) -> dict[str, float]:
        """Save the final (or best) model and the run's reports; return metrics.json's content."""
        from hftool import reports

        acc, state, t = self.accelerator, self.state, self.cfg.train
        final_eval = {k: v for k, v in state.last_eval.items() if k != "step"}
        if t.load_best_at_end and state.best_step is not None and state.best_step != state.last_eval.get("step"):
            best = self.run_dir / "checkpoints" / f"step-{state.best_step:07d}"
            adapters.load_state(acc, self.models.values(), best)
            final_eval = self.evaluate(state.best_step)
            logs.info(f"loaded the best checkpoint (step {state.best_step}, eval_{self.metric_name}="
                      f"{state.best_metric:.4f}) as the run's model")
        if getattr(self, "eval_batches", None) is None:
            self.evaluate(state.global_step)  # no evaluation ran in this process (resumed after the last one)
        acc.wait_for_everyone()
        metrics = dict(final_eval)
        if hasattr(self, "last_train_loss"):
            metrics["train_loss"] = self.last_train_loss
        metrics["train_steps"] = state.global_step
        metrics["train_runtime"] = round(getattr(self, "train_runtime", 0.0), 3)
        state_dict = acc.get_state_dict(self.model)  # a collective under FSDP/DeepSpeed: every process calls it
        if acc.is_main_process:
            model = acc.unwrap_model(self.model)
            model = getattr(model, "_orig_mod", model)  # torch.compile wrapper
            if adapters.is_peft(model):
                self.task.save(self.parts, self.run_dir)  # the tokenizer or processor
                adapters.save(model, self.run_dir, state_dict)
            else:
                self.task.save(self.parts, self.run_dir, model=model, state_dict=state_dict)
            honour_umask(self.run_dir)
            write_json(self.run_dir / "metrics.json", metrics)
            self._drop_replaced()
            from hftool.evaluation import eval_order

            records = self.task.prediction_records(self.parts, self.eval_batches, eval_order(self.eval_features),
                                                   self.eval_rows)
            if self.cfg.eval.save_predictions:
                write_jsonl(self.run_dir / "predictions.jsonl", records)
            reports.write_all(self.run_dir, self.cfg, self.task, self.parts, metrics, records, self.sources,
                              self.recipe, self.command, self.mixed_precision, self._parameters())
        acc.end_training()
        return metrics

    # --------------------------------------------------------------------------------- helpers
    def _banner(self) -> None:
        t, acc = self.cfg.train, self.accelerator
        effective = t.batch_size * t.gradient_accumulation_steps * acc.num_processes
        lines = [
            "Running training",
            f"  examples: {'a stream of' if self.streaming else len(self.train_features)} train, {len(self.eval_features)} eval",
            ("  epochs: not counted (data.streaming=true)" if self.streaming else
             f"  epochs: {self.num_epochs} ({self.steps_per_epoch} optimizer steps each)"),
            f"  batch: {t.batch_size} per device x {t.gradient_accumulation_steps} accumulation x "
            f"{acc.num_processes} processes = {effective} effective"
            + (" (train.micro_batch_size=auto)" if t.micro_batch_size == "auto" else ""),
            f"  optimizer steps: {self.total_steps}; best checkpoint by eval_{self.metric_name} "
            f"({'higher' if self.greater_is_better else 'lower'} is better)",
            f"  precision: {'fp32' if self.mixed_precision == 'no' else self.mixed_precision + ' autocast'}"
            + (" (train.mixed_precision=auto)" if t.mixed_precision == "auto" else ""),
        ]
        parameters = self._parameters()
        trainable, total = parameters["trainable"], parameters["total"]
        lines.append(f"  parameters: {trainable:,} trainable of {total:,} ({100 * trainable / max(total, 1):.2f}%)")
        if parameters.get("adapters"):
            lines.append(f"  adapters: {parameters['adapters']}")
        lines.append(f"  run dir: {self.run_dir}")
        logs.info("\n  ".join(lines))

    def _parameters(self) -> dict:
        """Trainable and total parameters of the trained models, and their adapters (banner, card)."""
        models = [self.accelerator.unwrap_model(model) for model in self.models.values()]
        trainable, total = adapters.parameter_counts(models)
        return {"trainable": trainable, "total": total, "adapters": adapters.describe(models[0])}

    def _log(self, kind: str, values: dict) -> None:
        record = {"type": kind, "step": self.state.global_step, **values}
        if self.accelerator.is_main_process:
            with open(self.run_dir / LOG_FILE, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
        # Trackers group by prefix: train/loss, train/lr, ... and eval/loss, eval/accuracy, ...
        scalars = {f"{kind}/{k.removeprefix('eval_')}": v for k, v in values.items() if isinstance(v, (int, float))}
        self.accelerator.log(scalars, step=self.state.global_step)

    def _truncate_log(self, step: int) -> None:
        """Drop log records a killed run wrote after the checkpoint it is resumed from, and a last
        line the kill cut in half."""
        path = self.run_dir / LOG_FILE
        if not path.is_file():
            return
        lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        kept = []
        for number, line in enumerate(lines, 1):
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                if number == len(lines):
                    logs.warn(f"{path}: dropped its half-written last line (the run was killed while writing it)")
                    break
                raise HftoolError(f"{path}:{number}: not valid JSON; delete the line to resume") from None
            if record.get("step", 0) <= step:
                kept.append(line)
        atomic_write_text(path, "".join(line + "\n" for line in kept))


KERNEL_CACHE_VARIABLES = ("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "LRU_CACHE_CAPACITY")
KERNEL_CACHE_CAPACITY = "32"


@contextlib.contextmanager
def bounded_kernel_caches(enabled: bool):
    """Cap the CPU kernel caches of oneDNN (and ideep above it) at 32 entries while training
    on inputs whose shapes change from batch to batch.

    On CPU, oneDNN runs bf16 matmuls and some fp32 ops. It keeps the kernels it builds, one per
    input shape, in two caches of 1024 entries each. Dynamic padding brings new shapes nearly
    every batch, so the caches grow for the whole run. 32 entries hold one step's shapes, and
    rebuilding evicted kernels costs little (figures: benchmarks/README.md). Images keep the
    defaults: a CNN needs more kernels per step than 32, and its shapes do not change.

    The libraries read these variables once, at first use, so the cap holds for the rest of the
    process. Values the user has set win. The variables are removed afterwards, so processes
    started later get the libraries' own defaults.
    """
    ours = [name for name in KERNEL_CACHE_VARIABLES if enabled and name not in os.environ]
    for name in ours:
        os.environ[name] = KERNEL_CACHE_CAPACITY
    try:
        yield
    finally:
        for name in ours:
            os.environ.pop(name, None)


@contextlib.contextmanager
def _without_shared_tensor_notes():
    """Drop Accelerate's "Removed shared tensor ... while saving" warning: tied weights (an LM
    head sharing the embeddings) are saved once and tied again on load, which is expected."""

    def keep(record: logging.LogRecord) -> bool:
        return "Removed shared tensor" not in record.getMessage()

    logger = logging.getLogger("accelerate.utils.other")
    logger.addFilter(keep)
    try:
        yield
    finally:
        logger.removeFilter(keep)


def _batch_examples(batch: dict) -> int:
    value = next(v for v in batch.values() if isinstance(v, torch.Tensor))
    return int(value.shape[0])


def _require(module: str, package: str, what: str) -> None:
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise HftoolError(f"{what} needs the {package} package: pip install {package}")


def _flat_scalars(mapping: dict, prefix: str = "") -> dict:
    """Nested config -> flat scalar dict (trackers such as TensorBoard take only scalars)."""
    flat = {}
    for key, value in mapping.items():
        if isinstance(value, dict) and prefix == "":
            flat.update(_flat_scalars(value, f"{key}."))
        else:
            flat[f"{prefix}{key}"] = value if isinstance(value, (int, float, str, bool)) else str(value)
    return flat


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
