"""Versions of a conversation: Retry and Edit keep what they replace, and "‹ 2/3 ›" flips between them.

A version is a tail of the conversation: the messages from the retried reply or the edited question on,
with their notes, their ratings and the versions that part further down. The open conversation holds the
tail on screen; `Versions` holds the others by the index where they part, in the order they were made, as
records (`{"role", "content", "rating"?, "note"?, "versions"?}`): the form files and the browser keep them
in, hung on the message where they part, so that a file without versions reads as before.

A reply's rating (the page's like or dislike: playground.preferences) rides on its message, in the
conversation and in its records alike, so it goes wherever the reply goes; the model reads only the role
and content.
"""

from __future__ import annotations

from playground.template import Message

MAX_VERSIONS = 20  # of one message, the one shown included
MAX_DEPTH = 32  # versions within versions; past it the innermost go (a reader refuses them)

# index -> {"shown": position of the tail on screen among all, "others": [tail records, ...]}
Versions = dict[int, dict]


def as_message(record: dict) -> Message:
    """A message or a record as the conversation holds it: its role, its content and its rating, if any."""
    rating = {"rating": record["rating"]} if record.get("rating") else {}
    return {"role": record["role"], "content": record["content"], **rating}


def record(message: Message, note: str | None = None, versions: dict | None = None) -> dict:
    """A message as files keep it, with its note and the versions that part at it."""
    return {
        **as_message(message),
        **({"note": note} if note else {}),
        **({"versions": versions} if versions else {}),
    }


def tail(conversation: list[Message], notes: dict[int, str], versions: Versions, at: int) -> list[dict]:
    """The conversation from `at` on, as records; the versions parting at `at` itself are not the tail's."""
    return [record(m, notes.get(i), versions.get(i) if i > at else None) for i, m in enumerate(conversation) if i >= at]


def untail(records: list[dict], at: int) -> tuple[list[Message], dict[int, str], Versions]:
    """A tail's records as the messages, notes and versions of a conversation whose tail starts at `at`."""
    messages = [as_message(r) for r in records]
    notes = {at + i: r["note"] for i, r in enumerate(records) if r.get("note")}
    versions = {at + i: r["versions"] for i, r in enumerate(records) if r.get("versions")}
    return messages, notes, versions


def before(versions: Versions, end: int) -> Versions:
    """The versions that part before message `end` (Undo takes the rest away with its messages)."""
    return {i: v for i, v in versions.items() if i < end}


def every_version(conversation: list[Message], notes: dict[int, str], versions: Versions, at: int) -> list[list]:
    """All the tails that part at `at`, the one on screen among them, in the order they were made."""
    here = versions.get(at) or {"shown": 0, "others": []}
    shown, others = here["shown"], here["others"]
    return [*others[:shown], tail(conversation, notes, versions, at), *others[shown:]]


def branch(
    conversation: list[Message], notes: dict[int, str], versions: Versions, at: int, limit: int
) -> tuple[Versions, int]:
    """The versions once a new tail replaces the one from `at` (Retry, Edit): the replaced one is kept and
    the new one comes last. They stay within what a reader takes (playground.conversation_file): at most
    MAX_VERSIONS a message, MAX_DEPTH deep, `limit` characters in all; past that the oldest versions at `at`
    go, then the innermost. Returns the versions and how many went."""
    every = every_version(conversation, notes, versions, at)
    kept = before(versions, at)
    allowed = MAX_VERSIONS - 1
    while every and (len(every) > allowed or total(kept) + sum(size(t) for t in every) > limit):
        every.pop(0)
    made = {**kept, at: {"shown": len(every), "others": every}} if every else kept
    fitted = pruned(made)
    return fitted, count(versions) + 1 - count(fitted)


def flip(
    conversation: list[Message], notes: dict[int, str], versions: Versions, at: int, position: int
) -> tuple[list[Message], dict[int, str], Versions]:
    """The conversation with version `position` (0-based, in the order made) of the tail from `at` shown."""
    every = every_version(conversation, notes, versions, at)
    return shown(conversation, notes, versions, at, every, position)


def take_back(
    conversation: list[Message], notes: dict[int, str], versions: Versions, at: int
) -> tuple[list[Message], dict[int, str], Versions]:
    """The conversation without the version of the tail from `at` on screen: the newest other one shows."""
    every = every_version(conversation, notes, versions, at)
    del every[versions[at]["shown"]]
    return shown(conversation, notes, versions, at, every, len(every) - 1)


def shown(
    conversation: list[Message], notes: dict[int, str], versions: Versions, at: int, every: list, position: int
) -> tuple[list[Message], dict[int, str], Versions]:
    """The conversation with tail `position` of `every` (the tails that part at `at`) on screen."""
    chosen = every.pop(position)
    messages, chosen_notes, chosen_versions = untail(chosen, at)
    here = {at: {"shown": position, "others": every}} if every else {}
    return (
        [*conversation[:at], *messages],
        {**{i: n for i, n in notes.items() if i < at}, **chosen_notes},
        pruned({**before(versions, at), **here, **chosen_versions}),
    )


def size(records: list[dict]) -> int:
    """The characters of a tail, with every version inside it."""
    return sum(len(r["content"]) + total({0: r["versions"]} if r.get("versions") else {}) for r in records)


def total(versions: Versions) -> int:
    """The characters of all the versions, those inside them included."""
    return sum(size(other) for here in versions.values() for other in here["others"])


def count(versions: Versions) -> int:
    """How many versions there are, those inside them included."""
    others = [other for here in versions.values() for other in here["others"]]
    return len(others) + sum(count({0: r["versions"]}) for other in others for r in other if r.get("versions"))


def pruned(versions: Versions, level: int = 0) -> Versions:
    """The versions without those nested MAX_DEPTH deep or deeper."""
    if level >= MAX_DEPTH:
        return {}
    return {
        i: {"shown": here["shown"], "others": [[inside(r, level + 1) for r in other] for other in here["others"]]}
        for i, here in versions.items()
    }


def inside(message: dict, level: int) -> dict:
    kept = pruned({0: message["versions"]}, level) if message.get("versions") else {}
    return record(message, message.get("note"), kept.get(0))


def marks(versions: Versions) -> dict[int, tuple[int, int]]:
    """What the page draws under a message that has versions: (the one shown, how many), from 1."""
    return {i: (v["shown"] + 1, len(v["others"]) + 1) for i, v in sorted(versions.items())}
