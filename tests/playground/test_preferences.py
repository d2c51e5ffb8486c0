"""Likes and dislikes on replies, and the preference pairs "Save preferences" makes of them."""

import json
from types import SimpleNamespace

import gradio as gr
import pytest

from playground.display import display_messages
from playground.history import StoredConversation, new_id
from playground.preferences import feedback, pairs, rated
from playground.template import Message
from playground.ui.preferences import Preferences
from playground.versions import branch, flip, take_back
from training.data import Mixture
from training.preferences import build_preferences

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


def pair(prompt: list[Message], chosen: str, rejected: str) -> dict:
    return {"prompt": prompt, "chosen": [reply(chosen)], "rejected": [reply(rejected)]}


def test_a_liked_version_is_chosen_over_each_other_version_that_is_not_liked():
    conversation, versions = retried([Q], reply("bad", "dislike"), reply("plain"), reply("good", "like"))
    assert pairs(conversation, "", versions) == [pair([Q], "good", "bad"), pair([Q], "good", "plain")]
    # Two liked: each against every version not liked, never against each other.
    conversation, versions = retried([Q], reply("a", "like"), reply("b"), reply("c", "like"))
    assert pairs(conversation, "", versions) == [pair([Q], "a", "b"), pair([Q], "c", "b")]


@pytest.mark.parametrize(
    "replies",
    [
        [reply("bad", "dislike"), reply("plain")],  # no version liked
        [reply("good", "like")],  # a liked reply without versions
        [reply("same", "dislike"), reply("same", "like")],  # the same text
        [reply("  ", "dislike"), reply("good", "like")],  # a blank reply
        [reply("good", "like"), reply("good too", "like")],  # nothing that is not liked
    ],
    ids=["no-like", "no-versions", "same-text", "blank", "all-liked"],
)
def test_no_pair_without_a_liked_version_and_another_to_set_it_against(replies):
    conversation, versions = retried([Q], *replies)
    assert pairs(conversation, "be brief", versions) == []


def test_the_prompt_is_the_conversation_before_the_reply_after_its_system_prompt():
    earlier = [Q, reply("sorted(xs)", "like"), {"role": "user", "content": "And in place?"}]
    conversation, versions = retried(earlier, reply("xs.sort()", "like"), reply("no idea"))
    system = {"role": "system", "content": "be brief"}
    # The earlier reply's own rating stays out of the prompt.
    prompt = [system, Q, reply("sorted(xs)"), earlier[2]]
    assert pairs(conversation, "be brief", versions) == [pair(prompt, "xs.sort()", "no idea")]
    assert pairs(conversation, "", versions)[0]["prompt"] == prompt[1:]


def test_an_edited_questions_versions_pair_only_the_replies_to_each_question():
    """The replies to two versions of a question answer different prompts: no pair between them, and each
    version's own retried replies pair with their own question before them."""
    first, first_versions = retried([Q], reply("one", "like"), reply("two"))
    other = {"role": "user", "content": "How do I sort a dict?"}
    edited = [other, reply("by key", "like")]
    versions, _ = branch(first, {}, first_versions, 0, LIMIT)  # Edit keeps the first question's whole turn
    assert pairs(edited, "", versions) == [pair([Q], "one", "two")]
    conversation, _, versions = flip(edited, {}, versions, 0, 0)  # the first question on screen again
    assert conversation == first and pairs(conversation, "", versions) == [pair([Q], "one", "two")]


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


def rating(conversation: list[Message], index: object, liked: object, busy: bool = False, shown: str | None = None):
    """The like event as the page sends it: the reply's index, its text as shown (`shown`), the mark."""
    page = SimpleNamespace(chatbot="chatbot", state="state")
    chat = SimpleNamespace(settings=SimpleNamespace(max_conversation_chars=LIMIT))
    notes = {1: "12 tokens"}
    if shown is None and type(index) is int and 0 <= index < len(conversation):
        shown = display_messages(conversation, notes)[index]["content"]
    like = gr.LikeData(None, {"index": index, "value": [shown], "liked": liked})
    return Preferences(page, chat).rate(conversation, notes, busy, like)


def test_the_like_event_rates_a_reply_and_a_forged_one_changes_nothing():
    conversation = [Q, reply("a")]
    assert rating(conversation, 1, True)["state"] == [Q, reply("a", "like")]
    assert rating([Q, reply("a", "like")], 1, "")["state"] == conversation  # clicked again: taken back
    assert rating(conversation, 1, False)["chatbot"]["feedback_value"] == ["Dislike"]
    for index, liked in [(0, True), (2, True), (-1, True), (True, True), ([1, 0], True), ("1", True), (1, "Flag")]:
        assert rating(conversation, index, liked) == gr.skip(), (index, liked)
    assert rating(conversation, 1, True, busy=True) == gr.skip()  # not while a reply streams


def test_a_like_for_a_reply_no_longer_open_changes_nothing():
    """Liked, then another conversation (or version) opened at once: the like, queued, arrives after the
    switch, and names a reply the open conversation does not have at its index."""
    conversation = [Q, reply("the reply that was liked")]
    other = [{"role": "user", "content": "another question"}, reply("another reply")]
    shown = display_messages(conversation, {1: "12 tokens"})[1]["content"]
    assert rating(other, 1, True, shown=shown) == gr.skip()
    assert rating(conversation, 1, True, shown=shown)["state"][1]["rating"] == "like"
    spaced = [Q, reply(" = a reply the model began with a space")]  # the chatbot sends its text stripped
    shown = display_messages(spaced, {1: "12 tokens"})[1]["content"].strip()
    assert rating(spaced, 1, True, shown=shown)["state"][1]["rating"] == "like"


def test_save_preferences_writes_what_the_training_loader_reads(tmp_path):
    """Every conversation the browser keeps, the open one and the list's, as the page saves them; an older
    copy of the open one in the list counts once."""
    open_conversation, open_versions = retried([Q], reply("bad", "dislike"), reply("good", "like"))
    system_prompt, other = "be brief", {"role": "user", "content": "What does len do?"}
    listed, listed_versions = retried([other], reply("counts", "like"), reply("no idea"))
    kept = StoredConversation(new_id(), "", listed, system_prompt, {}, listed_versions)
    opened = StoredConversation(new_id(), "", open_conversation, "", {}, open_versions)
    stored = json.dumps([opened.stored(), kept.stored()])
    page = SimpleNamespace(chatbot="chatbot", state="state")
    chat = SimpleNamespace(settings=SimpleNamespace(max_conversation_chars=LIMIT))
    text = Preferences(page, chat).save(stored, open_conversation, {}, open_versions, "", (opened.id, "", 0.0))
    saved = tmp_path / "preferences.jsonl"
    saved.write_text(text)
    expected = [
        pair([Q], "good", "bad"),
        pair([{"role": "system", "content": system_prompt}, other], "counts", "no idea"),
    ]
    assert [json.loads(line) for line in text.splitlines()] == expected

    splits, report = build_preferences([str(saved)], test_size=0, mixture=Mixture())
    assert report.rows == report.kept == 2
    read = [{"prompt": row["prompt"], "chosen": row["chosen"], "rejected": row["rejected"]} for row in splits["train"]]
    assert sorted(read, key=json.dumps) == sorted(
        [{**p, "chosen": p["chosen"][0]["content"], "rejected": p["rejected"][0]["content"]} for p in expected],
        key=json.dumps,
    )
    assert Preferences(page, chat).save(None, [Q, reply("a", "like")], {}, {}, "", ("", "", 0.0)) == ""
