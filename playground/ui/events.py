"""Which event runs which handler, with what: the page's wiring in one place. Every change to the open
conversation is then kept in the browser."""

from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from playground.chat import Chat
from playground.conversation_file import export_conversation
from playground.ui.browser import call
from playground.ui.conversations import Conversations
from playground.ui.files import Loading, as_markdown
from playground.ui.layout import Page
from playground.ui.preferences import Preferences
from playground.ui.turn import Turn

PRIVATE = {"api_visibility": "private"}  # the page's own events: not in the API that clients see
QUICK = {"show_progress": "hidden", **PRIVATE}  # queued: a warning reaches the page only from the queue


@dataclass(frozen=True)
class Wires:
    """The component lists the page's events read and write."""

    values: set  # a set: handlers get one dict
    replying: list
    opened: list  # the open conversation, as it is kept
    keeping: list
    leaving: list  # what an event that replaces the open conversation keeps first
    opening: list


def wires(page: Page) -> Wires:
    listed = page.conversations
    # The open conversation's id is among the values: a streaming reply is kept under it.
    values = {page.state, page.notes, page.versions, page.system, page.model, listed.opened, *page.samplers}
    replying = page.replying
    opened = [page.state, page.notes, page.versions, page.system, listed.opened, listed.labels]
    keeping = [listed.current, listed.opened, listed.labels, listed.listed, listed.dates]
    leaving = [page.state, page.notes, page.versions, page.system, listed.opened, page.busy]
    opening = [*page.shown, page.system, listed.opened, listed.current, listed.past, *keeping[2:]]
    return Wires(values, replying, opened, keeping, leaving, opening)


def wire(page: Page, chat: Chat) -> None:
    turn = Turn(page, chat)
    kept = Conversations(page, chat, turn.show, turn.leave)
    preferences = Preferences(page, chat)
    w = wires(page)
    page.model.change(
        turn.pick_model,
        [page.model, page.max_new_tokens],
        [page.info, page.notice, page.max_new_tokens, page.context],
        queue=False,
        **PRIVATE,
    )
    # Send is for a message: disabled on an empty box.
    page.textbox.change(
        lambda text: gr.update(interactive=bool(text.strip())), page.textbox, page.send, queue=False, **QUICK
    )
    page.blocks.unload(turn.forget)
    generating = wire_sending(page, turn, kept, w)
    # page.js runs it in turn with the list's events: each writes what the one before it has written.
    keep = {"fn": kept.keep, "inputs": w.opened, "outputs": w.keeping, "js": call("inTurn"), **QUICK}
    for change in wire_changes(page, turn, preferences, w, generating):
        change.then(**keep)
    page.system.blur(**keep)
    wire_list(page, kept, w)
    wire_files(page, chat, kept, preferences, w)


def wire_sending(page: Page, turn: Turn, kept: Conversations, w: Wires) -> list:
    """Send, an example, Retry, Edit, Continue and Answer it: the events that start a reply."""
    buttons = [page.busy, page.send, page.stop]
    # Not queued, those kept as a reply starts: written at once, before a short reply's own keeping comes.
    at_once = {"outputs": w.keeping, **QUICK, "queue": False}
    # An example in the empty chat is sent as it is clicked: it goes through the box, as a typed message.
    picked = page.chatbot.example_select(turn.pick_example, None, page.textbox, queue=False, **PRIVATE)
    generating = []
    for event in (page.textbox.submit, page.send.click, picked.then):
        taking = event(
            turn.take,
            [page.textbox, page.busy],
            [page.textbox, page.sent, page.refused, page.continue_, page.answer, page.take_back, *buttons],
            queue=False,
            js=call("take"),
            **PRIVATE,
        )
        # "multiple": the page would drop a send made just after a reply ends, while the reply's own event
        # is still finishing ("once", the default, skips it); `take` already refuses a send while one streams.
        sending = {page.sent, page.refused, page.textbox, *w.values}
        generating.append(taking.then(turn.submit, sending, w.replying, trigger_mode="multiple", **PRIVATE))
        taking.then(kept.keep_sent, [page.sent, *w.opened], **at_once)  # a reload while it streams keeps it
    page.chatbot.edit(kept.keep_edited, w.opened, **at_once)
    return [
        *generating,
        page.chatbot.retry(turn.retry, w.values, w.replying, **PRIVATE),
        page.chatbot.edit(turn.edit, {*w.values, page.textbox}, w.replying, **PRIVATE),
        page.continue_.click(turn.continue_reply, w.values, w.replying, **PRIVATE),
        page.answer.click(turn.retry, w.values, w.replying, **PRIVATE),
    ]


def wire_changes(page: Page, turn: Turn, preferences: Preferences, w: Wires, generating: list) -> list:
    """Every event that changes the open conversation: those that start a reply, Stop, Undo, the versions'
    ‹ and ›, a reply's like or dislike, Clear."""
    shown = page.shown
    # Stop does not cancel the reply's event: the reply ends and shows where it stopped itself (ui/stop.py).
    changing = [*generating, page.stop.click(turn.stop, [page.state, page.notes, page.textbox], w.replying, **PRIVATE)]
    undoing = [page.state, page.notes, page.versions, page.textbox, page.busy]
    for undo in (page.chatbot.undo, page.take_back.click):
        changing.append(undo(turn.undo, undoing, [*shown, page.textbox], queue=False, **PRIVATE))
    flipping = [page.flip_to, page.state, page.notes, page.versions, page.busy]
    changing.append(page.flip.click(turn.flip, flipping, shown, js=call("flipTo"), queue=False, **PRIVATE))
    # Queued one at a time, each in turn: each click says what its reply's mark now is, and two at once would
    # each rate the conversation as it was, the last undoing the first.
    changing.append(
        page.chatbot.like(
            preferences.rate,
            [page.state, page.notes, page.busy],
            [page.chatbot, page.state],
            trigger_mode="multiple",
            concurrency_limit=1,
            **QUICK,
        )
    )
    changing.append(  # the chatbot's trash icon (page.js asks first)
        page.chatbot.clear(None, cancels=generating, **PRIVATE).then(
            turn.clear, [page.model, page.max_new_tokens], [*shown, page.busy, page.send, page.stop], **PRIVATE
        )
    )
    return changing


def wire_list(page: Page, kept: Conversations, w: Wires) -> None:
    """The conversations' list. Events that replace the open conversation first send the stored list."""
    listed = page.conversations
    reading = [listed.labels, listed.listed, listed.dates]
    restoring = [*page.shown, page.system, listed.opened]
    page.blocks.load(kept.restore, listed.current, restoring, js=call("sendStored", 1), **QUICK).then(
        kept.restore_list,
        [listed.past, page.state, page.system, listed.opened],
        reading,
        js=call("readStored", 4),
        **QUICK,
    )
    # Not queued: an event queued the moment another ends can wait in Gradio's queue until the page's next
    # event (its stream closed as it joined), with the old conversation on screen. They end a streaming reply
    # themselves (Turn.leave), so they have no warning to give; page.js `askAgain` repeats one that came
    # while the page was behind: "multiple", as Gradio drops a click while the same event is pending, and
    # the page asks again as the first one's answer arrives.
    switching = {**QUICK, "queue": False}
    left = [page.state, page.notes, page.versions, page.system, listed.opened, page.textbox, page.drawing]
    leaving = [*w.opening, page.busy, page.send, page.stop]  # with the page given back
    reopening = [listed.past, listed.listed, *left]
    again = {"trigger_mode": "multiple", **switching}
    listed.listed.input(kept.reopen, reopening, leaving, js=call("switchStored", 9), **again)
    listed.new.click(kept.new, [listed.past, *left], leaving, js=call("switchStored", 8), **again)
    # Another tab wrote the list, or its own open conversation (page.js).
    relisting = [listed.past, page.state, page.system, listed.opened]
    listed.relist.click(kept.relist_written, relisting, reading, js=call("readStored", 4), **switching)
    taking_in = [listed.past, listed.theirs, page.state, page.system, listed.opened]
    listed.take_in.click(kept.take_in, taking_in, w.opening, js=call("takeIn"), **switching)
    # An item's own Rename or Delete (page.js draws them and asks Delete's question).
    acting = [listed.past, listed.action, *w.leaving, listed.labels]
    listed.act.click(kept.act, acting, w.opening, js=call("listAction"), **QUICK)


def wire_files(page: Page, chat: Chat, kept: Conversations, preferences: Preferences, w: Wires) -> None:
    """The browser saves what the server writes into file_text, and reads the file Load opens."""
    saving = [page.state, page.system, page.notes, page.versions]
    page.save.click(export_conversation, saving, page.file_text, **PRIVATE).then(
        None, page.file_text, None, js=call("saveJson")
    )
    page.save_markdown.click(
        as_markdown, [page.state, page.system, page.conversations.opened], page.file_text, **PRIVATE
    ).then(None, page.file_text, None, js=call("saveMarkdown"))
    # The list as the browser keeps it, with the open conversation; '' when there is nothing to save.
    listed = page.conversations
    everything = [listed.past, page.state, page.notes, page.versions, page.system, listed.opened]
    page.save_preferences.click(
        preferences.save, everything, page.file_text, js=call("readStored", len(everything)), **PRIVATE
    ).then(None, page.file_text, None, js=call("savePreferences"))
    page.load.click(None, None, page.file_text, js=call("openFile"), trigger_mode="multiple", **PRIVATE).then(
        Loading(chat, kept).load,
        [page.conversations.past, page.file_text, *w.leaving],
        w.opening,
        js=call("sendStored", 8),
        **PRIVATE,
    )
