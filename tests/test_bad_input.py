"""The catalogue of bad input: every case is one line on stderr (`error: ...`) matching a pattern,
exit code 2, no traceback, and whatever existed before (a run, a data file, an output) is
byte-identical after. One tiny run per task family is trained once for the module (on shrunken
embedded samples), and only when a selected case needs it.

Cases are functions `(runs, tmp) -> (argv, paths that must not change)`, registered with the
pattern their error must match. Behaviours that are not errors (a finished run resumed, a torn
log line, --overwrite replacing a run, UTF-16 data) have their own tests below the table.
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import REPO, sentiment_rows

# ------------------------------------------------------------------------------ tiny runs
# A few rows per embedded sample: every family trains 2 steps and evaluates in seconds.
SMALL_SAMPLES = {"sentiment": {"train": (40, 0), "validation": (12, 1), "test": (12, 2)},
                 "ner": {"train": (40, 0), "validation": (10, 1), "test": (10, 2)},
                 "tales": {"train": (30, 0), "validation": (6, 1), "test": (6, 2)},
                 "shapes": {"train": (24, 0), "validation": (8, 1), "test": (8, 2)},
                 "boxes": {"train": (8, 0), "validation": (4, 1), "test": (4, 2)},
                 "captions": {"train": (16, 10), "validation": (4, 11), "test": (4, 12)},
                 "translation": {"train": (30, 0), "validation": (6, 1), "test": (6, 2)}}
COMMON = ["train.max_steps=2", "train.batch_size=4", "train.logging_steps=1", "data.num_workers=0"]
FAMILIES = {
    "text": ("bert-cls", ["data.train={data}/train.csv", "data.eval={data}/val.csv"]),
    "ner": ("bert-ner", []),
    "causal": ("gpt2", ["data.block_size=32", "model.config_overrides={n_layer: 2, n_embd: 32, n_head: 2}"]),
    "image": ("vit-cls", ["model.config_overrides={num_hidden_layers: 1}"]),
    "detection": ("detr", ["data.image_size=64"]),
    "caption": ("caption", ["data.image_size=32", "model.config_overrides={encoder: {patch_size: 8}}",
                            "data.max_length=12"]),
    "seq2seq": ("seq2seq", ["model.config_overrides={d_model: 32, encoder_ffn_dim: 64, decoder_ffn_dim: 64, "
                            "encoder_attention_heads: 2, decoder_attention_heads: 2}"]),
    "forecast": ("lstm-forecast", ["data.context_length=8", "model.config_overrides={hidden_size: 8}"]),
    "video": ("video-cls", ["data.train={videos}", "data.image_size=16", "data.num_frames=4",
                            "model.config_overrides={num_hidden_layers: 1}"]),
}


def write_csv(path: Path, rows: list[dict] | list[list], header: list[str] | None = None) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        if header:
            writer.writerow(header)
        writer.writerows([[r["text"], r["label"]] for r in rows] if rows and isinstance(rows[0], dict) else rows)
    return path


class Runs:
    """One finished run per family, trained on first use; `copy` gives a case its own to break."""

    def __init__(self, root: Path):
        self.root, self.built = root, {}
        self.data = root / "data"
        self.data.mkdir()
        write_csv(self.data / "train.csv", sentiment_rows(40, 10), ["text", "label"])
        write_csv(self.data / "val.csv", sentiment_rows(12, 11), ["text", "label"])

    def __call__(self, family: str) -> Path:
        if family not in self.built:
            from hftool import api
            from hftool.config import load_config

            recipe, extra = FAMILIES[family]
            out = self.root / family
            overrides = [o.replace("{data}", str(self.data)).replace("{videos}", str(self.videos)) for o in extra]
            overrides += COMMON + [f"output_dir={out}"]
            try:
                api.finetune(load_config(recipe, overrides=overrides), recipe=recipe)
            except BaseException:
                shutil.rmtree(out, ignore_errors=True)  # the next case that needs it fails the same way
                raise
            self.built[family] = out
        return self.built[family]

    @property
    def videos(self) -> Path:
        """Class folders of tiny clips (a bar sliding left or right), written on first use."""
        folder = self.root / "videos"
        if not folder.is_dir():
            from tests.test_video import write_class_folders

            write_class_folders(folder, 4)
        return folder

    def copy(self, family: str, tmp: Path) -> Path:
        return Path(shutil.copytree(self(family), tmp / f"{family}-run"))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    import importlib

    with pytest.MonkeyPatch.context() as patch:
        for name, sizes in SMALL_SAMPLES.items():
            patch.setattr(importlib.import_module(f"hftool.samples.{name}"), "SIZES", sizes)
        yield Runs(tmp_path_factory.mktemp("families"))


def tree(path: Path) -> dict[str, str]:
    """sha256 of every file under `path` (or of `path`), keyed by relative name: any added,
    removed or changed file shows."""
    path = Path(path)
    if path.is_file():
        return {path.name: hashlib.sha256(path.read_bytes()).hexdigest()}
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(path.rglob("*"))}


# ------------------------------------------------------------------------------ the table
Case = Callable[["Runs", Path], tuple[list, list]]
CASES: dict[str, tuple[Case, str]] = {}


def case(pattern: str):
    def register(fn: Case) -> Case:
        CASES[fn.__name__] = (fn, pattern)
        return fn

    return register


def text(tmp: Path, name: str, content: str, encoding: str = "utf-8") -> Path:
    path = tmp / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content, encoding=encoding)
    return path


def existing(tmp: Path, name: str = "out.json") -> Path:
    return text(tmp, name, "the user's file\n")


# --- usage errors: one line, not Typer's box (defect: generate's usage errors were boxes)
@case(r"Missing argument 'model'")
def generate_without_model(runs, tmp):
    return ["generate"], []


@case(r"Invalid value for '--max-new-tokens'")
def generate_zero_new_tokens(runs, tmp):
    return ["generate", tmp, "-p", "x", "--max-new-tokens", "0"], []


@case(r"No such option: --bogus")
def finetune_unknown_option(runs, tmp):
    return ["finetune", "bert-cls", "--bogus", "--dry-run"], []


@case(r"Invalid value for '--epochs'")
def finetune_epochs_not_a_number(runs, tmp):
    return ["finetune", "bert-cls", "--epochs", "many", "--dry-run"], []


@case(r"Missing argument 'model'")
def predict_without_model(runs, tmp):
    return ["predict"], []


@case(r"No such option: --output-dir")
def evaluate_unknown_option(runs, tmp):
    return ["evaluate", tmp, "--output-dir", tmp / "x"], []


# --- config keys and values
@case(r"unknown config key 'train\.learning_rate'.*hftool calls it 'train\.lr'")
def learning_rate_alias(runs, tmp):
    return ["finetune", "bert-cls", "train.learning_rate=1e-4", "--dry-run"], []


@case(r"hftool calls it 'train\.epochs'")
def num_train_epochs_alias(runs, tmp):
    return ["finetune", "bert-cls", "train.num_train_epochs=2", "--dry-run"], []


@case(r"hftool calls it 'train\.batch_size'")
def per_device_batch_size_alias(runs, tmp):
    return ["finetune", "bert-cls", "train.per_device_train_batch_size=8", "--dry-run"], []


@case(r"train\.lr must be >= 0 .*, got -0\.001")
def negative_learning_rate(runs, tmp):
    return ["finetune", "bert-cls", "--lr=-1e-3", "--dry-run"], []


@case(r"train\.warmup_ratio must be in \[0, 1\)")
def warmup_ratio_above_one(runs, tmp):
    return ["finetune", "bert-cls", "train.warmup_ratio=1.5", "--dry-run"], []


# --- run dirs: --overwrite and --resume act only on hftool runs, and only once every check passed
@case(r"--resume and --overwrite contradict")
def resume_and_overwrite(runs, tmp):
    run = runs("text")
    return ["finetune", "bert-cls", "-o", run, "--resume", "--overwrite"], [run]


@case(r"not an hftool run \(no hftool_run\.json\); refusing to replace")
def overwrite_a_project_folder_with_a_config_yaml(runs, tmp):
    project = tmp / "project"
    text(project, "config.yaml", "task: my own thing\n")
    text(project, "notes.txt", "years of work\n")
    return ["finetune", "bert-cls", "-o", project, "--overwrite", "--max-steps", "1"], [project]


@case(r"not an hftool run \(no hftool_run\.json\); refusing to continue")
def resume_into_a_folder_that_is_not_a_run(runs, tmp):
    folder = tmp / "mine"
    text(folder, "log.jsonl", '{"mine": true}\n')
    text(folder, "data.csv", "a,b\n1,2\n")
    return ["finetune", "bert-cls", "-o", folder, "--resume", "--max-steps", "1"], [folder]


@case(r"data file .*typo\.csv does not exist")
def overwrite_with_a_typo_in_data_keeps_the_old_run(runs, tmp):
    run = runs.copy("text", tmp)
    return ["finetune", "bert-cls", "-o", run, "--overwrite", "--data", tmp / "typo.csv", "--max-steps", "1"], [run]


@case(r"--resume: .*step-0000002 was written with a different setup \(batch_size 4 -> 3\)")
def resume_with_another_batch_size(runs, tmp):
    run = runs.copy("text", tmp)
    return ["finetune", "bert-cls", "-o", run, "--resume", "--max-steps", "4", "--batch-size", "3",
            f"--data={runs.data / 'train.csv'}", f"--eval-data={runs.data / 'val.csv'}"], [run]


@case(r"--resume: .* was trained with data\.train=.*train\.csv, this command passes .*other\.csv")
def resume_with_other_data(runs, tmp):
    run = runs.copy("text", tmp)
    other = write_csv(tmp / "other.csv", sentiment_rows(20, 5), ["text", "label"])
    return ["finetune", "bert-cls", "-o", run, "--resume", "--max-steps", "4", "--data", other,
            "--eval-data", runs.data / "val.csv", "--batch-size", "4"], [run]


@case(r"--resume: the data's labels \(meh, negative, positive\) are not the run's \(negative, positive\)")
def resume_with_other_labels(runs, tmp):
    run = runs.copy("text", tmp)
    rows = sentiment_rows(40, 10)
    rows[3]["label"] = "meh"
    data = write_csv(tmp / "train.csv", rows, ["text", "label"])
    config = run / "config.yaml"
    config.write_text(config.read_text().replace(str(runs.data / "train.csv"), str(data)))
    return ["finetune", "bert-cls", "-o", run, "--resume", "--max-steps", "4", "--data", data,
            "--eval-data", runs.data / "val.csv", "--batch-size", "4"], [run]


@case(r"output dir .*plain\.txt/run cannot be created: .*plain\.txt is a file")
def output_dir_under_a_file_fails_before_the_data_loads(runs, tmp):
    plain = existing(tmp, "plain.txt")
    # the data does not exist either: the output dir is checked first, before anything loads
    return ["finetune", "bert-cls", "-o", plain / "run", "--data", tmp / "missing.csv"], [plain]


@case(r"output dir .*taken is a file")
def output_dir_is_a_file(runs, tmp):
    taken = existing(tmp, "taken")
    return ["finetune", "bert-cls", "-o", taken, "--max-steps", "1"], [taken]


# --- outputs never clobber
@case(r"--output .*out\.json already exists; pass --overwrite")
def predict_output_exists(runs, tmp):
    out = existing(tmp)
    return ["predict", runs("text"), "a fine film", "-o", out], [out, runs("text")]


@case(r"--output .*config\.json is a file of .*; hftool never writes over")
def predict_output_is_the_runs_config_json(runs, tmp):
    run = runs("text")
    return ["predict", run, "a fine film", "-o", run / "config.json", "--overwrite"], [run]


@case(r"cannot write /dev/full: No space left on device")
def predict_output_on_a_full_disk(runs, tmp):
    return ["predict", runs("text"), "a fine film", "-o", "/dev/full"], [runs("text")]


@case(r"--output .* is a folder; pass a file path")
def predict_output_is_a_folder(runs, tmp):
    return ["predict", runs("text"), "a fine film", "-o", tmp], [runs("text")]


@case(r"--output .*plain\.txt/out\.jsonl cannot be created: .*plain\.txt is a file")
def predict_output_under_a_file(runs, tmp):
    plain = existing(tmp, "plain.txt")
    return ["predict", runs("text"), "a fine film", "-o", plain / "out.jsonl"], [plain]


@case(r"output .*metrics\.json is a file of .*; hftool never writes over")
def evaluate_output_is_the_runs_metrics_json(runs, tmp):
    run = runs("text")
    return ["evaluate", run, "-o", run / "metrics.json", "--overwrite"], [run]


@case(r"output .*val\.csv is a file of .*val\.csv; hftool never writes over")
def evaluate_output_is_the_data_file(runs, tmp):
    data = shutil.copy(runs.data / "val.csv", tmp / "val.csv")
    return ["evaluate", runs("text"), "--data", data, "-o", data, "--overwrite"], [data, runs("text")]


@case(r"output .*out\.json already exists; pass --overwrite")
def evaluate_output_exists(runs, tmp):
    out = existing(tmp)
    return ["evaluate", runs("text"), "-o", out], [out]


@case(r"output .*out\.predictions\.jsonl already exists; pass --overwrite")
def evaluate_predictions_file_exists(runs, tmp):
    predictions = existing(tmp, "out.predictions.jsonl")
    return ["evaluate", runs("text"), "-o", tmp / "out.json", "eval.save_predictions=true"], [predictions]


@case(r"--output .*out\.jsonl already exists; pass --overwrite")
def generate_output_exists(runs, tmp):
    out = existing(tmp, "out.jsonl")
    return ["generate", runs("causal"), "-p", "Once", "-o", out], [out, runs("causal")]


@case(r"--output .*generation_config\.json is a file of .*; hftool never writes over")
def generate_output_is_the_runs_generation_config(runs, tmp):
    run = runs("seq2seq")
    return ["generate", run, "-p", "The dog.", "-o", run / "generation_config.json", "--overwrite"], [run]


@case(r"cannot write /dev/full: No space left on device")
def generate_output_on_a_full_disk(runs, tmp):
    return ["generate", runs("causal"), "-p", "Once", "--max-new-tokens", "2", "-o", "/dev/full"], []


@case(r"--draw .*0000-.*\.png already exists; pass --overwrite")
def detection_draw_over_an_existing_png(runs, tmp):
    image = sorted((runs.root / "images").glob("*.png"))[0] if (runs.root / "images").is_dir() else _shape_png(runs)
    drawn = existing(tmp, f"drawn/0000-{image.stem}.png")
    return ["predict", runs("detection"), image, "--draw", tmp / "drawn"], [drawn.parent]


@case(r"--draw folder .*plain\.txt cannot be created: .*plain\.txt is a file")
def detection_draw_into_a_file(runs, tmp):
    plain = existing(tmp, "plain.txt")
    return ["predict", runs("detection"), _shape_png(runs), "--draw", plain], [plain]


@case(r"--threshold must be in \[0, 1\], got 2\.0")
def detection_threshold_above_one(runs, tmp):
    return ["predict", runs("detection"), _shape_png(runs), "--threshold", "2"], []


@case(r"--attention-map .*map\.png already exists; pass --overwrite")
def caption_attention_map_exists(runs, tmp):
    drawn = existing(tmp, "map.png")
    return ["predict", runs("caption"), _shape_png(runs), "--attention-map", drawn], [drawn]


@case(r"--output .*forecast\.png already exists; pass --overwrite")
def forecast_png_exists(runs, tmp):
    existing(tmp, "forecast.png")  # the PNG beside the CSV is what is refused
    return ["predict", runs("forecast"), "--output", tmp / "forecast.csv", "--horizon", "3"], [tmp]


@case(r"--output .*page\.html already exists; pass --overwrite")
def report_output_exists(runs, tmp):
    out = existing(tmp, "page.html")
    return ["report", runs("text"), "-o", out], [tmp]


@case(r"--output .*forecast\.csv already exists; pass --overwrite")
def forecast_csv_exists(runs, tmp):
    out = existing(tmp, "forecast.csv")
    return ["predict", runs("forecast"), "--output", out, "--horizon", "3"], [tmp]


@case(r"--output .*scaler\.json is a file of .*; hftool never writes over")
def forecast_output_is_the_runs_scaler(runs, tmp):
    run = runs("forecast")
    return ["predict", run, "--output", run / "scaler.json", "--overwrite", "--horizon", "3"], [run]


# --- a run missing a file it needs: an error naming the file (defect: empty tokenizer, exit 0)
def without(runs, family: str, tmp: Path, name: str) -> Path:
    run = runs.copy(family, tmp)
    (run / name).unlink()
    return run


@case(r"tokenizer\.json: missing or empty, so the tokenizer has no vocabulary")
def text_run_without_tokenizer(runs, tmp):
    run = without(runs, "text", tmp, "tokenizer.json")
    return ["predict", run, "a fine film"], [run]


@case(r"tokenizer\.json: missing or empty")
def ner_run_without_tokenizer(runs, tmp):
    run = without(runs, "ner", tmp, "tokenizer.json")
    return ["predict", run, "Anna Smith visited Paris"], [run]


@case(r"tokenizer\.json: missing or empty")
def causal_run_without_tokenizer(runs, tmp):
    run = without(runs, "causal", tmp, "tokenizer.json")
    return ["generate", run, "-p", "Once"], [run]


@case(r"tokenizer\.json: missing or empty")
def seq2seq_run_without_tokenizer(runs, tmp):
    run = without(runs, "seq2seq", tmp, "tokenizer.json")
    return ["evaluate", run], [run]


@case(r"tokenizer\.json: missing or empty")
def caption_run_without_tokenizer(runs, tmp):
    run = without(runs, "caption", tmp, "tokenizer.json")
    return ["predict", run, _shape_png(runs)], [run]


@case(r"image processor cannot be loaded .*preprocessor_config\.json")
def image_run_without_processor(runs, tmp):
    run = without(runs, "image", tmp, "preprocessor_config.json")
    return ["predict", run, _shape_png(runs)], [run]


@case(r"image processor cannot be loaded .*preprocessor_config\.json")
def detection_run_without_processor(runs, tmp):
    run = without(runs, "detection", tmp, "preprocessor_config.json")
    return ["evaluate", run], [run]


@case(r"no scaler\.json")
def forecast_run_without_scaler(runs, tmp):
    run = without(runs, "forecast", tmp, "scaler.json")
    return ["predict", run, "--horizon", "3"], [run]


@case(r"image processor cannot be loaded .*preprocessor_config\.json")
def video_run_without_processor(runs, tmp):
    run = without(runs, "video", tmp, "preprocessor_config.json")
    return ["predict", run, runs.videos / "left" / "0.mp4"], [run]


@case(r"config\.json: its id2label .* is not the run's label map \(left, right")
def video_run_whose_labels_were_renamed(runs, tmp):
    run = runs.copy("video", tmp)
    config = json.loads((run / "config.json").read_text())
    config["id2label"] = {k: f"class{k}" for k in config["id2label"]}
    (run / "config.json").write_text(json.dumps(config))
    return ["evaluate", run], [run]


@case(r"--output .*preds\.jsonl already exists; pass --overwrite")
def video_predict_output_exists(runs, tmp):
    out = existing(tmp, "preds.jsonl")
    return ["predict", runs("video"), runs.videos / "left" / "0.mp4", "-o", out], [out, runs("video")]


@case(r"--report-dir file .*report\.json already exists; pass --overwrite")
def validate_report_over_an_existing_report(runs, tmp):
    report = existing(tmp / "report", "report.json")
    return ["validate", "bert-cls", "--data", runs.data / "train.csv", "--report-dir", report.parent], [report.parent]


@case(r"output dir .*project is not an hftool export \(no export\.json\); refusing to delete it")
def export_overwrite_of_a_folder_that_is_not_an_export(runs, tmp):
    project = tmp / "project"
    text(project, "notes.txt", "mine")
    return ["export", runs("text"), "-o", project, "--overwrite"], [project, runs("text")]


@case(r"model cannot be loaded .*no file named model\.safetensors")
def text_run_without_weights(runs, tmp):
    run = without(runs, "text", tmp, "model.safetensors")
    return ["predict", run, "a fine film"], [run]


@case(r"config\.json: its id2label \(LABEL_0, LABEL_1\) is not the run's label map \(negative, positive")
def text_run_whose_config_lost_its_label_map(runs, tmp):
    run = runs.copy("text", tmp)
    config = json.loads((run / "config.json").read_text())
    del config["id2label"], config["label2id"]
    (run / "config.json").write_text(json.dumps(config))
    return ["predict", run, "a fine film"], [run]


@case(r"config\.json: its id2label .* is not the run's label map")
def image_run_whose_labels_were_renamed(runs, tmp):
    run = runs.copy("image", tmp)
    config = json.loads((run / "config.json").read_text())
    config["id2label"] = {k: f"class{k}" for k in config["id2label"]}
    (run / "config.json").write_text(json.dumps(config))
    return ["evaluate", run], [run]


@case(r"config\.json is not valid JSON \(line 1")
def ner_run_with_a_broken_config_json(runs, tmp):
    run = runs.copy("ner", tmp)
    (run / "config.json").write_text('{"model_type": "bert",')
    return ["predict", run, "Anna Smith visited Paris"], [run]


@case(r"config\.json is not valid JSON")
def broken_config_json_in_a_model_dir_is_blamed_on_it(runs, tmp):
    model = tmp / "model"
    text(model, "config.json", "{not json")
    text(model, "tokenizer_config.json", "{}")
    return ["finetune", "bert-cls", "--model", model, "-o", tmp / "run", "--max-steps", "1"], [model]


@case(r"empty is not a model directory \(no config\.json; it is empty\)")
def empty_model_dir(runs, tmp):
    (tmp / "empty").mkdir()
    return ["finetune", "bert-cls", "--model", tmp / "empty", "-o", tmp / "run", "--max-steps", "1"], [tmp / "empty"]


# --- remote code: never run (defect: transformers asked on stdin and ran the dir's Python file)
def evil_model(tmp: Path) -> Path:
    model = tmp / "evil"
    text(model, "config.json", json.dumps({
        "model_type": "evilnet", "architectures": ["EvilForSequenceClassification"],
        "auto_map": {"AutoConfig": "evil.EvilConfig", "AutoModelForSequenceClassification": "evil.EvilModel"}}))
    text(model, "evil.py", f"open({str(tmp / 'ran')!r}, 'w').write('ran')\n")
    return model


@case(r"evil needs custom code \(config\.json auto_map: AutoConfig: evil\.EvilConfig.*hftool never runs code")
def predict_with_a_model_that_needs_custom_code(runs, tmp):
    model = evil_model(tmp)
    return ["predict", model, "hello"], [model]


@case(r"evil needs custom code")
def finetune_from_a_model_that_needs_custom_code(runs, tmp):
    model = evil_model(tmp)
    return ["finetune", "bert-cls", "--model", model, "-o", tmp / "run", "--max-steps", "1"], [model]


# --- data that cannot mean what the user meant (text classification)
def finetune_text(data: Path, tmp: Path, *extra) -> list:
    return ["finetune", "bert-cls", "--data", data, "-o", tmp / "run", "--max-steps", "1", *extra]


@case(r"one\.csv: every row has label 'positive' in column 'label'; a classifier needs at least two classes")
def one_class(runs, tmp):
    data = text(tmp, "one.csv", "text,label\n" + "".join(f"film {i} was good,positive\n" for i in range(10)))
    return finetune_text(data, tmp), [data]


@case(r"mixed\.csv: column 'label' mixes label types: row 1 has '1' \(integer\), row 3 has 'pos' \(name\)")
def ints_mixed_with_names(runs, tmp):
    data = text(tmp, "mixed.csv", "text,label\ngood,1\nbad,0\nfine,pos\nawful,neg\n")
    return finetune_text(data, tmp), [data]


@case(r"mixed\.jsonl: column 'label' mixes label types: row 1 has '1' \(integer\), row 2 has '1\.0' \(decimal\)")
def one_beside_one_point_zero(runs, tmp):
    data = text(tmp, "mixed.jsonl", '{"text": "good", "label": "1"}\n{"text": "fine", "label": "1.0"}\n'
                                    '{"text": "bad", "label": "0"}\n')
    return finetune_text(data, tmp), [data]


@case(r"merged\.csv:3: a quote opened on this line runs on to line 4, merging rows")
def unbalanced_quote_merges_rows(runs, tmp):
    data = text(tmp, "merged.csv", 'text,label\ngood film,pos\n"bad film,neg\nfine film",pos\nawful,neg\n')
    return finetune_text(data, tmp), [data]


@case(r"open\.csv: a quote opened on line 3 is never closed")
def quote_never_closed(runs, tmp):
    data = text(tmp, "open.csv", 'text,label\ngood film,pos\n"bad film,neg\nfine film,pos\n')
    return finetune_text(data, tmp), [data]


@case(r"dupes\.csv: the header names column 'text' twice")
def duplicate_column_names(runs, tmp):
    data = text(tmp, "dupes.csv", "text,label,text\ngood,pos,x\nbad,neg,y\n")
    return finetune_text(data, tmp), [data]


@case(r"tabs\.csv: looks tab-separated .*rename it to \.tsv")
def tsv_named_csv(runs, tmp):
    data = text(tmp, "tabs.csv", "text\tlabel\ngood, really\tpos\nbad\tneg\n")
    return finetune_text(data, tmp), [data]


@case(r"nul\.csv: holds NUL bytes, as UTF-16/UTF-32 text without a byte-order mark does")
def utf16_without_a_byte_order_mark(runs, tmp):
    data = text(tmp, "nul.csv", "text,label\ngood,pos\nbad,neg\n", encoding="utf-16-le")
    return finetune_text(data, tmp), [data]


@case(r"cols\.json: its columns have different lengths \(text: 3, label: 2\)")
def json_columns_of_different_lengths(runs, tmp):
    data = text(tmp, "cols.json", json.dumps({"text": ["a", "b", "c"], "label": ["x", "y"]}))
    return finetune_text(data, tmp), [data]


@case(r"nolabel\.csv row 2: no label in column 'label'")
def missing_label(runs, tmp):
    data = text(tmp, "nolabel.csv", "text,label\ngood,pos\nbad,\nfine,neg\n")
    return finetune_text(data, tmp), [data]


# --- data errors of the other families
@case(r"cats \[train\]: every row has label 'cat' in column 'label'; a classifier needs at least two classes")
def image_folder_with_one_class(runs, tmp):
    _shape_png(runs, tmp / "cats" / "cat" / "a.png")
    _shape_png(runs, tmp / "cats" / "cat" / "b.png")
    return ["finetune", "vit-cls", "--data", tmp / "cats", "-o", tmp / "run", "--max-steps", "1"], [tmp / "cats"]


@case(r"pets/dog holds no images, so class 'dog' would be dropped")
def image_folder_with_an_empty_class(runs, tmp):
    for name in ("a", "b"):
        _shape_png(runs, tmp / "pets" / "cat" / f"{name}.png")
        _shape_png(runs, tmp / "pets" / "bird" / f"{name}.png")
    (tmp / "pets" / "dog").mkdir()
    return ["finetune", "vit-cls", "--data", tmp / "pets", "-o", tmp / "run", "--max-steps", "1"], [tmp / "pets"]


@case(r"clips/right holds no videos, so class 'right' would be dropped")
def video_folder_with_an_empty_class(runs, tmp):
    shutil.copytree(runs.videos / "left", tmp / "clips" / "left")
    (tmp / "clips" / "right").mkdir()
    return ["finetune", "video-cls", "--data", tmp / "clips", "-o", tmp / "run", "--max-steps", "1"], [tmp / "clips"]


@case(r"videos\.csv: column 'label' mixes label types: row 1 has '1' \(integer\), row 2 has 'left' \(name\)")
def video_labels_written_two_ways(runs, tmp):
    left, right = sorted((runs.videos / "left").iterdir())[:2], sorted((runs.videos / "right").iterdir())[:2]
    data = write_csv(tmp / "videos.csv", [[left[0], 1], [left[1], "left"], [right[0], 2], [right[1], 2]], ["video", "label"])
    return ["finetune", "video-cls", "--data", data, "-o", tmp / "run", "--max-steps", "1"], [data]


@case(r"coco\.json: a COCO file needs an \"annotations\" list")
def coco_without_annotations(runs, tmp):
    data = text(tmp, "coco.json", json.dumps({"images": [{"id": 1, "file_name": "a.png", "width": 8, "height": 8}],
                                              "categories": [{"id": 1, "name": "box"}]}))
    return ["finetune", "detr", "--data", data, "-o", tmp / "run", "--max-steps", "1"], [data]


@case(r"has no tokens column")
def ner_data_without_tokens(runs, tmp):
    data = text(tmp, "ner.jsonl", '{"text": "Anna went home", "tags": ["B-PER", "O", "O"]}\n')
    return ["evaluate", runs("ner"), "--data", data], [data, runs("ner")]


@case(r"nothing to generate: pass --prompt")
def causal_generate_without_prompts(runs, tmp):
    return ["generate", runs("causal")], [runs("causal")]


@case(r"has no target column")
def seq2seq_data_without_targets(runs, tmp):
    data = text(tmp, "src.jsonl", '{"source": "The dog."}\n')
    return ["evaluate", runs("seq2seq"), "--data", data], [data, runs("seq2seq")]


@case(r"has no captions? column")
def caption_data_without_captions(runs, tmp):
    image = _shape_png(runs, tmp / "a.png")
    data = text(tmp, "caps.jsonl", json.dumps({"image": image.name, "text_": "x"}) + "\n")
    return ["evaluate", runs("caption"), "--data", data], [data, runs("caption")]


@case(r"is a image-classification model; `hftool generate` needs a model that generates")
def generate_with_an_image_classifier(runs, tmp):
    return ["generate", runs("image"), "-p", "x"], [runs("image")]


@case(r"--top-k is not supported for time-series-forecasting models")
def forecast_with_top_k(runs, tmp):
    return ["predict", runs("forecast"), "--top-k", "2"], [runs("forecast")]


# --- evaluate RUN reads the run's own data by absolute path and checks its fingerprint
@case(r"train\.csv changed since .* was trained: its sha256 is [0-9a-f]{64}, provenance\.json records [0-9a-f]{64} "
      r"\(eval\.strict=true\)")
def evaluate_changed_data_strict(runs, tmp):
    data = write_csv(tmp / "train.csv", sentiment_rows(30, 3), ["text", "label"])
    run = _text_run_on(runs, tmp, data)
    with open(data, "a", encoding="utf-8") as f:
        f.write("an extra row,positive\n")
    return ["evaluate", run, "eval.strict=true"], [run, data]


@case(r"records data\.train=train\.csv relative to the folder training ran in")
def evaluate_a_run_with_a_relative_data_path(runs, tmp):
    run = runs.copy("text", tmp)
    config = run / "config.yaml"
    config.write_text(config.read_text().replace(str(runs.data / "train.csv"), "train.csv"))
    return ["evaluate", run], [run]


# ------------------------------------------------------------------------------ helpers
def _shape_png(runs: Runs, path: Path | None = None) -> Path:
    """A small PNG of a generated shape (written once per path)."""
    from hftool.samples.shapes import draw

    import random

    path = path or runs.root / "images" / "shape.png"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        draw("circle", random.Random(len(str(path)))).save(path)
    return path


def _text_run_on(runs: Runs, tmp: Path, data: Path) -> Path:
    from hftool import api
    from hftool.config import load_config

    out = tmp / "own-run"
    api.finetune(load_config("bert-cls", overrides=[f"data.train={data}", f"output_dir={out}", *COMMON]), recipe="bert-cls")
    return out


def test_the_catalogue_is_large():
    assert len(CASES) >= 60


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input(name, runs, cli, tmp_path, monkeypatch):
    make, pattern = CASES[name]
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)  # no case may depend on, or write into, the working directory
    argv, kept = make(runs, tmp_path)
    before = {str(p): tree(p) for p in kept}
    result = cli(*argv)
    assert "Traceback" not in result.out + result.err, result.err[-3000:]
    assert result.code == 2, (result.code, result.err[-3000:])
    errors = [line for line in result.err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and result.err.rstrip().endswith(errors[0]), result.err[-3000:]
    assert re.search(pattern, errors[0]), errors[0]
    for path, hashes in before.items():
        assert tree(Path(path)) == hashes, f"{path} changed"
    assert not (tmp_path / "ran").exists(), "code shipped in a model dir ran"
    assert list(work.iterdir()) == []


# ------------------------------------------------------------------ promises that are not errors
def test_code_in_a_model_dir_never_runs_even_when_stdin_answers_yes(tmp_path):
    """transformers asked "Do you wish to run the custom code? [y/N]" and ran evil.py on `y`."""
    model = evil_model(tmp_path)
    out = subprocess.run([sys.executable, "-m", "hftool", "predict", str(model), "hello"], input="y\n" * 5,
                         capture_output=True, text=True, cwd=REPO, timeout=120)
    assert out.returncode == 2, out.stderr[-2000:]
    assert not (tmp_path / "ran").exists()
    assert "Do you wish to run" not in out.stdout + out.stderr
    assert out.stderr.strip().splitlines()[-1].startswith(f"error: {model} needs custom code")


def test_doctor_reports_a_model_that_needs_custom_code_without_running_it(cli, tmp_path):
    """doctor is a check that ran and failed (exit 1), not a usage error."""
    model = evil_model(tmp_path)
    result = cli("doctor", "bert-cls", "--model", model, "--data", write_csv(tmp_path / "t.csv", sentiment_rows(8, 0),
                                                                            ["text", "label"]))
    assert result.code == 1, result.err[-2000:]
    assert "needs custom code" in result.out and "hftool never runs code shipped in a model dir" in result.out
    assert not (tmp_path / "ran").exists()


def test_resume_on_a_finished_run_says_so_and_changes_nothing(runs, cli, tmp_path):
    run = runs.copy("text", tmp_path)
    before = tree(run)
    result = cli("finetune", "bert-cls", "-o", run, "--resume", "--max-steps", "2", "--batch-size", "4",
                 "--data", runs.data / "train.csv", "--eval-data", runs.data / "val.csv")
    assert result.code == 0, result.err[-2000:]
    assert "already finished (step 2 of 2); nothing changed" in result.err
    assert json.loads(result.out) == json.loads((run / "metrics.json").read_text())  # train_loss included
    assert tree(run) == before


def test_overwrite_moves_the_old_run_aside_until_the_first_checkpoint(runs, cli, tmp_path, monkeypatch):
    from hftool.runs import MARKER
    from hftool.training import Trainer

    run = runs.copy("text", tmp_path)
    old = tree(run)
    old_id = json.loads((run / MARKER).read_text())["run_id"]
    seen = []
    save = Trainer.save_checkpoint

    def first_checkpoint(self):
        if not seen:  # the old run is whole beside the new one, under a hidden name
            aside = [p for p in tmp_path.iterdir() if p.name.startswith(f".{run.name}.replaced-")]
            seen.append([tree(p) for p in aside])
        return save(self)

    monkeypatch.setattr(Trainer, "save_checkpoint", first_checkpoint)
    result = cli("finetune", "bert-cls", "-o", run, "--overwrite", "--max-steps", "2", "--batch-size", "4",
                 "--data", runs.data / "train.csv", "--eval-data", runs.data / "val.csv", "train.seed=7")
    assert result.code == 0, result.err[-2000:]
    assert seen == [[old]]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # deleted once the checkpoint existed
    assert json.loads((run / MARKER).read_text())["run_id"] != old_id
    assert "seed: 7" in (run / "config.yaml").read_text()


def test_overwrite_puts_the_old_run_back_when_the_new_one_fails_before_a_checkpoint(runs, cli, tmp_path, monkeypatch):
    from hftool.errors import HftoolError
    from hftool.tasks import get_task

    run = runs.copy("text", tmp_path)
    old = tree(run)

    def broken(*args, **kwargs):
        raise HftoolError("the first step failed")

    monkeypatch.setattr(type(get_task("text-classification")), "train_loss", broken)
    result = cli("finetune", "bert-cls", "-o", run, "--overwrite", "--max-steps", "2", "--batch-size", "4",
                 "--data", runs.data / "train.csv", "--eval-data", runs.data / "val.csv")
    assert result.code == 2 and result.err.strip().endswith("error: the first step failed")
    assert "the previous run is back" in result.err
    assert tree(run) == old
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_a_torn_last_log_line_is_dropped_and_the_run_resumes(runs, cli, tmp_path):
    run = runs.copy("text", tmp_path)
    with open(run / "log.jsonl", "a", encoding="utf-8") as f:
        f.write('{"type": "train", "step": 3, "lo')  # killed mid-write
    result = cli("finetune", "bert-cls", "-o", run, "--resume", "--max-steps", "4", "--batch-size", "4",
                 "--data", runs.data / "train.csv", "--eval-data", runs.data / "val.csv", "train.logging_steps=1")
    assert result.code == 0, result.err[-2000:]
    assert "dropped its half-written last line" in result.err
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["type"] == "train"] == [1, 2, 3, 4]


def test_a_refused_resume_leaves_config_yaml_as_it_was(runs, cli, tmp_path):
    """A refused --resume had already rewritten config.yaml, so `evaluate` then read the new data."""
    run = runs.copy("text", tmp_path)
    before = (run / "config.yaml").read_text()
    other = write_csv(tmp_path / "other.csv", sentiment_rows(20, 5), ["text", "label"])
    result = cli("finetune", "bert-cls", "-o", run, "--resume", "--max-steps", "4", "--batch-size", "3",
                 "--data", other)
    assert result.code == 2
    assert (run / "config.yaml").read_text() == before


def test_evaluate_reads_the_runs_data_by_absolute_path_and_warns_when_it_changed(runs, cli, tmp_path, monkeypatch):
    """config.yaml kept paths relative to where training ran, and `evaluate RUN` elsewhere scored
    whatever file of that name it found."""
    import yaml

    first, elsewhere = tmp_path / "first", tmp_path / "elsewhere"
    for folder, seed in ((first, 30), (elsewhere, 31)):
        folder.mkdir()
        write_csv(folder / "train.csv", sentiment_rows(30, seed), ["text", "label"])
    monkeypatch.chdir(first)
    run = tmp_path / "run"
    assert cli("finetune", "bert-cls", "--data", "train.csv", "-o", run, *COMMON).code == 0
    recorded = yaml.safe_load((run / "config.yaml").read_text())["data"]["train"]
    assert recorded == str(first / "train.csv")
    expected = json.loads((run / "metrics.json").read_text())

    monkeypatch.chdir(elsewhere)  # a different train.csv here must not be read
    result = cli("evaluate", run)
    assert result.code == 0, result.err[-2000:]
    assert json.loads(result.out)["eval_accuracy"] == pytest.approx(expected["eval_accuracy"])
    assert "changed since" not in result.err

    with open(first / "train.csv", "a", encoding="utf-8") as f:
        f.write("one more row,positive\n")
    result = cli("evaluate", run)
    assert result.code == 0
    warning = next(line for line in result.err.splitlines() if "changed since" in line)
    assert re.search(r"sha256 is [0-9a-f]{64}, provenance\.json records [0-9a-f]{64}", warning)


def test_predict_overwrite_replaces_only_the_output_atomically_with_the_umask(runs, cli, tmp_path):
    import os

    out = existing(tmp_path, "out.jsonl")
    previous = os.umask(0o027)
    try:
        result = cli("predict", runs("text"), "a fine film", "-o", out, "--overwrite")
    finally:
        os.umask(previous)
    assert result.code == 0, result.err[-2000:]
    assert json.loads(out.read_text())["text"] == "a fine film"
    assert out.stat().st_mode & 0o777 == 0o640
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.jsonl"]  # no temporary file left


def test_hftool_debug_keeps_the_traceback(runs, monkeypatch):
    from hftool.cli import main
    from hftool.errors import HftoolError

    monkeypatch.setenv("HFTOOL_DEBUG", "1")
    monkeypatch.setattr(sys, "argv", ["hftool", "predict", str(runs("text")), "x", "-o", "/dev/full"])
    with pytest.raises(HftoolError, match="No space left"):
        main()


# ------------------------------------------------------------------------- the data layer
@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-be", "utf-32", "utf-32-be"])
def test_files_with_a_utf16_or_utf32_byte_order_mark_read_as_their_encoding(tmp_path, encoding):
    """A UTF-16 file ended in a field-count error."""
    from hftool.data.sources import read_file

    content = "text,label\nsehr gut,pos\nschlecht,neg\n"
    plain = read_file(text(tmp_path, "plain.csv", content))
    marked = tmp_path / "marked.csv"
    bom = {"utf-16-be": b"\xfe\xff", "utf-32-be": b"\x00\x00\xfe\xff"}.get(encoding, b"")
    marked.write_bytes(bom + content.encode(encoding))  # utf-16/utf-32 write their own mark
    assert read_file(marked).to_dict() == plain.to_dict()


def test_empty_and_nan_texts_are_counted_in_a_warning(tmp_path, capsys):
    import datasets

    from hftool.config import load_config
    from hftool.tasks import get_task

    ds = datasets.Dataset.from_dict({"text": ["good", "", "NaN", "bad", "fine"],
                                     "label": ["pos", "pos", "neg", "neg", "pos"]})
    get_task("text-classification").prepare(load_config("bert-cls"), ds, "t.csv")
    assert "t.csv: 2 of 5 rows have an empty or 'NaN' text in column 'text' (first: row 2)" in capsys.readouterr().err


def test_checks_can_collect_every_finding_instead_of_stopping_at_the_first(tmp_path):
    import datasets

    from hftool.data.checks import CHECKS, Findings
    from hftool.data.labels import label_names
    from hftool.data.sources import check_table_text

    findings = Findings(collect=True)
    check_table_text("text,label,text\na,1,x\n", Path("dupes.csv"), ",", findings)
    label_names(datasets.Dataset.from_dict({"label": ["1", "pos", "1"]}), "label", "mixed.csv", findings)
    label_names(datasets.Dataset.from_dict({"label": ["pos", "pos"]}), "label", "one.csv", findings)
    assert [f.check.name for f in findings.items] == ["duplicate_columns", "mixed_label_types", "one_class"]
    assert all(f.check.severity in ("error", "warning") and f.message for f in findings.items)
    assert {name for name in CHECKS} >= {"merged_rows", "tab_separated_csv", "empty_class_folder", "empty_texts"}


def test_a_legacy_run_is_a_run_and_a_folder_with_a_config_yaml_is_not(tmp_path):
    from hftool.runs import is_run, write_marker

    legacy = tmp_path / "legacy"
    text(legacy, "config.yaml", "task: text-classification\n")
    assert not is_run(legacy)
    text(legacy, "provenance.json", json.dumps({"command": "mine"}))
    assert not is_run(legacy)
    text(legacy, "provenance.json", json.dumps({"hftool_version": "0.1.0", "command": "hftool finetune bert-cls"}))
    assert is_run(legacy)
    write_marker(tmp_path / "new")
    assert is_run(tmp_path / "new")


def test_an_output_dir_that_cannot_be_created_fails_before_the_data_loads(cli, tmp_path, monkeypatch):
    """Tests run as root, where every folder is writable: the permission check is made to fail."""
    from hftool import outputs

    locked = tmp_path / "locked"
    locked.mkdir()
    real = outputs.os.access
    monkeypatch.setattr(outputs.os, "access", lambda path, mode: Path(path) != locked and real(path, mode))
    result = cli("finetune", "bert-cls", "-o", locked / "run", "--data", tmp_path / "missing.csv")
    assert result.code == 2
    assert result.err.strip().splitlines()[-1] == (f"error: output dir {locked / 'run'} cannot be created: {locked} is "
                                                   "not writable (permission denied)")
    assert list(locked.iterdir()) == []
