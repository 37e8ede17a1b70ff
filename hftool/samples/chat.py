"""Small conversations for chat fine-tuning, written from templates here, with answers that can be
checked exactly.

Four skills, one question each conversation ends with:
- sums of two digits ("What is 3 plus 4?" -> "7"): a hundred facts to learn;
- capitals of made-up countries ("What is the capital of Vornia?" -> "Tesk"): a lookup table;
- a name said in the question ("My name is Ada. What is my name?" -> "Ada"): copying from it;
- a word to remember over two turns ("Remember the word lantern." -> "Okay." ... -> "lantern").

Conversations may open with a system message and a greeting exchange, so no two are the same and
the held-out ones are new conversations, while their answers come from what training taught.
An untrained model answers none of them; a model that learned answers most.
"""

from __future__ import annotations

import random

COUNTRIES = {"Vornia": "Tesk", "Quellan": "Brisa", "Marrow": "Oduna", "Teskar": "Plim", "Ulvane": "Harrow",
             "Zenthe": "Kolo", "Brask": "Mirel", "Oskari": "Dunne", "Pellam": "Sorrel", "Rhune": "Alva",
             "Ithen": "Calder", "Korrin": "Vasse"}
NAMES = ["Ada", "Ben", "Clara", "Dev", "Elena", "Farid", "Grace", "Hugo", "Iris", "Jonas", "Kira", "Liam", "Maya",
         "Nils", "Olga", "Pavel", "Quinn", "Rosa", "Sami", "Tara", "Umar", "Vera", "Wes", "Yara", "Zoe"]
WORDS = ["lantern", "river", "pepper", "violin", "harbor", "meadow", "candle", "orbit", "pebble", "saddle",
         "thistle", "marble", "falcon", "garden", "kettle", "ribbon", "summit", "tunnel", "velvet", "willow"]
SYSTEMS = ["You are a helpful assistant.", "Answer briefly.", "You are a friendly assistant. Keep answers short."]
GREETINGS = [("Hi!", "Hello! How can I help?"), ("Good morning.", "Good morning! What can I do for you?"),
             ("Hello there.", "Hi! Ask me anything.")]
SUM = ["What is {a} plus {b}?", "Add {a} and {b}.", "What do {a} and {b} make together?"]
CAPITAL = ["What is the capital of {c}?", "Which city is the capital of {c}?", "Name the capital of {c}."]
NAME = ["My name is {n}. What is my name?", "I am {n}. Who am I?", "Call me {n}. What should you call me?"]
REMEMBER = ["Remember the word {w}.", "Please keep the word {w} in mind."]
RECALL = ["Which word did I ask you to remember?", "What was the word?"]

SIZES = {"train": (3000, 0), "validation": (200, 1), "test": (200, 2)}


def conversation(rng: random.Random) -> list[dict]:
    """One conversation: optional system message and greeting, then a question of one skill."""
    messages = []
    if rng.random() < 0.3:
        messages.append({"role": "system", "content": rng.choice(SYSTEMS)})
    if rng.random() < 0.3:
        hello, reply = rng.choice(GREETINGS)
        messages += [{"role": "user", "content": hello}, {"role": "assistant", "content": reply}]
    skill = rng.randrange(4)
    if skill == 0:
        a, b = rng.randrange(10), rng.randrange(10)
        question, answer = rng.choice(SUM).format(a=a, b=b), str(a + b)
    elif skill == 1:
        country = rng.choice(list(COUNTRIES))
        question, answer = rng.choice(CAPITAL).format(c=country), COUNTRIES[country]
    elif skill == 2:
        name = rng.choice(NAMES)
        question, answer = rng.choice(NAME).format(n=name), name
    else:
        word = rng.choice(WORDS)
        messages += [{"role": "user", "content": rng.choice(REMEMBER).format(w=word)},
                     {"role": "assistant", "content": "Okay."}]
        question, answer = rng.choice(RECALL), word
    return messages + [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]


def generate(n: int, seed: int, exclude: set[str] = frozenset()) -> list[list[dict]]:
    rng = random.Random(seed)
    out: list[list[dict]] = []
    while len(out) < n:
        messages = conversation(rng)
        if _identity(messages) not in exclude:
            out.append(messages)
    return out


def _identity(messages: list[dict]) -> str:
    return "\n".join(f"{m['role']}: {m['content']}" for m in messages)


def load():
    from hftool.samples import disjoint_splits

    return disjoint_splits(SIZES, lambda n, seed, exclude: {"messages": generate(n, seed, exclude)},
                           lambda rows: [_identity(m) for m in rows["messages"]])
