"""A conversation as a file: saved by the browser as JSON or Markdown, and loaded from a file the browser
reads. The server never writes such a file, nor opens a path a client names."""

from __future__ import annotations

import gradio as gr

from playground.chat import Chat
from playground.conversation_file import import_conversation
from playground.display import conversation_markdown
from playground.history import StoredConversation, new_id, open_one
from playground.template import DialogueError
from playground.ui.browser import opened_file
from playground.ui.conversations import Conversations, streaming
from playground.ui.turn import waiting


def as_markdown(conversation: list, system: str, opened: tuple) -> str:
    title = open_one(opened, conversation, system).label()
    return conversation_markdown(title, conversation, system)


class Loading:
    """Load: the file the browser read opens as a new conversation, once checked whole."""

    def __init__(self, chat: Chat, conversations: Conversations):
        self.chat, self.conversations = chat, conversations

    def load(
        self,
        stored: str | None,
        sent: str,
        conversation: list,
        notes: dict,
        versions: dict,
        system: str,
        opened: tuple,
        busy: bool,
    ) -> dict:
        text, refused = opened_file(sent)
        if text is None:
            if refused:
                gr.Warning(refused)
            return gr.skip()
        try:
            loaded, loaded_system, loaded_notes, loaded_versions = import_conversation(text, self.conversations.limit)
        except DialogueError as exc:
            gr.Warning(f"Could not load that conversation: {exc}")
            return gr.skip()  # nothing replaced
        if streaming(busy):
            return gr.skip()
        # Opened whole, to be read, copied and saved, even where this server would not take it further.
        asking = loaded if waiting(loaded) else [*loaded, {"role": "user", "content": "?"}]
        try:
            self.chat.check_conversation(asking, loaded_system)
        except DialogueError as exc:
            gr.Warning(f"Loaded, but this server cannot continue it: {exc}")
        opening = StoredConversation(new_id(), "", loaded, loaded_system, loaded_notes, loaded_versions)
        return self.conversations.open_loaded(stored, opening, conversation, notes, versions, system, opened)
