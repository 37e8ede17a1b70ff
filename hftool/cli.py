"""The `hftool` command: parse, build a RunConfig, call hftool.api. Nothing else lives here.

torch and transformers are imported inside the commands, so `hftool --help` stays fast.
"""

from __future__ import annotations

import functools
import gc
import inspect
import json
import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from hftool.errors import HftoolError

app = typer.Typer(
    name="hftool",
    help="Fine-tune Hugging Face models: one CLI, one Accelerate loop, recipes for common tasks.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

# Options defined once, reused by every command that takes them.
Overrides = Annotated[Optional[list[str]], typer.Argument(
    help="Config overrides KEY=VALUE (e.g. train.warmup_ratio=0.1), anywhere on the line.", show_default=False)]
BatchSize = Annotated[Optional[int], typer.Option("--batch-size", "-b", help="Examples per batch.")]
ModelArg = Annotated[str, typer.Argument(help="A run dir written by `hftool finetune`, or a model dir.")]
NumProcesses = Annotated[Optional[int], typer.Option(
    help="Processes per machine (GPUs, or CPU workers): started through accelerate launch / torchrun.",
    rich_help_panel="Distributed")]
NumMachines = Annotated[int, typer.Option(help="Machines in the job.", rich_help_panel="Distributed")]
MachineRank = Annotated[int, typer.Option(help="This machine's rank (0 on the main one).", rich_help_panel="Distributed")]
MainProcessIp = Annotated[Optional[str], typer.Option(help="Address of machine rank 0.", rich_help_panel="Distributed")]
MainProcessPort = Annotated[int, typer.Option(help="Port on machine rank 0.", rich_help_panel="Distributed")]
OverwriteOutputs = Annotated[bool, typer.Option(
    help="Replace existing files at the output paths (never a model or run dir's own files).")]


def _command_line() -> str:
    """The command as typed, with secret-looking overrides masked (it lands in the model card)."""
    from hftool.config import SECRET_KEY

    words = []
    for word in ["hftool", *sys.argv[1:]]:
        key = word.split("=", 1)[0].rsplit(".", 1)[-1]
        words.append(f"{word.split('=', 1)[0]}=***" if "=" in word and SECRET_KEY.search(key) else word)
    return " ".join(words)


def _task_options(kind: str, check_min: bool = True):
    """Add to a command the options every registered task declares for it (`predict_options` or
    `generate_options`), each once; the command receives them in `**options`, those not given as
    None. `check_min` lets the command line reject values below an option's minimum."""
    declared = _declared(kind)

    def decorate(command):
        signature = inspect.signature(command, eval_str=True)
        fixed = [p for p in signature.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
        added = [inspect.Parameter(option.name, inspect.Parameter.KEYWORD_ONLY, default=None,
                                   annotation=_annotation(option, check_min)) for option in declared.values()]

        @functools.wraps(command)
        def run(**values):
            return command(**values)

        run.__signature__ = signature.replace(parameters=[*fixed, *added])
        run.__annotations__ = {p.name: p.annotation for p in run.__signature__.parameters.values()}
        return run

    return decorate


def _declared(kind: str) -> dict:
    """name -> Option of every option the registered tasks declare for `kind`, each once."""
    from hftool.tasks import TASKS

    declared: dict[str, object] = {}
    for task in TASKS.values():
        for option in getattr(task, kind):
            if declared.setdefault(option.name, option) != option:
                raise RuntimeError(f"two tasks declare --{option.name} differently; share one Option")
    return declared


def _annotation(option, check_min: bool):
    """A declared task option as a Typer option."""
    names = option.flags if option.flags and "/" in option.flags[0] else (
        "--" + option.name.replace("_", "-"), *option.flags)
    kind = list[str] if option.type is list else option.type
    extra = {"min": option.min} if check_min and option.min is not None else {}
    return Annotated[Optional[kind], typer.Option(*names, help=option.help, show_default=False, **extra)]


def _split_overrides(first: str, rest: list[str] | None) -> tuple[str, list[str], list[str]]:
    """Positional words -> (the command's first argument, other arguments, KEY=VALUE overrides).

    Click binds the first positional word to the first argument even when it is an override
    (`hftool finetune train.lr=1e-4 bert-cls`), so the split is redone over all of them.
    """
    from hftool.config import is_override

    words = [first, *(rest or [])]
    positional, keyvals = [w for w in words if not is_override(w)], [w for w in words if is_override(w)]
    if not positional:
        raise HftoolError("missing the first argument (a recipe or model); overrides are KEY=VALUE")
    return positional[0], positional[1:], keyvals


@app.command()
def finetune(
    recipe: Annotated[str, typer.Argument(help="A built-in recipe name (see `hftool recipes`) or a YAML path.")],
    overrides: Overrides = None,
    model: Annotated[Optional[str], typer.Option(help="Model: local dir, hub id or tiny:<arch>.")] = None,
    data: Annotated[Optional[str], typer.Option(help="Training data: file, folder, hub name[:config].")] = None,
    eval_data: Annotated[Optional[str], typer.Option(help="Validation data (default: the source's own).")] = None,
    output_dir: Annotated[Optional[Path], typer.Option("--output-dir", "-o", help="Run dir (default: runs/<recipe>-<time>).")] = None,
    epochs: Annotated[Optional[float], typer.Option(help="Passes over the training data.")] = None,
    max_steps: Annotated[Optional[int], typer.Option(help="Optimizer steps in total (overrides --epochs).")] = None,
    batch_size: BatchSize = None,
    lr: Annotated[Optional[float], typer.Option(help="Peak learning rate.")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Random seed (data order, init, dropout).")] = None,
    mixed_precision: Annotated[Optional[str], typer.Option(help="auto (default: bf16 where the GPU/CPU has it natively, else fp32) | no (fp32) | bf16 | fp16.")] = None,
    resume: Annotated[bool, typer.Option(help="Continue the run in --output-dir from its latest checkpoint.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing run in --output-dir.")] = False,
    dry_run: Annotated[bool, typer.Option(help="Print the resolved config and exit.")] = False,
    validate: Annotated[bool, typer.Option("--validate", help="Check every row first (as `hftool validate`); train only if no errors.")] = False,
    num_processes: NumProcesses = None,
    num_machines: NumMachines = 1,
    machine_rank: MachineRank = 0,
    main_process_ip: MainProcessIp = None,
    main_process_port: MainProcessPort = 29500,
) -> None:
    """Fine-tune a model with a recipe; the run dir is a Hugging Face model dir."""
    from hftool.config import load_config, to_yaml

    recipe, positional, keyvals = _split_overrides(recipe, overrides)
    if positional:
        raise HftoolError(f"unexpected argument '{positional[0]}': overrides are KEY=VALUE (e.g. train.lr=3e-5)")
    flags = {"model.name": model, "data.train": data, "data.eval": eval_data,
             "output_dir": str(output_dir) if output_dir else None, "train.epochs": epochs,
             "train.max_steps": max_steps, "train.batch_size": batch_size, "train.lr": lr, "train.seed": seed,
             "train.mixed_precision": mixed_precision}
    cfg = load_config(recipe, flags, keyvals)
    if dry_run:
        typer.echo(to_yaml(cfg), nl=False)
        return
    from hftool import api
    from hftool.launch import Launch, in_distributed_run, relaunch

    launch = Launch(num_processes, num_machines, machine_rank, main_process_ip, main_process_port)
    if (launch.wanted or in_distributed_run()) and not cfg.output_dir:
        if in_distributed_run():
            raise HftoolError("a multi-process run needs --output-dir, so every process writes to the same run")
        cfg.output_dir = str(api.default_run_dir(recipe))
        relaunch(launch, ["-o", cfg.output_dir])
    if validate and int(os.environ.get("RANK", "0")) == 0:  # before a relaunch: checked once, not per process
        from hftool.validate import refuse_bad_data

        refuse_bad_data(cfg, recipe)
    relaunch(launch)
    run_dir, metrics = api.finetune(cfg, recipe=recipe, resume=resume, overwrite=overwrite, command=_command_line())
    if int(os.environ.get("RANK", "0")) == 0:
        typer.echo(json.dumps(metrics, indent=2))
        typer.echo(f"run saved to {run_dir}", err=True)


@app.command()
def doctor(
    recipe: Annotated[Optional[str], typer.Argument(help="The recipe to check, as for finetune (none: the machine only).")] = None,
    overrides: Overrides = None,
    model: Annotated[Optional[str], typer.Option(help="Model: local dir, hub id or tiny:<arch>.")] = None,
    data: Annotated[Optional[str], typer.Option(help="Training data: file, folder, hub name[:config].")] = None,
    eval_data: Annotated[Optional[str], typer.Option(help="Validation data.")] = None,
    output_dir: Annotated[Optional[Path], typer.Option("--output-dir", "-o", help="Where the run would go (for the disk check).")] = None,
    mixed_precision: Annotated[Optional[str], typer.Option(help="auto | no | bf16 | fp16.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the findings as JSON.")] = False,
) -> None:
    """Check that a run can start here (versions, device, precision, disk, every model and data file offline); exit 1 if not."""
    from hftool import doctor as checks
    from hftool.config import load_config

    if recipe is None:
        found = checks.environment(load_config(flags={"train.mixed_precision": mixed_precision}))
    else:
        recipe, positional, keyvals = _split_overrides(recipe, overrides)
        if positional:
            raise HftoolError(f"unexpected argument '{positional[0]}': overrides are KEY=VALUE")
        flags = {"model.name": model, "data.train": data, "data.eval": eval_data,
                 "output_dir": str(output_dir) if output_dir else None, "train.mixed_precision": mixed_precision}
        found = checks.diagnose(load_config(recipe, flags, keyvals))
    typer.echo(json.dumps(checks.as_json(found), indent=2) if as_json else checks.report(found))
    if any(c.status == "fail" for c in found):
        raise typer.Exit(1)


@app.command()
def validate(
    recipe: Annotated[str, typer.Argument(help="The recipe whose data to check, as for finetune.")],
    overrides: Overrides = None,
    data: Annotated[Optional[str], typer.Option(help="Training data: file, folder, hub name[:config].")] = None,
    eval_data: Annotated[Optional[str], typer.Option(help="Validation data (default: the source's own).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print {errors, warnings, summary} as JSON.")] = False,
    report_dir: Annotated[Optional[Path], typer.Option(help="Also write report.json and summary.png (histograms) here.")] = None,
    overwrite: OverwriteOutputs = False,
) -> None:
    """Check every row of the data as finetune reads it and list every problem (file, row, column, fix); exit 2 on errors."""
    from hftool.config import load_config
    from hftool.validate import validate as check

    recipe, positional, keyvals = _split_overrides(recipe, overrides)
    if positional:
        raise HftoolError(f"unexpected argument '{positional[0]}': overrides are KEY=VALUE")
    report = check(load_config(recipe, {"data.train": data, "data.eval": eval_data}, keyvals), report_dir, overwrite)
    typer.echo(json.dumps(report.as_json(), indent=2, ensure_ascii=False, default=str) if as_json else report.text())
    if report_dir is not None:
        typer.echo(f"report written to {report_dir}", err=True)
    if report.errors:
        raise typer.Exit(2)


@app.command()
def evaluate(
    model: ModelArg,
    overrides: Overrides = None,
    data: Annotated[Optional[str], typer.Option(help="Data to score (default: the run's validation data).")] = None,
    split: Annotated[Optional[str], typer.Option(help="Split of --data (default: test, else validation).")] = None,
    batch_size: BatchSize = None,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Write the metrics JSON here.")] = None,
    overwrite: OverwriteOutputs = False,
    num_processes: NumProcesses = None,
    num_machines: NumMachines = 1,
    machine_rank: MachineRank = 0,
    main_process_ip: MainProcessIp = None,
    main_process_port: MainProcessPort = 29500,
) -> None:
    """Score a model on data; print the metrics (and write them with --output)."""
    model, positional, keyvals = _split_overrides(model, overrides)
    if positional:
        raise HftoolError(f"unexpected argument '{positional[0]}': overrides are KEY=VALUE")
    from hftool import api
    from hftool.launch import Launch, relaunch

    relaunch(Launch(num_processes, num_machines, machine_rank, main_process_ip, main_process_port))

    metrics = api.evaluate(model, data, split, batch_size, keyvals, output, overwrite=overwrite)
    if int(os.environ.get("RANK", "0")) == 0:
        typer.echo(json.dumps(metrics, indent=2))


@app.command()
@_task_options("predict_options", check_min=False)  # the library checks them, with the same message
def predict(
    model: ModelArg,
    inputs: Annotated[Optional[list[str]], typer.Argument(help="Inputs (texts; image files or folders), and KEY=VALUE overrides.", show_default=False)] = None,
    file: Annotated[Optional[Path], typer.Option("--file", "-f", help="More inputs: a text file (one per line) or JSONL with a text field.")] = None,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Write one JSON line per input here.")] = None,
    batch_size: BatchSize = 32,
    overwrite: OverwriteOutputs = False,
    **options,
) -> None:
    """Predict on raw inputs: prints one line per input (or per step, for tasks that forecast)."""
    from hftool import api
    from hftool.api import run_config
    from hftool.data import read_inputs
    from hftool.tasks import get_task

    model, texts, keyvals = _split_overrides(model, inputs)
    if file is not None:
        texts += read_inputs(file)
    from hftool.outputs import check_output, write_jsonl

    task = get_task(run_config(model, keyvals).task)
    if task.writes_output:  # the task writes its own files (a forecast's CSV + PNG)
        options["output"] = output
    elif output is not None:
        check_output(output, overwrite, [model], what="--output")  # before the model loads
    predictions = api.predict(model, texts, batch_size or 32, keyvals, overwrite=overwrite, **options)
    if output is not None and not task.writes_output:
        write_jsonl(output, predictions)
    for prediction in predictions:
        typer.echo(task.format_prediction(prediction))


@app.command()
@_task_options("generate_options")
def generate(
    model: Annotated[str, typer.Argument(help="A model that generates (a language model, an image generator): a run dir, a local model dir or a hub id.")],
    prompt: Annotated[Optional[list[str]], typer.Option("--prompt", "-p", help="A prompt to continue (repeatable).")] = None,
    prompts_file: Annotated[Optional[Path], typer.Option(help="More prompts: one per line, or JSONL with a \"prompt\" field.")] = None,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Write one JSON line per returned sequence here (image generators: the grid of images, and each image beside it).")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Seed for sampling: the same seed gives the same output.")] = None,
    stream: Annotated[Optional[bool], typer.Option("--stream/--no-stream", help="Print text as it is generated (one prompt at a time). Default: only for --chat.", show_default=False)] = None,
    batch_size: BatchSize = 8,
    mixed_precision: Annotated[Optional[str], typer.Option(help="Weights in: auto (bf16 where the GPU/CPU has it natively, else fp32) | no (fp32) | bf16 | fp16 (GPU). Default: the run's train.mixed_precision, else auto.", show_default=False)] = None,
    overwrite: OverwriteOutputs = False,
    **options,
) -> None:
    """Generate with a model whose task generates: language models continue prompts, seq2seq models transform them, image generators (igpt, gan) make images; prints the outputs (and writes them with --output)."""
    from hftool import api
    from hftool.data import read_inputs
    from hftool.outputs import check_output, write_jsonl
    from hftool.tasks import get_task

    if output is not None:
        check_output(output, overwrite, [model], what="--output")  # before the model loads
    prompts = list(prompt or []) + (read_inputs(prompts_file, ("prompt", "text")) if prompts_file else [])
    # Prompts given through a task's options (--chat) come after the plain ones, in the results too.
    asked = [text for option in _declared("generate_options").values() if option.prompts
             for text in options.get(option.name) or []]
    stream = bool(asked) if stream is None else stream
    shown = []  # prompt indices already begun on the terminal
    task = get_task(api.model_task(model) or api.DEFAULT_GENERATE_TASK)
    # A continuation goes on the prompt's line; a new text (a translation, an answer) below its input.
    separator = task.generation_separator

    def heading(index: int) -> str:
        return (prompts + asked)[index] + (separator if index < len(prompts) else "\n")

    def show(index: int, piece: str) -> None:
        if not shown or shown[-1] != index:
            typer.echo(("\n\n" if shown else "") + heading(index), nl=False)
            shown.append(index)
        typer.echo(piece, nl=False)

    if task.writes_output:  # the task writes its own files (images)
        if task.prompts_optional and output is None:
            raise HftoolError("image generators write PNG files: pass --output samples.png (the grid; each image "
                              "beside it as samples-<i>.png)")
        options["output"] = output
    results = api.generate(model, prompts, on_text=show if stream else None, mixed_precision=mixed_precision,
                           seed=seed, batch_size=batch_size or 8, **options)
    if stream:
        typer.echo()
    else:
        if asked:  # answers go below their question, not on its line
            per_prompt = len(results) // max(1, len(prompts) + len(asked))
            typer.echo("\n\n".join(heading(n // per_prompt) + r["generated_text"] for n, r in enumerate(results)))
        else:
            typer.echo(task.format_generation(results))
    if output is not None and not task.writes_output:
        write_jsonl(output, results)


@app.command("eval-suite")
def eval_suite(
    suite: Annotated[Path, typer.Argument(help="Suite file (YAML): models, datasets, an optional baseline and gates.")],
    output_dir: Annotated[Path, typer.Option("--output-dir", "-o", help="Where results.jsonl, leaderboard.md, report.html and the cache go; a re-run reuses it.")],
    overrides: Overrides = None,
    ci: Annotated[bool, typer.Option(help="Print a short summary for CI logs instead of the leaderboard.")] = False,
    batch_size: BatchSize = None,
    num_processes: NumProcesses = None,
    num_machines: NumMachines = 1,
    machine_rank: MachineRank = 0,
    main_process_ip: MainProcessIp = None,
    main_process_port: MainProcessPort = 29500,
    evaluate_only: Annotated[bool, typer.Option(hidden=True, help="Score the uncached pairs and stop (the launched processes).")] = False,
) -> None:
    """Score every model x dataset of a suite with 95% intervals, compare with the baseline, check the gates (exit 1 on a failure)."""
    from hftool import suite as suites
    from hftool.launch import Launch, in_distributed_run, run_workers, strip_flags

    path, positional, keyvals = _split_overrides(str(suite), overrides)
    if positional:
        raise HftoolError(f"unexpected argument '{positional[0]}': overrides are KEY=VALUE (e.g. eval.bootstrap=2000)")
    plan = suites.plan(suites.parse(path), output_dir, keyvals)
    launch = Launch(num_processes, num_machines, machine_rank, main_process_ip, main_process_port)
    todo = len(suites.uncached(plan))
    if evaluate_only or in_distributed_run():
        suites.evaluate(plan, batch_size, _command_line())
        if evaluate_only or int(os.environ.get("RANK", "0")) > 0:
            return
    elif launch.wanted and todo:
        # The processes score; this one then reads their results from the cache, compares and gates.
        code = run_workers(launch, [*strip_flags(sys.argv[1:]), "--evaluate-only"])
        if code or machine_rank > 0:  # machine 0 compares, gates and writes
            sys.exit(code)
    else:
        suites.evaluate(plan, batch_size, _command_line())
    outcome = suites.finish(plan, todo)
    typer.echo(suites.summary(outcome, output_dir, ci))
    if outcome.exit_code:
        raise typer.Exit(outcome.exit_code)


@app.command()
def report(
    runs: Annotated[list[Path], typer.Argument(help="Run dirs to show side by side, or one eval-suite output dir.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="The HTML file to write (one offline file).")],
    overwrite: OverwriteOutputs = False,
) -> None:
    """Write one offline HTML page for a run, runs side by side (metrics, curves, config diff), or a suite's results."""
    from hftool import report_html
    from hftool.outputs import atomic_path, check_output

    check_output(output, overwrite, runs, what="--output")
    with atomic_path(output) as tmp:
        if len(runs) == 1 and (runs[0] / "results.jsonl").is_file():
            from hftool.suite import saved_rows

            report_html.suite_report(runs[0], saved_rows(runs[0]), tmp)
        else:
            report_html.runs_report(runs, tmp)
    typer.echo(f"wrote {output}")


@app.command()
def export(
    model: Annotated[str, typer.Argument(help="A run dir written by `hftool finetune`.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder to write the export into.", show_default=False)],
    fmt: Annotated[str, typer.Option("--format", help="onnx | safetensors (a LoRA run's model with its adapters merged, with --merge).")] = "onnx",
    atol: Annotated[float, typer.Option(help="Largest absolute difference from PyTorch the parity check allows.")] = 1e-4,
    examples: Annotated[int, typer.Option(help="Validation examples of the run the parity check runs on.")] = 16,
    quantize: Annotated[Optional[str], typer.Option(help="dynamic-int8: also write int8 graphs (text and image classifiers), which predict then runs, and report their validation metrics.", show_default=False)] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an earlier export in --output.")] = False,
    batch_size: BatchSize = 8,
    merge: Annotated[bool, typer.Option(help="Fold a LoRA run's adapters into its base (model.peft=lora runs; ONNX merges them anyway).")] = False,
) -> None:
    """Export a run to ONNX (tokenizer/processor beside it) and check it against PyTorch on the run's validation examples: exit 1 if they differ by more than --atol. A LoRA run: --format safetensors --merge writes a plain model dir."""
    from hftool import api

    manifest = api.export(model, output, fmt, overwrite, atol, examples, batch_size or 8, quantize, merge)
    typer.echo(json.dumps({k: manifest[k] for k in ("parity", "quantization", "merged") if k in manifest}, indent=2))
    typer.echo(f"export saved to {output}", err=True)


@app.command()
def cache(
    clear: Annotated[bool, typer.Option("--clear", help="Remove cached tables and features (all, or those --older-than).")] = False,
    older_than: Annotated[float, typer.Option("--older-than", min=0, help="With --clear: only files no run used for this many days.")] = 0,
) -> None:
    """Show (or --clear) hftool's cache of parsed data files and tokenized features."""
    from hftool.data.tables import cache_dir, cache_files, clear_cache
    from hftool.doctor import human_size

    if clear:
        removed, freed = clear_cache(older_than)
        typer.echo(f"removed {removed} files ({human_size(freed)}) from {cache_dir()}")
        return
    files = cache_files()
    tables = sum(1 for f in files if f.suffix == ".json")
    typer.echo(f"{cache_dir()}: {len(files)} files, {human_size(sum(f.stat().st_size for f in files))} "
               f"({tables} data files read); `hftool cache --clear [--older-than DAYS]` removes them")


@app.command()
def recipes(name: Annotated[Optional[str], typer.Argument(help="Print this recipe's YAML.")] = None) -> None:
    """List the built-in recipes, or print one."""
    from hftool.config import builtin_recipes, find_recipe, read_yaml

    if name:
        typer.echo(find_recipe(name).read_text(encoding="utf-8"), nl=False)
        return
    rows = [(recipe, read_yaml(path)) for recipe, path in builtin_recipes().items()]
    name_width = max(len(recipe) for recipe, _ in rows)
    task_width = max(len(str(mapping.get("task", ""))) for _, mapping in rows)
    for recipe, mapping in rows:
        typer.echo(f"{recipe:<{name_width}}  {mapping.get('task', ''):<{task_width}}  {mapping.get('description', '')}")


def main() -> None:
    """Console entry point. Every error a user can cause is one line on stderr, `error: ...`, with
    exit code 2: HftoolError, usage errors (Typer's multi-line box otherwise) and OS errors (a
    full disk, a path under a file). Interrupts exit with 128 + the signal. HFTOOL_DEBUG=1 keeps
    tracebacks."""
    import hftool

    hftool._cli_process = True
    debug = bool(os.environ.get("HFTOOL_DEBUG"))
    try:
        code = app(standalone_mode=False)  # click raises instead of printing its box and exiting
        if code == 130:  # Typer turns Ctrl-C outside our handlers into Exit(130)
            print("interrupted", file=sys.stderr)
        if isinstance(code, int) and code:
            sys.exit(code)
    except typer.TyperException as err:  # click's usage errors (Typer vendors click)
        if type(err).__name__ == "NoArgsIsHelpError":  # `hftool` alone: the help, as before
            err.show()
            sys.exit(2)
        if debug:
            raise
        ctx = getattr(err, "ctx", None)
        hint = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
        print(f"error: {' '.join(err.format_message().split())}{hint}", file=sys.stderr)  # one line
        sys.exit(2)
    except typer.Abort:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except HftoolError as err:
        if debug:
            raise
        if not (getattr(err, "collective", False) and int(os.environ.get("RANK", "0")) > 0):
            print(f"error: {err}", file=sys.stderr)  # a stop every process makes together: said once
        sys.exit(err.exit_code)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as err:
        if debug:
            raise
        if _lost_a_peer(err):
            # The process that failed printed its own error; this one only lost its connection to it.
            print(f"error: process {os.environ.get('RANK')} stopped because another process of the run failed "
                  "(its error is above)", file=sys.stderr)
            sys.exit(1)
        if isinstance(err, OSError) and not isinstance(err, ConnectionError):
            # A disk that fills up, a folder that cannot be written: the system's words, one line.
            where = f" {err.filename}" if err.filename else ""
            print(f"error: cannot use{where}: {err.strerror or err}", file=sys.stderr)
            sys.exit(2)
        raise
    finally:
        # Exit's final collections would walk every object torch and transformers made, for
        # nothing: the process is ending.
        gc.freeze()


def _lost_a_peer(err: Exception) -> bool:
    """Whether `err` is a collective failing because another process of a multi-process run died."""
    if int(os.environ.get("WORLD_SIZE", "1")) < 2 or "torch" not in sys.modules:
        return False
    import torch.distributed as dist

    text = str(err).lower()
    return isinstance(err, (dist.DistError, RuntimeError)) and any(
        sign in text for sign in ("closed by peer", "reset by peer", "broken pipe", "remote worker", "connection refused"))
