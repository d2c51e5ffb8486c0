"""A reply rated with the chatbot's like and dislike (playground.preferences)."""

from __future__ import annotations

import gradio as gr

from playground.preferences import feedback, rated
from playground.template import Message
from playground.ui.layout import Page

# What the chatbot's like event says the reply's mark now is -> its rating; "": the mark taken back.
LIKED = {True: "like", False: "dislike", "": None}


class Preferences:
    """The handler of a reply's like and dislike."""

    def __init__(self, page: Page):
        self.page = page

    def rate(self, conversation: list[Message], busy: bool, like: gr.LikeData) -> dict:
        """The reply's like or dislike, or (clicked again) none. Not while a reply streams: its end would draw
        over the mark (page.js drops the click meanwhile). A forged one (not a reply's, no such message, a
        mark the page has not) changes nothing."""
        index, liked = like.index, like.liked
        known = type(liked) is bool or liked == ""
        if busy or not known or type(index) is not int or not 0 <= index < len(conversation):
            return gr.skip()
        if conversation[index]["role"] != "assistant":
            return gr.skip()
        now = rated(conversation, index, LIKED[liked])
        return {self.page.chatbot: gr.update(feedback_value=feedback(now)), self.page.state: now}
