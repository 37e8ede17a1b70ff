"""Per-example statistics that a task's metrics can be recomputed from under any weighting of
the examples: what bootstrap intervals and paired tests resample (hftool.stats).

An evaluation feeds `add_batch` with each gathered batch of the task's eval outputs (the values
its metric gets), so only compact per-example numbers are kept, never logits or pixels. After
`finish()`, `compute(weights)` gives the metrics with example i counted weights[i] times. With
all weights 1 it equals the task's own metric; a resample's weights give what the metric would
give on the resampled examples, for corpus metrics too: pooled counts (entity F1, BLEU, chrF,
perplexity), a weighted confusion matrix (macro F1), per-image COCO match records (mAP).

Examples are identified by `ids` (their row in the evaluation data), so two models' statistics on
the same data line up example by example.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from hftool.errors import HftoolError


class ExampleStats:
    """The default: the per-example loss, when the task gives one (eval_loss)."""

    kind = "loss"

    def __init__(self, **meta):
        self.meta = meta  # JSON-able settings, saved with the arrays
        self._parts: dict[str, list[np.ndarray]] = {}
        self.ids = np.zeros(0, dtype=np.int64)  # example ids, sorted, after finish()
        self.columns: dict[str, np.ndarray] = {}

    # ------------------------------------------------------------------------- collection
    def rows(self, values: dict[str, np.ndarray], ids: np.ndarray | None) -> dict[str, np.ndarray]:
        """The task's compact statistics of one gathered batch; key "id" holds each row's example
        (default: `ids`, the batch's eval rows). Subclasses override this."""
        return {}

    def add_batch(self, values: dict[str, np.ndarray], ids: np.ndarray | None) -> None:
        """One gathered batch of eval outputs (+ per-example "loss"); `ids`: its eval rows."""
        out = self.rows(values, ids)
        out.setdefault("id", ids)
        if "loss" in values:
            out["loss_id"] = out["id"]
            out["loss_value"] = np.asarray(values["loss"], dtype=np.float64).reshape(-1)
        for key, value in out.items():
            self._parts.setdefault(key, []).append(np.asarray(value))

    def finish(self) -> ExampleStats:
        rows = {k: np.concatenate(v) for k, v in self._parts.items()}
        self._parts = {}
        ids = np.unique(np.concatenate([rows.get("id", np.zeros(0, np.int64)),
                                        rows.get("loss_id", np.zeros(0, np.int64))]).astype(np.int64))
        self.ids = ids
        if "loss_id" in rows:  # a sentence of several windows has several losses: pooled per example
            where = np.searchsorted(ids, rows.pop("loss_id"))
            loss = rows.pop("loss_value")
            self.columns["loss_sum"] = np.bincount(where, weights=loss, minlength=len(ids))
            self.columns["loss_count"] = np.bincount(where, minlength=len(ids)).astype(np.float64)
        self.columns.update(self.reduce(rows, ids))
        self.prepare()
        return self

    def reduce(self, rows: dict[str, np.ndarray], ids: np.ndarray) -> dict[str, np.ndarray]:
        """Concatenated rows -> the arrays kept (and saved). Default: one row per example, by id."""
        rows = dict(rows)
        row_ids = rows.pop("id", None)
        if not rows:
            return {}
        order = np.argsort(row_ids, kind="stable")
        if not np.array_equal(row_ids[order], ids):
            raise ValueError("per-example statistics need exactly one row per example")
        return {k: v[order] for k, v in rows.items()}

    def prepare(self) -> None:
        """Derived state compute() needs (rebuilt after load); none by default."""

    def __len__(self) -> int:
        return len(self.ids)

    # ---------------------------------------------------------------------------- metrics
    def compute(self, weights: np.ndarray | None = None) -> dict[str, float]:
        """Metrics (names without eval_) with example i counted weights[i] times (None: once each)."""
        w = np.ones(len(self.ids)) if weights is None else np.asarray(weights, dtype=np.float64)
        out = {}
        if "loss_sum" in self.columns:
            count = w @ self.columns["loss_count"]
            out["loss"] = float(w @ self.columns["loss_sum"] / count) if count else math.nan
        out.update(self.metrics(w))
        return out

    def metrics(self, w: np.ndarray) -> dict[str, float]:
        return {}

    def scores(self) -> np.ndarray:
        """A quality per example, higher is better: what ranks the examples where two models
        disagree most. Default: minus the loss."""
        if "loss_sum" in self.columns:
            return -self.columns["loss_sum"] / np.maximum(self.columns["loss_count"], 1)
        return np.zeros(len(self.ids))

    def tables(self) -> dict:
        """JSON-able extras for the report (per-class tables, a confusion matrix); none by default."""
        return {}

    # ---------------------------------------------------------------------------- storage
    def save(self, path: Path) -> None:
        np.savez_compressed(path, _ids=self.ids, _meta=np.array(json.dumps({"kind": self.kind, **self.meta})),
                            **self.columns)


def load(path: Path) -> ExampleStats:
    """ExampleStats saved by `save` (its class from the saved kind)."""
    with np.load(path, allow_pickle=False) as saved:
        meta = json.loads(str(saved["_meta"]))
        kind = meta.pop("kind")
        kinds = {cls.kind: cls for cls in (ExampleStats, *_subclasses(ExampleStats))}
        if kind not in kinds:
            raise HftoolError(f"{path}: statistics of unknown kind '{kind}'; delete the suite's cache folder")
        stats = kinds[kind](**meta)
        stats.ids = saved["_ids"]
        stats.columns = {k: saved[k] for k in saved.files if not k.startswith("_")}
    stats.prepare()
    return stats


def _subclasses(cls) -> list[type]:
    return [c for sub in cls.__subclasses__() for c in (sub, *_subclasses(sub))]


# -------------------------------------------------------------------------------- classification
class ClassStats(ExampleStats):
    """Single-label classification: accuracy, precision/recall/F1 macro/weighted/micro from a
    weighted confusion matrix, and top-k accuracy when the task gathers `top_k`."""

    kind = "classification"

    def __init__(self, labels: list[str], top_k: int | None = None, per_label: bool = False):
        super().__init__(labels=list(labels), top_k=top_k, per_label=per_label)
        self.labels = list(labels)

    def rows(self, values, ids):
        out = {"prediction": values["predictions"].astype(np.int32), "reference": values["references"].astype(np.int32)}
        if "top_k" in values and self.meta["top_k"]:
            top = values["top_k"][:, : self.meta["top_k"]]
            out["top_hit"] = (top == values["references"][:, None]).any(axis=1).astype(np.int8)
        return out

    def confusion(self, w: np.ndarray) -> np.ndarray:
        k = len(self.labels)
        pairs = self.columns["reference"].astype(np.int64) * k + self.columns["prediction"]
        return np.bincount(pairs, weights=w, minlength=k * k).reshape(k, k)

    def metrics(self, w):
        from hftool.metrics.classification import scores_from_confusion

        total = w.sum()
        correct = w @ (self.columns["prediction"] == self.columns["reference"])
        out = {"accuracy": float(correct / total) if total else 0.0}
        if "top_hit" in self.columns:
            out[f"top{self.meta['top_k']}_accuracy"] = float(w @ self.columns["top_hit"] / total) if total else 0.0
        named = self.labels if self.meta.get("per_label") else None  # as the task's metric has them
        return out | scores_from_confusion(self.confusion(w), np.arange(len(self.labels)), named)

    def scores(self):
        # Right or wrong first; the loss orders examples both models get right (or wrong).
        correct = (self.columns["prediction"] == self.columns["reference"]).astype(np.float64)
        return correct + 1e-3 * np.tanh(super().scores()) if "loss_sum" in self.columns else correct

    def tables(self):
        from hftool.metrics.classification import per_class

        matrix = self.confusion(np.ones(len(self.ids)))
        precision, recall, f1, support = per_class(matrix)
        rows = [{"class": name, "precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
                for name, p, r, f, s in zip(self.labels, precision, recall, f1, support)]
        return {"per_class": rows, "confusion": matrix.astype(int).tolist(), "labels": self.labels}


# ---------------------------------------------------------------------------------------- tagging
class EntityStats(ExampleStats):
    """Sequence labelling: per sentence, true, predicted and correct entities per type (seqeval's
    default mode) and correct/total words; entity precision/recall/F1 pool them."""

    kind = "entities"

    def __init__(self, labels: list[str]):
        super().__init__(labels=list(labels))
        self.labels = list(labels)
        self.types = sorted({label[2:] for label in self.labels if label != "O"})

    def rows(self, values, ids):
        # Windows of a long sentence may land in different batches: keep each scored word.
        word_ids = values["word_ids"]
        rows, positions = np.nonzero(word_ids >= 0)
        return {"id": values["example_ids"].astype(np.int64),  # sentences, including ones without words
                "word_sentence": values["example_ids"][rows].astype(np.int64),
                "word_index": word_ids[rows, positions].astype(np.int32),
                "word_prediction": values["predictions"][rows, positions].astype(np.int16),
                "word_reference": values["references"][rows, positions].astype(np.int16)}

    def reduce(self, rows, ids):
        from seqeval.metrics.sequence_labeling import get_entities

        order = np.lexsort((rows["word_index"], rows["word_sentence"]))
        sentence, word = rows["word_sentence"][order], rows["word_index"][order]
        predicted, reference = rows["word_prediction"][order], rows["word_reference"][order]
        if len(word) and np.any((np.diff(sentence) == 0) & (np.diff(word) != 1)):
            raise ValueError("a sentence's words were scored twice or a window was dropped")
        type_of = {t: i for i, t in enumerate(self.types)}
        counts = np.zeros((len(ids), len(self.types), 3), dtype=np.int32)  # true, predicted, correct
        words = np.zeros((len(ids), 2), dtype=np.int32)  # correct, total
        bounds = np.searchsorted(sentence, ids, side="left"), np.searchsorted(sentence, ids, side="right")
        for row, (start, end) in enumerate(zip(*bounds)):
            true = [self.labels[i] for i in reference[start:end]]
            pred = [self.labels[i] for i in predicted[start:end]]
            words[row] = (sum(a == b for a, b in zip(true, pred)), len(true))
            true_set, pred_set = set(get_entities(true)), set(get_entities(pred))
            for kind, *_ in true_set:
                counts[row, type_of[kind], 0] += 1
            for kind, *_ in pred_set:
                counts[row, type_of[kind], 1] += 1
            for kind, *_ in true_set & pred_set:
                counts[row, type_of[kind], 2] += 1
        return {"entities": counts, "words": words}

    def metrics(self, w):
        totals = np.tensordot(w, self.columns["entities"], axes=1)  # [types, 3]
        words = w @ self.columns["words"]

        def prf(true: float, predicted: float, correct: float) -> tuple[float, float, float]:
            p = correct / predicted if predicted else 0.0
            r = correct / true if true else 0.0
            return p, r, (2 * p * r / (p + r) if p + r else 0.0)

        p, r, f = prf(*totals.sum(axis=0))
        out = {"precision": p, "recall": r, "f1": f, "accuracy": float(words[0] / words[1]) if words[1] else 0.0}
        for kind, (true, predicted, correct) in zip(self.types, totals):
            p, r, f = prf(true, predicted, correct)
            out.update({f"{kind}_precision": p, f"{kind}_recall": r, f"{kind}_f1": f, f"{kind}_support": float(true)})
        return {k: float(v) for k, v in out.items()}

    def scores(self):
        """Per sentence: entity F1 (1 for a sentence with no entity on either side)."""
        true, predicted, correct = (self.columns["entities"].sum(axis=1)[:, i] for i in range(3))
        return np.where(true + predicted > 0, 2 * correct / np.maximum(true + predicted, 1), 1.0)

    def tables(self):
        totals = self.columns["entities"].sum(axis=0)
        metrics = self.metrics(np.ones(len(self.ids)))
        return {"per_class": [{"class": kind, "precision": metrics[f"{kind}_precision"],
                               "recall": metrics[f"{kind}_recall"], "f1": metrics[f"{kind}_f1"],
                               "support": int(true)} for kind, (true, _, _) in zip(self.types, totals)]}


# -------------------------------------------------------------------------------------- detection
AREAS = 4  # COCO's area ranges: all, small, medium, large
MAX_DETS = (1, 10, 100)


class DetectionStats(ExampleStats):
    """COCO mAP from per-image match records: pycocotools matches each batch's images (COCOeval's
    evaluateImg is per image), and the accumulation over images (precision at 101 recall points,
    averaged over IoU thresholds and classes) is redone here with each image's detections and
    objects counted by its weight. With weights 1 it is pycocotools' accumulate; with a resample's
    weights, pycocotools on the resampled images (duplicates included)."""

    kind = "detection"

    def __init__(self, labels: list[str], truth: dict | None = None):
        super().__init__(labels=list(labels))
        self.labels = list(labels)
        self.truth = truth or {}

    def rows(self, values, ids):
        import contextlib
        import io

        from pycocotools.cocoeval import COCOeval

        from hftool.metrics.detection import coco_ground_truth

        images = [int(i) for i in values["index"]]
        detections = [[image, x0, y0, x1 - x0, y1 - y0, score, label]
                      for image, rows, scores, labels in zip(images, values["boxes"], values["scores"], values["labels"])
                      for (x0, y0, x1, y1), score, label in zip(rows, scores, labels) if score >= 0]
        out = {"id": np.asarray(images, dtype=np.int64)}
        det = {"image": [], "category": [], "rank": [], "score": [], "match": [], "ignore": []}
        gt = {"image": [], "category": [], "count": []}
        gt_coco = coco_ground_truth(self.truth, images, len(self.labels))
        if detections or any(len(self.truth[i]["boxes"]) for i in images):
            with contextlib.redirect_stdout(io.StringIO()):
                evaluator = COCOeval(gt_coco, gt_coco.loadRes(np.asarray(detections, dtype=np.float64))
                                     if detections else _empty_results(gt_coco), "bbox")
                evaluator.params.imgIds = sorted(set(images))
                evaluator.evaluate()
            thresholds = len(evaluator.params.iouThrs)
            bits = (1 << np.arange(thresholds, dtype=np.uint16)).astype(np.uint16)
            per_area = len(evaluator.params.imgIds)
            cells = evaluator.evalImgs  # category-major, then area range, then image
            for c in range(len(evaluator.params.catIds)):
                for i in range(per_area):
                    entries = [cells[(c * AREAS + a) * per_area + i] for a in range(AREAS)]
                    if entries[0] is None:
                        continue
                    first = entries[0]
                    n = len(first["dtIds"])
                    if n:
                        det["image"].append(np.full(n, first["image_id"]))
                        det["category"].append(np.full(n, first["category_id"]))
                        det["rank"].append(np.arange(n))
                        det["score"].append(np.asarray(first["dtScores"]))
                        det["match"].append(np.stack([(np.asarray(e["dtMatches"]) > 0).T @ bits for e in entries], 1))
                        det["ignore"].append(np.stack([np.asarray(e["dtIgnore"], bool).T @ bits for e in entries], 1))
                    counts = [int(np.count_nonzero(np.asarray(e["gtIgnore"]) == 0)) for e in entries]
                    if any(counts):
                        gt["image"].append(first["image_id"])
                        gt["category"].append(first["category_id"])
                        gt["count"].append(counts)
        for key, parts in det.items():
            dtype = {"score": np.float32, "match": np.uint16, "ignore": np.uint16}.get(key, np.int64)
            shape = (0, AREAS) if key in ("match", "ignore") else (0,)
            out[f"det_{key}"] = np.concatenate(parts).astype(dtype) if parts else np.zeros(shape, dtype)
        out["gt_image"] = np.asarray(gt["image"], dtype=np.int64)
        out["gt_category"] = np.asarray(gt["category"], dtype=np.int64)
        out["gt_count"] = np.asarray(gt["count"], dtype=np.int64).reshape(-1, AREAS)
        return out

    def reduce(self, rows, ids):
        rows = dict(rows)
        rows.pop("id")
        # COCO's order before its stable sort by score: images ascending, each image's boxes best first.
        order = np.lexsort((rows["det_rank"], rows["det_image"]))
        out = {k: v[order] for k, v in rows.items() if k.startswith("det_")}
        return out | {k: v for k, v in rows.items() if k.startswith("gt_")}

    def prepare(self):
        """Per class: its detections sorted by score as COCOeval.accumulate sorts them."""
        c = self.columns
        if "det_image" not in c:
            return
        self._det_slot = np.searchsorted(self.ids, c["det_image"])
        self._gt_slot = np.searchsorted(self.ids, c["gt_image"])
        self._classes = []
        thresholds = np.arange(10, dtype=np.uint16)
        for k in range(len(self.labels)):
            mine = np.flatnonzero(c["det_category"] == k)
            mine = mine[np.argsort(-c["det_score"][mine].astype(np.float64), kind="mergesort")]
            match = ((c["det_match"][mine][:, :, None] >> thresholds) & 1).astype(bool).transpose(1, 2, 0)
            ignore = ((c["det_ignore"][mine][:, :, None] >> thresholds) & 1).astype(bool).transpose(1, 2, 0)
            tps, fps = match & ~ignore, ~match & ~ignore  # [areas, thresholds, detections]
            gts = np.flatnonzero(c["gt_category"] == k)
            self._classes.append((self._det_slot[mine], c["det_rank"][mine], tps, fps, gts))

    def metrics(self, w):
        from hftool.metrics.detection import STATS

        recall_points = np.linspace(0.0, 1.00, 101)
        classes = len(self.labels)
        precision = -np.ones((10, 101, classes, AREAS))  # at 100 detections per image
        recall = -np.ones((10, classes, AREAS, len(MAX_DETS)))
        for k, (slots, ranks, tps, fps, gts) in enumerate(getattr(self, "_classes", [])):
            objects = w[self._gt_slot[gts]] @ self.columns["gt_count"][gts]  # per area
            weight = w[slots]
            for a in range(AREAS):
                if objects[a] == 0:
                    continue
                tp_sum = np.cumsum(tps[a] * weight, axis=1)
                fp_sum = np.cumsum(fps[a] * weight, axis=1)
                n = tp_sum.shape[1]
                rc = tp_sum / objects[a]
                pr = tp_sum / (fp_sum + tp_sum + np.spacing(1))
                recall[:, k, a, 2] = rc[:, -1] if n else 0.0
                if a == 0:
                    for m, limit in enumerate(MAX_DETS[:-1]):
                        kept = ranks < limit
                        recall[:, k, 0, m] = (tps[0][:, kept] * weight[kept]).sum(axis=1) / objects[0] if n else 0.0
                envelope = np.maximum.accumulate(pr[:, ::-1], axis=1)[:, ::-1]
                precision[:, :, k, a] = 0.0
                for t in range(10):
                    found = np.searchsorted(rc[t], recall_points, side="left")
                    valid = found < n
                    precision[t, valid, k, a] = envelope[t, found[valid]]

        def mean(values: np.ndarray) -> float:
            values = values[values > -1]
            return float(values.mean()) if values.size else -1.0

        stats = [mean(precision[:, :, :, 0]), mean(precision[0, :, :, 0]), mean(precision[5, :, :, 0]),
                 *(mean(precision[:, :, :, a]) for a in (1, 2, 3)),
                 *(mean(recall[:, :, 0, m]) for m in range(3)), *(mean(recall[:, :, a, 2]) for a in (1, 2, 3))]
        out = dict(zip(STATS, stats))
        out.update({f"ap_{name}": mean(precision[:, :, k, 0]) for k, name in enumerate(self.labels)})
        return out

    def scores(self):
        """Per image: F1 at IoU 0.5 of the boxes scoring 0.5 or more (what `predict` shows)."""
        from hftool.metrics.detection import SCORE_SEEN

        c = self.columns
        seen = (c["det_score"] >= SCORE_SEEN) & ((c["det_ignore"][:, 0] & 1) == 0)
        hits = seen & ((c["det_match"][:, 0] & 1) == 1)
        slot = self._det_slot
        found = np.bincount(slot[hits], minlength=len(self.ids))
        shown = np.bincount(slot[seen], minlength=len(self.ids))
        objects = np.bincount(self._gt_slot, weights=c["gt_count"][:, 0], minlength=len(self.ids))
        total = shown + objects
        return np.where(total > 0, 2 * found / np.maximum(total, 1), 1.0)

    def tables(self):
        metrics = self.metrics(np.ones(len(self.ids)))
        objects = np.bincount(self.columns["gt_category"], weights=self.columns["gt_count"][:, 0],
                              minlength=len(self.labels))
        return {"per_class": [{"class": name, "ap": metrics[f"ap_{name}"], "objects": int(n)}
                              for name, n in zip(self.labels, objects)]}


def _empty_results(gt):
    """A COCO results object with no detections (loadRes refuses an empty array)."""
    import copy

    from pycocotools.coco import COCO

    results = COCO()
    results.dataset = {"images": copy.deepcopy(gt.dataset["images"]), "annotations": [],
                       "categories": copy.deepcopy(gt.dataset["categories"])}
    results.createIndex()
    return results


# ------------------------------------------------------------------------------------- captioning
class CaptionStats(ExampleStats):
    """Captioning: per image, BLEU counts (pooled: corpus BLEU-1..4), ROUGE-L and CIDEr-D.

    CIDEr-D's idf comes from the references of the whole evaluated set and stays fixed under
    resampling: a resample reweights the per-image scores (recomputing the idf for each of 1,000
    resamples would cost as much as 1,000 evaluations)."""

    kind = "captions"

    def __init__(self, references: list[list[str]] | None = None, tokenizer=None):
        super().__init__()
        self.references, self.tokenizer = references or [], tokenizer

    def rows(self, values, ids):
        from hftool.metrics.captioning import caption_text

        return {"id": values["index"].astype(np.int64),
                "caption": np.asarray([caption_text(self.tokenizer, ids) for ids in values["generated"]], dtype=str)}

    def reduce(self, rows, ids):
        from hftool.metrics import captioning as cap

        captions = super().reduce(rows, ids)["caption"]
        hyps = [cap.tokenize(str(c)) for c in captions]
        refs = [[cap.tokenize(r) for r in self.references[i]] for i in ids]
        return {"bleu": np.asarray([cap.bleu_statistics(h, r) for h, r in zip(hyps, refs)], dtype=np.float64).reshape(-1, 2 * cap.MAX_N + 2),
                "rouge_l": np.asarray(cap.rouge_l_scores(hyps, refs)), "cider": np.asarray(cap.cider_d_scores(hyps, refs))}

    def metrics(self, w):
        from hftool.metrics.captioning import bleu_from_statistics

        total = w.sum()
        scores = bleu_from_statistics(list(w @ self.columns["bleu"]))
        return {"bleu": scores[3], **{f"bleu_{k + 1}": scores[k] for k in range(3)},
                "rouge_l": float(w @ self.columns["rouge_l"] / total) if total else 0.0,
                "cider": float(w @ self.columns["cider"] / total) if total else 0.0}

    def scores(self):
        return self.columns["cider"]


# --------------------------------------------------------------------------------- generated text
class TextOverlapStats(ExampleStats):
    """Translation/summarization: sacrebleu's sentence statistics for BLEU and chrF (pooled, as
    its own paired bootstrap pools them), ROUGE F1 and length per example."""

    kind = "text-overlap"

    def __init__(self, names: list[str] | None = None, tokenizer=None):
        from hftool.metrics.text_overlap import check_names

        super().__init__(names=list(check_names(names)))
        self.tokenizer = tokenizer

    def rows(self, values, ids):
        from hftool.metrics.text_overlap import TextOverlap

        decode = TextOverlap(tokenizer=self.tokenizer).decode
        return {"prediction": np.asarray(decode(list(values["predictions"])), dtype=str),
                "reference": np.asarray(decode(list(values["references"])), dtype=str)}

    def _scorers(self) -> dict:
        import sacrebleu

        return {name: scorer() for name, scorer in (("bleu", sacrebleu.BLEU), ("chrf", sacrebleu.CHRF))
                if name in self.meta["names"]}

    def reduce(self, rows, ids):
        from hftool.metrics.text_overlap import rouge, words

        rows = super().reduce(rows, ids)
        predictions, references = [str(p) for p in rows["prediction"]], [str(r) for r in rows["reference"]]
        out = {"gen_len": np.asarray([len(words(p)) for p in predictions], dtype=np.float64)}
        for name, scorer in self._scorers().items():
            # sacrebleu's per-sentence statistics: the same API its paired bootstrap test uses.
            out[name] = np.asarray(scorer._extract_corpus_statistics(predictions, [references]), dtype=np.float64)
        for name in self.meta["names"]:
            if name.startswith("rouge"):
                out[name] = np.asarray([100 * rouge(name, p, r) for p, r in zip(predictions, references)])
        return out

    def prepare(self):
        self._sacrebleu = self._scorers()

    def metrics(self, w):
        total = w.sum()
        out = {}
        for name in self.meta["names"]:
            if name in self._sacrebleu:
                out[name] = float(self._sacrebleu[name]._compute_score_from_stats(list(w @ self.columns[name])).score)
            else:
                out[name] = float(w @ self.columns[name] / total) if total else 0.0
        out["gen_len"] = float(w @ self.columns["gen_len"] / total) if total else 0.0
        return out


# -------------------------------------------------------------------------------- language models
class PerplexityStats(ExampleStats):
    """Causal LM: summed token loss and token count per block; perplexity pools them."""

    kind = "perplexity"

    def rows(self, values, ids):
        return {"loss_sum": values["loss_sum"].astype(np.float64), "tokens": values["tokens"].astype(np.float64)}

    def metrics(self, w):
        tokens = w @ self.columns["tokens"]
        if not tokens:
            return {"loss": math.nan, "perplexity": math.nan}
        loss = float(w @ self.columns["loss_sum"] / tokens)
        return {"loss": loss, "perplexity": math.exp(min(loss, 700.0))}

    def scores(self):
        return -self.columns["loss_sum"] / np.maximum(self.columns["tokens"], 1)


class BitsPerDimStats(PerplexityStats):
    """Image GPT: perplexity's pooled sums, and their mean loss in bits (bits_per_dim)."""

    kind = "bits_per_dim"

    def metrics(self, w):
        out = super().metrics(w)
        return {**out, "bits_per_dim": out["loss"] / math.log(2)}


# ------------------------------------------------------------------------------------ forecasting
class ForecastStats(ExampleStats):
    """Forecasting: per window, the sums behind MAE, RMSE, MAPE and sMAPE over its series, of the
    model and of the naive and seasonal-naive forecasts (hftool.metrics.forecasting.errors)."""

    kind = "forecast"
    SIDES = (("", "predictions"), ("naive_", "naive"), ("seasonal_naive_", "seasonal"))

    def rows(self, values, ids):
        truth = np.asarray(values["references"], dtype=np.float64)
        nonzero = truth != 0
        out = {"values": truth.shape[1] * np.ones(len(truth)), "nonzero": nonzero.sum(1).astype(np.float64)}
        for prefix, key in self.SIDES:
            guess = np.asarray(values[key], dtype=np.float64)
            error, scale = guess - truth, np.abs(truth) + np.abs(guess)
            with np.errstate(divide="ignore", invalid="ignore"):
                out[f"{prefix}abs"] = np.abs(error).sum(1)
                out[f"{prefix}squared"] = (error ** 2).sum(1)
                out[f"{prefix}ape"] = np.where(nonzero, np.abs(error / np.where(nonzero, truth, 1)), 0.0).sum(1)
                out[f"{prefix}sape"] = np.where(scale > 0, 2 * np.abs(error) / np.where(scale > 0, scale, 1), 0.0).sum(1)
        return out

    def metrics(self, w):
        count, nonzero = w @ self.columns["values"], w @ self.columns["nonzero"]
        out = {}
        for prefix, _ in self.SIDES:
            if not count:
                out.update({f"{prefix}{k}": math.nan for k in ("mae", "rmse", "mape", "smape")})
                continue
            out[f"{prefix}mae"] = float(w @ self.columns[f"{prefix}abs"] / count)
            out[f"{prefix}rmse"] = float(math.sqrt(w @ self.columns[f"{prefix}squared"] / count))
            out[f"{prefix}mape"] = float(w @ self.columns[f"{prefix}ape"] / nonzero * 100) if nonzero else math.nan
            out[f"{prefix}smape"] = float(w @ self.columns[f"{prefix}sape"] / count * 100)
        return out

    def scores(self):
        return -self.columns["abs"] / np.maximum(self.columns["values"], 1)
