"""A conversation as files and the browser keep it, and reading one back from anyone.

The record is `{"messages": [...]}`: the system prompt first, then each message as `{"role", "content"}`,
a reply with its `"note"` (how it went: tokens, speed, why it ended) and its `"rating"` (`"like"` or
`"dislike"`, marked on the page: playground.preferences), and a message where Retry or Edit made versions
with its `"versions"` (playground.versions). A bare list of messages reads too.
"""

from __future__ import annotations

import json
import re

from playground.chat import check_text
from playground.preferences import RATINGS
from playground.template import DialogueError, Message, split_system, validate
from playground.versions import MAX_DEPTH, MAX_VERSIONS, Versions, tail

MAX_NOTE = 200  # characters of a reply's note (tokens, speed, why it ended) in a file or the browser
_CONTROL = re.compile("[\x00-\x1f\x7f]")


def conversation_record(
    conversation: list[Message], system: str, notes: dict[int, str] | None = None, versions: Versions | None = None
) -> dict:
    messages = tail(conversation, notes or {}, versions or {}, -1)
    return {"messages": [{"role": "system", "content": system}, *messages]}


def export_conversation(
    conversation: list[Message], system: str, notes: dict[int, str] | None = None, versions: Versions | None = None
) -> str:
    return json.dumps(conversation_record(conversation, system, notes, versions), indent=2)


def import_conversation(text: str, limit: int = 100_000) -> tuple[list[Message], str, dict[int, str], Versions]:
    """Reads what `export_conversation` writes (or a bare message list); returns (conversation, system,
    notes, versions)."""
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise DialogueError(f"The file is not JSON: {exc}") from exc
    return check_record(data, limit)


def check_record(data: object, limit: int = 100_000) -> tuple[list[Message], str, dict[int, str], Versions]:
    """A `conversation_record` (or a bare message list) from anyone, checked whole before anything is
    returned: roles, text, notes and ratings only on replies, versions that fit where they part; at most
    `limit` characters in the conversation (and in each version, read with what comes before it), and
    again in all its versions. Returns (conversation, system, notes, versions)."""
    conversation, system, notes = check_messages(data, limit)
    raw = data.get("messages") if isinstance(data, dict) else data
    shift = len(raw) - len(conversation)  # the system message, when there is one
    return conversation, system, notes, check_versions(raw[shift:], conversation, 0, limit, [limit], 0)


def check_messages(data: object, limit: int) -> tuple[list[Message], str, dict[int, str]]:
    messages = data.get("messages") if isinstance(data, dict) else data
    if not isinstance(messages, list):
        raise DialogueError("The file must hold a list of messages or {'messages': [...]}.")
    notes = {i: m["note"] for i, m in enumerate(messages) if isinstance(m, dict) and "note" in m}
    ratings = {i: m["rating"] for i, m in enumerate(messages) if isinstance(m, dict) and "rating" in m}
    messages = [{"role": m.get("role"), "content": m.get("content")} if isinstance(m, dict) else m for m in messages]
    for i, m in enumerate(messages):
        if isinstance(m, dict):
            check_text(m["content"], f"message {i}", limit)
    only_system = len(messages) == 1 and isinstance(messages[0], dict) and messages[0]["role"] == "system"
    if messages and not only_system:
        validate(messages, last=None)  # a question may wait for its reply (a reload mid-reply)
    check_ratings(ratings, messages)
    system, conversation = split_system(
        [{**m, "rating": ratings[i]} if i in ratings else m for i, m in enumerate(messages)]
    )
    if not isinstance(system, str):
        raise DialogueError("The system prompt must be text.")
    if sum(len(m["content"]) for m in messages) > limit:
        raise DialogueError(f"The conversation is longer than {limit} characters.")
    for i, note in notes.items():
        if _CONTROL.search(check_text(note, f"note of message {i}", MAX_NOTE)):
            raise DialogueError(f"The note of message {i} must be one line of text, without control characters.")
        if messages[i]["role"] != "assistant":
            raise DialogueError(f"Message {i} has a note, but only replies have notes.")
    shift = len(messages) - len(conversation)
    return conversation, system, {i - shift: note for i, note in notes.items()}


def check_ratings(ratings: dict[int, object], messages: list[Message]) -> None:
    """Each rating (by message index) is one the page gives, on a reply."""
    for i, rating in ratings.items():
        if not isinstance(rating, str) or rating not in RATINGS:
            raise DialogueError(f"The rating of message {i} must be {' or '.join(map(json.dumps, RATINGS))}.")
        if messages[i]["role"] != "assistant":
            raise DialogueError(f"Message {i} has a rating, but only replies are rated.")


def check_versions(
    raw: list, conversation: list[Message], start: int, limit: int, left: list[int], depth: int
) -> Versions:
    """The versions hung on `raw`, the records of `conversation` from message `start` on: each a tail that
    parts there (as the conversation would read with it), its characters counted against `left`."""
    versions: Versions = {}
    for i, message in enumerate(raw, start):
        if not isinstance(message, dict) or not message.get("versions"):  # none, null or {}: no versions
            continue
        if depth >= MAX_DEPTH:
            raise DialogueError(f"The versions are nested more than {MAX_DEPTH} deep.")
        here = message["versions"]
        others = here.get("others") if isinstance(here, dict) else None
        shown = here.get("shown") if isinstance(here, dict) else None
        if not isinstance(others, list) or not 1 <= len(others) < MAX_VERSIONS:
            raise DialogueError(f"The versions of message {i} must be a list of 1 to {MAX_VERSIONS - 1} others.")
        if type(shown) is not int or not 0 <= shown <= len(others):
            raise DialogueError(f"The versions of message {i} must say which one is shown (0 to {len(others)}).")
        kept = []
        for other in others:
            if not isinstance(other, list) or not other or not isinstance(other[0], dict):
                raise DialogueError(f"A version of message {i} must be a list of messages.")
            if other[0].get("role") != conversation[i]["role"]:
                first = "question" if conversation[i]["role"] == "user" else "reply"
                raise DialogueError(f"A version of message {i} must start as the message does, with a {first}.")
            prefix = [{"role": m["role"], "content": m["content"]} for m in conversation[:i]]
            try:
                whole, _, notes = check_messages([*prefix, *other], limit)
            except DialogueError as exc:
                raise DialogueError(f"A version of message {i}: {exc}") from None
            left[0] -= sum(len(m["content"]) for m in whole[i:])
            if left[0] < 0:
                raise DialogueError(f"The versions hold more than {limit} characters in all.")
            kept.append(tail(whole, notes, check_versions(other, whole, i, limit, left, depth + 1), i))
        versions[i] = {"shown": shown, "others": kept}
    return versions
