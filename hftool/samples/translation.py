"""A toy English -> German translation task, written from templates here.

Sentences are "[adverb] the [adjective] noun verb the [adjective] noun", translated word for
word from small dictionaries, plus three rules a model has to learn beyond the dictionary:
the article and the adjective ending follow the noun's gender and case (der rote Hund / den
roten Hund), and a sentence that starts with an adverb puts the verb second (heute sieht der
Hund ...). So BLEU starts near zero and a model that learned the rules scores near 100.
"""

from __future__ import annotations

import random

# English -> (German, gender)
NOUNS = {"dog": ("Hund", "m"), "cat": ("Katze", "f"), "house": ("Haus", "n"), "bird": ("Vogel", "m"),
         "girl": ("Mädchen", "n"), "woman": ("Frau", "f"), "man": ("Mann", "m"), "child": ("Kind", "n"),
         "ball": ("Ball", "m"), "apple": ("Apfel", "m"), "book": ("Buch", "n"), "flower": ("Blume", "f"),
         "car": ("Auto", "n"), "table": ("Tisch", "m"), "door": ("Tür", "f"), "tree": ("Baum", "m")}
ADJECTIVES = {"red": "rot", "big": "groß", "small": "klein", "old": "alt", "young": "jung", "green": "grün",
              "happy": "glücklich", "black": "schwarz"}
VERBS = {"sees": "sieht", "likes": "mag", "finds": "findet", "carries": "trägt", "watches": "beobachtet",
         "buys": "kauft"}
ADVERBS = {"today": "heute", "now": "jetzt", "sometimes": "manchmal", "tomorrow": "morgen"}
# (gender, case) -> definite article. An adjective after it takes the weak ending: -en after
# den, -e after der/die/das.
ARTICLES = {("m", "nom"): "der", ("f", "nom"): "die", ("n", "nom"): "das",
            ("m", "acc"): "den", ("f", "acc"): "die", ("n", "acc"): "das"}

SIZES = {"train": (3000, 0), "validation": (200, 1), "test": (200, 2)}


def noun_phrase(rng: random.Random, case: str) -> tuple[str, str]:
    noun = rng.choice(list(NOUNS))
    german, gender = NOUNS[noun]
    article = ARTICLES[gender, case]
    if rng.random() < 0.5:
        return f"the {noun}", f"{article} {german}"
    adjective = rng.choice(list(ADJECTIVES))
    ending = "en" if article == "den" else "e"
    return f"the {adjective} {noun}", f"{article} {ADJECTIVES[adjective]}{ending} {german}"


def pair(rng: random.Random) -> tuple[str, str]:
    """One (English, German) sentence pair."""
    subject, subjekt = noun_phrase(rng, "nom")
    verb = rng.choice(list(VERBS))
    obj, objekt = noun_phrase(rng, "acc")
    if rng.random() < 0.3:
        adverb = rng.choice(list(ADVERBS))
        english, german = f"{adverb} {subject} {verb} {obj}", f"{ADVERBS[adverb]} {VERBS[verb]} {subjekt} {objekt}"
    else:
        english, german = f"{subject} {verb} {obj}", f"{subjekt} {VERBS[verb]} {objekt}"
    return english[0].upper() + english[1:] + ".", german[0].upper() + german[1:] + "."


def generate(n: int, seed: int, exclude: set[str] = frozenset()) -> dict[str, list[str]]:
    rng = random.Random(seed)
    rows: dict[str, list[str]] = {"source": [], "target": []}
    seen = set(exclude)
    while len(rows["source"]) < n:
        english, german = pair(rng)
        if english not in seen:
            seen.add(english)
            rows["source"].append(english)
            rows["target"].append(german)
    return rows


def load():
    from hftool.samples import disjoint_splits

    return disjoint_splits(SIZES, generate, lambda rows: rows["source"])
