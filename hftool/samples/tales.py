"""Tiny fables for language modelling, written from templates here.

Each tale introduces an animal by name, then either finds something or meets a friend, and ends
with "The end." Most words follow from the template; the rest are drawn from short lists, and a
good model must also carry the name, and the thing found or the friend met, from the first
sentences to the last. So perplexity falls fast from the vocabulary size to a few, and a model
that learned generates well-formed tales.
"""

from __future__ import annotations

import random

NAMES = ["Mila", "Tom", "Ada", "Ben", "Lena", "Omar", "Ivy", "Finn", "Nora", "Leo", "Rosa", "Max"]
ANIMALS = ["fox", "owl", "rabbit", "bear", "mouse", "duck", "cat", "frog", "deer", "goat"]
ADJECTIVES = ["little", "brave", "sleepy", "curious", "clever", "shy", "happy", "gentle"]
PLACES = ["a quiet forest", "a green valley", "a small village", "an old mill", "a sunny meadow",
          "a hollow tree", "a stone house", "a windy hill"]
ROUTINES = ["picked berries", "sang to the birds", "counted the clouds", "swept the path",
            "watered the flowers", "read an old book", "baked bread", "went for a walk"]
THINGS = ["a red ball", "a silver key", "a tiny boat", "a blue feather", "a shiny coin", "a lost map",
          "a wooden flute", "a golden bell"]
WHERE = ["by the river", "under a rock", "behind the barn", "in the tall grass", "near the well"]
FRIENDS = ["a hungry wolf", "a kind turtle", "a lonely crow", "a tired horse", "a lost puppy"]
FEELINGS = ["happy", "surprised", "curious", "glad"]
ENDINGS = ["they were the best of friends", "nobody was ever lonely again", "every day was a little brighter"]

SIZES = {"train": (2000, 0), "validation": (200, 1), "test": (200, 2)}


def tale(rng: random.Random) -> str:
    name, animal = rng.choice(NAMES), rng.choice(ANIMALS)
    lines = [f"Once upon a time, a {rng.choice(ADJECTIVES)} {animal} named {name} lived in {rng.choice(PLACES)}.",
             f"Every morning, {name} {rng.choice(ROUTINES)}."]
    if rng.random() < 0.5:
        thing = rng.choice(THINGS)
        lines += [f"One day, {name} found {thing} {rng.choice(WHERE)}.",
                  f"\"What a wonderful day!\" said {name}.",
                  f"{name} took {thing.replace('a ', 'the ', 1)} home and kept it forever."]
    else:
        friend = rng.choice(FRIENDS)
        lines += [f"One day, {name} met {friend} {rng.choice(WHERE)}.",
                  f"The {friend.split()[-1]} was {rng.choice(FEELINGS)} to meet the {animal}.",
                  f"From that day on, {rng.choice(ENDINGS)}."]
    return "\n".join(lines + ["The end."])


def generate(n: int, seed: int, exclude: set[str] = frozenset()) -> list[str]:
    rng = random.Random(seed)
    tales: list[str] = []
    while len(tales) < n:
        text = tale(rng)
        if text not in exclude:
            tales.append(text)
    return tales


def load():
    from hftool.samples import disjoint_splits

    return disjoint_splits(SIZES, lambda n, seed, exclude: {"text": generate(n, seed, exclude)},
                           lambda rows: rows["text"])
