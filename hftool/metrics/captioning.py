"""Caption metrics without Java: corpus BLEU-1..4, ROUGE-L and CIDEr-D over all references.

They follow the COCO caption evaluation (pycocoevalcap) definitions, which the tests check them
against: BLEU with clipped n-gram counts pooled over the corpus and the brevity penalty of the
closest reference length; ROUGE-L as the LCS F-measure (beta 1.2) against the best reference,
averaged over images; CIDEr-D as the clipped, length-penalised (sigma 6) tf-idf cosine of
1-4-grams, idf from the references of the evaluated set, times 10. Only the tokenizer differs:
COCO's is a Java PTB tokenizer; here words are lower-cased runs of letters and digits, which is
what it leaves of ordinary caption text once punctuation is removed.
"""

from __future__ import annotations

import math
import re
from collections import Counter

import datasets
import evaluate

from hftool import logs

WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")
MAX_N = 4
CIDER_SIGMA = 6.0
ROUGE_BETA = 1.2


def tokenize(text: str) -> list[str]:
    """Lower-cased words, punctuation dropped ("A dog's toy." -> ["a", "dog's", "toy"])."""
    return WORD.findall(text.lower())


def _ngrams(words: list[str], n: int = MAX_N) -> Counter:
    return Counter(tuple(words[i:i + k]) for k in range(1, n + 1) for i in range(len(words) - k + 1))


def bleu(hypotheses: list[list[str]], references: list[list[list[str]]], max_n: int = MAX_N) -> list[float]:
    """Corpus BLEU-1..max_n of tokenized hypotheses, each against all of its references."""
    totals = [0] * (2 * max_n + 2)
    for hyp, refs in zip(hypotheses, references):
        totals = [a + b for a, b in zip(totals, bleu_statistics(hyp, refs, max_n))]
    return bleu_from_statistics(totals, max_n)


def bleu_statistics(hyp: list[str], refs: list[list[str]], max_n: int = MAX_N) -> list[int]:
    """One hypothesis's additive BLEU counts: clipped n-gram matches (1..max_n), n-grams guessed
    (1..max_n), its length and the closest reference length. Corpus BLEU pools them."""
    counts = _ngrams(hyp, max_n)
    best: Counter = Counter()
    for ref in refs:
        best |= _ngrams(ref, max_n)  # per n-gram: its largest count in any one reference
    correct = [0] * max_n
    for gram, count in counts.items():
        correct[len(gram) - 1] += min(count, best[gram])
    guesses = [max(0, len(hyp) - k) for k in range(max_n)]
    closest = min((abs(len(r) - len(hyp)), len(r)) for r in refs)[1]  # ties: the shorter
    return [*correct, *guesses, len(hyp), closest]


def bleu_from_statistics(totals, max_n: int = MAX_N) -> list[float]:
    """BLEU-1..max_n from pooled bleu_statistics (weighted sums work: the bootstrap's resamples)."""
    correct, guesses, hyp_len, ref_len = totals[:max_n], totals[max_n:2 * max_n], totals[-2], totals[-1]
    scores, log_sum = [], 0.0
    for k in range(max_n):
        if correct[k] == 0:
            log_sum = -math.inf
        else:
            log_sum += math.log(correct[k] / guesses[k])
        scores.append(math.exp(log_sum / (k + 1)) if log_sum > -math.inf else 0.0)
    if hyp_len < ref_len:
        penalty = math.exp(1 - ref_len / hyp_len) if hyp_len else 0.0
        scores = [s * penalty for s in scores]
    return scores


def _lcs(a: list[str], b: list[str]) -> int:
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b):
            current.append(previous[j] + 1 if x == y else max(previous[j + 1], current[j]))
        previous = current
    return previous[-1]


def rouge_l(hypotheses: list[list[str]], references: list[list[list[str]]], beta: float = ROUGE_BETA) -> float:
    """Mean over images of the LCS F-measure with the best precision and recall over its references."""
    scores = rouge_l_scores(hypotheses, references, beta)
    return sum(scores) / len(scores) if scores else 0.0


def rouge_l_scores(hypotheses: list[list[str]], references: list[list[list[str]]], beta: float = ROUGE_BETA
                   ) -> list[float]:
    """ROUGE-L of each image (rouge_l is their mean)."""
    scores = []
    for hyp, refs in zip(hypotheses, references):
        common = [_lcs(ref, hyp) for ref in refs]
        precision = max((c / len(hyp) if hyp else 0.0) for c in common)
        recall = max((c / len(r) if r else 0.0) for c, r in zip(common, refs))
        scores.append((1 + beta**2) * precision * recall / (recall + beta**2 * precision)
                      if precision and recall else 0.0)
    return scores


def cider_d(hypotheses: list[list[str]], references: list[list[list[str]]], sigma: float = CIDER_SIGMA) -> float:
    """CIDEr-D: mean over images of 10 x the mean over references and n = 1..4 of the clipped
    tf-idf cosine, damped by a Gaussian penalty on the length difference."""
    scores = cider_d_scores(hypotheses, references, sigma)
    return sum(scores) / len(scores) if scores else 0.0


def cider_d_scores(hypotheses: list[list[str]], references: list[list[list[str]]], sigma: float = CIDER_SIGMA
                   ) -> list[float]:
    """CIDEr-D of each image, idf from the references of all of them (cider_d is their mean)."""
    if not hypotheses:
        return []
    ref_counts = [[_ngrams(r) for r in refs] for refs in references]
    document_frequency: Counter = Counter()
    for counts in ref_counts:
        document_frequency.update(set().union(*counts))
    log_images = math.log(len(references))

    def vector(counts: Counter):
        vec = [{} for _ in range(MAX_N)]
        norm = [0.0] * MAX_N
        for gram, tf in counts.items():
            weight = tf * (log_images - math.log(max(1.0, document_frequency[gram])))
            vec[len(gram) - 1][gram] = weight
            norm[len(gram) - 1] += weight * weight
        # The reference implementation measures length in bigrams (words - 1, at least 0).
        length = sum(tf for gram, tf in counts.items() if len(gram) == 2)
        return vec, [math.sqrt(x) for x in norm], length

    scores = []
    for hyp, counts in zip(hypotheses, ref_counts):
        h_vec, h_norm, h_len = vector(_ngrams(hyp))
        score = 0.0
        for ref in counts:
            r_vec, r_norm, r_len = vector(ref)
            damping = math.exp(-((h_len - r_len) ** 2) / (2 * sigma**2))
            for n in range(MAX_N):
                dot = sum(min(w, r_vec[n].get(g, 0.0)) * r_vec[n].get(g, 0.0) for g, w in h_vec[n].items())
                if h_norm[n] and r_norm[n]:
                    dot /= h_norm[n] * r_norm[n]
                score += dot * damping
        scores.append(10.0 * score / MAX_N / len(counts))
    return scores


def caption_scores(predictions: list[str], references: list[list[str]]) -> dict[str, float]:
    """bleu (BLEU-4), bleu_1..bleu_3, rouge_l and cider (CIDEr-D) of generated captions.

    Warns when every prediction is the same text: a model that ignores its image (a collapsed
    decoder, missing cross-attention) still scores a little on every metric.
    """
    hyps = [tokenize(p) for p in predictions]
    refs = [[tokenize(r) for r in rs] for rs in references]
    if any(not rs for rs in references):
        raise ValueError("every prediction needs at least one reference caption")
    if len(predictions) > 1 and len(set(predictions)) == 1:
        logs.warn(f"every one of the {len(predictions)} generated captions is {predictions[0]!r}: the model ignores "
                  "its images; train longer, raise train.lr, or check the encoder")
    scores = bleu(hyps, refs)
    out = {"bleu": scores[3], **{f"bleu_{k + 1}": scores[k] for k in range(3)}}
    out["rouge_l"] = rouge_l(hyps, refs)
    out["cider"] = cider_d(hyps, refs)
    return out


class CaptionMetrics(evaluate.Metric):
    """evaluate module over texts: predictions (one caption each) and references (a list each).

    compute() -> {bleu, bleu_1, bleu_2, bleu_3, rouge_l, cider}, corpus-level.
    """

    def __init__(self, **kwargs):
        super().__init__(keep_in_memory=True, **kwargs)

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description="Corpus BLEU-1..4, ROUGE-L and CIDEr-D (COCO caption definitions, no Java).",
            citation="", inputs_description="predictions: generated texts; references: lists of reference texts",
            features=datasets.Features({"predictions": datasets.Value("string"),
                                        "references": datasets.Sequence(datasets.Value("string"))}),
        )

    def _compute(self, predictions, references) -> dict[str, float]:
        return caption_scores(list(predictions), [list(r) for r in references])


class GeneratedCaptions(evaluate.Metric):
    """Decodes generated token ids and scores them against each image's references.

    Inputs per example: `generated` (token ids, padded) and `index` (the image's row in the
    evaluation data, whose references are `references[index]`).
    """

    def __init__(self, tokenizer=None, references: list[list[str]] | None = None, **kwargs):
        super().__init__(keep_in_memory=True, **kwargs)
        self.tokenizer, self.references = tokenizer, references or []
        self.last_predictions: list[tuple[int, str]] = []  # (index, caption) of the last compute()

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description="Corpus BLEU-1..4, ROUGE-L and CIDEr-D of generated captions.", citation="",
            inputs_description="generated: token ids; index: the image's row in the evaluation data",
            features=datasets.Features({"generated": datasets.Sequence(datasets.Value("int64")),
                                        "index": datasets.Value("int64")}),
        )

    def _compute(self, generated, index) -> dict[str, float]:
        texts = [caption_text(self.tokenizer, ids) for ids in generated]
        self.last_predictions = list(zip(index, texts))
        return caption_scores(texts, [self.references[i] for i in index])


def caption_text(tokenizer, ids) -> str:
    """Generated ids (without the start token) -> text, up to the first EOS or padding."""
    ids = [int(i) for i in ids]
    stops = {tokenizer.eos_token_id, tokenizer.pad_token_id, -100} - {None}
    end = next((n for n, i in enumerate(ids) if i in stops), len(ids))
    return tokenizer.decode(ids[:end], skip_special_tokens=True).strip()
