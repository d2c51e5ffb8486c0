"""A reply's rating: the page's like or dislike, kept with its message (playground.versions)."""

from __future__ import annotations

from playground.template import Message

# A reply's rating as files and the browser keep it -> as the chatbot draws it (its feedback_value).
RATINGS = {"like": "Like", "dislike": "Dislike"}


def feedback(conversation: list[Message]) -> list[str | None]:
    """The chatbot's marks: one for each reply, in order (None: not rated)."""
    return [RATINGS.get(m.get("rating")) for m in conversation if m["role"] == "assistant"]


def rated(conversation: list[Message], index: int, rating: str | None) -> list[Message]:
    """The conversation with reply `index` rated `rating` (None: the rating taken back)."""
    reply = {"role": "assistant", "content": conversation[index]["content"], **({"rating": rating} if rating else {})}
    return [*conversation[:index], reply, *conversation[index + 1 :]]
