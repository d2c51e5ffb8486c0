"""The conversations kept in the browser: what comes back is checked, and the list stays within its caps."""

import json

import pytest

from playground import history
from playground.history import (
    MAX_CONVERSATIONS,
    StoredConversation,
    check_title,
    choices,
    dates,
    entries,
    new_id,
    read_current,
    read_kept,
    read_past,
    sent_size,
    shelve,
)
from playground.template import DialogueError


def kept(question: str, reply: str = "a", title: str = "") -> StoredConversation:
    return StoredConversation(
        new_id(), title, [{"role": "user", "content": question}, {"role": "assistant", "content": reply}], ""
    )


def test_a_kept_conversation_round_trips_and_is_labelled_by_its_first_question():
    conversation = kept("  How do I\n sort a list?  ")
    assert read_current(json.dumps(conversation.stored()), 1000) == conversation
    assert conversation.label() == "How do I sort a list?"
    assert kept("x" * 200).label() == "x" * 59 + "…"
    assert kept("q", title="Mine").label() == "Mine"
    assert read_current(None, 1000) is None  # nothing stored
    with_note = StoredConversation(new_id(), "", conversation.conversation, "", {1: "3 tokens · ended by the model"})
    assert read_current(json.dumps(with_note.stored()), 1000) == with_note  # the reply's note comes back
    liked = [conversation.conversation[0], {**conversation.conversation[1], "rating": "like"}]
    with_rating = StoredConversation(new_id(), "", liked, "")
    assert read_current(json.dumps(with_rating.stored()), 1000) == with_rating  # and its like


@pytest.mark.parametrize(
    "text",
    ["", "not json", "[" * 3000 + "]" * 3000, "7", '{"id": "x", "messages": []}', '{"id": 5}'],
)
def test_what_cannot_be_read_is_refused(text):
    with pytest.raises(DialogueError):
        read_current(text, 1000)


def test_the_list_leaves_out_bad_entries_and_duplicates():
    good = kept("q")
    values = [good.stored(), good.stored(), {"id": "z"}, {**kept("\ud800").stored()}, "x", None]
    past, bad = read_past(json.dumps(values), 1000)
    assert past == [good] and bad == 4
    assert read_past(json.dumps([kept(str(i)).stored() for i in range(MAX_CONVERSATIONS + 3)]), 1000)[1] == 3


def test_shelving_keeps_the_newest_within_the_count_and_the_bytes(monkeypatch):
    past = [kept(str(i)) for i in range(MAX_CONVERSATIONS)]
    current = kept("new")
    shelved, dropped = shelve(past, current)
    assert shelved[0] == current and len(shelved) == MAX_CONVERSATIONS and dropped == 1
    assert shelve(past, StoredConversation(new_id(), "", [], ""))[1] == 0  # an empty conversation is not listed
    monkeypatch.setattr(history, "STORE_BYTES", 3 * sent_size([current.stored()]))
    shelved, dropped = shelve(past, current)
    assert sent_size([k.stored() for k in shelved]) <= history.STORE_BYTES and dropped == len(past) + 1 - len(shelved)


@pytest.mark.parametrize("updated", [float("nan"), float("inf"), True, -5, 1e300, "yesterday", [1], None])
def test_a_time_that_is_not_one_reads_as_unknown_and_keeps_the_conversation(updated):
    value = {"id": "a" * 32, "updated": updated, "messages": [{"role": "user", "content": "q"}]}
    assert read_kept(value, 1000).updated == 0.0


def test_the_list_shows_the_open_one_first_then_the_newest():
    def at(n: int, updated: float) -> StoredConversation:
        return StoredConversation(f"{n}" * 32, f"c{n}", [{"role": "user", "content": "q"}], "", updated=updated)

    current = at(1, 10.0)
    past = entries([at(2, 0.0), at(3, 5.0), at(4, 50.0)])
    assert [label for label, _ in choices(current, past)] == ["c1", "c4", "c3", "c2"]
    assert json.loads(dates(current, past)) == {"1" * 32: 10.0, "2" * 32: 0.0, "3" * 32: 5.0, "4" * 32: 50.0}


@pytest.mark.parametrize(
    ("title", "shown"),
    [("\u202eevil\u202c after", "evil after"), ("\u200b", ""), ("  two\n lines\t", "two lines"), ("a\u2066b", "ab")],
)
def test_a_title_shows_what_it_holds_on_one_line(title, shown):
    """No control shows other text than is there (a right-to-left override turns "evil" into "live") or
    an empty-looking title: an empty one gives the first question back."""
    assert check_title(title) == shown
