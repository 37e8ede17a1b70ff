"""Conversations for chat fine-tuning: rows of `messages` (the OpenAI and HF format) or of
`prompt`/`completion` pairs, rendered with a chat template, with labels on the assistant's tokens.

    rows = chat.conversations(ds, source)             # validated [{role, content}] lists, or None
    ids, labels = chat.encode(tokenizer, messages)    # labels: -100 except on the assistant's tokens
    examples = chat.fit(examples, block)              # each at most `block` tokens
    rows = chat.pack(examples, block)                 # several conversations per row, kept apart

A turn of the assistant is found by rendering the conversation up to it (with the template's
generation prompt) and through it: the characters between are its reply and the end-of-turn
marker the template writes after it, which the model must learn to stop. transformers can mark
assistant tokens itself (`return_assistant_tokens_mask`), but only for templates written with
`{% generation %}` blocks, which few templates have; rendering prefixes works for any template
that renders each turn after the previous ones, and `encode` checks that it does.
"""

from __future__ import annotations

from hftool import logs
from hftool.errors import HftoolError

ROLES = ("system", "user", "assistant")
IGNORE = -100  # the label of a token the loss leaves out


def conversations(ds, source: str) -> list[list[dict]] | None:
    """The rows' conversations, or None when the rows are not chat data.

    A `messages` column holds a list of {role, content} per row; `prompt` and `completion`
    columns make one user turn and one assistant turn. Each conversation needs an assistant
    turn, and roles are system, user and assistant; otherwise the error names the row.
    """
    columns = set(ds.column_names)
    if "messages" in columns:
        rows = ds["messages"]
    elif {"prompt", "completion"} <= columns:
        rows = [[{"role": "user", "content": p}, {"role": "assistant", "content": c}]
                for p, c in zip(ds["prompt"], ds["completion"])]
    else:
        return None
    out = []
    for row, messages in enumerate(rows, 1):
        if not isinstance(messages, list) or not messages:
            raise HftoolError(f"{source} row {row}: 'messages' holds {messages!r}, not a list of "
                              "{\"role\": ..., \"content\": ...} turns")
        turns = []
        for turn, message in enumerate(messages, 1):
            role = message.get("role") if isinstance(message, dict) else None
            content = message.get("content") if isinstance(message, dict) else None
            if role not in ROLES:
                raise HftoolError(f"{source} row {row}: message {turn} has role {role!r}; roles are "
                                  f"{', '.join(ROLES)}")
            if not isinstance(content, str):
                raise HftoolError(f"{source} row {row}: message {turn} ({role}) has content {content!r}, not text")
            turns.append({"role": role, "content": content})
        if not any(t["role"] == "assistant" for t in turns):
            raise HftoolError(f"{source} row {row}: the conversation has no assistant turn, so nothing to learn; "
                              "add the assistant's reply or remove the row")
        out.append(turns)
    return out


def render(tokenizer, messages: list[dict], generation_prompt: bool = False) -> str:
    """The conversation as the chat template writes it (with the assistant's cue at the end when
    `generation_prompt`)."""
    from jinja2 import TemplateError

    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
    except TemplateError as err:
        raise HftoolError(f"the chat template failed on a conversation ({err}); fix the data or data.chat_template") from None


def encode(tokenizer, messages: list[dict], train_on: str = "assistant") -> tuple[list[int], list[int]]:
    """Token ids of a rendered conversation and its labels: the id on each assistant token (its
    replies and the end-of-turn marker after each), IGNORE elsewhere; every id with train_on=all.

    A token belongs to the assistant when it starts inside one of its turns' characters.
    """
    text = render(tokenizer, messages)
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before, through = render(tokenizer, messages[:i], generation_prompt=True), render(tokenizer, messages[: i + 1])
        if not (through.startswith(before) and text.startswith(through)):
            raise HftoolError("the chat template does not render a conversation as its beginning plus the next turn, "
                              "so the assistant's turns cannot be told apart; set data.train_on=all or use a template "
                              "that does (data.chat_template=FILE)")
        spans.append((len(before), len(through)))
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)  # the template writes BOS
    ids = encoded["input_ids"]
    if train_on == "all":
        return ids, list(ids)
    labels = [i if any(a <= start < b for a, b in spans) else IGNORE for i, (start, _) in zip(ids, encoded["offset_mapping"])]
    return ids, labels


def prompt_ids(tokenizer, messages: list[dict]) -> list[int]:
    """Ids of the conversation before its last assistant turn, ending in the assistant's cue: what
    the model answers from."""
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    return tokenizer(render(tokenizer, messages[:last], generation_prompt=True), add_special_tokens=False)["input_ids"]


def fit(examples: list[tuple[list[int], list[int]]], block: int) -> list[tuple[list[int], list[int]]]:
    """Each (ids, labels) cut to at most `block` tokens; a warning counts the conversations cut."""
    cut = sum(len(ids) > block for ids, _ in examples)
    if cut:
        logs.warn(f"{cut} conversations are longer than data.block_size={block} tokens and were cut; raise "
                  "data.block_size to keep them whole")
    return [(ids[:block], labels[:block]) for ids, labels in examples]


def pack(examples: list[tuple[list[int], list[int]]], block: int) -> dict[str, list]:
    """Conversations (each at most `block` tokens: `fit`) packed in order into rows of at most
    `block` tokens, each with position ids that restart at 0: transformers then masks attention
    between them (its packed-sequence mask, or varlen flash attention on GPUs), so no
    conversation sees another."""
    rows: dict[str, list] = {"input_ids": [], "labels": [], "position_ids": []}
    current: dict[str, list] = {key: [] for key in rows}
    for ids, labels in examples:
        if current["input_ids"] and len(current["input_ids"]) + len(ids) > block:
            for key in rows:
                rows[key].append(current[key])
            current = {key: [] for key in rows}
        current["input_ids"] += ids
        current["labels"] += labels
        current["position_ids"] += list(range(len(ids)))
    if current["input_ids"]:
        for key in rows:
            rows[key].append(current[key])
    # Rows differ in width like dynamically padded text: batches group by it, and the loop caps
    # the CPU kernel caches that new shapes fill (training.bounded_kernel_caches).
    rows["length"] = [len(ids) for ids in rows["input_ids"]]
    return rows
