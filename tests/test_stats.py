"""Bootstrap intervals and paired tests: per-example statistics recompute every metric exactly,
on all examples and on resamples, against the metric run on the resampled examples themselves."""

from __future__ import annotations

import numpy as np
import pytest

from hftool import stats
from hftool.metrics import resampling


def draws(n: int, count: int = 15):
    """(weights, indices) of the first `count` seeded resamples of n examples."""
    return [(np.bincount(index, minlength=n), index) for index in stats.resamples(n, count)]


def feed(collector, batches):
    for values, ids in batches:
        collector.add_batch(values, ids)
    return collector.finish()


def classification_data(n=240, k=4, seed=0):
    rng = np.random.default_rng(seed)
    refs = rng.integers(0, k, n)
    preds = np.where(rng.random(n) < 0.7, refs, rng.integers(0, k, n))
    return preds, refs, rng.random(n)


def classification_stats(preds, refs, losses, batch=32):
    labels = [f"c{i}" for i in range(int(max(preds.max(), refs.max())) + 1)]
    order = np.random.default_rng(1).permutation(len(refs))  # gathered out of data order, as eval_order does
    batches = [({"predictions": preds[order[s:s + batch]], "references": refs[order[s:s + batch]],
                 "loss": losses[order[s:s + batch]]}, order[s:s + batch]) for s in range(0, len(refs), batch)]
    return feed(resampling.ClassStats(labels), batches)


def test_classification_statistics_recompute_sklearn_on_every_resample():
    from sklearn.metrics import accuracy_score, f1_score, precision_score

    preds, refs, losses = classification_data()
    collected = classification_stats(preds, refs, losses)
    for weights, index in [(np.ones(len(refs), int), np.arange(len(refs))), *draws(len(refs))]:
        got = collected.compute(weights)
        p, r = preds[index], refs[index]
        labels = list(range(4))
        assert got["accuracy"] == pytest.approx(accuracy_score(r, p), abs=1e-12)
        assert got["f1_macro"] == pytest.approx(f1_score(r, p, average="macro", labels=labels, zero_division=0), abs=1e-12)
        assert got["f1_weighted"] == pytest.approx(f1_score(r, p, average="weighted", labels=labels, zero_division=0),
                                                   abs=1e-12)
        assert got["precision_macro"] == pytest.approx(precision_score(r, p, average="macro", labels=labels,
                                                                       zero_division=0), abs=1e-12)
        assert got["loss"] == pytest.approx(losses[index].mean(), abs=1e-12)


def test_interval_matches_scipy_bootstrap_and_a_direct_resample():
    from scipy.stats import bootstrap

    preds, refs, losses = classification_data(n=400)
    collected = classification_stats(preds, refs, losses)
    reps = stats.replicates(collected.compute, len(refs), 2000)
    correct = (preds == refs).astype(float)
    # A direct resample with the same draws gives the same replicates, draw by draw.
    direct = [correct[index].mean() for index in stats.resamples(len(refs), 2000)]
    assert reps["accuracy"] == pytest.approx(direct, abs=1e-12)
    low, high = stats.interval(reps["accuracy"])
    assert (low, high) == pytest.approx(tuple(np.quantile(direct, [0.025, 0.975])), abs=1e-12)
    # scipy draws other resamples: the two percentile intervals agree to Monte Carlo error.
    reference = bootstrap((correct,), np.mean, n_resamples=20000, method="percentile", rng=np.random.default_rng(5))
    assert low == pytest.approx(reference.confidence_interval.low, abs=0.006)
    assert high == pytest.approx(reference.confidence_interval.high, abs=0.006)
    assert low < correct.mean() < high


def test_paired_test_finds_no_difference_between_identical_models_and_a_10_percent_flip():
    preds, refs, losses = classification_data(n=500)
    base = classification_stats(preds, refs, losses)
    same = classification_stats(preds.copy(), refs, losses)
    flipped = preds.copy()
    flip = np.random.default_rng(3).choice(len(preds), size=len(preds) // 10, replace=False)
    flipped[flip] = (flipped[flip] + 1) % 4  # 10% of the predictions changed to another class
    worse = classification_stats(flipped, refs, losses)
    reps = {name: stats.replicates(s.compute, len(refs), 1000) for name, s in
            (("base", base), ("same", same), ("worse", worse))}
    for metric in ("accuracy", "f1_macro"):
        value = base.compute()[metric]
        identical = stats.paired(value, same.compute()[metric], reps["base"][metric], reps["same"][metric])
        assert identical.p > 0.05 and identical.diff == 0 and not identical.significant(0.05)
        changed = stats.paired(value, worse.compute()[metric], reps["base"][metric], reps["worse"][metric])
        assert changed.p < 0.05 and changed.significant(0.05), metric
        assert changed.low <= changed.diff <= changed.high < 0


def test_entity_statistics_match_seqeval_with_windows_split_across_batches():
    from seqeval.metrics import accuracy_score, f1_score, precision_score, recall_score

    from hftool.metrics import Seqeval

    labels = ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]
    rng = np.random.default_rng(0)
    sentences = []
    for _ in range(60):
        length = int(rng.integers(0, 9))
        true = rng.choice(len(labels), length, p=[0.5, 0.15, 0.1, 0.15, 0.1])
        pred = np.where(rng.random(length) < 0.75, true, rng.integers(0, len(labels), length))
        sentences.append((pred, true))
    # Each sentence in two windows (its first half and the rest), which land in different batches.
    windows = []
    for example, (pred, true) in enumerate(sentences):
        half = len(pred) // 2
        for start, end in ((0, half), (half, len(pred))):
            width = 10
            row = {k: np.full(width, -100) for k in ("predictions", "references", "word_ids")}
            row["predictions"][: end - start] = pred[start:end]
            row["references"][: end - start] = true[start:end]
            row["word_ids"][: end - start] = np.arange(start, end)
            windows.append((row, example))
    rng.shuffle(windows)
    batches = []
    for s in range(0, len(windows), 16):
        chunk = windows[s:s + 16]
        values = {k: np.stack([w[k] for w, _ in chunk]) for k in ("predictions", "references", "word_ids")}
        values["example_ids"] = np.asarray([e for _, e in chunk])
        values["loss"] = rng.random(len(chunk))
        batches.append((values, None))
    collected = feed(resampling.EntityStats(labels), batches)
    metric = Seqeval(labels)
    for values, _ in batches:
        metric.add_batch(**{k: v for k, v in values.items() if k != "loss"})
    expected = metric.compute()
    assert collected.compute() == pytest.approx({"loss": collected.compute()["loss"], **expected}, abs=1e-12)
    for weights, index in draws(len(sentences)):
        true = [[labels[i] for i in sentences[j][1]] for j in index]
        pred = [[labels[i] for i in sentences[j][0]] for j in index]
        got = collected.compute(weights)
        assert got["f1"] == pytest.approx(f1_score(true, pred, zero_division=0), abs=1e-12)
        assert got["precision"] == pytest.approx(precision_score(true, pred, zero_division=0), abs=1e-12)
        assert got["recall"] == pytest.approx(recall_score(true, pred, zero_division=0), abs=1e-12)
        assert got["accuracy"] == pytest.approx(accuracy_score(true, pred), abs=1e-12)


def detection_data(images=24, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    truth, rows = {}, []
    for image in range(images):
        count = int(rng.integers(0, 4))
        xy = rng.uniform(0, 60, (count, 2))
        wh = rng.uniform(4, 50, (count, 2))  # small, medium and a few large objects
        boxes = np.concatenate([xy, xy + wh], 1)
        classes_ = rng.integers(0, classes, count)
        truth[image] = {"boxes": boxes.tolist(), "classes": classes_.tolist(), "crowd": [0] * count,
                        "area": (wh[:, 0] * wh[:, 1]).tolist()}
        k = 6
        found = np.zeros((k, 4))
        labels = rng.integers(0, classes, k)
        for j in range(k):  # some boxes near an object (hits at various IoUs), some anywhere
            if count and rng.random() < 0.6:
                o = int(rng.integers(0, count))
                found[j] = boxes[o] + rng.normal(0, 3, 4)
                labels[j] = classes_[o] if rng.random() < 0.8 else labels[j]
            else:
                corner = rng.uniform(0, 70, 2)
                found[j] = [*corner, *(corner + rng.uniform(4, 30, 2))]
        scores = rng.random(k)
        scores[int(rng.integers(0, k)):] = -1  # padding
        rows.append((image, found, scores, labels))
    return truth, rows


def detection_batches(rows, batch=5):
    out = []
    for s in range(0, len(rows), batch):
        chunk = rows[s:s + batch]
        out.append(({"index": np.asarray([r[0] for r in chunk]), "boxes": np.stack([r[1] for r in chunk]),
                     "scores": np.stack([r[2] for r in chunk]), "labels": np.stack([r[3] for r in chunk])}, None))
    return out


def test_detection_statistics_equal_pycocotools_on_resampled_images():
    from hftool.metrics.detection import coco_map

    labels = ["a", "b", "c"]
    truth, rows = detection_data()
    collected = feed(resampling.DetectionStats(labels, truth), detection_batches(rows))

    def pycocotools(index):
        """mAP of the images drawn, each drawn copy a new image of its own."""
        copies, detections = {}, []
        for new, image in enumerate(index):
            copies[new] = truth[image]
            _, boxes, scores, classes = rows[image]
            detections += [[new, x0, y0, x1 - x0, y1 - y0, s, c] for (x0, y0, x1, y1), s, c in zip(boxes, scores, classes)
                           if s >= 0]
        return coco_map(copies, list(range(len(index))), np.asarray(detections), labels)

    expected = pycocotools(np.arange(len(rows)))
    assert expected["map"] > 0.05 and expected["map_small"] > -1  # a test with something to find
    assert collected.compute() == pytest.approx(expected, abs=1e-12)
    for weights, index in draws(len(rows), 8):
        assert collected.compute(weights) == pytest.approx(pycocotools(index), abs=1e-12)


def test_caption_statistics_recompute_corpus_bleu_on_resamples():
    from hftool.metrics.captioning import caption_scores

    references = [["a red square on the left", "a red box"], ["two blue circles", "blue circles side by side"],
                  ["a green triangle"], ["a small red circle above a square"], ["nothing but a blue square"]] * 4
    hypotheses = ["a red square", "two circles", "a green triangle on top", "a red circle", "a blue square",
                  "a red box on the left", "blue circles", "a triangle", "a small circle above a square", "a square"] * 2

    class Tokens:  # caption_text decodes ids: here an id is the index of a hypothesis
        eos_token_id = pad_token_id = None

        def decode(self, ids, skip_special_tokens=True):
            return hypotheses[ids[0]]

    collector = resampling.CaptionStats(references, Tokens())
    collector.add_batch({"index": np.arange(20), "generated": np.arange(20)[:, None]}, None)
    collected = collector.finish()
    assert collected.compute() == pytest.approx(caption_scores(hypotheses, references), abs=1e-12)
    for weights, index in draws(20):
        expected = caption_scores([hypotheses[i] for i in index], [references[i] for i in index])
        got = collected.compute(weights)
        for name in ("bleu", "bleu_1", "bleu_2", "bleu_3", "rouge_l"):
            assert got[name] == pytest.approx(expected[name], abs=1e-12), name


def test_text_overlap_statistics_recompute_sacrebleu_on_resamples():
    from hftool.metrics import TextOverlap

    predictions = ["the cat sat on the mat", "a dog runs", "hello world", "it is raining today", "good morning all",
                   "the quick brown fox", "one two three", "see you soon"] * 3
    references = ["the cat is on the mat", "a dog is running", "hello there world", "it rains today",
                  "good morning everyone", "the quick brown fox jumps", "one two three four", "see you later"] * 3
    collected = feed(resampling.TextOverlapStats(), [({"predictions": np.asarray(predictions),
                                                       "references": np.asarray(references)}, np.arange(24))])
    for weights, index in [(np.ones(24), np.arange(24)), *draws(24, 6)]:
        expected = TextOverlap().compute(predictions=[predictions[i] for i in index],
                                         references=[references[i] for i in index])
        assert collected.compute(weights) == pytest.approx(expected, abs=1e-9)


def test_statistics_survive_save_and_load(tmp_path):
    preds, refs, losses = classification_data()
    collected = classification_stats(preds, refs, losses)
    collected.save(tmp_path / "stats.npz")
    loaded = resampling.load(tmp_path / "stats.npz")
    weights = draws(len(refs), 1)[0][0]
    assert type(loaded) is resampling.ClassStats and loaded.compute(weights) == collected.compute(weights)
    assert loaded.tables() == collected.tables()
    truth, rows = detection_data()
    detections = feed(resampling.DetectionStats(["a", "b", "c"], truth), detection_batches(rows))
    detections.save(tmp_path / "boxes.npz")
    assert resampling.load(tmp_path / "boxes.npz").compute(weights[:24]) == detections.compute(weights[:24])
