"""A reply rated with the chatbot's like and dislike, and "Save preferences": the pairs those ratings make
among Retry's versions (playground.preferences), from every conversation kept in the browser, as a JSONL
file the browser saves. The server keeps none of it."""

from __future__ import annotations

import gradio as gr

from playground.chat import Chat
from playground.display import display_messages
from playground.history import open_one, read_past
from playground.preferences import as_jsonl, feedback, pairs, rated
from playground.template import Message
from playground.ui.layout import Page
from playground.versions import Versions

# What the chatbot's like event says the reply's mark now is -> its rating; "": the mark taken back.
LIKED = {True: "like", False: "dislike", "": None}


class Preferences:
    """The handlers of a reply's like and dislike, and of Save preferences."""

    def __init__(self, page: Page, chat: Chat):
        self.page = page
        self.limit = chat.settings.max_conversation_chars

    def rate(self, conversation: list[Message], notes: dict[int, str], busy: bool, like: gr.LikeData) -> dict:
        """The reply's like or dislike, or (clicked again) none. Not while a reply streams: its end would draw
        over the mark (page.js drops the click meanwhile). A forged one (not a reply's, no such message, a
        mark the page has not) changes nothing; nor does one for a reply no longer open (it waited in the
        queue while another conversation or version opened: the like names the reply by its text)."""
        index, liked = like.index, like.liked
        known = type(liked) is bool or liked == ""
        if busy or not known or type(index) is not int:
            return gr.skip()
        if not 0 <= index < len(conversation) or not names(like.value, shown_as(conversation, notes, index)):
            gr.Warning("That reply was no longer open when its mark arrived: nothing was marked.")
            return gr.skip()
        if conversation[index]["role"] != "assistant":
            return gr.skip()
        now = rated(conversation, index, LIKED[liked])
        return {self.page.chatbot: gr.update(feedback_value=feedback(now)), self.page.state: now}

    def save(
        self, stored: str | None, conversation: list, notes: dict, versions: Versions, system: str, opened: tuple
    ) -> str:
        """The pairs of the open conversation and of the list, as JSONL; '' (nothing to save) if none."""
        current = open_one(opened, conversation, system, notes, versions)
        listed = [k for k in read_past(stored, self.limit)[0] if k.id != current.id]  # an older copy: not twice
        found = [pair for k in [current, *listed] for pair in pairs(k.conversation, k.system, k.versions)]
        if not found:
            gr.Info(
                "No preference pairs yet: Retry a reply for another version of it, then like the better "
                "one (its thumbs-up). A liked version is paired with each other version of its reply."
            )
            return ""
        gr.Info(f"{len(found)} preference pair{'s' * (len(found) != 1)} from the conversations in this browser.")
        return as_jsonl(found)


def shown_as(conversation: list[Message], notes: dict[int, str], index: int) -> str:
    """Message `index` as the chatbot shows it, with its note."""
    note = {0: notes[index]} if index in notes else {}
    return display_messages([conversation[index]], note)[0]["content"]


def names(value: object, shown: str) -> bool:
    """Whether a like's value is the message `shown`: Gradio's chatbot sends its text stripped."""
    return isinstance(value, list) and len(value) == 1 and isinstance(value[0], str) and value[0] == shown.strip()
