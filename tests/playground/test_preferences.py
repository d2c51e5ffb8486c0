"""Likes and dislikes on replies."""

from types import SimpleNamespace

import gradio as gr

from playground.preferences import feedback, rated
from playground.template import Message
from playground.ui.preferences import Preferences
from playground.versions import branch, flip, take_back

LIMIT = 100_000
Q = {"role": "user", "content": "How do I sort a list?"}


def reply(text: str, rating: str | None = None) -> Message:
    return {"role": "assistant", "content": text, **({"rating": rating} if rating else {})}


def retried(before: list[Message], *replies: Message) -> tuple[list[Message], dict]:
    """The conversation as Retry leaves it after each of `replies` answered `before` in turn: the last on
    screen, the others kept as its versions."""
    versions: dict = {}
    for earlier in replies[:-1]:
        versions, _ = branch([*before, earlier], {}, versions, len(before), LIMIT)
    return [*before, replies[-1]], versions


def test_a_version_keeps_its_rating_through_retry_flip_and_undo():
    conversation, versions = retried([Q], reply("one", "like"), reply("two", "dislike"))
    shown, _, flipped = flip(conversation, {}, versions, 1, 0)
    assert shown == [Q, reply("one", "like")] and feedback(shown) == ["Like"]
    back, _, _ = flip(shown, {}, flipped, 1, 1)
    assert back == conversation and feedback(back) == ["Dislike"]
    undone, _, _ = take_back(conversation, {}, versions, 1)  # Undo on the retried reply
    assert undone == [Q, reply("one", "like")]


def test_a_rating_is_set_changed_and_taken_back():
    conversation = [Q, reply("a"), {"role": "user", "content": "more"}, reply("b")]
    liked = rated(conversation, 3, "like")
    assert feedback(liked) == [None, "Like"] and liked[:3] == conversation[:3]
    assert feedback(rated(liked, 3, "dislike")) == [None, "Dislike"]
    assert rated(liked, 3, None) == conversation


def rating(conversation: list[Message], index: object, liked: object, busy: bool = False):
    page = SimpleNamespace(chatbot="chatbot", state="state")
    like = gr.LikeData(None, {"index": index, "value": "", "liked": liked})
    return Preferences(page).rate(conversation, busy, like)


def test_the_like_event_rates_a_reply_and_a_forged_one_changes_nothing():
    conversation = [Q, reply("a")]
    assert rating(conversation, 1, True)["state"] == [Q, reply("a", "like")]
    assert rating([Q, reply("a", "like")], 1, "")["state"] == conversation  # clicked again: taken back
    assert rating(conversation, 1, False)["chatbot"]["feedback_value"] == ["Dislike"]
    for index, liked in [(0, True), (2, True), (-1, True), (True, True), ([1, 0], True), ("1", True), (1, "Flag")]:
        assert rating(conversation, index, liked) == gr.skip(), (index, liked)
    assert rating(conversation, 1, True, busy=True) == gr.skip()  # not while a reply streams
