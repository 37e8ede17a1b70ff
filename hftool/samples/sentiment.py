"""A synthetic movie-review sentiment set where no single word decides the label.

Each review has one or three clauses ("the plot was not very clever"). A clause's polarity is
its adjective's, flipped by a negator; the review's label is the majority polarity. Every
adjective appears in both classes (negation and the other clauses see to that), so a model
must combine words to do well: a bag of words gets most reviews right, negation the rest.
"""

from __future__ import annotations

import random

ASPECTS = ["the acting", "the plot", "the soundtrack", "the ending", "the dialogue", "the cast", "the pacing",
           "the visuals", "the script", "the villain", "the direction", "the humor", "the story", "the film"]
POSITIVE = ["great", "wonderful", "brilliant", "charming", "superb", "moving", "clever", "delightful",
            "gripping", "beautiful", "fun", "solid"]
NEGATIVE = ["awful", "boring", "dull", "clumsy", "terrible", "weak", "tedious", "messy", "bland",
            "painful", "silly", "flat"]
INTENSIFIERS = ["", "", "", "really ", "quite ", "truly ", "very ", "rather "]
NEGATORS = ["not ", "never ", "hardly "]
VERBS = ["was", "is", "felt", "seemed"]
OPENERS = ["", "", "", "honestly, ", "i thought ", "overall, ", "to be fair, "]
JOINERS = [" and ", " but ", ", while ", "; "]

SIZES = {"train": (2000, 0), "validation": (500, 1), "test": (500, 2)}


def clause(rng: random.Random) -> tuple[str, int]:
    polarity = rng.choice((1, -1))
    adjective = rng.choice(POSITIVE if polarity > 0 else NEGATIVE)
    negated = rng.random() < 0.25
    negator = rng.choice(NEGATORS) if negated else ""
    text = f"{rng.choice(ASPECTS)} {rng.choice(VERBS)} {negator}{rng.choice(INTENSIFIERS)}{adjective}"
    return text, -polarity if negated else polarity


def review(rng: random.Random) -> tuple[str, str]:
    clauses = [clause(rng) for _ in range(rng.choice((1, 3, 3)))]
    text = clauses[0][0]
    for part, _ in clauses[1:]:
        text += rng.choice(JOINERS) + part
    score = sum(p for _, p in clauses)  # odd number of +-1 votes: never a tie
    return rng.choice(OPENERS) + text, "positive" if score > 0 else "negative"


def generate(n: int, seed: int, exclude: set[str] = frozenset()) -> dict[str, list[str]]:
    rng = random.Random(seed)
    texts, labels = [], []
    while len(texts) < n:
        text, label = review(rng)
        if text not in exclude:
            texts.append(text)
            labels.append(label)
    return {"text": texts, "label": labels}


def load():
    from hftool.samples import disjoint_splits

    return disjoint_splits(SIZES, generate, lambda rows: rows["text"])
