"""The Gradio Blocks playground. `layout` places the components, `events` wires each event to its handler:
`turn` (send, retry, edit, continue, undo, clear; `stop` and its race), `conversations` (the list kept in
the browser) and `files` (save, load). `browser` holds what runs in the page: static/page.js and page.css."""

from __future__ import annotations

import gradio as gr

from playground.chat import Chat
from playground.chat_api import chat_api
from playground.ui.browser import assets
from playground.ui.events import wire
from playground.ui.layout import layout


def build_ui(chat: Chat) -> tuple[gr.Blocks, dict]:
    """The page, and what `gr.mount_gradio_app` takes for its browser side (`browser.assets`)."""
    page = layout(chat)
    with page.blocks:
        wire(page, chat)
        gr.api(chat_api(chat), api_name="chat")
    return page.blocks, assets(next(iter(chat.backends)))
