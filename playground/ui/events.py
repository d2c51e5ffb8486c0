"""Which event runs which handler, with what: the page's wiring in one place. Every change to the open
conversation is then kept in the browser."""

from __future__ import annotations

import gradio as gr

from playground.chat import Chat
from playground.conversation_file import export_conversation
from playground.ui.browser import call
from playground.ui.conversations import Conversations
from playground.ui.files import Loading, as_markdown
from playground.ui.layout import Page
from playground.ui.turn import Turn

PRIVATE = {"api_visibility": "private"}  # the page's own events: not in the API that clients see
QUICK = {"show_progress": "hidden", **PRIVATE}  # queued: a warning reaches the page only from the queue


def wire(page: Page, chat: Chat) -> None:
    turn = Turn(page, chat)
    listed = page.conversations
    kept = Conversations(page, chat, turn.show)
    shown, buttons = page.shown, [page.busy, page.send, page.stop]
    # A set: handlers get one dict. The open conversation's id: a streaming reply is kept under it.
    values = {page.state, page.notes, page.versions, page.system, page.model, listed.opened, *page.samplers}
    # The message box is among every reply's outputs (written to give a refused message back): it marks the
    # event as running, which page.js's `settled` waits on.
    replying = [*shown, *buttons, page.textbox, listed.current]
    opened = [page.state, page.notes, page.versions, page.system, listed.opened, listed.labels]
    keeping = [listed.current, listed.opened, listed.labels, listed.listed, listed.dates]
    # page.js runs it in turn with the list's events: each writes what the one before it has written.
    keep = {"fn": kept.keep, "inputs": opened, "outputs": keeping, "js": call("inTurn"), **QUICK}
    # Not queued, those kept as a reply starts: written at once, before a short reply's own keeping comes.
    at_once = {"outputs": keeping, **QUICK, "queue": False}

    page.model.change(
        turn.pick_model,
        [page.model, page.max_new_tokens],
        [page.info, page.notice, page.max_new_tokens, page.context],
        queue=False,
        **PRIVATE,
    )
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
        generating.append(
            taking.then(
                turn.submit,
                {page.sent, page.refused, page.textbox, *values},
                replying,
                trigger_mode="multiple",
                **PRIVATE,
            )
        )
        taking.then(kept.keep_sent, [page.sent, *opened], **at_once)  # a reload while it streams keeps it
    page.chatbot.edit(kept.keep_edited, opened, **at_once)
    generating += [
        page.chatbot.retry(turn.retry, values, replying, **PRIVATE),
        page.chatbot.edit(turn.edit, {*values, page.textbox}, replying, **PRIVATE),
        page.continue_.click(turn.continue_reply, values, replying, **PRIVATE),
        page.answer.click(turn.retry, values, replying, **PRIVATE),
    ]
    # Stop does not cancel the reply's event: the reply ends and shows where it stopped itself (ui/stop.py).
    stopping = page.stop.click(turn.stop, [page.state, page.notes, page.textbox], replying, **PRIVATE)
    page.blocks.unload(turn.forget)
    # Send is for a message: disabled on an empty box.
    page.textbox.change(
        lambda text: gr.update(interactive=bool(text.strip())),
        page.textbox,
        page.send,
        queue=False,
        show_progress="hidden",
        **PRIVATE,
    )
    changing = [
        *generating,
        stopping,
    ]
    for undoing in (page.chatbot.undo, page.take_back.click):
        changing.append(
            undoing(
                turn.undo,
                [page.state, page.notes, page.versions, page.textbox, page.busy],
                [*shown, page.textbox],
                queue=False,
                **PRIVATE,
            )
        )
    changing.append(  # the page's ‹ and › under a message with versions
        page.flip.click(
            turn.flip,
            [page.flip_to, page.state, page.notes, page.versions, page.busy],
            shown,
            js=call("flipTo"),
            queue=False,
            **PRIVATE,
        )
    )
    changing.append(  # the chatbot's trash icon (page.js asks first)
        page.chatbot.clear(None, cancels=generating, **PRIVATE).then(
            turn.clear, [page.model, page.max_new_tokens], [*shown, *buttons], **PRIVATE
        )
    )
    for change in changing:
        change.then(**keep)
    page.system.blur(**keep)

    # The conversations' list. Events that replace the open conversation first send the stored list.
    leaving = [page.state, page.notes, page.versions, page.system, listed.opened, page.busy]
    opening = [
        *shown,
        page.system,
        listed.opened,
        listed.current,
        listed.past,
        listed.labels,
        listed.listed,
        listed.dates,
    ]
    page.blocks.load(
        kept.restore,
        listed.current,
        [*shown, page.system, listed.opened],
        js=call("sendStored", 1),
        **QUICK,
    ).then(
        kept.restore_list,
        [listed.past, page.state, page.system, listed.opened],
        [listed.labels, listed.listed, listed.dates],
        js=call("readStored", 4),
        **QUICK,
    )
    # Not queued: an event queued the moment another ends can wait in Gradio's queue until the page's next
    # event (its stream closed as it joined), with the old conversation on screen; the page stops a streaming
    # reply before these (page.js `stopFirst`), so they have no warning to give.
    switching = {**QUICK, "queue": False}
    reopening = [listed.past, listed.listed, *leaving]
    listed.listed.input(kept.reopen, reopening, opening, js=call("sendStored", 8), **switching)
    listed.new.click(kept.new, [listed.past, *leaving], opening, js=call("sendStored", 7), **switching)
    # Another tab wrote the list, or its own open conversation (page.js).
    relisting = [listed.past, page.state, page.system, listed.opened]
    listed.relist.click(
        kept.relist_written,
        relisting,
        [listed.labels, listed.listed, listed.dates],
        js=call("readStored", 4),
        **switching,
    )
    taking_in = [listed.past, listed.theirs, page.state, page.system, listed.opened]
    listed.take_in.click(kept.take_in, taking_in, opening, js=call("takeIn"), **switching)
    # An item's own Rename or Delete (page.js draws them and asks Delete's question).
    listed.act.click(
        kept.act, [listed.past, listed.action, *leaving, listed.labels], opening, js=call("listAction"), **QUICK
    )

    # Files: the browser saves what the server writes into file_text, and reads the file Load opens.
    saving = [page.state, page.system, page.notes, page.versions]
    page.save.click(export_conversation, saving, page.file_text, **PRIVATE).then(
        None, page.file_text, None, js=call("saveJson")
    )
    page.save_markdown.click(as_markdown, [page.state, page.system, listed.opened], page.file_text, **PRIVATE).then(
        None, page.file_text, None, js=call("saveMarkdown")
    )
    page.load.click(None, None, page.file_text, js=call("openFile"), trigger_mode="multiple", **PRIVATE).then(
        Loading(chat, kept).load,
        [listed.past, page.file_text, *leaving],
        opening,
        js=call("sendStored", 8),
        **PRIVATE,
    )
