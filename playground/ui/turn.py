"""The turn on the page: send, retry, edit, continue, stop, undo and clear, and picking a model. Each
method is one event's handler; `run` streams the reply that send, retry, edit and continue start.

What a turn does with the model is playground.chat; what the chatbot draws is playground.display.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import gradio as gr

from playground.chat import Chat, Update, describe_budget, in_words, sendable
from playground.display import CONTINUABLE, ENDINGS, display_messages, raw_json, reply_note, tokens_in
from playground.history import STORE_BYTES, open_one, sent_size
from playground.preferences import feedback
from playground.sampling import ParamError
from playground.template import DialogueError, Message
from playground.ui.layout import PARAM_NAMES, Page
from playground.ui.stop import Leaving, Replies, Reply, Stopped, until_stopped
from playground.versions import MAX_DEPTH, MAX_VERSIONS, Versions, before, branch, flip, marks, take_back

REPLY_LIMIT = "'max new tokens'"  # the reply's token limit as the page's slider names it
KEEP_EVERY_S = 1.0  # how often a streaming reply is kept in the browser, for a reload to find


def waiting(conversation: list[Message]) -> bool:
    """The conversation ends with a question that has no reply (kept by a reload while it was answered)."""
    return bool(conversation) and conversation[-1]["role"] == "user"


def notes_before(notes: dict[int, str], end: int) -> dict[int, str]:
    return {i: note for i, note in notes.items() if i < end}


def edited(conversation: list[Message], edit: gr.EditData) -> list[Message] | None:
    """The conversation up to an edited question, with its new text; None if the edit is not of a question."""
    index = edit.index if isinstance(edit.index, int) else edit.index[0]
    if index >= len(conversation) or conversation[index]["role"] != "user":
        return None
    return [*conversation[:index], {"role": "user", "content": edit.value}]


def put_back(message: str, box: str) -> str:
    """A message going back into the message box, before whatever was typed there since."""
    return f"{message}\n\n{box}" if box.strip() else message


def session_of(request: gr.Request | None) -> str:
    return (request.session_hash if request else None) or ""


def client_of(request: gr.Request | None) -> str:
    return request.client.host if request and request.client else ""


@dataclass
class Streaming:
    """One run of `Turn.run`: where it started and what it has seen."""

    values: dict
    notes: dict[int, str]  # the conversation's before the reply; with the reply's own once it ends
    versions: Versions
    unchanged: dict  # the page as it was, for an error before the reply streams
    opening: str  # a continued reply's text before this run
    continuing: bool
    last: Update | None = None
    failed: bool = False


class Turn:
    """The handlers of the conversation's events. They read and write the page's components."""

    def __init__(self, page: Page, chat: Chat):
        self.page, self.chat = page, chat
        self.replies = Replies()
        # The chatbot disables its Retry and Undo while a reply streams (the event's output is generating).
        self.locked = {
            page.send: gr.update(visible=False),
            page.stop: gr.update(visible=True),
            page.continue_: gr.update(visible=False),
            page.answer: gr.update(visible=False),
            page.take_back: gr.update(visible=False),
        }
        self.unlocked = {page.busy: False, page.send: gr.update(visible=True), page.stop: gr.update(visible=False)}

    def show(self, conversation: list[Message], notes: dict[int, str], versions: Versions | None = None) -> dict:
        """The conversation with its replies' likes and dislikes, and Continue under a last reply whose note
        says it was cut at max new tokens or interrupted (also once reopened, reloaded or loaded from a
        file); `versions` when they change."""
        page = self.page
        last = len(conversation) - 1
        reply = last >= 0 and conversation[last]["role"] == "assistant"
        cut = reply and notes.get(last, "").endswith(CONTINUABLE)
        changed = {} if versions is None else {page.versions: versions, page.marks: json.dumps(marks(versions))}
        return {
            **changed,
            page.chatbot: gr.update(value=display_messages(conversation, notes), feedback_value=feedback(conversation)),
            page.state: conversation,
            page.notes: notes,
            page.raw: raw_json(conversation),
            page.continue_: gr.update(visible=cut),
            page.answer: gr.update(visible=waiting(conversation)),
            page.take_back: gr.update(visible=waiting(conversation)),
        }

    async def run(
        self,
        values: dict,
        history: list[Message],
        request: gr.Request | None,
        continuing: bool = False,
        restore: dict | None = None,
        back: str | None = None,
        parts_at: int | None = None,
        **overrides,
    ) -> AsyncIterator:
        """Streams one reply (or, `continuing`, more of the last one). Before it streams, an error leaves
        the conversation as it was, with the `restore` outputs (the message back in its box), and Stop
        gives `back` (the message sent or edited) back to the box. Once it streams, the conversation from
        message `parts_at` on (Retry's reply, Edit's question) is kept as an earlier version."""
        session = session_of(request)
        if not self.replies.starts(session):  # stopped before it started, or its conversation left
            instead = self.replies.left.pop(session, None)
            yield self.unlocked if instead is None else await instead
            return
        before, notes = values[self.page.state], values[self.page.notes]
        versions = self.branched(values, parts_at)
        unchanged = {**self.show(before, notes), **self.unlocked, **(restore or {})}
        try:
            raw = {name: values[c] for name, c in zip(PARAM_NAMES, self.page.samplers, strict=True)}
            params = self.chat.params(**{**raw, **overrides})
        except ParamError as exc:
            gr.Warning(in_words(exc, REPLY_LIMIT))
            yield unchanged
            return
        opening = history[-1]["content"] if continuing else ""  # the reply's text before this run
        kept = notes_before(notes, len(history) - continuing)  # a continued reply gets a new note
        run = Streaming(values, kept, versions, unchanged, opening, continuing)
        live = Reply(before, notes, back)  # as it was, until the reply starts
        self.replies.begin(session, live)
        try:
            async with contextlib.aclosing(self.streamed(run, history, params, live, request)) as shown:
                async for out in shown:
                    yield out
            if run.failed:
                return
            if live.dropped:  # cleared: Gradio ends an event by sending its last update again, a no-op here
                yield gr.skip()
                return
            if live.instead is not None:  # its conversation was left: the one opened instead stays on screen
                live.halted.set()
                yield await live.instead
                live.shown = True
                return
            if live.stop.is_set():
                yield self.where_stopped(run, live)
                live.shown = True
                return
            live.shown = True  # it ended by itself: a Stop that comes now has nothing to draw
        finally:
            self.replies.end(session, live)
        yield self.finished(run)

    async def streamed(
        self, run: Streaming, history: list[Message], params, live: Reply, request: gr.Request | None
    ) -> AsyncIterator[dict]:
        """The reply's updates as the page shows them, kept in the browser every KEEP_EVERY_S for a reload;
        an error before it streams ends it with the page as it was (`run.failed`)."""
        page, values = self.page, run.values
        kept_at = -math.inf
        updates = self.chat.respond(
            history, values[page.system], params, values[page.model], client_of(request), continuing=run.continuing
        )
        # Closed early (also by Stop), the generation ends with it.
        async with contextlib.aclosing(until_stopped(updates, live)) as stream:
            async for update in stream:
                run.last = update
                if update.error and not update.finish:
                    gr.Warning(in_words(update.error, REPLY_LIMIT))
                    run.failed = True
                    yield {**run.unchanged, page.context: update.context or gr.skip()}
                    return
                if update.finish:
                    run.notes = {**run.notes, len(update.conversation) - 1: self.note(run, update)}
                newest = update.conversation[-1] if update.conversation else {}
                if update.finish or (newest.get("role") == "assistant" and newest["content"] != run.opening):
                    live.conversation, live.notes, live.started = update.conversation, run.notes, True
                    live.versions = run.versions
                if not update.finish:
                    shown = {**self.show(update.conversation, run.notes, live.versions), page.context: update.context}
                    if live.started and time.monotonic() - kept_at >= KEEP_EVERY_S:
                        kept_at = time.monotonic()
                        shown |= self.keep_interrupted(values, update.conversation, run.notes, run.versions)
                    yield shown

    def branched(self, values: dict, parts_at: int | None) -> Versions:
        """The conversation's versions, with the part from message `parts_at` on kept as one of them."""
        if parts_at is None:
            return values[self.page.versions]
        limit = self.chat.settings.max_conversation_chars
        page = self.page
        versions, dropped = branch(values[page.state], values[page.notes], values[page.versions], parts_at, limit)
        if dropped:
            gr.Info(
                f"{dropped} older version{'s' * (dropped != 1)} let go: a conversation keeps {MAX_VERSIONS} "
                f"versions of a message, nested {MAX_DEPTH} deep, {limit:,} characters of them in all."
            )
        return versions

    def note(self, run: Streaming, update: Update) -> str:
        """The finished reply's note; a continued reply counts its tokens from before too."""
        earlier = self.earlier_tokens(run.values, run.opening) if run.continuing else 0
        named = run.values[self.page.model] if len(self.chat.backends) > 1 else ""
        return reply_note(update.finish, update.tokens, update.first_token_s, update.seconds, earlier, named)

    def where_stopped(self, run: Streaming, live: Reply) -> dict:
        """Where the reply stopped comes in its own event, after its last piece: from Stop's event, it could
        reach the page first (two events' messages in one read), and the piece draw over it."""
        stopped = live.where_stopped()
        versions = stopped.versions or run.values[self.page.versions]
        return {
            **self.stopped(stopped, live.box),
            **self.keep(run.values, stopped.conversation, stopped.notes, versions),
        }

    def finished(self, run: Streaming) -> dict:
        """The finished reply (its note) with the page given back, once the reply's generator has wound down:
        a page that shows a reply as finished takes New conversation or the next message at once. Gradio
        ends the event by sending this update again, right after it."""
        last = run.last
        if not (last and last.finish):
            return self.unlocked
        if last.error:
            gr.Warning(in_words(last.error, REPLY_LIMIT))
        kept = self.keep(run.values, last.conversation, run.notes, run.versions)
        shown = self.show(last.conversation, run.notes, run.versions)
        return {**shown, self.page.context: last.context, **self.unlocked, **kept}

    def keep(self, values: dict, conversation: list[Message], notes: dict[int, str], versions: Versions) -> dict:
        """The open conversation kept in the browser with the update that shows it: a reload at any moment
        finds what was on screen. (The event's `keep` then writes it again, with the list.)"""
        listed = self.page.conversations
        opened = values[listed.opened]
        system = values[self.page.system]
        kept = open_one((*opened[:2], time.time()), conversation, system, notes, versions).stored()
        return {listed.current: kept} if opened[0] and sent_size(kept) <= STORE_BYTES else {}

    def keep_interrupted(
        self, values: dict, conversation: list[Message], notes: dict[int, str], versions: Versions
    ) -> dict:
        """The reply so far, kept as if the page were left now: a reload finds it noted interrupted, with
        Continue."""
        return self.keep(values, conversation, {**notes, len(conversation) - 1: ENDINGS["interrupted"]}, versions)

    def earlier_tokens(self, values: dict, opening: str) -> int:
        """The tokens of a reply before it was continued: its note's count, else (interrupted, or from a
        file) its text's tokens with the model's tokenizer."""
        counted = tokens_in(values[self.page.notes].get(len(values[self.page.state]) - 1, ""))
        tokenizer = self.chat.backend(values[self.page.model]).tokenizer
        return counted or len(tokenizer(opening, add_special_tokens=False)["input_ids"])

    def lock(self, request: gr.Request) -> dict:
        """The page while a new reply is on its way: busy, Stop for Send."""
        self.replies.coming(session_of(request))
        return {self.page.busy: True, **self.locked}

    def take(self, message: str, busy: bool, request: gr.Request) -> dict:
        """Takes the message out of the box for sending; while a reply streams the box is left alone."""
        page = self.page
        if busy or not message.strip():
            return {page.sent: "", page.refused: ""}
        try:
            self.chat.check_message(message)
        except DialogueError as exc:  # a warning here (not queued) would never reach the page
            return {page.sent: "", page.refused: str(exc), page.textbox: sendable(message)}
        self.replies.taken(session_of(request), message)
        return {page.sent: message, page.refused: "", **self.lock(request)}

    async def submit(self, values: dict, request: gr.Request):
        page = self.page
        message = values[page.sent]
        if not message:  # nothing was taken: the box was empty or refused, or a reply is streaming
            if values[page.refused]:
                gr.Warning(values[page.refused])
            yield {page.textbox: gr.skip()}
            return
        # An error before the reply gives the message back, unless the person typed a new one.
        restore = {} if values[page.textbox] else {page.textbox: message}
        if waiting(values[page.state]):
            self.replies.drop(session_of(request))
            gr.Warning("The last message has no reply yet: Answer it, or Take it back to edit it.")
            yield {**self.show(values[page.state], values[page.notes]), **self.unlocked, **restore}
            return
        history = [*values[page.state], {"role": "user", "content": message}]
        async for out in self.run(values, history, request, restore=restore, back=message):
            yield out

    async def retry(self, values: dict, request: gr.Request):
        conversation = values[self.page.state]
        if not conversation:
            yield self.unlocked
            return
        answered = conversation[-1]["role"] == "assistant"  # else Answer it: a question waits
        history = conversation[:-1] if answered else conversation
        yield self.lock(request)
        parts_at = len(history) if answered else None
        async for out in self.run(values, history, request, parts_at=parts_at, seed=-1):  # a new seed
            yield out

    async def edit(self, values: dict, edit: gr.EditData, request: gr.Request):
        """The edit box holds the message's raw text (the page fills it in), so it is taken as typed. An edit
        refused before the reply (too long, say) waits in the message box, not lost."""
        page = self.page
        conversation = values[page.state]
        if (history := edited(conversation, edit)) is None:
            yield {**self.show(conversation, values[page.notes]), **self.unlocked}
            return
        text = sendable(history[-1]["content"])
        restore = {page.textbox: put_back(text, values[page.textbox])}
        if not text.strip():  # as from the message box: an empty question is not sent
            gr.Warning("The message is empty: the edit was not sent.")
            yield {**self.show(conversation, values[page.notes]), **self.unlocked}
            return
        yield self.lock(request)
        async for out in self.run(values, history, request, restore=restore, back=text, parts_at=len(history) - 1):
            yield out

    async def continue_reply(self, values: dict, request: gr.Request):
        """The reply cut at max new tokens goes on in the same bubble."""
        conversation = values[self.page.state]
        if not conversation or conversation[-1]["role"] != "assistant":
            yield self.unlocked
            return
        yield self.lock(request)
        async for out in self.run(values, conversation, request, continuing=True):
            yield out

    @staticmethod
    def pick_example(example: gr.SelectData) -> str:
        """An example from the empty chatbot goes to the box, to be sent from there."""
        return example.value["text"]

    async def stop(self, conversation: list[Message], notes: dict[int, str], box: str, request: gr.Request) -> dict:
        """The reply stays as far as it got, marked as stopped. One that has not streamed yet ends as if it had
        not started: its message goes back into the box, before anything typed since."""
        stopped = await self.replies.stop(session_of(request), conversation, notes, box)
        return gr.skip() if stopped is None else self.stopped(stopped, box)

    def stopped(self, stopped: Stopped, box: str) -> dict:
        back = {} if stopped.back is None else {self.page.textbox: put_back(stopped.back, box)}
        return {**self.show(stopped.conversation, stopped.notes, stopped.versions), **self.unlocked, **back}

    async def leave(
        self,
        conversation: list[Message],
        notes: dict[int, str],
        versions: Versions,
        box: str,
        drawing: bool,
        request: gr.Request,
    ) -> Leaving | None:
        """The open conversation as another replaces it (New conversation, or one from the list): a reply
        streaming into it stops there, as far as it got; its message goes back into the box if nothing of it
        streamed yet. None: not now, the page is behind (Replies.behind; `drawing`: page.js's word that it
        shows the reply streaming)."""
        session = session_of(request)
        if self.replies.behind(session, drawing):  # page.js asks again once the page has caught up
            return None
        stopped, instead = await self.replies.leave(session, conversation, notes, box)
        if stopped is None:
            return Leaving(conversation, notes, versions, {}, {}, instead, self.page.replying)
        back = {} if stopped.back is None else {self.page.textbox: put_back(stopped.back, box)}
        versions = stopped.versions or versions
        return Leaving(stopped.conversation, stopped.notes, versions, self.unlocked, back, instead, self.page.replying)

    def forget(self, request: gr.Request) -> None:
        self.replies.forget(session_of(request))

    def undo(
        self, conversation: list[Message], notes: dict[int, str], versions: Versions, box: str, busy: bool
    ) -> dict:
        """Takes back what was done last, and only that. A retried reply: the version on screen goes, the newest
        other shows. Else the last question goes back into the box, before anything typed there, with its
        reply (an unanswered one alone); an edited one's newest other version then shows. Not while a reply
        streams (the page disables the button meanwhile)."""
        if not conversation or busy:
            return gr.skip()
        cut = len(conversation) - (1 if waiting(conversation) else 2)
        if cut < 0:
            return gr.skip()
        if cut + 1 in versions:
            return self.show(*take_back(conversation, notes, versions, cut + 1))
        back = {self.page.textbox: put_back(conversation[cut]["content"], box)}
        if cut in versions:
            return {**self.show(*take_back(conversation, notes, versions, cut)), **back}
        return {**self.show(conversation[:cut], notes_before(notes, cut), before(versions, cut)), **back}

    def clear(self, name: str, max_new_tokens: int, request: gr.Request) -> dict:
        """An empty conversation; a reply that was streaming is cancelled first, so it cannot write back. The
        context line says the budget, as before the first message."""
        self.replies.drop(session_of(request))
        *_, context = self.budget(name, max_new_tokens)
        return {**self.show([], {}, {}), self.page.context: context, **self.unlocked}

    def flip(self, to: str, conversation: list[Message], notes: dict[int, str], versions: Versions, busy: bool) -> dict:
        """Another version of a message, from the page's ‹ and ›: `to` is {"at": its index, "position": the
        version, from 0}. Not while a reply streams; a forged or stale one changes nothing."""
        try:
            asked = json.loads(to)
            at, position = asked["at"], asked["position"]
            count = len(versions[at]["others"]) + 1
        except (TypeError, ValueError, KeyError, RecursionError):
            return gr.skip()
        valid = type(at) is int and type(position) is int and 0 <= position < count
        if busy or not valid or position == versions[at]["shown"]:
            return gr.skip()
        return self.show(*flip(conversation, notes, versions, at, position))

    def budget(self, name: str, max_new_tokens: int) -> tuple[int, int, str]:
        """The reply limit `name` allows, the slider's value within it, and the context line for them."""
        limit = self.chat.reply_limit(name)
        # The slider's value as the page sent it: a forged call may send anything there.
        given = isinstance(max_new_tokens, int | float) and math.isfinite(max_new_tokens)
        reply = min(max(1, int(max_new_tokens)), limit) if given else limit
        return limit, reply, describe_budget(self.chat.backend(name).info.context_length, reply)

    def pick_model(self, name: str, max_new_tokens: int) -> dict:
        """Another model: its description, and a reply limit that fits its context."""
        page = self.page
        limit, reply, context = self.budget(name, max_new_tokens)
        return {
            page.info: self.chat.backend(name).info.describe(),
            page.notice: gr.update(visible=self.chat.backend(name).info.demo),
            page.max_new_tokens: gr.update(maximum=limit, value=reply),
            page.context: context,
        }
