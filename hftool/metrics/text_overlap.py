"""Overlap of generated texts with their references: BLEU and chrF (sacrebleu) and ROUGE.

ROUGE is computed here, the way Google's rouge-score package does it without stemming (the
setting HF's run_summarization reports), except that words are runs of Unicode letters and
digits: rouge-score keeps only a-z and 0-9, which splits "Männer" into "m" and "nner". On
ASCII text the two agree. All scores are on a 0-100 scale, as sacrebleu reports BLEU.
"""

from __future__ import annotations

import re
from collections import Counter

import datasets
import evaluate

from hftool.errors import HftoolError

NAMES = ("bleu", "chrf", "rouge1", "rouge2", "rougeL", "rougeLsum")
_TEXT = datasets.Features({"predictions": datasets.Value("string"), "references": datasets.Value("string")})
_IDS = datasets.Features({"predictions": datasets.Sequence(datasets.Value("int64")),
                          "references": datasets.Sequence(datasets.Value("int64"))})
_WORD = re.compile(r"[^\W_]+")


def check_names(names: list[str] | None) -> tuple[str, ...]:
    """The metrics to compute: `names` (eval.metrics), checked, or all of them."""
    if names is None:
        return NAMES
    unknown = [n for n in names if n not in NAMES]
    if unknown or not names:
        raise HftoolError(f"eval.metrics: {', '.join(map(str, unknown)) or 'an empty list'} is not a metric of this task; "
                          f"choose from {', '.join(NAMES)}")
    return tuple(names)


class TextOverlap(evaluate.Metric):
    """Corpus BLEU and chrF, and ROUGE-1/2/L/Lsum F1 averaged over examples.

    Rows are (prediction, reference) pairs: texts, or token ids when a `tokenizer` is given
    (ids below 0, such as label padding -100, and special tokens are dropped before decoding).

    compute() -> {name: score} for each of `names` (default: bleu, chrf, rouge1, rouge2,
    rougeL, rougeLsum), plus gen_len, the mean length of the predictions in words.
    """

    def __init__(self, names: list[str] | tuple[str, ...] | None = None, tokenizer=None, **kwargs):
        super().__init__(keep_in_memory=True, **kwargs)
        self.names = check_names(list(names) if names is not None else None)
        self.tokenizer = tokenizer

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description="sacrebleu BLEU and chrF, ROUGE-1/2/L/Lsum F1 (0-100).",
            citation="", inputs_description="predicted and reference texts (or token ids with a tokenizer)",
            features=[_TEXT, _IDS],
        )

    def decode(self, values) -> list[str]:
        if not values or isinstance(values[0], str):
            return list(values)
        if self.tokenizer is None:
            raise ValueError("TextOverlap got token ids but no tokenizer to decode them")
        rows = [[int(t) for t in ids if t >= 0] for ids in values]
        return [text.strip() for text in self.tokenizer.batch_decode(rows, skip_special_tokens=True)]

    def _compute(self, predictions, references) -> dict[str, float]:
        import sacrebleu

        predictions, references = self.decode(predictions), self.decode(references)
        scores: dict[str, float] = {}
        if "bleu" in self.names:
            scores["bleu"] = sacrebleu.corpus_bleu(predictions, [references]).score
        if "chrf" in self.names:
            scores["chrf"] = sacrebleu.corpus_chrf(predictions, [references]).score
        for name in self.names:
            if name.startswith("rouge"):
                pairs = [rouge(name, p, r) for p, r in zip(predictions, references)]
                scores[name] = 100 * sum(pairs) / len(pairs) if pairs else 0.0
        scores["gen_len"] = sum(len(words(p)) for p in predictions) / max(1, len(predictions))
        return scores


def words(text: str) -> list[str]:
    """Lower-cased runs of letters and digits: ROUGE's tokens."""
    return _WORD.findall(text.lower())


def _f1(hits: int, predicted: int, reference: int) -> float:
    if hits == 0:
        return 0.0
    precision, recall = hits / predicted, hits / reference
    return 2 * precision * recall / (precision + recall)


def _ngrams(tokens: list[str], n: int) -> Counter:
    return Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))


def _lcs_table(a: list[str], b: list[str]) -> list[list[int]]:
    table = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i, x in enumerate(a, 1):
        for j, y in enumerate(b, 1):
            table[i][j] = table[i - 1][j - 1] + 1 if x == y else max(table[i - 1][j], table[i][j - 1])
    return table


def _lcs_indices(reference: list[str], candidate: list[str]) -> set[int]:
    """Positions in `reference` of one longest common subsequence with `candidate`."""
    table, i, j, found = _lcs_table(reference, candidate), len(reference), len(candidate), set()
    while i > 0 and j > 0:
        if reference[i - 1] == candidate[j - 1]:
            found.add(i - 1)
            i, j = i - 1, j - 1
        elif table[i - 1][j] >= table[i][j - 1]:
            i -= 1
        else:
            j -= 1
    return found


def rouge(name: str, prediction: str, reference: str) -> float:
    """ROUGE F1 (0-1) of one prediction: rouge1, rouge2 (n-gram overlap), rougeL (longest common
    subsequence) or rougeLsum (LCS unioned over sentences, which are lines)."""
    if name == "rougeLsum":
        return _rouge_lsum(prediction, reference)
    predicted, ref = words(prediction), words(reference)
    if name == "rougeL":
        return _f1(_lcs_table(predicted, ref)[-1][-1], len(predicted), len(ref))
    n = int(name.removeprefix("rouge"))
    p, r = _ngrams(predicted, n), _ngrams(ref, n)
    return _f1(sum((p & r).values()), sum(p.values()), sum(r.values()))


def _rouge_lsum(prediction: str, reference: str) -> float:
    """Summary-level LCS: each reference sentence's tokens in the union of its LCSs with every
    predicted sentence, each token counted at most as often as it occurs on both sides."""
    predicted = [words(line) for line in prediction.split("\n")]
    ref = [words(line) for line in reference.split("\n")]
    predicted, ref = [s for s in predicted if s], [s for s in ref if s]
    left_p, left_r = Counter(t for s in predicted for t in s), Counter(t for s in ref for t in s)
    total_p, total_r = sum(left_p.values()), sum(left_r.values())
    hits = 0
    for sentence in ref:
        union = set().union(*(_lcs_indices(sentence, c) for c in predicted)) if predicted else set()
        for token in (sentence[i] for i in sorted(union)):
            if left_p[token] > 0 and left_r[token] > 0:
                hits += 1
                left_p[token] -= 1
                left_r[token] -= 1
    return _f1(hits, total_p, total_r)
