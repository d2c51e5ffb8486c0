"""Conversations kept in the browser: what is stored, how it is read back, and the list's titles.

The page keeps two values in the browser's localStorage (`gr.BrowserState`): the open conversation,
written after every change to it, and the past ones, written only when the list changes (so a turn
never sends them). Nothing is kept on the server. A stored value comes back from the browser as its
JSON text and may have been edited by hand, so it is read like an uploaded file: checked whole, and
refused (or, in the list, left out) when anything is wrong.
"""

from __future__ import annotations

import json
import math
import re
import time
import uuid
from dataclasses import dataclass, field

from playground.chat import check_text, sendable
from playground.conversation_file import check_record, conversation_record
from playground.template import DialogueError, Message
from playground.versions import Versions

MAX_CONVERSATIONS = 50  # in the list; the oldest goes first
# The past conversations travel as one request when the list changes, and localStorage holds about
# 5 M characters per site: each stored value stays within this many bytes of request.
STORE_BYTES = 1_000_000
MAX_TITLE = 100  # a title given by Rename
TITLE_CHARS = 60  # of the first question, when the conversation has no title of its own
UNTITLED = "New conversation"
_ID = re.compile(r"[0-9a-f]{32}")
_HIDING = re.compile("[\u200b-\u200f\u202a-\u202e\u2060-\u2064\u2066-\u2069\ufeff]")


@dataclass(frozen=True)
class StoredConversation:
    """One conversation as the browser keeps it."""

    id: str
    title: str  # "" until renamed: the list shows the first question
    conversation: list[Message]
    system: str
    notes: dict[int, str] = field(default_factory=dict)  # under replies, by message index
    versions: Versions = field(default_factory=dict)  # those that Retry and Edit kept (playground.versions)
    updated: float = 0.0  # when last changed, in seconds since 1970 (the list's Today / Earlier); 0: unknown

    def label(self) -> str:
        if self.title:
            return self.title
        first = next((m["content"] for m in self.conversation if m["role"] == "user"), "")
        words = one_line(first)
        return (words[: TITLE_CHARS - 1] + "…" if len(words) > TITLE_CHARS else words) or UNTITLED

    def stored(self) -> dict:
        return {
            "id": self.id,
            "title": self.title,
            **({"updated": self.updated} if self.updated else {}),
            **conversation_record(self.conversation, self.system, self.notes, self.versions),
        }


def open_one(
    opened: tuple, conversation: list[Message], system: str, notes: dict | None = None, versions: Versions | None = None
) -> StoredConversation:
    """The open conversation as it is kept; `opened` is the page's (id, title, updated). The system prompt is
    the page's box as sent: a lone surrogate there could not go back to the browser."""
    id, title, *updated = opened
    system = sendable(system) if isinstance(system, str) else ""
    return StoredConversation(id, title, conversation, system, notes or {}, versions or {}, *updated[:1])


def new_id() -> str:
    return uuid.uuid4().hex


def sent_size(value: object) -> int:
    """The bytes a browser sends for a stored value: its JSON text, itself a string in the request's JSON
    (as the page's STORED_JS measures it)."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return len(json.dumps(text, ensure_ascii=False).encode())


def check_title(title: object) -> str:
    """A title from Rename: one line of text, trimmed; '' gives back the first question."""
    return one_line(check_text(title, "title", MAX_TITLE))


def one_line(text: str) -> str:
    """Text as the list shows it: one line, without the controls that would show other text than is there
    (right-to-left overrides, which turn "evil" into "live") or nothing where there is something."""
    return " ".join(_HIDING.sub("", text).split())


def read_kept(value: object, limit: int) -> StoredConversation:
    """A stored conversation, checked as a conversation file is (`limit`: its characters)."""
    if not isinstance(value, dict) or not isinstance(value.get("id"), str) or not _ID.fullmatch(value["id"]):
        raise DialogueError("a kept conversation needs an id")
    conversation, system, notes, versions = check_record(value, limit)
    title, updated = check_title(value.get("title", "")), read_time(value.get("updated"))
    return StoredConversation(value["id"], title, conversation, system, notes, versions, updated)


def read_time(value: object) -> float:
    """A stored time, or 0 (unknown) for anything that is not a time from 1970 to now."""
    valid = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    return float(value) if valid and 0 < value <= time.time() + 86_400 else 0.0


def parse(text: str | None) -> object:
    """A stored value's JSON text as the page sends it (STORED_JS): None when nothing is stored, ''
    when it was too large to send. Raises DialogueError for what cannot be read."""
    if text is None:
        return None
    try:
        return json.loads(text)
    except (TypeError, ValueError, RecursionError) as exc:
        raise DialogueError("the stored value is not JSON (or too large)") from exc


def read_current(text: str | None, limit: int) -> StoredConversation | None:
    """The open conversation from the browser; None when nothing is stored."""
    value = parse(text)
    return None if value is None else read_kept(value, limit)


def read_past(text: str | None, limit: int) -> tuple[list[StoredConversation], int]:
    """The past conversations from the browser, and how many could not be read (left out)."""
    try:
        values = parse(text)
    except DialogueError:
        return [], 1
    if not isinstance(values, list):
        return [], int(values is not None)
    kept, seen, bad = [], set(), max(0, len(values) - MAX_CONVERSATIONS)
    for value in values[:MAX_CONVERSATIONS]:
        try:
            conversation = read_kept(value, limit)
        except DialogueError:
            bad += 1
            continue
        if conversation.id not in seen:
            seen.add(conversation.id)
            kept.append(conversation)
    return kept, bad


def shelve(past: list[StoredConversation], current: StoredConversation | None) -> tuple[list[StoredConversation], int]:
    """The list with `current` (unless it is empty) first, in place of any older copy of it, and the oldest
    beyond the caps dropped; and how many were dropped."""
    kept_elsewhere = [k for k in past if not current or k.id != current.id]  # an older copy of it goes
    conversations = [*([current] if current and current.conversation else []), *kept_elsewhere]
    kept: list[StoredConversation] = []
    size = sent_size([])
    for conversation in conversations[:MAX_CONVERSATIONS]:
        # One more item adds its own size (less its quotes: it is inside the list's) and a comma.
        size += sent_size(conversation.stored()) - 2 + bool(kept)
        if size > STORE_BYTES:
            break
        kept.append(conversation)
    return kept, len(conversations) - len(kept)


def entries(past: list[StoredConversation]) -> list[tuple[str, str, float]]:
    """What the page's list needs of the past conversations: (label, id, updated)."""
    return [(k.label(), k.id, k.updated) for k in past]


def choices(current: StoredConversation, past: list[tuple[str, str, float]]) -> list[tuple[str, str]]:
    """The list as the page shows it: (label, id), the open conversation first unless it is empty, then the
    newest."""
    # Unknown times (0) last, in their order; an older copy of the open one (another tab's) not twice.
    newest_first = sorted((entry for entry in past if entry[1] != current.id), key=lambda entry: -entry[2])
    return [(label, id) for label, id, _ in [*entries([current] if current.conversation else []), *newest_first]]


def dates(current: StoredConversation, past: list[tuple[str, str, float]]) -> str:
    """When each listed conversation last changed, as JSON {id: seconds since 1970}, for the page to group
    the list by (Today / Earlier, in the browser's time zone)."""
    return json.dumps({id: updated for _, id, updated in [*entries([current]), *past]})
