"""Stop and its race with the reply it stops.

Stop could cancel the reply's event from the page only once the page knows the event's id: on a slow
connection a Stop right after Send comes before that, even before the reply has started. And what Stop's own
event shows can reach the page before the reply's last piece (both events' messages in one read) and be drawn
over by it. So Stop does not cancel: it sets the reply's flag, the reply ends at once (also while it waits for
a slot or its first token), and the reply's own event shows where it stopped, after its last piece.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field

from playground.display import ENDINGS
from playground.template import Message
from playground.versions import Versions

STOP_WAIT_S = 10  # at most, for a reply to end once stopped: a decode step in a thread ends first


@dataclass
class Stopped:
    """What the page shows once Stop has ended a reply."""

    conversation: list[Message]
    notes: dict[int, str]
    back: str | None  # the message that goes back into the box: its reply never showed
    versions: Versions | None = None  # None: as the page has them


def marked(conversation: list[Message], notes: dict[int, str]) -> dict[int, str]:
    """The notes, with a last reply that has none marked as stopped."""
    last = len(conversation) - 1
    if last >= 0 and conversation[last]["role"] == "assistant" and last not in notes:
        return {**notes, last: ENDINGS["cancelled"]}
    return notes


@dataclass
class Reply:
    """The newest reply of a session as it streams."""

    conversation: list[Message]  # as the page shows it: the conversation before, until the reply streams
    notes: dict[int, str]
    back: str | None = None  # the message sent or edited, for the box if Stop comes before anything streamed
    started: bool = False  # a piece of the reply has streamed
    versions: Versions | None = None  # once it has, those of its conversation (Retry and Edit keep a version)
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    box: str = ""  # the message box when Stop was pressed
    shown: bool = False  # the reply's event has shown where it stopped, or how it ended by itself
    dropped: bool = False  # its conversation was cleared: it shows nothing more
    done: asyncio.Event = field(default_factory=asyncio.Event)
    # Its conversation was left for another (Replies.leave): the reply's last update shows what this is given.
    instead: asyncio.Future | None = None
    halted: asyncio.Event = field(default_factory=asyncio.Event)  # it streams no more

    def where_stopped(self) -> Stopped:
        """The reply as far as it got, marked as stopped; or, with nothing streamed, the conversation as it
        was and the message back in the box."""
        if self.started:
            return Stopped(self.conversation, marked(self.conversation, self.notes), None, self.versions)
        return Stopped(self.conversation, self.notes, self.back)


@dataclass
class Leaving:
    """The open conversation as it is left, and how the one opened instead is shown."""

    conversation: list[Message]
    notes: dict[int, str]
    versions: Versions
    shown: dict  # the page given back, with the other conversation
    back: dict  # the message back in the box: from the reply's event (the switch writing the box too would
    # end the box's "running" mark, which page.js's `settled` waits on, before the reply's event has ended)
    instead: asyncio.Future | None  # the reply's event shows what this is given as its last update
    replying: list  # what the reply's event writes

    def opens(self, outputs: dict) -> dict:
        """`outputs`, the other conversation opened, with the page given back; the reply that was left shows
        the same (those of them it writes), so it cannot draw its conversation over them."""
        shown = {**outputs, **self.shown}
        if self.instead is not None and not self.instead.done():
            self.instead.set_result({**{c: v for c, v in shown.items() if c in self.replying}, **self.back})
        return shown


async def until_stopped(updates: AsyncGenerator, reply: Reply) -> AsyncIterator:
    """`updates` until the reply is stopped, then closed. Stopped, it returns at once: the step it waited for
    (a slot, a first token in a thread) is cancelled, and `updates` closed once that step has ended."""
    stopping = asyncio.ensure_future(reply.stop.wait())
    step = None
    try:
        while not reply.stop.is_set():
            step = asyncio.ensure_future(anext(updates))
            await asyncio.wait({step, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if not step.done():
                return
            try:
                update = step.result()
            except StopAsyncIteration:
                return
            yield update
    finally:
        stopping.cancel()
        if step is not None and not step.done():
            step.cancel()
            closing = asyncio.ensure_future(close_after(step, updates))
            CLOSING.add(closing)  # held until done: the loop keeps only weak references to tasks
            closing.add_done_callback(CLOSING.discard)
        else:
            await updates.aclose()


CLOSING: set[asyncio.Task] = set()


async def close_after(step: asyncio.Future, updates: AsyncGenerator) -> None:
    """Closes `updates` once its cancelled step has ended (a step that raised has ended the generator)."""
    with contextlib.suppress(Exception, asyncio.CancelledError):
        await step
        await updates.aclose()


@dataclass
class Replies:
    """Each session's reply on its way, from the moment its message is taken from the box."""

    live: dict[str, Reply] = field(default_factory=dict)  # session -> its newest reply
    unsent: dict[str, str] = field(default_factory=dict)  # session -> the message taken, until its reply starts
    halted: set[str] = field(default_factory=set)  # sessions whose Stop came before their reply started
    left: dict[str, asyncio.Future] = field(default_factory=dict)  # session -> what its reply that did not
    # start shows instead (Replies.leave)

    def taken(self, session: str, message: str) -> None:
        self.unsent[session] = message

    def coming(self, session: str) -> None:
        """A new reply is on its way: a Stop from before it is forgotten."""
        self.halted.discard(session)

    def starts(self, session: str) -> bool:
        """Whether a reply may start: not if its Stop came first."""
        self.unsent.pop(session, None)
        if session in self.halted:
            self.halted.discard(session)
            return False
        return True

    def behind(self, session: str, drawing: bool) -> bool:
        """Whether a page that shows a reply streaming (`drawing`, as the page says: the busy State is already
        down) is behind: the reply has ended here, and its last updates are on their way to the page, where
        they would draw over anything sent now."""
        live = self.live.get(session)
        return drawing and (live is None or live.shown) and session not in self.unsent

    def begin(self, session: str, reply: Reply) -> None:
        self.live[session] = reply

    def end(self, session: str, reply: Reply) -> None:
        reply.done.set()
        if self.live.get(session) is reply:
            del self.live[session]

    def drop(self, session: str) -> None:
        """The reply ends and shows nothing more (its conversation was cleared, or it was not sent)."""
        if live := self.live.pop(session, None):
            live.dropped = True
            live.stop.set()
        self.unsent.pop(session, None)

    async def stop(self, session: str, conversation: list[Message], notes: dict[int, str], box: str) -> Stopped | None:
        """Ends the session's reply. None: the reply's event has shown where it stopped, or there was none.
        Otherwise what the page shows: `conversation` and `notes` are the page's, for a reply that has not
        started: its message goes back to the box."""
        if live := self.live.get(session):
            live.box = box
            live.stop.set()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(live.done.wait(), STOP_WAIT_S)
            return None if live.shown else live.where_stopped()
        self.halted.add(session)  # its reply, if it still comes, does not run
        if (back := self.unsent.pop(session, None)) is None:
            # No reply on its way: it ended as Stop was pressed. Drawing the page's conversation again could
            # draw over what replaced it since (New conversation, right after).
            return None
        return Stopped(conversation, marked(conversation, notes), back)

    async def leave(
        self, session: str, conversation: list[Message], notes: dict[int, str], box: str
    ) -> tuple[Stopped | None, asyncio.Future | None]:
        """Ends the session's reply as another conversation opens, in the event that opens it: no Stop, and
        no wait for the page to show where the reply stopped. Returns what `stop` would show, and a future
        that the caller gives what it shows instead: the reply's event shows that as its last update, so
        whichever of the two events reaches the page last, the other conversation stays on screen."""
        live = self.live.get(session)
        if live is None:
            stopped = await self.stop(session, conversation, notes, box)
            if stopped is None or stopped.back is None:
                return stopped, None
            # Its message was taken, its reply has not begun: that reply will not start, and shows this.
            self.left[session] = instead = asyncio.get_running_loop().create_future()
            return stopped, instead
        if live.shown:  # it has ended, and shown how
            return (Stopped(live.conversation, live.notes, None, live.versions) if live.started else None), None
        live.box = box
        live.instead = asyncio.get_running_loop().create_future()
        live.stop.set()
        waits = [asyncio.ensure_future(event.wait()) for event in (live.halted, live.done)]
        await asyncio.wait(waits, timeout=STOP_WAIT_S, return_when=asyncio.FIRST_COMPLETED)
        for wait in waits:
            wait.cancel()
        return live.where_stopped(), live.instead

    def forget(self, session: str) -> None:
        """A session that has left (its tab closed or reloaded): its reply ends, and nothing of it is kept.

        Gradio does not always cancel a reply whose page has gone (a reload on a slow connection left it
        generating to its end, for nobody, while later replies waited for the slot)."""
        taken = self.unsent.get(session) is not None
        self.drop(session)
        self.left.pop(session, None)
        if taken:
            self.halted.add(session)  # a message taken for a reply that has not started: it will not run
        else:
            self.halted.discard(session)
