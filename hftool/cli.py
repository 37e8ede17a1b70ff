"""The `hftool` command: parse, build a RunConfig, call hftool.api. Nothing else lives here.

torch and transformers are imported inside the commands, so `hftool --help` stays fast.
"""

from __future__ import annotations

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


def _command_line() -> str:
    """The command as typed, with secret-looking overrides masked (it lands in the model card)."""
    from hftool.config import SECRET_KEY

    words = []
    for word in ["hftool", *sys.argv[1:]]:
        key = word.split("=", 1)[0].rsplit(".", 1)[-1]
        words.append(f"{word.split('=', 1)[0]}=***" if "=" in word and SECRET_KEY.search(key) else word)
    return " ".join(words)


def _split_overrides(words: list[str] | None) -> tuple[list[str], list[str]]:
    from hftool.config import is_override

    words = words or []
    return [w for w in words if not is_override(w)], [w for w in words if is_override(w)]


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
    mixed_precision: Annotated[Optional[str], typer.Option(help="no | bf16 | fp16.")] = None,
    resume: Annotated[bool, typer.Option(help="Continue the run in --output-dir from its latest checkpoint.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing run in --output-dir.")] = False,
    dry_run: Annotated[bool, typer.Option(help="Print the resolved config and exit.")] = False,
) -> None:
    """Fine-tune a model with a recipe; the run dir is a Hugging Face model dir."""
    from hftool.config import load_config, to_yaml

    positional, keyvals = _split_overrides(overrides)
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

    run_dir, metrics = api.finetune(cfg, recipe=recipe, resume=resume, overwrite=overwrite, command=_command_line())
    if int(os.environ.get("RANK", "0")) == 0:
        typer.echo(json.dumps(metrics, indent=2))
        typer.echo(f"run saved to {run_dir}", err=True)


@app.command()
def evaluate(
    model: ModelArg,
    overrides: Overrides = None,
    data: Annotated[Optional[str], typer.Option(help="Data to score (default: the run's validation data).")] = None,
    split: Annotated[Optional[str], typer.Option(help="Split of --data (default: test, else validation).")] = None,
    batch_size: BatchSize = None,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Write the metrics JSON here.")] = None,
) -> None:
    """Score a model on data; print the metrics (and write them with --output)."""
    positional, keyvals = _split_overrides(overrides)
    if positional:
        raise HftoolError(f"unexpected argument '{positional[0]}': overrides are KEY=VALUE")
    from hftool import api

    metrics = api.evaluate(model, data, split, batch_size, keyvals, output)
    if int(os.environ.get("RANK", "0")) == 0:
        typer.echo(json.dumps(metrics, indent=2))


@app.command()
def predict(
    model: ModelArg,
    inputs: Annotated[Optional[list[str]], typer.Argument(help="Inputs (texts; image files or folders), and KEY=VALUE overrides.", show_default=False)] = None,
    file: Annotated[Optional[Path], typer.Option("--file", "-f", help="More inputs: a text file (one per line) or JSONL with a text field.")] = None,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Write one JSON line per input here.")] = None,
    batch_size: BatchSize = 32,
    top_k: Annotated[Optional[int], typer.Option("--top-k", "-k", help="Also give the k best classes with their scores.")] = None,
) -> None:
    """Predict on raw inputs: prints one line per input."""
    from hftool import api

    texts, keyvals = _split_overrides(inputs)
    if file is not None:
        texts += _read_inputs(file)
    predictions = api.predict(model, texts, batch_size or 32, keyvals, top_k)
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        with open(output, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(p, ensure_ascii=False) + "\n" for p in predictions)
    from hftool.api import run_config
    from hftool.tasks import get_task

    task = get_task(run_config(model, keyvals).task)
    for prediction in predictions:
        typer.echo(task.format_prediction(prediction))


def _read_inputs(path: Path) -> list[str]:
    from hftool.data import read_text

    if not path.is_file():
        raise HftoolError(f"input file {path} does not exist")
    lines = [line for line in read_text(path).split("\n") if line.strip()]
    if path.suffix.lower() != ".jsonl":
        return lines
    texts = []
    for number, line in enumerate(lines, 1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise HftoolError(f"{path}:{number}: not valid JSON ({err.msg})") from None
        text = record.get("text") if isinstance(record, dict) else None
        if not isinstance(text, str):
            raise HftoolError(f"{path}:{number}: expected an object with a \"text\" string")
        texts.append(text)
    return texts


@app.command()
def recipes(name: Annotated[Optional[str], typer.Argument(help="Print this recipe's YAML.")] = None) -> None:
    """List the built-in recipes, or print one."""
    from hftool.config import builtin_recipes, find_recipe, read_yaml

    if name:
        typer.echo(find_recipe(name).read_text(encoding="utf-8"), nl=False)
        return
    for recipe, path in builtin_recipes().items():
        mapping = read_yaml(path)
        typer.echo(f"{recipe:<22} {mapping.get('task', ''):<22} {mapping.get('description', '')}")


def main() -> None:
    """Console entry point: HftoolError -> `error: ...` on stderr and exit code 2, no traceback."""
    try:
        app()
    except HftoolError as err:
        if os.environ.get("HFTOOL_DEBUG"):
            raise
        print(f"error: {err}", file=sys.stderr)
        sys.exit(err.exit_code)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
