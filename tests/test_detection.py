"""Object detection (detr): COCO JSON, VOC XML, JSONL and hub-style data, box checks, box-moving
transforms, COCO mAP against pycocotools, backbone learning rate, and a tiny DETR end to end."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from hftool.config import load_config

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
BCCD = SHARED / "object_detection" / "bccd"
COCO_MINI = SHARED / "captioning" / "coco_mini" / "annotations" / "instances_train2017.json"
SPARSE_IDS = {"rectangle": 17, "circle": 3}  # COCO-style: not 0..n-1, and not in name order


def cfg(*overrides: str):
    return load_config("detr", overrides=list(overrides))


def write_coco(root: Path, n: int, seed: int, name: str = "instances.json", crowd: bool = True) -> Path:
    """root/images/<i>.png from the embedded sample's generator and root/annotations/<name> (COCO,
    sparse category ids, one crowd object), laid out as COCO itself is."""
    from hftool.samples.boxes import CLASSES, draw

    rng = random.Random(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "annotations").mkdir(exist_ok=True)
    coco = {"images": [], "annotations": [],
            "categories": [{"id": i, "name": k} for k, i in sorted(SPARSE_IDS.items(), key=lambda kv: kv[1])]}
    for i in range(n):
        image, boxes, classes = draw(rng)
        image.save(root / "images" / f"{i}.png")
        coco["images"].append({"id": 1000 + i, "file_name": f"{i}.png", "width": 96, "height": 96})
        for box, c in zip(boxes, classes):
            coco["annotations"].append({"id": len(coco["annotations"]) + 1, "image_id": 1000 + i, "bbox": box,
                                        "category_id": SPARSE_IDS[CLASSES[c]], "area": box[2] * box[3], "iscrowd": 0})
    if crowd:
        coco["annotations"].append({"id": 999, "image_id": 1000, "bbox": [0, 0, 30, 30], "category_id": 3,
                                    "area": 900, "iscrowd": 1, "segmentation": {"counts": [0, 900], "size": [96, 96]}})
    path = root / "annotations" / name
    path.write_text(json.dumps(coco))
    return path


@pytest.fixture
def coco(tmp_path):
    return write_coco(tmp_path, 12, seed=5)


def prepared(task, spec: str, *overrides: str, split: str = "train", labels=None):
    from hftool.data import load_source

    return task.prepare(cfg(*overrides), load_source(spec)[split], spec, labels)


def task():
    from hftool.tasks import get_task

    return get_task("object-detection")


# ---------------------------------------------------------------------------------- formats


def test_coco_sparse_ids_become_contiguous_and_crowds_are_kept_for_scoring(coco, capsys):
    from hftool.data.detection import category_ids

    rows, labels = prepared(task(), str(coco))
    assert labels == ["circle", "rectangle"]  # in category-id order: 3, 17
    assert category_ids(rows) == [3, 17]
    raw = json.loads(coco.read_text())
    first = [a for a in raw["annotations"] if a["image_id"] == 1000]
    assert rows[0]["crowd"] == [a["iscrowd"] for a in first]
    assert rows[0]["classes"] == [0 if a["category_id"] == 3 else 1 for a in first]
    x, y, w, h = first[0]["bbox"]
    assert rows[0]["boxes"][0] == pytest.approx([x, y, x + w, y + h])
    assert Path(rows[0]["image"]["path"]) == coco.parent.parent / "images" / "0.png"
    assert "images found in" in capsys.readouterr().err  # annotations/ beside images/, as COCO ships


def test_coco_rows_group_shuffled_annotations_per_image_in_file_order(tmp_path):
    from hftool.data import load_source

    rng = random.Random(3)
    images = [{"id": 50 - i, "file_name": f"{i}.png", "width": 90 + i} for i in range(30)]  # no height: 0
    annotations = [{"id": n, "image_id": rng.choice(images[:-3])["id"], "category_id": rng.choice((7, 2)),
                    "bbox": [rng.uniform(0, 9), rng.randint(0, 9), rng.uniform(1, 9), rng.uniform(1, 9)]}
                   for n in range(200)]
    for n in range(0, 200, 3):  # area and iscrowd where given; else w * h and 0
        annotations[n].update(area=n + 0.5, iscrowd=n % 2)
    rng.shuffle(annotations)
    path = tmp_path / "instances.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations,
                                "categories": [{"id": 7, "name": "b"}, {"id": 2, "name": "a"}]}))
    rows = load_source(str(path))["train"]
    expected = []  # a row per image, its annotations in file order (the last 3 images: none)
    for image in images:
        mine = [a for a in annotations if a["image_id"] == image["id"]]
        expected.append({"image": image["file_name"], "image_id": image["id"], "width": image["width"], "height": 0,
                         "objects": {"bbox": [np.float32(a["bbox"]).tolist() for a in mine],
                                     "category": [0 if a["category_id"] == 2 else 1 for a in mine],
                                     "iscrowd": [a.get("iscrowd", 0) for a in mine],
                                     "area": [float(np.float32(a.get("area") or a["bbox"][2] * a["bbox"][3]))
                                              for a in mine]}})
    assert rows.to_list() == expected and rows.features["objects"]["category"].feature.names == ["a", "b"]


def test_coco_is_streamed_an_item_at_a_time_and_reads_as_the_whole_document_does(tmp_path, monkeypatch):
    import hftool.data.sources as sources
    from hftool.data import load_source
    from hftool.errors import HftoolError

    path = write_coco(tmp_path, 6, seed=2)
    raw = json.loads(path.read_text())
    raw = {"info": {"year": 2017}, "licenses": [], "images": raw["images"],  # COCO's own key order: categories last
           "annotations": raw["annotations"], "categories": raw["categories"]}
    raw["images"].append({"id": 5000, "file_name": "5.png", "width": 96, "height": 96})  # no objects
    path.write_text(json.dumps(raw, indent=1))
    whole = load_source(str(path))["train"].to_list()
    real_loads = json.loads

    def no_document(text, *args, **kwargs):  # a whole-document parse of this file fails the test
        assert len(text) < 1000, "the COCO document was parsed whole"
        return real_loads(text, *args, **kwargs)

    monkeypatch.setattr(sources.json, "loads", no_document)
    monkeypatch.setattr(sources, "_json_document", lambda *a: pytest.fail("the COCO document was read whole"))
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "cache")  # not the first read's rows
    streamed = load_source(str(path))["train"]
    assert streamed.to_list() == whole and len(whole) == 7 and whole[-1]["objects"]["bbox"] == []
    assert streamed.features["objects"]["category"].feature.names == ["circle", "rectangle"]
    del raw["annotations"]
    path.write_text(json.dumps(raw))
    with pytest.raises(HftoolError, match=r'instances\.json: a COCO file needs an "annotations" list beside "images"'):
        load_source(str(path))


def test_coco_images_dir_is_used_and_a_missing_image_is_named(coco, tmp_path):
    from hftool.errors import HftoolError

    rows, _ = prepared(task(), str(coco), f"data.images_dir={tmp_path / 'images'}")
    assert len(rows) == 12
    (tmp_path / "images" / "3.png").unlink()
    with pytest.raises(HftoolError, match=r"3\.png: image file not found .*row 4.*data\.images_dir"):
        prepared(task(), str(coco), f"data.images_dir={tmp_path / 'images'}")


def test_coco_unknown_category_and_malformed_json_are_clear_errors(coco, cli):
    raw = json.loads(coco.read_text())
    raw["annotations"][2]["category_id"] = 5
    bad = coco.with_name("bad.json")
    bad.write_text(json.dumps(raw))
    result = cli("finetune", "detr", "--data", bad, "--max-steps", "1")
    assert result.code == 2
    assert f"{bad}: annotation {raw['annotations'][2]['id']} has category_id 5" in result.err
    assert "ids: 3, 17" in result.err
    broken = coco.with_name("broken.json")
    broken.write_text(coco.read_text()[:-40])
    result = cli("finetune", "detr", "--data", broken, "--max-steps", "1")
    assert result.code == 2 and f"error: {broken}:1: not valid JSON" in result.err


def write_voc(root: Path) -> Path:
    """A VOC folder: two images, one box each, an ImageSets split."""
    from PIL import Image

    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / sub).mkdir(parents=True)
    for n, (name, box) in enumerate((("cell", (10, 20, 50, 40)), ("dot", (5, 5, 15, 25)))):
        Image.new("RGB", (64, 48), (n * 100, 50, 50)).save(root / "JPEGImages" / f"img{n}.jpg")
        (root / "Annotations" / f"img{n}.xml").write_text(
            f"<annotation><filename>img{n}.jpg</filename><size><width>64</width><height>48</height><depth>3</depth>"
            f"</size><object><name>{name}</name><difficult>0</difficult><bndbox><xmin>{box[0]}</xmin><ymin>{box[1]}"
            f"</ymin><xmax>{box[2]}</xmax><ymax>{box[3]}</ymax></bndbox></object></annotation>")
    (root / "ImageSets" / "Main" / "train.txt").write_text("img0\nimg1\n")
    (root / "ImageSets" / "Main" / "val.txt").write_text("img1\n")
    return root


def test_voc_folder_reads_splits_classes_and_corner_boxes(tmp_path):
    root = write_voc(tmp_path / "voc")
    rows, labels = prepared(task(), str(root))
    assert labels == ["cell", "dot"]
    assert rows["boxes"] == [[[10, 20, 50, 40]], [[5, 5, 15, 25]]] and rows["classes"] == [[0], [1]]
    val, _ = prepared(task(), str(root), split="validation", labels=labels)
    assert val["classes"] == [[1]]


@pytest.mark.parametrize("fmt, normalized, box", [("xywh", False, [8, 16, 32, 24]), ("xyxy", False, [8, 16, 40, 40]),
                                                   ("xywh", True, [0.125, 0.25, 0.5, 0.375])])
def test_jsonl_boxes_in_each_declared_format(tmp_path, fmt, normalized, box):
    from PIL import Image

    Image.new("RGB", (64, 64)).save(tmp_path / "a.png")
    layouts = {"list": [{"bbox": box, "category": "cat"}, {"bbox": box, "category": "dog"}],  # one dict per object
               "columns": {"bbox": [box, box], "category": ["cat", "dog"]}}  # the hub's lists per field
    for layout, objects in layouts.items():
        (tmp_path / f"{layout}.jsonl").write_text(json.dumps({"image": "a.png", "objects": objects}))
        out, labels = prepared(task(), str(tmp_path / f"{layout}.jsonl"), f"data.box_format={fmt}",
                               f"data.box_normalized={str(normalized).lower()}")
        assert labels == ["cat", "dog"]
        assert out["boxes"][0] == [[8, 16, 40, 40]] * 2 and out["classes"] == [[0, 1]]


def test_hub_layout_with_a_class_label_feature_names_the_classes(tmp_path):
    """cppe-5's features: objects = Sequence({id, area, bbox, category: ClassLabel}), images stored inside."""
    import io

    import datasets
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (40, 30)).save(buffer, format="PNG")
    features = datasets.Features({"image": datasets.Image(), "objects": datasets.Sequence({
        "id": datasets.Value("int64"), "area": datasets.Value("int64"),
        "bbox": datasets.Sequence(datasets.Value("float32"), length=4),
        "category": datasets.ClassLabel(names=["Coverall", "Face_Shield", "Gloves"])})})
    rows = {"image": [{"bytes": buffer.getvalue(), "path": None}],
            "objects": [{"id": [1, 2], "area": [50, 60], "bbox": [[1, 2, 10, 5], [3, 3, 6, 10]], "category": [2, 0]}]}
    datasets.DatasetDict(train=datasets.Dataset.from_dict(rows, features=features)).save_to_disk(tmp_path / "hub")
    out, labels = prepared(task(), str(tmp_path / "hub"))
    assert labels == ["Coverall", "Face_Shield", "Gloves"]
    assert out["classes"] == [[2, 0]] and out["boxes"][0] == [[1, 2, 11, 7], [3, 3, 9, 13]]
    assert (out["width"], out["height"]) == ([40], [30]) and out["area"] == [[50, 60]]


def test_degenerate_and_outside_boxes_are_dropped_and_clipped_with_a_count(tmp_path, capsys):
    from PIL import Image

    Image.new("RGB", (50, 40)).save(tmp_path / "a.png")
    boxes = [[-5, 10, 20, 20], [10, 10, 0, 5], [10, 10, -4, 6], [60, 50, 10, 10], [30, 20, 40, 40], [5, 5, 10, 10]]
    (tmp_path / "d.jsonl").write_text(json.dumps({"image": "a.png", "objects": {"bbox": boxes, "category": ["x"] * 6}}))
    out, _ = prepared(task(), str(tmp_path / "d.jsonl"))
    assert out["boxes"][0] == [[0, 10, 15, 30], [30, 20, 50, 40], [5, 5, 15, 15]]
    assert "of 6 boxes, 2 reached outside the image and were clipped, 3 were empty, inverted or outside it" \
        in capsys.readouterr().err


def test_unknown_category_at_evaluation_names_the_row(tmp_path):
    from PIL import Image

    from hftool.errors import HftoolError

    Image.new("RGB", (20, 20)).save(tmp_path / "a.png")
    (tmp_path / "d.jsonl").write_text(json.dumps({"image": "a.png", "objects": {"bbox": [[1, 1, 5, 5]],
                                                                                 "category": ["bird"]}}))
    with pytest.raises(HftoolError, match=r"row 1: category 'bird' is not one the model knows \(cat, dog\)"):
        prepared(task(), str(tmp_path / "d.jsonl"), labels=["cat", "dog"])


@pytest.mark.skipif(not BCCD.is_dir(), reason="../shared/data/object_detection/bccd is not here")
def test_bccd_coco_json_and_voc_load_as_they_are():
    coco_rows, coco_labels = prepared(task(), str(BCCD / "coco_train.json"))
    voc_rows, voc_labels = prepared(task(), str(BCCD / "BCCD"))
    assert len(coco_rows) == len(voc_rows) == 205
    assert sorted(coco_labels) == voc_labels == ["Platelets", "RBC", "WBC"]
    assert sum(map(len, coco_rows["boxes"])) > 2500


@pytest.mark.skipif(not COCO_MINI.is_file(), reason="../shared/data/captioning/coco_mini is not here")
def test_coco_mini_loads_with_sparse_ids_and_crowds():
    from hftool.data.detection import category_ids

    rows, labels = prepared(task(), str(COCO_MINI))
    assert len(labels) == 80 and category_ids(rows)[-1] == 90
    assert sum(c for crowd in rows["crowd"] for c in crowd) == 8


# ------------------------------------------------------------------------------- transforms


def test_flip_and_resize_move_the_boxes_with_the_pixels():
    from hftool.tasks.object_detection import DetectionTransform, Geometry

    class Processor:  # what Geometry reads from an image processor
        size = {"shortest_edge": 10, "longest_edge": 40}
        image_mean, image_std, do_normalize = [0.0] * 3, [1.0] * 3, True

    image = torch.zeros(3, 20, 40, dtype=torch.uint8)
    image[:, 2:12, 4:14] = 255  # a white box at x 4..14, y 2..12
    geometry = Geometry(Processor())
    assert geometry.resized(20, 40) == (10, 20) and geometry.resized(20, 100) == (8, 40)  # the longer side caps it
    for hflip, expected in ((0.0, [2, 1, 7, 6]), (1.0, [13, 1, 18, 6])):
        pixels, boxes = DetectionTransform(geometry, train=True, hflip=hflip).apply(image, [[4, 2, 14, 12]])
        assert pixels.shape == (3, 10, 20) and boxes.tolist() == [expected]
        x0, y0, x1, y1 = expected
        assert pixels[0, y0:y1, x0:x1].min() > 0.7 and pixels[0].sum() == pytest.approx(25, abs=3)


def test_training_targets_leave_crowds_out_and_collate_pads_with_a_mask(coco):
    t = task()
    config = cfg()
    rows, labels = prepared(t, str(coco))
    parts = t.build(config, labels, rows)
    features = t.train_features(parts, config, rows)
    first = features[0]  # image 0 holds the crowd object
    assert len(first["labels"]["class_labels"]) == len(rows[0]["classes"]) - 1
    assert ((first["labels"]["boxes"] > 0) & (first["labels"]["boxes"] <= 1)).all()
    small = {**features[1], "pixel_values": features[1]["pixel_values"][:, :50, :70]}
    batch = t.collate(parts)([first, small])
    assert batch["pixel_values"].shape == (2, 3, 96, 96)
    assert batch["pixel_mask"][1].sum() == 50 * 70 and batch["pixel_mask"][1, :50, :70].all()
    assert batch["pixel_values"][1, :, 50:].abs().sum() == 0


# ---------------------------------------------------------------------------------- metrics


def truth_from(rows) -> dict:
    return {i: {k: rows[i][k] for k in ("boxes", "classes", "crowd", "area")} for i in range(len(rows))}


def score(truth, labels, index, boxes, scores, classes) -> dict:
    from hftool.metrics import CocoMeanAP

    metric = CocoMeanAP(truth, labels)
    metric.add_batch(index=index, boxes=boxes, scores=scores, labels=classes)
    return metric.compute()


def test_ground_truth_boxes_score_map_one(coco):
    rows, labels = prepared(task(), str(coco))
    truth = truth_from(rows)
    k = 5
    boxes, scores, classes = np.zeros((len(rows), k, 4)), -np.ones((len(rows), k)), np.zeros((len(rows), k), int)
    for i, t in truth.items():
        real = [j for j, c in enumerate(t["crowd"]) if not c]
        boxes[i, :len(real)] = [t["boxes"][j] for j in real]
        scores[i, :len(real)] = 0.9
        classes[i, :len(real)] = [t["classes"][j] for j in real]
    result = score(truth, labels, list(truth), boxes, scores, classes)
    assert result["map"] == result["map_50"] == result["map_75"] == result["mar_100"] == 1.0
    assert result["ap_circle"] == result["ap_rectangle"] == 1.0


def pycocotools_map(annotation_file: Path, detections: list[dict]) -> list[float]:
    import contextlib
    import io

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(annotation_file))
        evaluator = COCOeval(gt, gt.loadRes(detections), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return list(evaluator.stats)


@pytest.mark.parametrize("source", ["synthetic", "coco_mini"])
def test_map_equals_pycocotools_on_the_original_file(coco, source):
    """Noisy predictions scored by hftool (contiguous ids, row indices) and by pycocotools on the
    file itself (sparse ids, COCO image ids): the same twelve numbers."""
    from hftool.data.detection import category_ids
    from hftool.metrics.detection import STATS

    path = coco if source == "synthetic" else COCO_MINI
    if not path.is_file():
        pytest.skip("../shared/data/captioning/coco_mini is not here")
    rows, labels = prepared(task(), str(path))
    ids = category_ids(rows)
    raw = json.loads(Path(path).read_text())
    image_ids = [image["id"] for image in raw["images"]]
    rng = np.random.default_rng(0)
    k = 6
    boxes, scores, classes = np.zeros((len(rows), k, 4)), -np.ones((len(rows), k)), np.zeros((len(rows), k), int)
    detections = []
    for i, t in enumerate(truth_from(rows).values()):
        for j, (box, c) in enumerate(list(zip(t["boxes"], t["classes"]))[:k]):
            noisy = np.array(box) + rng.normal(0, 4, 4)
            label = c if rng.random() > 0.2 else int(rng.integers(len(labels)))
            s = float(rng.random())
            boxes[i, j], scores[i, j], classes[i, j] = noisy, s, label
            x0, y0, x1, y1 = boxes[i, j].astype(np.float32).astype(float)  # as the metric stores them
            detections.append({"image_id": image_ids[i], "category_id": ids[label], "bbox": [x0, y0, x1 - x0, y1 - y0],
                               "score": float(np.float32(s))})
    ours = score(truth_from(rows), labels, list(range(len(rows))), boxes, scores, classes)
    theirs = pycocotools_map(Path(path), detections)
    assert [ours[name] for name in STATS] == pytest.approx(theirs, abs=1e-9)
    assert 0.05 < ours["map"] < 0.95  # neither trivial nor perfect


def test_eval_outputs_are_fixed_size_and_index_each_image_once(coco):
    t = task()
    config = cfg()
    rows, labels = prepared(t, str(coco))
    parts = t.build(config, labels, rows)
    features = t.eval_features(parts, config, rows)
    batch = t.collate(parts)([features[i] for i in (4, 7, 2)])
    with torch.no_grad():
        outputs = parts.model.eval()(**t.model_inputs(batch))
    values = t.eval_outputs(parts, outputs, batch)
    assert values["index"].tolist() == [4, 7, 2]
    assert values["boxes"].shape == (3, 100, 4) and values["scores"].shape == values["labels"].shape == (3, 100)
    assert (values["scores"] >= 0).sum(dim=1).tolist() == [10, 10, 10]  # tiny:detr's 10 queries, the rest padding
    assert t.metric(parts, rows).truth.keys() == set(range(12))


# ------------------------------------------------------------------------------- optimizer


def test_backbone_lr_gives_the_backbone_its_own_groups(coco):
    from hftool.tasks.base import Task

    t = task()
    rows, labels = prepared(t, str(coco))
    model = t.build(cfg(), labels, rows).model
    default = t.param_groups(None, cfg(), model)
    assert default == Task().param_groups(None, cfg(), model) and len(default) == 2
    groups = t.param_groups(None, cfg("train.backbone_lr=1e-5"), model)
    backbone = {id(p) for n, p in model.named_parameters() if "backbone" in n and p.requires_grad}
    own = [g for g in groups if "lr" in g]
    assert {id(p) for g in own for p in g["params"]} == backbone and all(g["lr"] == 1e-5 for g in own)
    assert sum(len(g["params"]) for g in groups) == sum(len(g["params"]) for g in default)


# ------------------------------------------------------------------------------ end to end


def test_tiny_detr_trains_reloads_predicts_and_evaluates(tmp_path, cli):
    coco = write_coco(tmp_path / "data", 10, seed=1)
    out = tmp_path / "run"
    result = cli("finetune", "detr", "--data", coco, "-o", out, "--max-steps", "6", "--batch-size", "4",
                 "train.eval_steps=3", "train.logging_steps=3", "train.backbone_lr=5e-4", "data.validation_split=0.3")
    assert result.code == 0, result.err
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"eval_map", "eval_map_50", "eval_map_75", "eval_map_small", "eval_mar_100", "eval_ap_circle"} <= set(metrics)
    assert (out / "per_class_ap.tsv").read_text().splitlines()[0] == "class\tap"

    from transformers import AutoModelForObjectDetection, pipeline

    assert AutoModelForObjectDetection.from_pretrained(out).config.category_ids == [3, 17]
    images = [str(tmp_path / "data" / "images" / f"{i}.png") for i in range(3)]
    boxes = tmp_path / "boxes.jsonl"
    result = cli("predict", out, *images, "--threshold", "0", "--output", boxes, "--draw", tmp_path / "drawn")
    assert result.code == 0, result.err
    predictions = [json.loads(line) for line in boxes.read_text().splitlines()]
    assert [p["image"] for p in predictions] == images
    first = predictions[0]["objects"]
    assert len(first) == 10 and {o["category_id"] for o in first} <= {3, 17}  # COCO's ids given back
    assert first == sorted(first, key=lambda o: -o["score"])
    assert all(0 <= o["box"][0] <= o["box"][2] <= 96 for o in first)
    assert len(list((tmp_path / "drawn").glob("*.png"))) == 3

    # the run dir is an HF model dir: transformers' own pipeline finds the same best box
    found = pipeline("object-detection", model=str(out), threshold=0.0)(images[0])
    best = max(found, key=lambda o: o["score"])
    assert best["label"] == first[0]["label"] and best["score"] == pytest.approx(first[0]["score"], abs=2e-3)

    report = tmp_path / "eval.json"
    result = cli("evaluate", out, "--data", coco, f"data.images_dir={tmp_path / 'data' / 'images'}", "-o", report,
                 "eval.save_predictions=true")
    assert result.code == 0, result.err
    assert json.loads(report.read_text())["eval_map"] >= 0
    saved = [json.loads(line) for line in (tmp_path / "eval.predictions.jsonl").read_text().splitlines()]
    assert [r["index"] for r in saved] == list(range(10))  # every image once, in file order
    assert all(o["label"] in SPARSE_IDS and o["score"] >= 0 for r in saved for o in r["objects"])
    assert "predicts no box at all" in result.err  # 6 steps are far too few for a score of 0.5

    result = cli("predict", out, images[0], "--top-k", "2")
    assert result.code == 2 and "--top-k is not supported for object-detection models" in result.err
    result = cli("predict", out, str(tmp_path / "nope.png"))
    assert result.code == 2 and "nope.png: image file not found" in result.err


@pytest.mark.slow
def test_embedded_default_learns(tmp_path, cli):
    """The detr recipe as shipped (about 2 minutes on 2 cores): training loss down at least 30%, and
    mAP50 above 0.05 on its own training images (measured: loss -64%, train mAP50 0.23)."""
    out = tmp_path / "run"
    result = cli("finetune", "detr", "-o", out)
    assert result.code == 0, result.err
    losses = [r["loss"] for r in map(json.loads, (out / "log.jsonl").read_text().splitlines()) if r["type"] == "train"]
    assert losses[-1] < 0.7 * losses[0]
    report = tmp_path / "train.json"
    assert cli("evaluate", out, "--data", "sample:boxes", "--split", "train", "-o", report).code == 0
    assert json.loads(report.read_text())["eval_map_50"] > 0.05
