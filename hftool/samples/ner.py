"""A synthetic news-sentence NER set (PER, LOC, ORG; IOB2 tags) where context decides the type.

Sentences come from templates such as "{PER} flew to {LOC} on Monday ." with names drawn from
small lists. Some names fill more than one slot ("Jordan" is a person in "Jordan Okafor said"
and a place in "flew to Jordan"; "Ford" a person or a company), and entities are one to three
words long, so a model must read the context and mark entity boundaries, not memorise a list.
"""

from __future__ import annotations

import random

FIRST = ["Angela", "John", "Maria", "Ahmed", "Yuki", "Pierre", "Olga", "Carlos", "Priya", "Kwame", "Sofia",
         "Liam", "Chen", "Fatima", "Lars", "Amara", "Diego", "Hana", "Ivan", "Nadia"]
LAST = ["Merkel", "Smith", "Garcia", "Khan", "Tanaka", "Dubois", "Ivanova", "Silva", "Patel", "Mensah",
        "Rossi", "Murphy", "Wei", "Haddad", "Berg", "Okafor", "Novak", "Costa", "Kim", "Larsen"]
PLACES = ["Paris", "Berlin", "Lagos", "Lima", "Osaka", "Cairo", "Oslo", "Quito", "Nairobi", "Hanoi", "Dublin",
          "New York", "Buenos Aires", "Cape Town", "Kuala Lumpur", "Hong Kong", "Rio de Janeiro", "Tel Aviv"]
ORGS = ["Siemens", "Reuters", "UNICEF", "Toyota", "Nokia", "Airbus", "Oxfam", "Goldman Sachs", "Red Cross",
        "Deutsche Bahn", "Bank of Canada", "World Health Organization", "Fiat", "Samsung", "Interpol"]
# Names that are people in some sentences and places (or companies) in others.
PERSON_OR_PLACE = ["Jordan", "Florence", "Georgia", "Victoria", "Sydney", "Austin", "Chelsea", "Lincoln"]
PERSON_OR_ORG = ["Ford", "Dell", "Disney", "Boeing", "Kellogg"]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]

TEMPLATES = [
    "{PER} flew to {LOC} on {DAY} .",
    "{PER} , a spokesman for {ORG} , said the deal was done .",
    "shares of {ORG} rose {NUM} percent in {LOC} trading .",
    "{ORG} will open a new office in {LOC} next year .",
    "the mayor of {LOC} met {PER} on {DAY} .",
    "{PER} told reporters in {LOC} that {ORG} would cut {NUM} jobs .",
    "police in {LOC} arrested {PER} after the match .",
    "{PER} and {PER} visited {LOC} last week .",
    "{ORG} hired {PER} as chief executive .",
    "heavy rain hit {LOC} and {LOC} on {DAY} .",
    "{PER} lives in {LOC} , {LOC} .",
    "{ORG} and {ORG} signed a deal worth {NUM} million dollars .",
    "a court in {LOC} fined {ORG} on {DAY} .",
    "\" we are ready , \" said {PER} of {ORG} .",
    "prices fell for the third day in a row .",
    "the talks ended on {DAY} without a deal .",
    "{PER} won the race in {LOC} .",
    "officials at {ORG} declined to comment .",
]

SIZES = {"train": (1500, 0), "validation": (300, 1), "test": (300, 2)}


def person(rng: random.Random) -> list[str]:
    first = rng.choice(FIRST + PERSON_OR_PLACE)
    last = rng.choice(LAST + PERSON_OR_ORG)
    form = rng.random()
    if form < 0.55:
        return [first, last]
    if form < 0.8:
        return [last]
    return [first, rng.choice("ABCDEFGHJKLMNPRSTW") + ".", last]


def entity(kind: str, rng: random.Random) -> tuple[list[str], str | None]:
    """Words for a slot and their entity type (None: not an entity)."""
    if kind == "PER":
        return person(rng), "PER"
    if kind == "LOC":
        return rng.choice(PLACES + PERSON_OR_PLACE).split(), "LOC"
    if kind == "ORG":
        return rng.choice(ORGS + PERSON_OR_ORG).split(), "ORG"
    if kind == "DAY":
        return [rng.choice(DAYS)], None
    return [str(rng.randint(2, 900))], None  # NUM


def sentence(rng: random.Random) -> tuple[list[str], list[str]]:
    tokens, tags = [], []
    for word in rng.choice(TEMPLATES).split():
        if word.startswith("{") and word.endswith("}"):
            words, kind = entity(word[1:-1], rng)
            tokens += words
            tags += ["O"] * len(words) if kind is None else [f"B-{kind}"] + [f"I-{kind}"] * (len(words) - 1)
        else:
            tokens.append(word)
            tags.append("O")
    if tokens[0][0].islower():
        tokens[0] = tokens[0][0].upper() + tokens[0][1:]
    return tokens, tags


def generate(n: int, seed: int, exclude: set[tuple[str, ...]] = frozenset()) -> dict[str, list[list[str]]]:
    rng = random.Random(seed)
    rows: dict[str, list[list[str]]] = {"tokens": [], "tags": []}
    while len(rows["tokens"]) < n:
        tokens, tags = sentence(rng)
        if tuple(tokens) not in exclude:
            rows["tokens"].append(tokens)
            rows["tags"].append(tags)
    return rows


def load():
    from hftool.samples import disjoint_splits

    return disjoint_splits(SIZES, generate, lambda rows: map(tuple, rows["tokens"]))
