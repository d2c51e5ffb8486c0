"""A reply's rating (the page's like or dislike) and the preference pairs that ratings make, in TRL's
conversational preference format: what the page's "Save preferences" writes, training.preferences reads.

The rule, at each place where replies part (Retry's versions of a reply, all answering the same messages):
every liked version is chosen against every version there that is not liked (disliked or not rated). A
place with no liked version gives no pair, and neither does a rating on a reply without versions: DPO
learns from two replies to one prompt, and Retry makes the second. Versions with the same text, or with
no text, make no pair. The versions of an edited question answer different questions: their replies are not
paired with each other, only within the places inside them. The prompt is the conversation before the
reply, after the conversation's system prompt where it has one (the template reads no system prompt as
an empty one: the same tokens).
"""

from __future__ import annotations

import json
from collections.abc import Iterator

from playground.template import Message
from playground.versions import Versions, tail

# A reply's rating as files and the browser keep it -> as the chatbot draws it (its feedback_value).
RATINGS = {"like": "Like", "dislike": "Dislike"}


def feedback(conversation: list[Message]) -> list[str | None]:
    """The chatbot's marks: one for each reply, in order (None: not rated)."""
    return [RATINGS.get(m.get("rating")) for m in conversation if m["role"] == "assistant"]


def rated(conversation: list[Message], index: int, rating: str | None) -> list[Message]:
    """The conversation with reply `index` rated `rating` (None: the rating taken back)."""
    reply = {"role": "assistant", "content": conversation[index]["content"], **({"rating": rating} if rating else {})}
    return [*conversation[:index], reply, *conversation[index + 1 :]]


def places(records: list[dict], before: list[Message]) -> Iterator[tuple[list[Message], list[dict]]]:
    """Where replies part in `records` (a tail of playground.versions) and in every version inside them:
    the messages before that place (`before` and the records up to it), and the replies there."""
    for i, message in enumerate(records):
        here = message.get("versions")
        if not here:
            continue
        earlier = [*before, *({"role": r["role"], "content": r["content"]} for r in records[:i])]
        others, shown = here["others"], here["shown"]
        if message["role"] == "assistant":
            yield earlier, [*(other[0] for other in others[:shown]), message, *(other[0] for other in others[shown:])]
        for other in others:
            yield from places(other, earlier)


def pairs(conversation: list[Message], system: str, versions: Versions) -> list[dict]:
    """A conversation's preference pairs, by the rule above, in the order the versions were made."""
    opening = [{"role": "system", "content": system}] if system else []
    found = []
    for prompt, replies in places(tail(conversation, {}, versions, -1), opening):
        liked = {r["content"] for r in replies if r.get("rating") == "like"}
        texts = [text for text in dict.fromkeys(r["content"] for r in replies) if text.strip()]
        found += [
            {"prompt": prompt, "chosen": reply(chosen), "rejected": reply(rejected)}
            for chosen in texts
            if chosen in liked
            for rejected in texts
            if rejected not in liked
        ]
    return found


def reply(text: str) -> list[Message]:
    return [{"role": "assistant", "content": text}]


def as_jsonl(found: list[dict]) -> str:
    """Pairs as a JSONL file: one pair a line."""
    return "".join(json.dumps(pair) + "\n" for pair in found)
