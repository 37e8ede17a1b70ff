"""`hftool eval-suite`: every model x dataset of a suite file scored, with bootstrap intervals,
paired tests against a baseline and gates for CI; results.jsonl, leaderboard.md, report.html.

    from hftool import suite
    outcome = suite.run("suite.yaml", "out/")     # what `hftool eval-suite suite.yaml -o out/` does
    outcome.exit_code                             # 1 when a gate failed

Results are cached under OUT/cache/<key>, the key hashing the model's files, the data's files
and the evaluation settings, so a re-run scores only pairs it has not scored. Each pair keeps its
per-example statistics (hftool.metrics.resampling) and their bootstrap replicates: comparing a new
model with a cached baseline needs no re-evaluation.
"""

from __future__ import annotations

import difflib
import glob
import hashlib
import json
import math
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from hftool import __version__, logs
from hftool.errors import HftoolError
from hftool.runs import trained_labels

KEYS = ("models", "baseline", "datasets", "gates", "overrides", "alpha")
DATASET_KEYS = ("path", "split", "task", "overrides")
GATE = re.compile(r"^\s*(>=|<=|>|<)\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*$")
GATE_FORMS = '">= 0.85", {max_drop: 0.01} or {no_significant_drop: 0.05}'
# Files of a run dir that are its outputs, not part of the model: left out of the model's hash.
RUN_OUTPUTS = {"metrics.json", "provenance.json", "trainer_state.json"}


# ------------------------------------------------------------------------------------ the file
@dataclass
class Model:
    name: str  # as the suite wrote it (a glob's match)
    path: Path  # run dir, checkpoint dir or model dir
    run: Path  # where the config and processor come from: the run of a checkpoint, else `path`
    checkpoint: bool
    step: int | None  # the optimizer step of its weights: a checkpoint's; a run's best (or last) step
    line: int  # in the suite file


@dataclass
class Dataset:
    name: str
    path: str
    split: str | None
    task: str | None
    overrides: list[str]
    line: int


@dataclass
class Gate:
    metric: str
    kind: str  # absolute | max_drop | no_significant_drop
    value: float
    op: str = ""  # absolute gates: >=, >, <=, <
    line: int = 0

    def __str__(self) -> str:
        return f"{self.metric} {self.op} {self.value:g}" if self.kind == "absolute" else \
            f"{self.metric}: {{{self.kind}: {self.value:g}}}"


@dataclass
class Suite:
    path: Path
    models: list[Model]
    baseline: Model | None
    datasets: list[Dataset]
    gates: list[Gate]
    overrides: list[str]
    alpha: float  # significance level of the leaderboard's marks


def parse(path: str | Path) -> Suite:
    """Read and check a suite file; every error names its line."""
    from hftool.config import _Loader, is_override
    from hftool.tasks import TASKS

    path = Path(path)
    if not path.is_file():
        raise HftoolError(f"suite file {path} does not exist; pass a YAML file (see the README's eval-suite section)")
    try:
        loader = _Loader(path.read_text(encoding="utf-8"))
        try:
            root = loader.get_single_node()
            data = loader.construct_document(root) if root is not None else None
        finally:
            loader.dispose()
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise HftoolError(f"{path}{where}: not valid YAML ({getattr(err, 'problem', None) or err}); fix the YAML") from None
    if not isinstance(data, dict):
        raise HftoolError(f"{path}: a suite is a mapping with models: and datasets: (see the README's eval-suite section)")

    def line(node) -> int:
        return node.start_mark.line + 1

    nodes = {key.value: (key, value) for key, value in root.value}
    for key, (key_node, _) in nodes.items():
        if key not in KEYS:
            close = difflib.get_close_matches(str(key), KEYS, n=1)
            hint = f"did you mean '{close[0]}'? " if close else ""
            raise HftoolError(f"{path} line {line(key_node)}: unknown key '{key}'; {hint}the keys are {', '.join(KEYS)}")
    for key in ("models", "datasets"):
        if not data.get(key):
            raise HftoolError(f"{path}: no {key}; a suite needs models: (run dirs, checkpoints, globs) and datasets:")

    models: list[Model] = []
    model_node = nodes["models"][1]
    items = model_node.value if isinstance(model_node, yaml.SequenceNode) else [model_node]
    for item in items:
        if not isinstance(item, yaml.ScalarNode):
            kind = "a list" if isinstance(item, yaml.SequenceNode) else "a mapping"
            raise HftoolError(f"{path} line {line(item)}: a model is a path or glob, got {kind}; "
                              'write models: [runs/a, "runs/b/checkpoints/*"]')
        models += resolve_models(item.value, f"{path} line {line(item)}", line(item))
    baseline = None
    if "baseline" in nodes:
        node = nodes["baseline"][1]
        found = resolve_models(str(data["baseline"]), f"{path} line {line(node)}", line(node))
        if len(found) != 1:
            raise HftoolError(f"{path} line {line(node)}: the baseline must be one model; "
                              f"'{data['baseline']}' matches {len(found)}")
        baseline = next((m for m in models if m.path.resolve() == found[0].path.resolve()), found[0])
        if baseline not in models:
            models.insert(0, baseline)
    unique: dict[Path, Model] = {}
    for model in models:  # a model named twice (a glob and its own line) is scored once
        unique.setdefault(model.path.resolve(), model)
    models = list(unique.values())

    datasets = []
    node = nodes["datasets"][1]
    if not isinstance(data["datasets"], dict):
        raise HftoolError(f"{path} line {line(node)}: datasets: is a mapping of names, e.g. dev: {{path: data/dev.csv}}")
    for (key_node, _), (name, value) in zip(node.value, data["datasets"].items()):
        where = f"{path} line {line(key_node)}"
        if isinstance(value, str):
            value = {"path": value}
        if not isinstance(value, dict) or not value.get("path"):
            raise HftoolError(f"{where}: dataset '{name}' needs a path, e.g. {name}: {{path: data/{name}.csv}}")
        unknown = [k for k in value if k not in DATASET_KEYS]
        if unknown:
            raise HftoolError(f"{where}: dataset '{name}' has unknown key '{unknown[0]}'; "
                              f"its keys are {', '.join(DATASET_KEYS)}")
        task = value.get("task")
        if task is not None and task not in TASKS:
            raise HftoolError(f"{where}: dataset '{name}' declares unknown task '{task}'; known tasks: {', '.join(TASKS)}")
        overrides = _overrides(value.get("overrides"), where, is_override)
        datasets.append(Dataset(str(name), str(value["path"]), value.get("split"), task, overrides, line(key_node)))

    overrides = _overrides(data.get("overrides"), f"{path} line {line(nodes['overrides'][1])}" if "overrides" in nodes
                           else str(path), is_override)
    alpha = data.get("alpha", 0.05)
    if not isinstance(alpha, (int, float)) or not 0 < alpha < 1:
        raise HftoolError(f"{path} line {line(nodes['alpha'][1])}: alpha must be a number between 0 and 1, got {alpha!r}")

    gates = []
    if "gates" in nodes:
        node = nodes["gates"][1]
        if not isinstance(data["gates"], dict):
            raise HftoolError(f"{path} line {line(node)}: gates: is a mapping of metric: rule, e.g. "
                              'eval_accuracy: ">= 0.85"')
        for (_, value_node), (metric, rules) in zip(node.value, data["gates"].items()):
            gates += _gates(str(metric), rules, f"{path} line {line(value_node)}", line(value_node))
    relative = next((g for g in gates if g.kind != "absolute"), None)
    if relative and baseline is None:
        raise HftoolError(f"{path} line {relative.line}: gate {relative} compares with the baseline; "
                          "add baseline: MODEL to the suite")
    return Suite(path, models, baseline, datasets, gates, overrides, float(alpha))


def _overrides(value, where: str, is_override) -> list[str]:
    if value is None:
        return []
    value = [value] if isinstance(value, str) else value
    if not isinstance(value, list) or not all(isinstance(v, str) and is_override(v) for v in value):
        raise HftoolError(f"{where}: overrides are a list of KEY=VALUE, e.g. [data.text_column=review]")
    return list(value)


def _gates(metric: str, value, where: str, line: int) -> list[Gate]:
    """A gate's rules: a string ">= 0.85", a mapping {max_drop: x, no_significant_drop: alpha}, or a list of them."""
    rules = value if isinstance(value, list) else [value]
    out = []
    for rule in rules:
        if isinstance(rule, str) and GATE.match(rule):
            op, number = GATE.match(rule).groups()
            out.append(Gate(metric, "absolute", float(number), op, line))
        elif isinstance(rule, dict) and rule and set(rule) <= {"max_drop", "no_significant_drop"}:
            for kind, number in rule.items():
                if not isinstance(number, (int, float)) or isinstance(number, bool) or number < 0 \
                        or (kind == "no_significant_drop" and not 0 < number < 1):
                    limit = "an alpha between 0 and 1" if kind == "no_significant_drop" else "a number >= 0"
                    raise HftoolError(f"{where}: gate {metric}: {kind} needs {limit}, got {number!r}")
                out.append(Gate(metric, kind, float(number), "", line))
        else:
            raise HftoolError(f"{where}: gate {metric}: {rule!r} is not a gate; write {GATE_FORMS}")
    return out


def resolve_models(spec: str, where: str, line: int = 0) -> list[Model]:
    """A run dir, checkpoint dir, model dir or glob of them (relative to the current directory,
    as data paths in recipes are) -> models; checkpoints in step order."""
    if any(c in spec for c in "*?["):
        matches = sorted(glob.glob(os.path.expanduser(spec)))
        paths = [Path(m) for m in matches if Path(m).is_dir()]
        if not paths:
            raise HftoolError(f"{where}: '{spec}' matches no directory; check the pattern")
        names = [str(p) for p in paths]
    else:
        path = Path(spec).expanduser()
        if not path.is_dir():
            raise HftoolError(f"{where}: {spec} does not exist; name a run dir, a checkpoint (RUN/checkpoints/step-N) "
                              "or a model dir")
        paths, names = [path], [spec]
    models = [_model(path, name, where, line) for path, name in zip(paths, names)]
    return sorted(models, key=lambda m: (str(m.run), m.step or 0)) if len(models) > 1 else models


def _model(path: Path, name: str, where: str, line: int) -> Model:
    if (path / "config.yaml").is_file() or (path / "config.json").is_file():
        return Model(name, path, path, False, _run_step(path), line)
    run = path.parent.parent
    match = re.fullmatch(r"step-(\d+)", path.name)
    if path.parent.name == "checkpoints" and match and (run / "config.yaml").is_file():
        if not checkpoint_weights(path):
            raise HftoolError(f"{where}: {path} holds no model weights (model.safetensors); it is not a complete checkpoint")
        return Model(name, path, run, True, int(match.group(1)), line)
    raise HftoolError(f"{where}: {path} is not a run dir, checkpoint or model dir (no config.yaml or config.json)")


def _run_step(run: Path) -> int | None:
    """The optimizer step a run's own weights are from: its best checkpoint's when training
    loaded it at the end, else the last step (None for a model dir that is not a run)."""
    if not (run / "metrics.json").is_file():
        return None
    step = json.loads((run / "metrics.json").read_text(encoding="utf-8")).get("train_steps")
    states = sorted((run / "checkpoints").glob("step-*/trainer_state.json"))
    from hftool.config import read_yaml

    saved = read_yaml(run / "config.yaml") if (run / "config.yaml").is_file() else {}
    if states and (saved.get("train") or {}).get("load_best_at_end", True):
        best = json.loads(states[-1].read_text(encoding="utf-8")).get("best_step")
        step = best if best is not None else step
    return step


def checkpoint_weights(path: Path) -> Path | None:
    """The model weights of a training checkpoint (Accelerate's save_state names them model.safetensors)."""
    return next((p for p in (path / "model.safetensors", path / "pytorch_model.bin") if p.is_file()), None)


# --------------------------------------------------------------------------------- the plan
@dataclass
class Pair:
    model: Model
    dataset: Dataset
    task: str
    cfg: object  # RunConfig
    key: str = ""
    hashes: dict = field(default_factory=dict)

    @property
    def cache(self) -> str:
        return f"cache/{self.key}"


@dataclass
class Plan:
    suite: Suite
    out: Path
    pairs: list[Pair]
    skipped: list[tuple[Model, Dataset, str]]  # (model, dataset, model's task)
    rows: dict  # dataset name -> (raw rows, source name)


def check_output(out: Path) -> None:
    """A suite's output dir: new, empty, or one this command wrote before (reused with its cache)."""
    if out.exists() and not out.is_dir():
        raise HftoolError(f"output dir {out} is a file; choose another -o")
    if out.is_dir() and any(out.iterdir()) and not (out / "cache").is_dir() and not (out / "results.jsonl").is_file():
        raise HftoolError(f"output dir {out} is not empty and holds no eval-suite results; choose another -o "
                          "(a suite's own output dir is reused, with its cache)")


def plan(suite: Suite, out: Path, cli_overrides: list[str] | None = None) -> Plan:
    """Every pair that applies, its config, data checked against its task, and its cache key:
    all before anything is evaluated."""
    from hftool import api
    from hftool.data import load_eval_split
    from hftool.tasks import get_task

    check_output(out)
    overrides = [*suite.overrides, *(cli_overrides or [])]
    tasks = {}
    for model in suite.models:
        task = api.model_task(str(model.run))
        if task is None:
            raise HftoolError(f"{suite.path} line {model.line}: the task of {model.name} is unknown (no config.yaml, "
                              "no known architecture in config.json); score it through a run dir")
        tasks[model.name] = task
    pairs, skipped, rows, checked = [], [], {}, set()
    for dataset in suite.datasets:
        for model in suite.models:
            task = tasks[model.name]
            if dataset.task and dataset.task != task:
                skipped.append((model, dataset, task))
                continue
            where = f"{suite.path} line {dataset.line}: dataset '{dataset.name}'"
            try:
                cfg = api.run_config(str(model.run), [*overrides, *dataset.overrides])
            except HftoolError as err:
                raise HftoolError(f"{where}: {err}") from None
            if dataset.name not in rows:
                try:
                    rows[dataset.name] = load_eval_split(dataset.path, dataset.split, cfg.data.encoding,
                                                         get_task(task).reading(cfg), cfg.model.token)
                except HftoolError as err:
                    raise HftoolError(f"{where}: {err}") from None
            signature = (dataset.name, task, json.dumps(_data_settings(cfg), sort_keys=True, default=str))
            if signature not in checked:  # columns that fit the task: checked once per task and settings
                data, source = rows[dataset.name]
                try:
                    # The first rows show whether the columns fit; scoring checks every row. With the
                    # run's classes: a test set may hold one class, which training data may not.
                    get_task(task).prepare(cfg, data.select(range(min(len(data), 64))), source,
                                           trained_labels(model.run))
                except HftoolError as err:
                    raise HftoolError(f"{where} does not fit {model.name} ({task}): {err}") from None
                checked.add(signature)
            pairs.append(Pair(model, dataset, task, cfg))
    if not pairs:
        raise HftoolError(f"{suite.path}: no model fits any dataset's task; check the datasets' task: keys")
    _check_gates(suite, pairs)
    model_hashes, data_hashes = {}, {}
    for pair in pairs:
        if pair.model.name not in model_hashes:
            model_hashes[pair.model.name] = model_fingerprint(pair.model)
        if pair.dataset.name not in data_hashes:
            data_hashes[pair.dataset.name] = data_fingerprint(pair.dataset.path)
        model_settings = {k: v for k, v in _asdict(pair.cfg.model).items() if k not in ("name", "token")}
        settings = {"task": pair.task, "split": pair.dataset.split, "data": _data_settings(pair.cfg),
                    "eval": _asdict(pair.cfg.eval), "model": model_settings, "hftool": __version__,
                    "precision": pair.cfg.train.mixed_precision}  # bf16 and fp32 round differently
        config_hash = _sha256(json.dumps(settings, sort_keys=True, default=str).encode())
        pair.hashes = {"model": model_hashes[pair.model.name], "data": data_hashes[pair.dataset.name],
                       "config": config_hash}
        pair.key = _sha256("|".join(pair.hashes.values()).encode())[:20]
    return Plan(suite, out, pairs, skipped, rows)


def _asdict(value) -> dict:
    import dataclasses

    return dataclasses.asdict(value)


def _data_settings(cfg) -> dict:
    """The config a pair's scores depend on besides the model: data.* but where the data comes from."""
    settings = _asdict(cfg.data)
    for key in ("train", "eval", "num_workers"):
        settings.pop(key, None)
    return settings


def _check_gates(suite: Suite, pairs: list[Pair]) -> None:
    """Each gate's metric against the metrics each gated model's run reports (metrics.json); a
    model dir without one is checked once it has been scored."""
    for gate in suite.gates:
        for pair in pairs:
            if pair.model is suite.baseline:
                continue
            names = reported_metrics(pair.model)
            if names and gate.metric not in names:
                raise gate_error(suite, gate, pair, names)


def gate_error(suite: Suite, gate: Gate, pair: Pair, names) -> HftoolError:
    close = difflib.get_close_matches(gate.metric, names, n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    return HftoolError(f"{suite.path} line {gate.line}: gate metric '{gate.metric}' is not one {pair.model.name} "
                       f"({pair.task}) produces{hint}; valid: {', '.join(sorted(names))}")


def reported_metrics(model: Model) -> list[str]:
    path = model.run / "metrics.json"
    if not path.is_file():
        return []
    return [k for k in json.loads(path.read_text(encoding="utf-8")) if k.startswith("eval_")]


def model_fingerprint(model: Model) -> str:
    """sha256 over the files a model is loaded from: config, processor and weights (a checkpoint's
    own weights with its run's config and processor)."""
    files = [p for p in sorted(model.run.iterdir()) if p.is_file() and p.name not in RUN_OUTPUTS
             and p.suffix in (".json", ".safetensors", ".bin", ".model", ".txt")]
    if model.checkpoint:
        files = [p for p in files if p.suffix not in (".safetensors", ".bin")] + [checkpoint_weights(model.path)]
    digest = hashlib.sha256()
    for file in files:
        digest.update(file.name.encode())
        with open(file, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def data_fingerprint(spec: str) -> str:
    """sha256 of a data file or folder; a sample or hub name stands for itself (with hftool's version,
    which fixes the samples)."""
    from hftool.reports import fingerprint

    found = fingerprint(spec).get("sha256")
    return found or _sha256(f"{spec}|{__version__}".encode())


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------------- evaluation
def evaluate(plan_: Plan, batch_size: int | None = None, command: str = "") -> int:
    """Score the pairs not in the cache (every process of a multi-process run takes part; the main
    one writes). Returns how many were scored."""
    import torch

    from hftool.launch import in_distributed_run

    todo = uncached(plan_)
    if in_distributed_run():
        from accelerate import PartialState

        # Every process must have read the cache before the main one writes to it.
        PartialState(cpu=not torch.cuda.is_available()).wait_for_everyone()
    main = logs.is_main_process()
    if main:
        plan_.out.mkdir(parents=True, exist_ok=True)
    loaded = None  # (model name, overrides) -> task, parts, accelerator, network: one model in memory at a time
    for number, pair in enumerate(todo, 1):
        signature = (pair.model.name, json.dumps(_asdict(pair.cfg), sort_keys=True, default=str))
        if loaded is None or loaded[0] != signature:
            loaded = None
            loaded = (signature, *_load(pair))
        _, task, parts, accelerator, network = loaded
        result = _score(pair, plan_, task, parts, accelerator, network, batch_size, command, main)
        if main:
            shown = ", ".join(f"{k} {v:.4f}" for k, v in list(result["metrics"].items())[:3])
            logs.info(f"[{number}/{len(todo)}] {pair.model.name} on {pair.dataset.name} (n={result['n']}): {shown}")
    return len(todo)


def uncached(plan_: Plan) -> list[Pair]:
    """The pairs to score, in plan order: not in the cache, and each key once (identical copies
    of a model share one)."""
    todo: dict[str, Pair] = {}
    for pair in plan_.pairs:
        if pair.key not in todo and not (plan_.out / pair.cache / "result.json").is_file():
            todo[pair.key] = pair
    return list(todo.values())


def _load(pair: Pair):
    from hftool.tasks import get_task
    from hftool.runtime import inference_accelerator

    task = get_task(pair.task)
    parts = task.build(pair.cfg, None, model_path=str(pair.model.run))
    if pair.model.checkpoint:
        weights = checkpoint_weights(pair.model.path)
        if weights.suffix == ".safetensors":
            from safetensors.torch import load_model

            load_model(parts.model, str(weights), strict=True)  # ties shared weights again, as save_state left them
        else:
            import torch

            parts.model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    accelerator = inference_accelerator(pair.cfg.train.mixed_precision)
    return task, parts, accelerator, accelerator.prepare(parts.model)


def _score(pair: Pair, plan_: Plan, task, parts, accelerator, network, batch_size, command: str, main: bool) -> dict:
    from hftool import stats
    from hftool.evaluation import eval_loader, eval_order, evaluate_model

    cfg = pair.cfg
    data, source = plan_.rows[pair.dataset.name]
    try:
        prepared, _ = task.prepare(cfg, data, source, parts.labels)
    except HftoolError as err:
        raise HftoolError(f"{plan_.suite.path} line {pair.dataset.line}: dataset '{pair.dataset.name}' does not fit "
                          f"{pair.model.name}: {err}") from None
    features = task.eval_features(parts, cfg, prepared)
    order = eval_order(features)
    size = batch_size or cfg.train.eval_batch_size or 2 * cfg.train.batch_size
    loader = accelerator.prepare(eval_loader(features, task.collate(parts), size, cfg.data.num_workers))
    collected = task.resampler(parts, prepared) if main else None
    batches = [] if main else None
    metrics = evaluate_model(accelerator, network, loader, task, parts, prepared, batches=batches, stats=collected,
                             order=order)
    records = task.prediction_records(parts, batches, order, prepared) if main else []
    del batches
    if not main:
        return {}
    draws = cfg.eval.bootstrap
    replicates = stats.replicates(collected.compute, len(collected), draws) if draws > 0 and len(collected) else {}
    intervals = {f"eval_{k}": stats.interval(v) for k, v in replicates.items() if f"eval_{k}" in metrics}
    result = {"model": pair.model.name, "path": str(pair.model.path), "checkpoint": pair.model.checkpoint,
              "step": pair.model.step, "dataset": pair.dataset.name, "data": pair.dataset.path,
              "split": pair.dataset.split, "task": pair.task, "n": len(collected), "metrics": metrics,
              "intervals": intervals, "bootstrap": draws, "ids": _sha256(collected.ids.tobytes())[:16],
              "hashes": pair.hashes, "key": pair.key, "command": command, "tables": collected.tables(),
              "hftool": __version__}
    _write_pair(plan_.out / pair.cache, result, collected, replicates, _with_inputs(records, prepared))
    return result


def _with_inputs(records: list[dict], prepared, chunk: int = 256) -> list[dict]:
    """Each record with what the model saw, for the report: its text, words or image path (and
    a detection image's true boxes). Rows are read a chunk at a time: images stored in the data
    would otherwise all be in memory at once."""
    columns = [c for c in ("text", "text_pair", "tokens", "image", "boxes", "classes") if c in prepared.column_names]
    records = sorted(records, key=lambda r: r["index"])
    position = 0
    for start in range(0, len(prepared), chunk):
        rows = prepared.select_columns(columns)[start:start + chunk]
        while position < len(records) and records[position]["index"] < start + chunk:
            record, i = records[position], records[position]["index"] - start
            source = {c: rows[c][i] for c in ("text", "text_pair", "tokens") if c in rows}
            if "image" in rows:
                source["image"] = rows["image"][i].get("path")
            if "boxes" in rows and "classes" in rows:
                source["truth"] = [[c, [round(v, 1) for v in b]] for b, c in zip(rows["boxes"][i], rows["classes"][i])]
            record["input"] = source
            position += 1
    return records


def _write_pair(target: Path, result: dict, collected, replicates: dict, records: list[dict]) -> None:
    """A pair's cache folder, written whole: a temporary folder, then one rename."""
    import numpy as np

    from hftool.outputs import write_jsonl

    tmp = target.with_name(f".tmp-{target.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    collected.save(tmp / "stats.npz")
    np.savez_compressed(tmp / "replicates.npz", **replicates)
    write_jsonl(tmp / "predictions.jsonl", records)
    (tmp / "result.json").write_text(json.dumps(result, indent=1, default=_json_default), encoding="utf-8")
    if target.exists():  # a pair another run scored meanwhile: the same key, the same content
        shutil.rmtree(tmp)
        return
    os.replace(tmp, target)


def _json_default(value):
    import numpy as np

    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


# ------------------------------------------------------------------------------- the outcome
@dataclass
class Outcome:
    rows: list[dict]  # results.jsonl
    failures: list[str]  # one line per failed gate
    checked: int  # gate checks made
    evaluated: int
    cached: int
    skipped: list[str]
    leaderboard: str
    report: Path | None

    @property
    def exit_code(self) -> int:
        return 1 if self.failures else 0


def finish(plan_: Plan, evaluated: int) -> Outcome:
    """Compare with the baseline, check the gates, write results.jsonl, leaderboard.md and report.html."""
    import numpy as np

    from hftool import stats

    suite, out = plan_.suite, plan_.out
    rows, replicates = [], {}
    for pair in plan_.pairs:
        folder = out / pair.cache
        row = json.loads((folder / "result.json").read_text(encoding="utf-8"))
        with np.load(folder / "replicates.npz") as saved:
            replicates[pair.key] = {f"eval_{k}": saved[k] for k in saved.files}
        # The cache is keyed by content: an identical copy of a model reuses its scores under its own name.
        row.update(model=pair.model.name, path=str(pair.model.path), checkpoint=pair.model.checkpoint,
                   step=pair.model.step, dataset=pair.dataset.name, data=pair.dataset.path, split=pair.dataset.split,
                   baseline=pair.model is suite.baseline)
        rows.append(row)
    base_of = {r["dataset"]: (r, p) for r, p in zip(rows, plan_.pairs) if p.model is suite.baseline}
    for row, pair in zip(rows, plan_.pairs):
        base = base_of.get(row["dataset"])
        if base is None or pair.model is suite.baseline:
            continue
        base_row, base_pair = base
        if base_row["ids"] != row["ids"]:
            logs.warn(f"{row['model']} and the baseline scored different examples of {row['dataset']}; "
                      "no paired comparison")
            continue
        row["vs_baseline"] = {}
        for name, value in row["metrics"].items():
            if name in base_row["metrics"] and name in replicates[pair.key] and name in replicates[base_pair.key]:
                c = stats.paired(base_row["metrics"][name], value, replicates[base_pair.key][name],
                                 replicates[pair.key][name])
                row["vs_baseline"][name] = {"diff": c.diff, "low": c.low, "high": c.high, "p": c.p,
                                            "significant": bool(c.significant(suite.alpha))}
    failures, checked = check_gates(suite, plan_.pairs, rows)
    from hftool.outputs import atomic_path, atomic_write_text, write_jsonl

    write_jsonl(out / "results.jsonl", [_public(r) for r in rows])
    board = leaderboard(rows, suite)
    atomic_write_text(out / "leaderboard.md", board)
    from hftool.report_html import suite_report

    report = out / "report.html"
    with atomic_path(report) as path:
        suite_report(out, rows, path, f"hftool eval-suite: {suite.path.name}", _stored_images(plan_))
    skipped = [f"{m.name} ({task}) x {d.name} (task: {d.task})" for m, d, task in plan_.skipped]
    return Outcome(rows, failures, checked, evaluated, len(plan_.pairs) - evaluated, skipped, board, report)


def _stored_images(plan_: Plan):
    """(dataset, index) -> the bytes of an image stored in the data (hub or sample datasets), for
    the report; None where the data names images by path (the records hold the path)."""
    import datasets

    from hftool.data.images import IMAGE_COLUMNS, ImageData

    stored = {}  # dataset -> (rows with undecoded images, column): read one row at a time
    for pair in plan_.pairs:
        data, _ = plan_.rows[pair.dataset.name]
        if not isinstance(pair.cfg.data, ImageData):
            continue
        column = next((c for c in (pair.cfg.data.image_column, *IMAGE_COLUMNS) if c and c in data.column_names), None)
        if column and isinstance(data.features[column], datasets.Image):
            stored[pair.dataset.name] = (data.cast_column(column, datasets.Image(decode=False)), column)

    def image(dataset: str, index: int) -> bytes | None:
        if dataset not in stored or index >= len(stored[dataset][0]):
            return None
        rows, column = stored[dataset]
        return rows[index][column].get("bytes")

    return image


def _public(row: dict) -> dict:
    """A results.jsonl row: every metric, interval and comparison, the sample size, the hashes and the command."""
    keep = ("model", "path", "checkpoint", "step", "dataset", "data", "split", "task", "baseline", "n", "metrics",
            "intervals", "vs_baseline", "bootstrap", "hashes", "key", "command", "hftool")
    return {k: row[k] for k in keep if k in row}


def saved_rows(out: Path) -> list[dict]:
    """A suite output dir's results.jsonl rows, with what the report needs from each pair's cache."""
    path = out / "results.jsonl"
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    for row in rows:
        cached = out / "cache" / row["key"] / "result.json"
        if cached.is_file():
            saved = json.loads(cached.read_text(encoding="utf-8"))
            row.update({k: saved[k] for k in ("tables", "ids") if k in saved})
    return rows


def lower_is_better(metric: str) -> bool:
    from hftool.training import LOWER_IS_BETTER

    return bool(LOWER_IS_BETTER.search(metric))


def check_gates(suite: Suite, pairs: list[Pair], rows: list[dict]) -> tuple[list[str], int]:
    """One line per failed gate (model, dataset, metric, value and rule), and the number of checks."""
    failures, checked = [], 0
    for gate in suite.gates:
        for pair, row in zip(pairs, rows):
            if pair.model is suite.baseline:
                continue
            if gate.metric not in row["metrics"]:
                raise gate_error(suite, gate, pair, list(row["metrics"]))
            checked += 1
            value, lower = row["metrics"][gate.metric], lower_is_better(gate.metric)
            where = f"{row['model']} on {row['dataset']}: {gate.metric}"
            if gate.kind == "absolute":
                passed = {">=": value >= gate.value, ">": value > gate.value, "<=": value <= gate.value,
                          "<": value < gate.value}[gate.op]
                if not passed:
                    failures.append(f"FAIL {where} = {value:.4f}, needs {gate.op} {gate.value:g} (line {gate.line})")
                continue
            comparison = (row.get("vs_baseline") or {}).get(gate.metric)
            if comparison is None:
                failures.append(f"FAIL {where}: no paired comparison with the baseline on {row['dataset']} "
                                f"(line {gate.line})")
                continue
            drop = comparison["diff"] if lower else -comparison["diff"]  # > 0: worse than the baseline
            if gate.kind == "max_drop" and drop > gate.value + 1e-12:
                failures.append(f"FAIL {where} = {value:.4f}, {drop:.4f} worse than the baseline "
                                f"{value - comparison['diff']:.4f} (max_drop {gate.value:g}, line {gate.line})")
            elif gate.kind == "no_significant_drop" and drop > 0 and comparison["p"] < gate.value:
                failures.append(f"FAIL {where} = {value:.4f}, significantly worse than the baseline "
                                f"{value - comparison['diff']:.4f}: {comparison['diff']:+.4f} "
                                f"[{comparison['low']:+.4f}, {comparison['high']:+.4f}], p={comparison['p']:.3g} < "
                                f"{gate.value:g} (line {gate.line})")
    return failures, checked


def headline(rows: list[dict]) -> list[str]:
    """The metrics a leaderboard shows: the task's metric_for_best first, the loss last."""
    from hftool.reports import HEADLINE
    from hftool.tasks import get_task

    present = list(dict.fromkeys(k for r in rows for k in r["metrics"]))
    first = f"eval_{get_task(rows[0]['task']).default_metric}" if rows else ""
    names = [first] + [f"eval_{n}" for n in HEADLINE]
    chosen = [n for n in dict.fromkeys(names) if n in present][:4]
    return chosen + (["eval_loss"] if "eval_loss" in present and "eval_loss" not in chosen else [])


def _cell(row: dict, name: str) -> str:
    value = row["metrics"].get(name)
    if value is None:
        return "-"
    low, high = row.get("intervals", {}).get(name, (math.nan, math.nan))
    return f"{value:.4f} [{low:.4f}, {high:.4f}]" if math.isfinite(low) else f"{value:.4f}"


def leaderboard(rows: list[dict], suite: Suite) -> str:
    """Markdown: per dataset, models best first, each headline metric with its 95% interval, and the
    difference from the baseline with its p-value (* where p < alpha)."""
    lines = [f"# Leaderboard: {suite.path.name}", "",
             f"95% bootstrap intervals; Δ: difference from the baseline on the same examples, paired bootstrap p; "
             f"* significant at alpha {suite.alpha:g}.", ""]
    for dataset in dict.fromkeys(r["dataset"] for r in rows):
        mine = [r for r in rows if r["dataset"] == dataset]
        for task in dict.fromkeys(r["task"] for r in mine):
            group = [r for r in mine if r["task"] == task]
            names = headline(group)
            key = names[0]
            from hftool.report_html import best_first

            group = best_first(group, key)
            lines += [f"## {dataset} ({task}, n={group[0]['n']})", ""]
            compared = names[:2]
            header = ["model", "step", *names, *(f"Δ {n} vs baseline" for n in compared)]
            lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            for row in group:
                deltas = []
                for name in compared:
                    comparison = (row.get("vs_baseline") or {}).get(name)
                    delta = "baseline" if row.get("baseline") else "-"
                    if comparison:
                        mark = " *" if comparison["significant"] else ""
                        delta = f"{comparison['diff']:+.4f} [{comparison['low']:+.4f}, {comparison['high']:+.4f}] " \
                                f"p={comparison['p']:.3g}{mark}"
                    deltas.append(delta)
                step = "" if row.get("step") is None else str(row["step"])
                lines.append("| " + " | ".join([row["model"], step, *(_cell(row, n) for n in names), *deltas]) + " |")
            lines.append("")
    return "\n".join(lines)


def summary(outcome: Outcome, out: Path, ci: bool = False) -> str:
    """What the command prints: the leaderboard (or, with --ci, a few lines), then the gates."""
    lines = [] if ci else [outcome.leaderboard]
    pairs = outcome.evaluated + outcome.cached
    lines.append(f"{pairs} pairs: {outcome.evaluated} evaluated, {outcome.cached} from the cache ({out / 'cache'})")
    if outcome.skipped:
        lines.append(f"skipped {len(outcome.skipped)} pairs for another task: " + "; ".join(outcome.skipped))
    if ci:
        for row in outcome.rows:
            names = headline([row])[:1]
            if names:
                comparison = (row.get("vs_baseline") or {}).get(names[0])
                delta = "" if comparison is None else \
                    f" ({comparison['diff']:+.4f} vs baseline, p={comparison['p']:.3g}{'*' if comparison['significant'] else ''})"
                lines.append(f"  {row['model']} on {row['dataset']}: {names[0]} {_cell(row, names[0])}{delta}")
    if outcome.checked:
        passed = outcome.checked - len(outcome.failures)
        lines.append(f"gates: {passed} of {outcome.checked} checks passed")
    lines += outcome.failures
    lines.append(f"results: {out / 'results.jsonl'}, {out / 'leaderboard.md'}, {outcome.report}")
    return "\n".join(lines)


def run(suite_path: str | Path, out: str | Path, overrides: list[str] | None = None, batch_size: int | None = None,
        command: str = "") -> Outcome:
    """Parse, plan, evaluate what is not cached, compare and gate: `hftool eval-suite` in one call."""
    out = Path(out)
    plan_ = plan(parse(suite_path), out, overrides)
    evaluated = evaluate(plan_, batch_size, command)
    return finish(plan_, evaluated)
