"""`hftool eval-suite`: the README's suites, the cache, gates and their exit codes, bad input,
multi-process scoring, and `hftool report`."""

from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path

import pytest

from hftool import api
from hftool.config import load_config
from tests.conftest import REPO, sentiment_rows

NO_DROPOUT = "model.config_overrides={hidden_dropout_prob: 0.0, attention_probs_dropout_prob: 0.0}"


def readme_suite(name: str) -> str:
    """The README's suite file `name`: the YAML block whose first line is `# hftool eval-suite NAME ...`."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```yaml\n(# hftool eval-suite (\S+) .*?)```", text, flags=re.S)
    return next(block for block, file in blocks if file == name)


def write_rows(path: Path, rows: list[dict], text_column: str = "text") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=[text_column, "label"])
        writer.writeheader()
        writer.writerows({text_column: r["text"], "label": r["label"]} for r in rows)
    return path


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """runs/cls (tiny BERT, checkpoints at steps 8, 16, 24) and data/{dev,test}.csv labelled by the
    run's own predictions, so the run scores 1.0 and any change to it shows."""
    root = tmp_path_factory.mktemp("suite")
    train = write_rows(root / "data" / "train.csv", sentiment_rows(120, 40))
    api.finetune(load_config("bert-cls", overrides=[
        f"data.train={train}", f"output_dir={root / 'runs' / 'cls'}", "train.max_steps=24", "train.eval_steps=8",
        "train.batch_size=16", "train.save_total_limit=3", "train.mixed_precision=no", NO_DROPOUT]))
    for name, n, seed, column in (("dev", 60, 41, "text"), ("test", 70, 42, "review")):
        texts = [r["text"] for r in sentiment_rows(n, seed)]
        labels = [p["label"] for p in api.predict(str(root / "runs" / "cls"), texts)]
        write_rows(root / "data" / f"{name}.csv", [{"text": t, "label": label} for t, label in zip(texts, labels)],
                   column)
    write_rows(root / "data" / "odd.csv", sentiment_rows(5, 43), "body")  # no column a classifier knows
    (root / "suite-cls.yaml").write_text(readme_suite("suite-cls.yaml"), encoding="utf-8")
    return root


def rows_of(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "results.jsonl").read_text(encoding="utf-8").splitlines()]


def test_readme_classifier_suite_scores_3_checkpoints_x_2_datasets_then_reuses_the_cache(workspace, cli, monkeypatch):
    monkeypatch.chdir(workspace)
    assert sorted(p.name for p in (workspace / "runs" / "cls" / "checkpoints").iterdir()) == \
        ["step-0000008", "step-0000016", "step-0000024"]
    first = cli("eval-suite", "suite-cls.yaml", "-o", "runs/suite-cls", "eval.bootstrap=300")
    assert first.code in (0, 1), first.err
    rows = rows_of(workspace / "runs" / "suite-cls")
    assert len(rows) == 8 and {r["dataset"] for r in rows} == {"dev", "test"}
    assert sorted({r["step"] for r in rows if r["checkpoint"]}) == [8, 16, 24]
    assert "8 pairs: 8 evaluated, 0 from the cache" in first.out
    baseline = [r for r in rows if r["baseline"]]
    assert [r["model"] for r in baseline] == ["runs/cls", "runs/cls"]
    for row in baseline:  # the data is labelled by this model: perfect, and the interval says so
        assert row["metrics"]["eval_accuracy"] == 1.0 and row["intervals"]["eval_accuracy"] == [1.0, 1.0]
        assert row["n"] == {"dev": 60, "test": 70}[row["dataset"]]
    for row in rows:
        assert row["intervals"]["eval_accuracy"][0] <= row["metrics"]["eval_accuracy"] <= row["intervals"]["eval_accuracy"][1]
        assert len(row["hashes"]["model"]) == len(row["hashes"]["data"]) == 64 and "eval-suite" in row["command"]
        if not row["baseline"]:
            comparison = row["vs_baseline"]["eval_accuracy"]
            assert comparison["diff"] == pytest.approx(row["metrics"]["eval_accuracy"] - 1.0)
            assert 0 < comparison["p"] <= 1
    # the checkpoint the run kept as its model scores what the run dir scores
    best = next(r for r in rows if r["baseline"] and r["dataset"] == "dev")
    same = next(r for r in rows if r["checkpoint"] and r["step"] == best["step"] and r["dataset"] == "dev")
    assert same["metrics"] == pytest.approx(best["metrics"], abs=1e-6) and same["vs_baseline"]["eval_accuracy"]["p"] == 1
    # gates: one line per failure, and the exit code says whether there was one
    failures = [line for line in first.out.splitlines() if line.startswith("FAIL ")]
    assert first.code == (1 if failures else 0)
    for row in rows:
        if not row["baseline"] and row["metrics"]["eval_accuracy"] < 0.85:
            assert any(line.startswith(f"FAIL {row['model']} on {row['dataset']}: eval_accuracy") for line in failures)
    board = (workspace / "runs" / "suite-cls" / "leaderboard.md").read_text()
    assert "## dev (text-classification, n=60)" in board and "| runs/cls | " in board
    second = cli("eval-suite", "suite-cls.yaml", "-o", "runs/suite-cls", "--ci", "eval.bootstrap=300")
    assert second.code == first.code
    assert "8 pairs: 0 evaluated, 8 from the cache" in second.out and "Evaluating" not in second.err
    assert rows_of(workspace / "runs" / "suite-cls") == rows
    assert len(second.out.splitlines()) < 20 and "|---|" not in second.out  # --ci: a short summary


def tampered_checkpoint(workspace: Path) -> str:
    """A copy of the run whose checkpoint of the run's own model has its classifier's two rows
    swapped: every prediction flips. Returns its name in a suite."""
    from safetensors.torch import load_file, save_file

    state = json.loads((workspace / "runs" / "cls" / "checkpoints" / "step-0000024" / "trainer_state.json").read_text())
    name = f"runs/tampered/checkpoints/step-{state['best_step']:07d}"
    if not (workspace / "runs" / "tampered").exists():
        shutil.copytree(workspace / "runs" / "cls", workspace / "runs" / "tampered")
        weights = workspace / name / "model.safetensors"
        saved = load_file(weights)
        for key in ("classifier.weight", "classifier.bias"):
            saved[key] = saved[key].flip(0).contiguous()
        save_file(saved, weights)
    return name


GATES = """baseline: runs/cls
datasets:
  dev: {path: data/dev.csv}
  test: {path: data/test.csv, overrides: [data.text_column=review]}
gates:
  eval_accuracy: ">= 0.9"
  eval_f1_macro: [{max_drop: 0.01}, {no_significant_drop: 0.05}]
overrides: [eval.bootstrap=300]
"""


def test_gates_fail_on_a_worse_checkpoint_and_pass_on_an_equal_one(workspace, cli, monkeypatch):
    monkeypatch.chdir(workspace)
    worse = tampered_checkpoint(workspace)
    if not (workspace / "runs" / "copy").exists():
        shutil.copytree(workspace / "runs" / "cls", workspace / "runs" / "copy")
    Path("gates.yaml").write_text(f"models: [runs/copy, {worse}]\n" + GATES)
    result = cli("eval-suite", "gates.yaml", "-o", "runs/gates", "--ci")
    assert result.code == 1, result.err
    failures = [line for line in result.out.splitlines() if line.startswith("FAIL ")]
    assert len(failures) == 6  # 3 rules x 2 datasets, all for the tampered checkpoint
    assert all(line.startswith(f"FAIL {worse} on ") for line in failures)
    assert any("eval_accuracy = 0.0000, needs >= 0.9 (line 7)" in line for line in failures)
    assert any("max_drop 0.01, line 8" in line for line in failures)
    assert any("significantly worse than the baseline" in line and "p=0.00" in line for line in failures)
    assert "gates: 6 of 12 checks passed" in result.out
    rows = {(r["model"], r["dataset"]): r for r in rows_of(workspace / "runs" / "gates")}
    equal = rows[("runs/copy", "dev")]["vs_baseline"]["eval_f1_macro"]
    assert equal["diff"] == 0 and equal["p"] > 0.05 and not equal["significant"]
    assert rows[(worse, "dev")]["vs_baseline"]["eval_accuracy"]["significant"]
    Path("equal.yaml").write_text("models: [runs/copy]\n" + GATES)
    result = cli("eval-suite", "equal.yaml", "-o", "runs/gates")  # the same output dir: its cache serves
    assert result.code == 0, result.out + result.err
    assert "gates: 6 of 6 checks passed" in result.out and "4 pairs: 0 evaluated, 4 from the cache" in result.out


@pytest.mark.parametrize("suite, message", [
    ("models: [runs/cls, runs/missing]\ndatasets:\n  dev: {path: data/dev.csv}\n",
     "bad.yaml line 1: runs/missing does not exist; name a run dir"),
    ("models:\n  - runs/cls\n  - runs/*/checkpoints/step-9*\ndatasets:\n  dev: {path: data/dev.csv}\n",
     "bad.yaml line 3: 'runs/*/checkpoints/step-9*' matches no directory"),
    ("models: [runs/cls]\ndatasets:\n  dev: {path: data/dev.csv}\n  odd: {path: data/odd.csv}\n",
     "bad.yaml line 4: dataset 'odd' does not fit runs/cls (text-classification): data/odd.csv has no text column "
     "(columns: body, label); set data.text_column=<column>"),
    ("models: [runs/cls]\ndatasets:\n  dev: {path: data/dev.csv}\ngates:\n  eval_acuracy: '>= 0.9'\n",
     "bad.yaml line 5: gate metric 'eval_acuracy' is not one runs/cls (text-classification) produces "
     "(did you mean eval_accuracy?); valid: eval_accuracy, eval_f1_macro"),
    ("models: [runs/cls]\ndatasets:\n  dev: {path: data/dev.csv}\ngates:\n  eval_accuracy: {max_drop: 0.01}\n",
     "bad.yaml line 5: gate eval_accuracy: {max_drop: 0.01} compares with the baseline; add baseline: MODEL"),
    ("models: [runs/cls]\ndatasets:\n  dev: {path: data/dev.csv}\ngates:\n  eval_accuracy: 'at least 0.9'\n",
     "bad.yaml line 5: gate eval_accuracy: 'at least 0.9' is not a gate; write \">= 0.85\""),
    ("models: [runs/cls\ndatasets:\n  dev: {path: data/dev.csv}\n", "bad.yaml line 2: not valid YAML"),
    ("modles: [runs/cls]\ndatasets:\n  dev: {path: data/dev.csv}\n",
     "bad.yaml line 1: unknown key 'modles'; did you mean 'models'?"),
])
def test_bad_suites_get_one_line_errors_naming_the_line(workspace, cli, monkeypatch, suite, message):
    monkeypatch.chdir(workspace)
    Path("bad.yaml").write_text(suite)
    result = cli("eval-suite", "bad.yaml", "-o", "runs/bad")
    assert result.code == 2, result.out + result.err
    error = result.err.strip().splitlines()[-1]
    assert error.startswith(f"error: {message}"), error
    assert "Traceback" not in result.err and not Path("runs/bad").exists()


def test_output_dir_of_something_else_is_refused(workspace, cli, monkeypatch, tmp_path):
    monkeypatch.chdir(workspace)
    (tmp_path / "notes.txt").write_text("mine")
    result = cli("eval-suite", "suite-cls.yaml", "-o", tmp_path)
    assert result.code == 2 and "is not empty and holds no eval-suite results" in result.err
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_two_processes_score_every_pair_as_one_does(workspace, monkeypatch):
    """--num-processes 2 (torchrun): the same metrics, intervals and comparisons as one process."""
    import os
    import subprocess
    import sys

    monkeypatch.chdir(workspace)
    Path("two.yaml").write_text("models: [runs/cls/checkpoints/step-0000008, runs/cls]\nbaseline: runs/cls\n"
                                "datasets:\n  dev: {path: data/dev.csv}\noverrides: [eval.bootstrap=200]\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    outs = {}
    for name, extra in (("one", []), ("two", ["--num-processes", "2"])):
        result = subprocess.run([sys.executable, "-m", "hftool", "eval-suite", "two.yaml", "-o", f"runs/{name}",
                                 "--batch-size", "7", *extra], env=env, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
        assert ("launching: -m torch.distributed.run --nproc_per_node 2" in result.stderr) == bool(extra)
        outs[name] = rows_of(workspace / "runs" / name)
    assert len(outs["one"]) == len(outs["two"]) == 2
    for one, two in zip(outs["one"], outs["two"]):
        assert one["n"] == two["n"] == 60
        assert two["metrics"] == pytest.approx(one["metrics"], abs=1e-6)
        assert two["intervals"].keys() == one["intervals"].keys()
        for name, interval in one["intervals"].items():
            assert two["intervals"][name] == pytest.approx(interval, abs=1e-6), name
        for name, comparison in (one.get("vs_baseline") or {}).items():
            assert two["vs_baseline"][name] == pytest.approx(comparison, abs=1e-6), name
    assert "vs_baseline" in outs["one"][0] or "vs_baseline" in outs["one"][1]


def test_report_of_runs_shows_metrics_curves_and_config_differences(workspace, cli, monkeypatch):
    import yaml

    monkeypatch.chdir(workspace)
    if not Path("runs/other").exists():
        shutil.copytree("runs/cls", "runs/other")
        saved = yaml.safe_load(Path("runs/other/config.yaml").read_text())
        saved["train"]["lr"] = 0.001
        Path("runs/other/config.yaml").write_text(yaml.safe_dump(saved))
    result = cli("report", "runs/cls", "runs/other", "-o", "runs/compare.html")
    assert result.code == 0, result.err
    html = Path("runs/compare.html").read_text()
    assert "<h2>Config differences</h2>" in html and "<h2>Training curves</h2>" in html
    differences = re.search(r"<h2>Config differences</h2>(.*?)</table>", html, flags=re.S).group(1)
    assert "<td>train.lr</td><td>0.0005</td><td>0.001</td>" in differences and "train.seed" not in differences
    assert not re.search(r'(src|href)="(?!data:|#)', html)  # nothing to fetch
    result = cli("report", "data", "-o", "runs/x.html")
    assert result.code == 2 and "data is not an hftool run dir" in result.err


def test_readme_detector_suite(cli, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    api.finetune(load_config("detr", overrides=[f"output_dir={tmp_path / 'runs' / 'detr'}", "train.max_steps=4",
                                                "train.eval_steps=2", "train.batch_size=4"]))
    Path("suite-detr.yaml").write_text(readme_suite("suite-detr.yaml"))
    result = cli("eval-suite", "suite-detr.yaml", "-o", "runs/suite-detr", "eval.bootstrap=100")
    assert result.code in (0, 1), result.err
    rows = rows_of(tmp_path / "runs" / "suite-detr")
    assert len(rows) == 6 and {r["dataset"] for r in rows} == {"val", "test"} and all(r["n"] == 16 for r in rows)
    for row in rows:
        low, high = row["intervals"]["eval_map_50"]
        assert low <= row["metrics"]["eval_map_50"] <= high
        assert {"eval_map", "eval_map_50", "eval_ap_circle", "eval_mar_100"} <= set(row["metrics"])
    html = (tmp_path / "runs" / "suite-detr" / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 16  # the galleries' images, boxes drawn on them
    check_report_in_browser(tmp_path / "runs" / "suite-detr" / "report.html", tmp_path / "profile", images=16)


def test_ner_suite_shows_each_sentence_with_its_entities(cli, monkeypatch, tmp_path):
    """A token classifier's pairs get entity-F1 intervals, and the report's gallery shows each
    sentence's words with its true entities highlighted and named."""
    from seqeval.metrics.sequence_labeling import get_entities

    from hftool.data import load_source

    monkeypatch.chdir(tmp_path)
    api.finetune(load_config("bert-ner", overrides=[f"output_dir={tmp_path / 'runs' / 'ner'}", "train.max_steps=4",
                                                    "data.max_train_samples=32", "data.max_eval_samples=8"]))
    dev = load_source("sample:ner")["train"].select(range(12))
    dev.to_json("dev.jsonl")
    Path("suite-ner.yaml").write_text("models: [runs/ner]\ndatasets:\n  dev: {path: dev.jsonl}\n")
    result = cli("eval-suite", "suite-ner.yaml", "-o", "runs/suite-ner", "eval.bootstrap=100")
    assert result.code == 0, result.err
    row = rows_of(tmp_path / "runs" / "suite-ner")[0]
    low, high = row["intervals"]["eval_f1"]
    assert row["n"] == 12 and low <= row["metrics"]["eval_f1"] <= high
    gallery = (tmp_path / "runs" / "suite-ner" / "report.html").read_text().split('<section id="gallery">')[1]
    for example in dev.select(range(8)):  # the gallery's first 8 sentences
        for kind, start, end in get_entities(example["tags"]):
            assert f'{" ".join(example["tokens"][start:end + 1])}<span class="tag">{kind}</span>' in gallery


def open_in_browser(page: Path, profile: Path):
    """Headless Debian chromium through Selenium, with its console and network logs; skips where
    chromium is not installed (CI installs it)."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not chromium or not driver:
        pytest.skip("chromium and chromium-driver are not installed (apt-get install chromium chromium-driver)")
    from selenium import webdriver

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=1300,1000", f"--user-data-dir={profile}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    browser = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=driver))
    browser.get("about:blank")
    for log in ("browser", "performance"):  # what the start-up tab did is not the page's doing
        browser.get_log(log)
    browser.get(page.resolve().as_uri())
    return browser


def check_report_in_browser(page: Path, profile: Path, images: int = 0) -> None:
    """It renders without console errors, sorting a column reorders the rows, every plot and image
    is drawn, and the page requests nothing but itself and its data: URIs."""
    from selenium.webdriver.common.by import By

    browser = open_in_browser(page, profile)
    try:
        errors = [e for e in browser.get_log("browser") if e["level"] in ("SEVERE", "WARNING")]
        assert not errors, errors
        table = browser.find_element(By.CSS_SELECTOR, "#leaderboard table.sortable")
        headers = table.find_elements(By.TAG_NAME, "th")
        column = next(i for i, h in enumerate(headers) if h.text.startswith("eval_loss"))

        def values() -> list[float]:
            return [float(r.find_elements(By.TAG_NAME, "td")[column].get_attribute("data-value"))
                    for r in table.find_elements(By.CSS_SELECTOR, "tbody tr")]

        before = values()
        headers[column].click()
        assert values() == sorted(before, reverse=True) and headers[column].get_attribute("data-dir") == "desc"
        headers[column].click()
        assert values() == sorted(before)
        plots = browser.find_elements(By.CSS_SELECTOR, "section svg")
        assert plots and all(p.size["width"] > 100 and p.find_elements(By.CSS_SELECTOR, "polyline.series")
                             for p in plots)
        drawn = browser.execute_script(
            "return Array.from(document.images).map(i => i.complete && i.naturalWidth > 0)")
        assert len(drawn) >= images and all(drawn)
        requests = [json.loads(e["message"])["message"] for e in browser.get_log("performance")]
        urls = [m["params"]["request"]["url"] for m in requests if m["method"] == "Network.requestWillBeSent"]
        assert urls and all(u == page.resolve().as_uri() or u.startswith("data:") for u in urls), urls
    finally:
        browser.quit()


def test_suite_report_works_in_a_browser_offline(workspace, cli, monkeypatch, tmp_path):
    monkeypatch.chdir(workspace)
    Path("browser.yaml").write_text('models: ["runs/cls/checkpoints/*"]\nbaseline: runs/cls\n'
                                    "datasets:\n  dev: {path: data/dev.csv}\n  test: {path: data/test.csv}\n"
                                    "overrides: [eval.bootstrap=200]\n")
    result = cli("eval-suite", "browser.yaml", "-o", "runs/browser")
    assert result.code == 0, result.err
    html = (workspace / "runs" / "browser" / "report.html").read_text()
    for section in ("leaderboard", "plots", "classes", "confusion", "disagreements", "gallery"):
        assert f'<section id="{section}">' in html
    check_report_in_browser(workspace / "runs" / "browser" / "report.html", tmp_path / "profile")


PEAK_RSS = """
import resource, sys
from hftool import suite
outcome = suite.run(sys.argv[1], sys.argv[2])
print(outcome.rows[0]["n"], resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)
"""


@pytest.mark.slow
def test_memory_grows_by_under_50_mb_from_n_to_10n_examples(workspace, monkeypatch):
    """Peak RSS of a whole eval-suite run (evaluation, per-example statistics, 1000 resamples,
    records, report) on 2,000 and on 20,000 examples, each in a fresh process."""
    import os
    import subprocess
    import sys

    monkeypatch.chdir(workspace)
    peaks = {}
    for n in (2000, 20000):
        write_rows(Path(f"data/many-{n}.csv"), sentiment_rows(n, 50))
        Path(f"many-{n}.yaml").write_text(f"models: [runs/cls]\ndatasets:\n  many: {{path: data/many-{n}.csv}}\n")
        result = subprocess.run([sys.executable, "-c", PEAK_RSS, f"many-{n}.yaml", f"runs/many-{n}"], capture_output=True,
                                text=True, timeout=1200, env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)})
        assert result.returncode == 0, result.stderr[-3000:]
        scored, peak = map(int, result.stdout.split()[-2:])
        assert scored == n
        peaks[n] = peak
    assert peaks[20000] - peaks[2000] < 50, peaks
