"""The conversations kept in the browser: restored with the page, listed, reopened, renamed, deleted, and
kept after each change to the open one. Nothing of them is kept on the server (playground.history)."""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace

import gradio as gr

from playground.chat import Chat
from playground.history import (
    MAX_CONVERSATIONS,
    STORE_BYTES,
    StoredConversation,
    check_title,
    choices,
    dates,
    entries,
    new_id,
    open_one,
    read_current,
    read_past,
    sent_size,
    shelve,
)
from playground.template import DialogueError, Message
from playground.ui.layout import Page
from playground.ui.stop import Leaving
from playground.ui.turn import edited, notes_before, waiting
from playground.versions import Versions, branch


class Conversations:
    """The handlers of the conversations' list. `show` draws a conversation (Turn.show), `leave` ends a reply
    streaming into the open one as another opens (Turn.leave)."""

    def __init__(
        self, page: Page, chat: Chat, show: Callable[..., dict], leave: Callable[..., Awaitable[Leaving | None]]
    ):
        self.page, self.chat, self.show, self.leave = page, chat, show, leave
        self.limit = chat.settings.max_conversation_chars

    def listing(self, current: StoredConversation, labels: list[tuple[str, str, float]]) -> dict:
        shown = self.page.conversations
        value = current.id if current.conversation else None
        return {
            shown.labels: labels,
            shown.listed: gr.update(choices=choices(current, labels), value=value),
            shown.dates: dates(current, labels),
        }

    def opening(self, current: StoredConversation, past: list[StoredConversation], dropped: int = 0) -> dict:
        """`current` is now the open conversation and `past` the list; both are stored."""
        page, listed = self.page, self.page.conversations
        if dropped:
            gr.Info(
                f"{dropped} older conversation{'s' * (dropped != 1)} left the list: this browser keeps the "
                f"last {MAX_CONVERSATIONS}, {STORE_BYTES // 1_000_000} MB at most."
            )
        return {
            **self.show(current.conversation, current.notes, current.versions),
            page.context: "",
            page.system: current.system,
            listed.opened: opened_as(current),
            listed.current: current.stored(),
            listed.past: [k.stored() for k in past],
            **self.listing(current, entries(past)),
        }

    def past(self, stored: str | None) -> list[StoredConversation]:
        return read_past(stored, self.limit)[0]

    def keep(
        self,
        conversation: list[Message],
        notes: dict,
        versions: Versions,
        system: str,
        opened: tuple,
        labels: list,
        warn: bool = True,
    ) -> dict:
        listed = self.page.conversations
        current = open_one((opened[0] or new_id(), opened[1], time.time()), conversation, system, notes, versions)
        stored = current.stored()
        if sent_size(stored) > STORE_BYTES:
            if warn:
                gr.Warning("This conversation is too long to keep in this browser: save it as a file.")
            return {listed.opened: opened_as(current)}
        return {
            listed.current: stored,
            listed.opened: opened_as(current),
            **self.listing(current, labels),
        }

    def keep_sent(
        self,
        sent: str,
        conversation: list[Message],
        notes: dict,
        versions: Versions,
        system: str,
        opened: tuple,
        labels: list,
    ) -> dict:
        """The conversation with the message just sent, kept as its reply starts: a reload while the reply
        streams ends the reply, and the message comes back ("Answer it" answers it). The finished turn is kept
        over it when the reply ends."""
        if not sent or waiting(conversation):  # refused: nothing is sent
            return gr.skip()
        # Too long to keep: the reply's own keeping says so, once.
        asked = [*conversation, {"role": "user", "content": sent}]
        return self.keep(asked, notes, versions, system, opened, labels, warn=False)

    def keep_edited(
        self,
        conversation: list[Message],
        notes: dict,
        versions: Versions,
        system: str,
        opened: tuple,
        labels: list,
        edit: gr.EditData,
    ) -> dict:
        """An edited question, kept as its reply starts (as `keep_sent` keeps a message sent), the conversation
        it replaced kept as an earlier version."""
        if (history := edited(conversation, edit)) is None:
            return gr.skip()
        try:
            self.chat.check_message(edit.value)
        except DialogueError:  # refused by the reply's own event, which says why
            return gr.skip()
        at = len(history) - 1
        versions, _ = branch(conversation, notes, versions, at, self.limit)  # the reply's event says what went
        return self.keep(history, notes_before(notes, at), versions, system, opened, labels, warn=False)

    def restore(self, stored: str | None) -> dict:
        """The conversation that was open when the page was last left (reloaded, or its theme switched)."""
        page, listed = self.page, self.page.conversations
        try:
            current = read_current(stored, self.limit)
        except DialogueError:
            gr.Warning("The conversation kept in this browser could not be read: a new one is open.")
            current = None
        current = current or StoredConversation(new_id(), "", [], "")
        return {
            **self.show(current.conversation, current.notes, current.versions),
            page.system: current.system,
            listed.opened: opened_as(current),
        }

    def restore_list(self, stored: str | None, conversation: list[Message], system: str, opened: tuple) -> dict:
        past, bad = read_past(stored, self.limit)
        return self.relist(past, conversation, system, opened, bad)

    def relist_written(self, stored: str | None, conversation: list[Message], system: str, opened: tuple) -> dict:
        """The list another tab has written (what it left out, it said)."""
        return self.relist(read_past(stored, self.limit)[0], conversation, system, opened)

    def relist(
        self, past: list[StoredConversation], conversation: list[Message], system: str, opened: tuple, bad: int = 0
    ) -> dict:
        if bad:
            gr.Warning(
                f"{bad} conversation{'s' * (bad != 1)} kept in this browser could not be read and "
                f"{'were' if bad != 1 else 'was'} left out."
            )
        return self.listing(open_one(opened, conversation, system), entries(past))

    async def reopen(
        self,
        stored: str | None,
        chosen: str,
        conversation: list,
        notes: dict,
        versions: Versions,
        system: str,
        opened: tuple,
        box: str,
        drawing: bool,
        request: gr.Request,
    ) -> dict:
        """Another conversation from the list; a reply streaming into the open one stops there first."""
        past = self.past(stored)
        found = next((k for k in past if k.id == chosen), None)
        left = (
            found and found.id != opened[0] and await self.leave(conversation, notes, versions, box, drawing, request)
        )
        if not left:
            leaving = open_one(opened, conversation, system, notes, versions)
            return self.listing(leaving, entries([k for k in past if k.id != leaving.id]))
        leaving = open_one(opened, left.conversation, system, left.notes, left.versions)
        return left.opens(self.opening(found, *shelve([k for k in past if k.id != chosen], leaving)))

    async def new(
        self,
        stored: str | None,
        conversation: list,
        notes: dict,
        versions: Versions,
        system: str,
        opened: tuple,
        box: str,
        drawing: bool,
        request: gr.Request,
    ) -> dict:
        """An empty conversation (the system prompt stays: it is more a setting than a message); a reply
        streaming into the open one stops there first."""
        if not (left := await self.leave(conversation, notes, versions, box, drawing, request)):
            return gr.skip()
        leaving = open_one(opened, left.conversation, system, left.notes, left.versions)
        return left.opens(self.opening(open_one((new_id(), ""), [], system), *shelve(self.past(stored), leaving)))

    def act(
        self,
        stored: str | None,
        action: str,
        conversation: list,
        notes: dict,
        versions: Versions,
        system: str,
        opened: tuple,
        busy: bool,
        labels: list,
    ) -> dict:
        """An item's own Rename or Delete (page.js asks Delete's question): `action` is {"rename": id,
        "title": text} or {"delete": id}. Deleting the open conversation opens an empty one, not while a
        reply streams into it; an item no longer in the list changes nothing."""
        try:
            asked = json.loads(action)
        except (TypeError, ValueError, RecursionError):
            return gr.skip()
        if not isinstance(asked, dict) or not ({"rename", "delete"} & asked.keys()):
            return gr.skip()
        target = asked.get("delete", asked.get("rename"))
        past = self.past(stored)
        current = open_one(opened, conversation, system, notes, versions)
        others = [k for k in past if k.id != target]
        if "delete" in asked:
            if target == current.id and current.conversation:
                empty = open_one((new_id(), ""), [], system)
                return gr.skip() if streaming(busy) else self.opening(empty, past)
            return gr.skip() if len(others) == len(past) else self.relisted(current, others)
        try:
            title = check_title(asked.get("title"))
        except DialogueError as exc:
            gr.Warning(str(exc))
            return gr.skip()
        if target == current.id and current.conversation:
            return self.keep(conversation, notes, versions, system, (current.id, title), labels)
        renamed = [replace(k, title=title) if k.id == target else k for k in past]
        return gr.skip() if renamed == past else self.relisted(current, renamed)

    def take_in(self, stored: str | None, theirs: str, conversation: list, system: str, opened: tuple) -> dict:
        """Another tab's open conversation (`theirs`, as it stored it), into this tab's list: this tab's next
        write of its own open conversation then loses neither."""
        try:
            other = read_current(theirs, self.limit)
        except DialogueError:
            return gr.skip()
        if other is None or other.id == opened[0] or not other.conversation:
            return gr.skip()
        past, _ = shelve(self.past(stored), other)
        return self.relisted(open_one(opened, conversation, system), past)

    def relisted(self, current: StoredConversation, past: list[StoredConversation]) -> dict:
        """The list changed, not the open conversation."""
        return {self.page.conversations.past: [k.stored() for k in past], **self.listing(current, entries(past))}

    def open_loaded(
        self,
        stored: str | None,
        loaded: StoredConversation,
        conversation: list,
        notes: dict,
        versions: Versions,
        system: str,
        opened: tuple,
    ) -> dict:
        """A conversation from a file opens as a new one; the one that was open goes to the list."""
        leaving = open_one(opened, conversation, system, notes, versions)
        return self.opening(loaded, *shelve(self.past(stored), leaving))


def streaming(busy: bool) -> bool:
    """While a reply streams into the open conversation, it stays open."""
    if busy:
        gr.Warning("A reply is being written: stop it first.")
    return busy


def opened_as(current: StoredConversation) -> tuple[str, str, float]:
    """The page's `opened` for the open conversation (`open_one` reads it back)."""
    return current.id, current.title, current.updated
