"""The library behind the CLI: everything `hftool` does is one call here.

    from hftool import api
    from hftool.config import load_config

    run_dir, metrics = api.finetune(load_config("bert-cls", overrides=["train.max_steps=20"]))
    api.evaluate(run_dir)                        # re-scores the run's own validation data
    api.predict(run_dir, ["a wonderful film"])   # [{'text': ..., 'label': ..., 'score': ...}]
    api.generate("runs/gpt2", ["Once upon a time"])  # [{'prompt': ..., 'generated_text': ...}]
    api.export("runs/bert-cls", "exports/bert-cls")  # ONNX + parity check; predict/evaluate then run it
    api.export("runs/lora", "merged", "safetensors", merge=True)  # adapters merged: a plain model dir
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

from hftool import logs
from hftool.config import RunConfig, from_dict, load_config, read_yaml
from hftool.errors import HftoolError

# The task of a model `hftool generate` gets with no config.yaml or config.json to tell (a hub id):
# a language model is what generate is most often for.
DEFAULT_GENERATE_TASK = "causal-lm"


def default_run_dir(recipe: str) -> Path:
    """runs/<recipe>-<YYYYmmdd-HHMMSS> for a run given no --output-dir."""
    return Path("runs") / f"{Path(recipe).stem or 'run'}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"


def prepare_run_dir(cfg: RunConfig, recipe: str, resume: bool = False, overwrite: bool = False) -> Path:
    """The run's directory, checked before anything expensive runs; nothing is lost by default.

    Nothing is written or deleted here: a run being replaced (--overwrite) is moved aside by the
    Trainer only once the new run's data, model and config have loaded (runs.move_aside).
    """
    from hftool.outputs import check_folder
    from hftool.runs import MARKER, is_run

    if resume and overwrite:
        raise HftoolError("--resume and --overwrite contradict each other: --resume continues the run in "
                          "--output-dir, --overwrite replaces it; pass one")
    if cfg.output_dir:
        run_dir = Path(cfg.output_dir).expanduser()
    else:
        if resume:
            raise HftoolError("--resume needs --output-dir: the run directory to continue")
        run_dir = default_run_dir(recipe)
    if not logs.is_main_process():
        return run_dir  # the main process checks and prepares it; the others would race it
    if run_dir.exists() and not run_dir.is_dir():
        raise HftoolError(f"output dir {run_dir} is a file; choose another --output-dir")
    check_folder(run_dir, f"output dir {run_dir}")
    if run_dir.is_dir() and any(run_dir.iterdir()):
        if not is_run(run_dir):
            what = "continue" if resume else "replace" if overwrite else None
            if what:
                raise HftoolError(f"output dir {run_dir} is not an hftool run (no {MARKER}); refusing to {what} it "
                                  f"with --{'resume' if resume else 'overwrite'}: choose another --output-dir")
        if resume or overwrite:
            return run_dir
        raise HftoolError(f"output dir {run_dir} already exists and is not empty; pass --overwrite to replace it, "
                          "--resume to continue it, or choose another --output-dir")
    if resume:
        logs.warn(f"--resume: {run_dir} holds no run; starting from scratch")
    return run_dir


def finetune(cfg: RunConfig, recipe: str = "", resume: bool = False, overwrite: bool = False,
             command: str = "") -> tuple[Path, dict[str, float]]:
    """Train, evaluate and save a run. Returns (run_dir, metrics as in metrics.json).

    With `resume` on a run that already reached its last step, nothing runs and nothing in the
    run dir changes: the metrics are its metrics.json.
    """
    from hftool.training import Trainer

    if (Path(cfg.model.name).expanduser() / "export.json").is_file():
        raise HftoolError(f"{cfg.model.name} is an ONNX export (hftool export): it predicts and evaluates, but trains from "
                          "the run dir it was exported from (its export.json names it)")
    run_dir = prepare_run_dir(cfg, recipe or cfg.task, resume, overwrite)
    trainer = Trainer(cfg, run_dir, recipe=recipe, resume=resume, command=command,
                      replace=overwrite and run_dir.is_dir() and any(run_dir.iterdir()))
    try:
        trainer.setup()
        if trainer.finished:
            logs.info(f"--resume: {run_dir} already finished (step {trainer.state.global_step} of "
                      f"{trainer.total_steps}); nothing changed. Pass a larger --max-steps or --epochs to train on")
            return run_dir, json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
        trainer.train()
        metrics = trainer.finish()
    except BaseException:
        trainer.abandon()
        raise
    return run_dir, metrics


def run_config(model: str, overrides: list[str] | None = None, task: str | None = None) -> RunConfig:
    """The config a saved model was trained with (run dirs), or one inferred from config.json
    (else `task`, for a hub id), with `overrides` applied. An override of `task` keeps the keys
    the new task has."""
    from hftool.config import parse_override

    path = Path(model).expanduser()
    saved = path / "config.yaml"
    if saved.is_file():
        mapping = read_yaml(saved)
        if (mapping.get("model") or {}).get("token") == "***":
            mapping["model"]["token"] = None
    else:
        task = model_task(model) or task  # None for a hub id: the task must come from an override
        mapping = {"task": task} if task else {}
    for text in overrides or []:
        key, value = parse_override(text)
        if key == "task":
            mapping = {**mapping, "task": value}
    cfg = from_dict(mapping, str(saved))
    cfg.model.name = model
    if overrides:
        cfg = load_config(from_config_dict(cfg), overrides=overrides)
        cfg.model.name = model
    return cfg


def model_task(model: str) -> str | None:
    """The task of a local run dir (its config.yaml) or model dir (config.json's architectures); None if unknown."""
    path = Path(model).expanduser()
    if (path / "config.yaml").is_file():
        return read_yaml(path / "config.yaml").get("task")
    if not (path / "config.json").is_file():
        return None
    from hftool.models import read_config_json
    from hftool.tasks import task_of_architectures

    return task_of_architectures(read_config_json(path).get("architectures") or [])


def from_config_dict(cfg: RunConfig) -> dict:
    from hftool.config import to_dict

    return to_dict(cfg, redact=False)


def _build(task, cfg: RunConfig, model: str):
    """The task's parts for a saved model, its label maps checked against the run's marker."""
    from hftool.runs import check_labels

    parts = task.build(cfg, None, model_path=model)
    check_labels(model, parts.labels)
    return parts


def evaluate(model: str, data: str | None = None, split: str | None = None, batch_size: int | None = None,
             overrides: list[str] | None = None, output: str | Path | None = None,
             overwrite: bool = False) -> dict[str, float]:
    """Score a run dir or model dir on data. With no `data`, a run dir's own validation data, read
    from the absolute paths its config.yaml records and checked against its provenance.json.

    Args:
        output: Write the metrics JSON here (and, with eval.save_predictions, the predictions to
            OUTPUT's stem + .predictions.jsonl). An existing file is replaced only with
            `overwrite`, and never a file of the model dir or the data file.

    Returns:
        Flat metrics with the keys of the run's metrics.json (eval_loss, eval_accuracy, ...).
    """
    from hftool.data import load_eval_split, load_splits
    from hftool.evaluation import eval_loader, eval_order, evaluate_model
    from hftool.runtime import inference_accelerator

    cfg = run_config(model, overrides)
    if not Path(model).expanduser().is_dir():
        raise HftoolError(f"{model} is not a model or run directory; pass the folder a run wrote (runs/...)")
    asked = any(o.split("=", 1)[0].strip() == "eval.save_predictions" for o in overrides or ())  # not the run's own
    if cfg.eval.save_predictions and not output and asked:
        raise HftoolError("eval.save_predictions=true needs --output FILE.json: the predictions go to FILE.predictions.jsonl")
    keep = cfg.eval.save_predictions and output
    if output:  # before anything loads: a refused output costs nothing
        from hftool.outputs import check_output

        check_output(output, overwrite, [model, data])
        if keep:
            check_output(predictions_path(Path(output)), overwrite, [model, data])
    from hftool.tasks import get_task

    task = get_task(cfg.task)
    if data:
        rows, source = load_eval_split(data, split, cfg.data.encoding, task.reading(cfg), cfg.model.token)
    else:
        if not (Path(model) / "config.yaml").is_file():
            raise HftoolError(f"{model} is not an hftool run dir, so it has no data of its own; pass --data")
        check_run_data(Path(model), cfg)
        if cfg.data.streaming:  # the run's bounded validation rows, without reading its stream
            from hftool.data.streaming import load_validation

            rows, source = load_validation(cfg, task, cfg.model.token)
        else:
            splits, names = load_splits(cfg.data, task.reading(cfg), cfg.train.seed, cfg.model.token)
            rows, source = splits["validation"], names["validation"]
    parts = _build(task, cfg, model)
    rows, _ = task.prepare(cfg, rows, source, parts.labels)
    features = task.eval_features(parts, cfg, rows)
    accelerator = inference_accelerator(cfg.train.mixed_precision)  # train.mixed_precision=no: fp32
    size = batch_size or cfg.train.eval_batch_size or 2 * cfg.train.batch_size
    loader = accelerator.prepare(eval_loader(features, task.collate(parts), size, cfg.data.num_workers))
    # No DDP wrapper: evaluation needs none, and DDP refuses a model with nothing trainable (an adapter run's).
    network = accelerator.prepare_model(parts.model, evaluation_mode=True)
    keep = cfg.eval.save_predictions and output
    batches = [] if keep else None
    metrics = evaluate_model(accelerator, network, loader, task, parts, rows, batches=batches)
    if output and accelerator.is_main_process:
        from hftool.outputs import write_json, write_jsonl

        out = Path(output)
        write_json(out, metrics)
        if keep:
            records = task.prediction_records(parts, batches, eval_order(features), rows)
            target = predictions_path(out)
            write_jsonl(target, records)
            logs.info(f"wrote {len(records)} predictions to {target}")
    return metrics


def check_run_data(run_dir: Path, cfg: RunConfig) -> None:
    """Before `evaluate RUN` scores the run's own data: its paths must be absolute (config.yaml
    records them so; they are never read relative to the working directory), and the data must
    still be what provenance.json fingerprinted at training time. Changed data is a warning with
    both hashes, an error with eval.strict=true."""
    from hftool.reports import fingerprint

    for key in ("train", "eval"):
        spec = getattr(cfg.data, key)
        if spec and ":" not in spec.split("/", 1)[0] and not Path(spec).expanduser().is_absolute():
            raise HftoolError(f"{run_dir / 'config.yaml'} records data.{key}={spec} relative to the folder training ran "
                              f"in (an older hftool wrote it); pass --data, or set data.{key} to an absolute path")
    try:
        recorded = json.loads((run_dir / "provenance.json").read_text(encoding="utf-8"))["data"]["validation"]["sha256"]
    except (OSError, ValueError, KeyError, TypeError):  # no provenance (a run still training), or no hash (hub data)
        return
    spec = cfg.data.eval or cfg.data.train
    now = fingerprint(spec).get("sha256")
    if now is None or now == recorded:
        return
    message = (f"{spec} changed since {run_dir} was trained: its sha256 is {now}, provenance.json records {recorded}")
    if cfg.eval.strict:
        raise HftoolError(f"{message} (eval.strict=true); pass the original data, or --data to score this data")
    logs.warn(f"{message}; scoring it anyway (eval.strict=true makes this an error)")


def predictions_path(output: Path) -> Path:
    """Where `hftool evaluate -o OUT eval.save_predictions=true` writes: OUT's stem + .predictions.jsonl."""
    return output.with_name(output.stem + ".predictions.jsonl")


def predict(model: str, inputs: list[str], batch_size: int = 32, overrides: list[str] | None = None,
            overwrite: bool = False, **options) -> list[dict]:
    """Predictions for raw inputs, one dict per input, in input order.

    Args:
        options: The task's own predict options (its `predict_options`: `top_k` for classifiers,
            `threshold` and `draw` for detection, `horizon` and `output` for forecasting, which
            needs no inputs, `attention_map` for captioning). None: not given.
        overwrite: The files the options name may replace existing files (never the model dir's).
    """
    from hftool.tasks import get_task

    cfg = run_config(model, overrides)
    task = get_task(cfg.task)
    if not inputs and not task.inputs_optional:
        raise HftoolError("nothing to predict: pass inputs as arguments or --file")
    options = {k: str(v) if isinstance(v, Path) else v for k, v in options.items() if v is not None}
    accepted = {option.name for option in task.predict_options} | ({"output"} if task.writes_output else set())
    for name in options:
        if name not in accepted:
            raise HftoolError(f"--{name.replace('_', '-')} is not supported for {cfg.task} models; leave it out")
    threshold = options.get("threshold")
    if threshold is not None and not 0 <= threshold <= 1:
        raise HftoolError(f"--threshold must be in [0, 1], got {threshold}")
    for option in task.predict_options:  # the CLI checks these too; library callers get the same message
        value = options.get(option.name)
        if option.min is not None and value is not None and value < option.min:
            raise HftoolError(f"--{option.name.replace('_', '-')} must be at least {option.min:g}, got {value}")
    from hftool import outputs

    with outputs.policy(overwrite, protected=[model]):
        for name in ("output", "attention_map"):  # before the model loads; tasks check derived names
            if name in options:
                outputs.check_output(options[name], what=f"--{name.replace('_', '-')}")
        if "draw" in options:
            outputs.check_folder(options["draw"], f"--draw folder {options['draw']}")
        parts = _build(task, cfg, model)
        from hftool.runtime import inference_accelerator

        parts.model = inference_accelerator(cfg.train.mixed_precision).prepare(parts.model)  # on the device
        return task.predict(parts, cfg, list(inputs), batch_size, **options)


def export(model: str | Path, output: str | Path, fmt: str = "onnx", overwrite: bool = False, atol: float = 1e-4,
           examples: int = 16, batch_size: int = 8, quantize: str | None = None, merge: bool = False) -> dict:
    """Export a run dir to ONNX and check it against the run on its validation examples, or (fmt
    "safetensors", merge) a LoRA run as a plain model dir with its adapters merged; see
    hftool.export.export. Returns the export's manifest (export.json for ONNX)."""
    from hftool.export import export as export_run

    return export_run(model, output, fmt, overwrite, atol, examples, batch_size, quantize, merge)


def generate(model: str, prompts: list[str], options=None, on_text=None, mixed_precision: str | None = None,
             **flags) -> list[dict]:
    """Continue prompts with a causal LM, transform them with a seq2seq model (a run's
    data.source_prefix goes before each), or make images with an image generator (igpt, gan: no
    prompts): a run dir, a local model dir or a hub id.

    Args:
        options: hftool.generation.GenerationOptions; None keeps the model's generation_config
            (or takes `flags`, the `hftool generate` flags of the model's task, e.g.
            `chat=["What is 3 plus 4?"]` for a chat model: answered after the prompts).
        on_text: Streaming callback, see hftool.generation.generate.
        mixed_precision: auto | no | bf16 | fp16: the dtype the weights are cast to for
            generation (see hftool.runtime.inference_dtype). None: the run's
            train.mixed_precision (auto for a model dir that is not a run).
        flags: The task's generate_options (`num_images`, `label`, ... for image generators;
            `output` for tasks that write files), seed and batch_size. None: not given.

    Returns:
        Text: one {"prompt", "generated_text"} per returned sequence, in prompt order. Images:
        one dict per image (see the task's generate).
    """
    import torch

    from hftool.tasks import get_task

    if mixed_precision == "fp16" and not torch.cuda.is_available():  # a run trained in fp16 falls back to fp32 here
        raise HftoolError("--mixed-precision fp16 needs a CUDA GPU; use bf16 (or no) on this machine")
    name = model_task(model) or DEFAULT_GENERATE_TASK
    task = get_task(name)
    if not task.generate_options:
        raise HftoolError(f"{model} is a {name} model; `hftool generate` needs a model that generates: a causal "
                          "language model (a gpt2 run, or any ...ForCausalLM/LMHeadModel), a seq2seq one, or an "
                          "image generator (igpt, gan)")
    accepted = {option.name for option in task.generate_options} | {"seed", "batch_size"} | (
        {"output"} if task.writes_output else set())
    for key, value in flags.items():  # the CLI passes every task's flags; those not given are None
        if value is not None and key not in accepted:
            raise HftoolError(f"--{key.replace('_', '-')} is not supported for {name} models; leave it out")
    flags = {k: v for k, v in flags.items() if k in accepted}
    others = [option for option in task.generate_options if option.prompts]  # --chat
    if not prompts and not task.prompts_optional and not any(flags.get(option.name) for option in others):
        ways = ["--prompt TEXT (repeatable)", "--prompts-file FILE", *(f"--{o.name.replace('_', '-')} TEXT" for o in others)]
        raise HftoolError(f"nothing to generate: pass {', '.join(ways[:-1])} or {ways[-1]}")
    cfg = run_config(model, None if mixed_precision is None else [f"train.mixed_precision={mixed_precision}"], task=name)
    parts = _build(task, cfg, model)
    from hftool.export import OnnxModel
    from hftool.models import cast_for_inference
    from hftool.runtime import inference_dtype

    if isinstance(parts.model, OnnxModel):
        logs.info("generating with onnxruntime (the export's fp32 graphs)")
        return task.generate(parts, cfg, prompts, on_text, options=options, **flags)
    device, dtype = "cuda" if torch.cuda.is_available() else "cpu", inference_dtype(cfg.train.mixed_precision)
    cast_for_inference(parts.model, dtype, device)
    precision = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]
    logs.info(f"generating in {precision} on {device} (train.mixed_precision={cfg.train.mixed_precision}"
              f"{'' if dtype == torch.float32 else '; --mixed-precision no: fp32'})")
    return task.generate(parts, cfg, prompts, on_text, options=options, **flags)
