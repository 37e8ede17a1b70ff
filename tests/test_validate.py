"""`hftool validate`: every planted problem of each task family is reported with its row, in one
run; warnings alone exit 0; `finetune --validate` refuses bad data and trains good data; a
training error names the validate command."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest


def write_csv(path: Path, header: list[str], rows: list[list]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def validate(cli, *args) -> tuple[int, dict]:
    result = cli("validate", *map(str, args), "--json")
    assert "Traceback" not in result.err, result.err
    return result.code, json.loads(result.out)


def found(report: dict, kind: str) -> set[tuple[str, int]]:
    return {(f["check"], f["row"]) for f in report[kind]}


def assert_reported(report: dict, errors: set, warnings: set = frozenset()) -> None:
    """Every planted problem is there, with its row, and nothing else is."""
    assert found(report, "errors") == errors, report["errors"]
    assert found(report, "warnings") == set(warnings), report["warnings"]
    for finding in report["errors"] + report["warnings"]:
        assert set(finding) == {"file", "row", "column", "check", "message", "fix"}
        assert finding["file"] and finding["message"] and finding["fix"], finding


@pytest.fixture
def images(tmp_path):
    """Image files with planted problems: good RGB and grey images, a CMYK one, an empty file, a
    text file named .png; and a path that does not exist."""
    from PIL import Image

    folder = tmp_path / "img"
    folder.mkdir()
    for name, mode, colour in (("red.png", "RGB", (220, 30, 30)), ("blue.png", "RGB", (30, 30, 220)),
                               ("grey.png", "L", 128), ("green.png", "RGB", (30, 220, 30))):
        Image.new(mode, (40, 30), colour).save(folder / name)
    Image.new("CMYK", (40, 30), (0, 255, 255, 0)).save(folder / "cmyk.jpg")
    (folder / "empty.png").write_bytes(b"")
    (folder / "text.png").write_text("not an image", encoding="utf-8")
    return {p.stem: f"img/{p.name}" for p in folder.iterdir()} | {"missing": "img/missing.png"}


def test_text_classification_every_planted_problem(cli, tmp_path):
    train = write_csv(tmp_path / "train.csv", ["text", "label"], [
        ["a fine film", "pos"],        # 1
        ["", "neg"],                   # 2 empty text (warning)
        ["a dull film", "neg"],        # 3
        ["a fine film", "pos"],        # 4 repeats row 1 (warning)
        ["a dull film", "pos"],        # 5 row 3's text with another label (warning)
        ["no label here", ""],         # 6 missing label
        ["a number label", "3"],       # 7 a label written as a number among names
        ["an ok film", "pos"],         # 8
    ])
    evaluation = write_csv(tmp_path / "val.csv", ["text", "label"], [
        ["a grand film", "pos"],       # 1
        ["an odd film", "meh"],        # 2 a label training never saw
        ["an ok film", "pos"],         # 3 a copy of training row 8 (leakage warning)
    ])
    code, report = validate(cli, "bert-cls", "--data", train, "--eval-data", evaluation)
    assert code == 2
    assert_reported(report, {("missing_label", 6), ("mixed_label_types", 7), ("unseen_label", 2)},
                    {("empty_text", 2), ("duplicate_row", 4), ("conflicting_labels", 5), ("leakage", 3)})
    by_check = {f["check"]: f for f in report["errors"]}
    assert by_check["unseen_label"]["file"] == str(evaluation)
    assert by_check["missing_label"]["column"] == "label"
    assert report["summary"]["leakage"] == 1
    assert report["summary"]["splits"]["train"]["rows"] == 8
    assert report["summary"]["splits"]["train"]["classes"] == {"pos": 4, "neg": 2, "3": 1}


def test_warnings_alone_exit_0_and_the_report_dir(cli, tmp_path):
    train = write_csv(tmp_path / "train.csv", ["text", "label"],
                      [["good", "pos"], ["good", "pos"], ["bad", "neg"], ["a much longer bad review", "neg"]])
    result = cli("validate", "bert-cls", "--data", train, "--report-dir", tmp_path / "report")
    assert result.code == 0, result.err
    assert "warning:" in result.out and "row 2: the same text as row 1" in result.out
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert found(report, "warnings") == {("duplicate_row", 2)} and report["errors"] == []
    assert report["summary"]["splits"]["train"]["values"]["text length (words)"]["max"] == 5
    from PIL import Image

    with Image.open(tmp_path / "report" / "summary.png") as png:
        assert png.width > 300 and png.height > 200


def test_the_terminal_shows_ten_findings_of_a_check_and_counts_the_rest(cli, tmp_path):
    rows = [["a fine film", "pos"], ["a dull film", "neg"]] + [["a fine film", "pos"]] * 25 + [["", "neg"]]
    train = write_csv(tmp_path / "train.csv", ["text", "label"], rows)
    result = cli("validate", "bert-cls", "--data", train)
    assert result.code == 0, result.err
    shown = [line for line in result.out.splitlines() if "[duplicate_row]" in line]
    assert len(shown) == 11 and "row 12: the same text as row 1" in shown[9]
    assert shown[10] == "warning: ... and 15 more [duplicate_row] (--json or --report-dir lists every one)"
    assert "row 28: column 'text' is empty" in result.out  # another check's finding is not buried
    assert "0 error(s), 26 warning(s)" in result.out
    code, report = validate(cli, "bert-cls", "--data", train)
    assert code == 0 and len([f for f in report["warnings"] if f["check"] == "duplicate_row"]) == 25
    refused = cli("finetune", "bert-cls", "--data", train, "--validate", "--max-steps", "1", "-o", tmp_path / "run")
    assert refused.code == 0, refused.err
    assert f"... and 15 more [duplicate_row] (`hftool validate bert-cls --data {train} --json` lists every one)" \
        in refused.err


def test_ner_every_planted_problem(cli, tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", [
        {"tokens": ["John", "lives", "in", "Paris"], "ner_tags": ["B-PER", "O", "O", "B-LOC"]},  # 1
        {"tokens": ["Mary", "Smith", "works"], "ner_tags": ["B-PER", "I-PER", "O"]},             # 2
        {"tokens": ["in", "New", "York"], "ner_tags": ["O", "I-LOC", "I-LOC"]},                   # 3 I- with no B-
        {"tokens": ["a", "b"], "ner_tags": ["O"]},                                                # 4 2 tokens, 1 tag
        {"tokens": ["Bob", "x"], "ner_tags": ["B-PER", "X-FOO"]},                                 # 5 not the scheme
        {"tokens": ["Ann", "and", "Tom"], "ner_tags": ["B-PER", "O", "B-PER"]},                   # 6
    ])
    evaluation = write_jsonl(tmp_path / "dev.jsonl", [
        {"tokens": ["Tom", "sings"], "ner_tags": ["B-PER", "O"]},
        {"tokens": ["Acme", "Inc"], "ner_tags": ["B-ORG", "I-ORG"]},                              # 2 a type not in training
    ])
    code, report = validate(cli, "bert-ner", "--data", train, "--eval-data", evaluation)
    assert code == 2
    assert_reported(report, {("tag_count_mismatch", 4), ("tag_outside_scheme", 5), ("unseen_label", 2)},
                    {("i_without_b", 3)})
    assert report["summary"]["splits"]["train"]["classes"] == {"PER": 5, "LOC": 2}


def test_conll_findings_name_lines(cli, tmp_path):
    train = tmp_path / "train.conll"
    train.write_text("John\tB-PER\nlives\tO\n\nin\tO\nNew\tI-LOC\nYork\tI-LOC\n\nBob\tB-PER\nx\tX-FOO\n\n"
                     "John\tB-PER\nlives\tO\n\nAnn\tB-PER\nsings\tO\n", encoding="utf-8")
    code, report = validate(cli, "bert-ner", "--data", train, "--eval-data", train)
    assert code == 2
    # line 5: I-LOC opens an entity; line 9: a tag outside the scheme; line 11: lines 1-2 again
    assert {("i_without_b", 5), ("tag_outside_scheme", 9)} <= found(report, "errors") | found(report, "warnings")
    duplicate = next(f for f in report["warnings"] if f["check"] == "duplicate_row" and f["file"] == str(train))
    assert duplicate["row"] == 11 and "line 11: the same sentence as line 1" in duplicate["message"]


def test_image_classification_every_planted_problem(cli, tmp_path, images):
    train = write_csv(tmp_path / "train.csv", ["image", "label"], [
        [images["red"], "red"],        # 1
        [images["blue"], "blue"],      # 2
        [images["cmyk"], "red"],       # 3 CMYK (warning)
        [images["empty"], "blue"],     # 4 zero bytes
        [images["text"], "red"],       # 5 not an image
        [images["missing"], "blue"],   # 6 no such file
        [images["grey"], ""],          # 7 no label
        [images["red"], "blue"],       # 8 row 1's image with another label (warning)
    ])
    evaluation = write_csv(tmp_path / "val.csv", ["image", "label"], [[images["blue"], "blue"], [images["green"], "green"]])
    code, report = validate(cli, "vit-cls", "--data", train, "--eval-data", evaluation)
    assert code == 2
    assert_reported(report, {("empty_file", 4), ("unreadable_file", 5), ("unreadable_file", 6), ("missing_label", 7),
                             ("unseen_label", 2)},
                    {("unusual_mode", 3), ("conflicting_labels", 8), ("leakage", 1)})
    sizes = report["summary"]["splits"]["train"]["values"]["image width (px)"]
    assert sizes["min"] == sizes["max"] == 40


def test_video_every_planted_problem(cli, tmp_path):
    from PIL import Image

    for clip in ("a", "b"):
        (tmp_path / clip).mkdir()
        for i in range(3):
            Image.new("RGB", (16, 16), (40 * i + (clip == "b") * 100, 0, 0)).save(tmp_path / clip / f"{i:03d}.png")
    (tmp_path / "nothing").mkdir()
    (tmp_path / "empty.mp4").write_bytes(b"")
    (tmp_path / "text.mp4").write_text("not a video", encoding="utf-8")
    train = write_csv(tmp_path / "train.csv", ["video", "label"], [
        ["a", "x"], ["b", "y"],
        ["empty.mp4", "x"],            # 3 zero bytes
        ["text.mp4", "y"],             # 4 not a video
        ["nothing", "x"],              # 5 a folder with no frames
        ["a", "x"],                    # 6 repeats row 1 (warning)
    ])
    code, report = validate(cli, "video-cls", "--data", train, "--eval-data", train)
    assert code == 2
    train_errors = {(c, r) for c, r in found(report, "errors")}
    assert {("empty_file", 3), ("unreadable_file", 4), ("unreadable_file", 5)} <= train_errors
    assert ("duplicate_row", 6) in found(report, "warnings")
    assert ("leakage", 1) in found(report, "warnings")


def test_detection_every_planted_problem(cli, tmp_path, images):
    def obj(bbox, category):
        return {"bbox": bbox, "category": category}

    train = write_jsonl(tmp_path / "train.jsonl", [
        {"image": images["red"], "image_id": 1, "objects": [obj([2, 2, 10, 10], "cell")]},            # 1
        {"image": images["blue"], "image_id": 2, "objects": [obj([30, 20, 20, 20], "cell")]},         # 2 outside 40x30 (warning)
        {"image": images["grey"], "image_id": 3, "objects": [obj([5, 5, 0, 8], "dot")]},              # 3 zero width
        {"image": images["green"], "image_id": 2, "objects": [obj([5, 5, 10, 8], "dot")]},            # 4 id of row 2
        {"image": images["cmyk"], "image_id": 5, "objects": []},                                      # 5 no boxes; CMYK
        {"image": images["red"], "image_id": 6, "objects": [obj([1, 1, -4, 5], "cell")]},             # 6 negative width
    ])
    evaluation = write_jsonl(tmp_path / "val.jsonl", [
        {"image": images["grey"], "objects": [obj([1, 1, 5, 5], "blob")]},                            # 1 unknown category
    ])
    code, report = validate(cli, "detr", "--data", train, "--eval-data", evaluation)
    assert code == 2
    assert_reported(report, {("box_empty", 3), ("duplicate_image_id", 4), ("box_empty", 6), ("unknown_category", 1)},
                    {("box_outside_image", 2), ("unusual_mode", 5), ("leakage", 1)})
    train_summary = report["summary"]["splits"]["train"]
    assert train_summary["counts"]["images without boxes"] == 1
    assert train_summary["classes"] == {"cell": 3, "dot": 2}


def test_captions_every_planted_problem(cli, tmp_path, images):
    train = write_jsonl(tmp_path / "train.jsonl", [
        {"image": images["red"], "captions": ["a red square", "red"]},
        {"image": images["blue"], "captions": ["a blue square", "  "]},                             # 2 empty caption
        {"image": images["text"], "captions": ["not really an image"]},                             # 3 unreadable
        {"image": images["green"], "captions": [""]},                                               # 4 empty caption
    ])
    code, report = validate(cli, "caption", "--data", train, "--eval-data", train)
    assert code == 2
    errors = found(report, "errors")
    assert {("empty_caption", 2), ("unreadable_file", 3), ("empty_caption", 4)} <= errors


def test_seq2seq_every_planted_problem(cli, tmp_path):
    rows = [{"source": f"a small house number {i}", "target": f"ein kleines haus nummer {i}"} for i in range(8)]
    rows[2]["source"] = ""                                                                          # 3 empty source
    rows[4]["target"] = " "                                                                         # 5 empty target
    rows[6]["target"] = " ".join(["sehr"] * 60)                                                     # 7 60 words for 5
    rows.append(dict(rows[0]))                                                                      # 9 repeats row 1
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    code, report = validate(cli, "seq2seq", "--data", train, "--eval-data", train)
    assert code == 2
    assert {("empty_side", 3), ("empty_side", 5)} <= found(report, "errors")
    assert {("length_ratio", 7), ("duplicate_row", 9)} <= found(report, "warnings")
    empty = {f["row"]: f for f in report["errors"]}
    assert "source" in empty[3]["message"] and "target" in empty[5]["message"]


def test_time_series_every_planted_problem(cli, tmp_path):
    dates = ["2021-03-01", "2021-03-02", "2021-03-03", "2021-03-04", "2021-03-05", "2021-03-09", "2021-03-07",
             "someday", "2021-03-10", "2021-03-11"]
    values = ["1.0", "2.0", "abc", "4.0", "", "6.0", "7.0", "8.0", "9.0", "10.0"]
    train = write_csv(tmp_path / "series.csv", ["date", "value"], list(zip(dates, values)))
    code, report = validate(cli, "lstm-forecast", "--data", train)
    assert code == 2
    # row 3: not a number; row 6: three days missing before it; row 7: before row 6; row 8: not a date
    assert_reported(report, {("not_a_number", 3), ("unsorted_dates", 7), ("not_a_date", 8)}, {("date_gap", 6)})
    assert report["summary"]["splits"]["train"]["counts"] == {"empty values": 1, "missing dates": 3}


def test_a_bad_file_is_one_finding_not_a_traceback(cli, tmp_path):
    bad = tmp_path / "train.jsonl"
    bad.write_text('{"text": "fine", "label": "a"}\n{"text": broken\n', encoding="utf-8")
    code, report = validate(cli, "bert-cls", "--data", bad)
    assert code == 2
    assert [(f["check"], f["fix"]) for f in report["errors"]] == [("unreadable_data", "fix or remove the line")]


def test_training_error_names_the_validate_command(cli, tmp_path):
    train = write_csv(tmp_path / "train.csv", ["text", "label"], [["good", "pos"], ["bad", "neg"], ["odd", ""]])
    result = cli("finetune", "bert-cls", "--data", train, "--eval-data", train, "-o", tmp_path / "run",
                 "--max-steps", "1")
    assert result.code == 2
    line = result.err.strip().splitlines()[-1]
    assert line.startswith("error: ") and "row 3" in line
    assert line.endswith(f"run `hftool validate bert-cls --data {train} --eval-data {train}` to list every problem")


def test_finetune_validate_refuses_bad_data_and_trains_good_data(cli, tmp_path, sentiment_csv):
    with open(sentiment_csv["train"], encoding="utf-8") as f:
        rows = list(csv.reader(f))
    rows[2][1] = rows[4][1] = ""  # data rows 2 and 4 lose their labels
    bad = write_csv(tmp_path / "bad.csv", rows[0], rows[1:])
    refused = cli("finetune", "bert-cls", "--validate", "--data", bad, "--eval-data", sentiment_csv["val"], "-o",
                  tmp_path / "bad-run",
                  "--max-steps", "1")
    assert refused.code == 2
    assert "row 2: no label" in refused.err and "row 4: no label" in refused.err
    assert refused.err.strip().splitlines()[-1].startswith("error: --validate: 2 error(s)")
    assert not (tmp_path / "bad-run").exists()
    trained = cli("finetune", "bert-cls", "--validate", "--data", sentiment_csv["train"], "--eval-data",
                  sentiment_csv["val"], "-o", tmp_path / "run", "--max-steps", "2", "train.eval_steps=2")
    assert trained.code == 0, trained.err
    assert (tmp_path / "run" / "model.safetensors").is_file()
    assert "eval_accuracy" in json.loads(trained.out)
