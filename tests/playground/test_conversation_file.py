"""Conversation files: what Save writes and Load reads, notes, ratings and versions included, and what is
refused."""

import json

import pytest

from playground.conversation_file import export_conversation, import_conversation
from playground.template import DialogueError
from playground.versions import MAX_DEPTH, MAX_VERSIONS, branch, flip, marks, take_back

LIMIT = 100_000


def test_conversation_files_round_trip():
    conversation = [{"role": "user", "content": "q <b>"}, {"role": "assistant", "content": "a"}]
    text = export_conversation(conversation, "be nice")
    assert json.loads(text)["messages"][0] == {"role": "system", "content": "be nice"}
    assert import_conversation(text) == (conversation, "be nice", {}, {})
    assert import_conversation(json.dumps(conversation)) == (conversation, "", {}, {})
    assert import_conversation("[]") == ([], "", {}, {})
    # A question kept before its reply came (a reload while it streamed) reads back, to be answered by Retry.
    waiting = [*conversation, {"role": "user", "content": "and then?"}]
    assert import_conversation(export_conversation(waiting, "")) == (waiting, "", {}, {})


def test_each_reply_keeps_its_note_in_the_file():
    """How a reply went stays with it in a saved file: a "note" on its message, which chat templates ignore."""
    conversation = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    notes = {1: "12 tokens · first token 0.20 s · 30.0 tokens/s · ended by the model", 5: "stale: no message 5"}
    text = export_conversation(conversation, "be nice", notes)
    assert json.loads(text)["messages"][2] == {"role": "assistant", "content": "a", "note": notes[1]}
    assert import_conversation(text) == (conversation, "be nice", {1: notes[1]}, {})
    assert import_conversation(json.dumps(json.loads(text)["messages"][1:])) == (conversation, "", {1: notes[1]}, {})


@pytest.mark.parametrize(
    ("messages", "reason"),
    [
        ([{"role": "user", "content": "q", "note": "x"}, {"role": "assistant", "content": "a"}], "only replies"),
        ([{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "note": 3}], "must be text"),
        ([{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "note": "\ud800"}], "surrogate"),
        ([{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "note": "x" * 201}], "limit is 200"),
        ([{"role": "system", "content": "s", "note": "x"}], "only replies"),
        ([{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "note": "a\n\n# H"}], "one line"),
    ],
)
def test_a_bad_note_is_refused_with_its_reason(messages, reason):
    with pytest.raises(DialogueError, match=reason):
        import_conversation(json.dumps(messages))


def test_each_reply_keeps_its_rating_in_the_file_and_in_its_versions():
    """The page's like or dislike is the message's "rating", also on a version Retry kept."""
    liked = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "rating": "like"}]
    versions = branch([*liked[:1], {"role": "assistant", "content": "b", "rating": "dislike"}], {}, {}, 1, LIMIT)[0]
    text = export_conversation(liked, "", {1: "3 tokens"}, versions)
    message = json.loads(text)["messages"][2]
    assert message["rating"] == "like" and message["versions"]["others"][0][0]["rating"] == "dislike"
    assert import_conversation(text) == (liked, "", {1: "3 tokens"}, versions)


@pytest.mark.parametrize(
    ("rating", "reason"),
    [
        ("great", 'must be "like" or "dislike"'),
        (True, 'must be "like" or "dislike"'),
        (None, 'must be "like" or "dislike"'),
        (["like"], 'must be "like" or "dislike"'),  # not a key: refused, not a TypeError
    ],
)
def test_a_bad_rating_is_refused_with_its_reason(rating, reason):
    reply = {"role": "assistant", "content": "a", "rating": rating}
    with pytest.raises(DialogueError, match=f"The rating of message 1 {reason}"):
        import_conversation(json.dumps([{"role": "user", "content": "q"}, reply]))
    with pytest.raises(DialogueError, match=f"A version of message 1: The rating of message 1 {reason}"):
        liked = {"role": "assistant", "content": "b", "versions": versions_of([reply])}
        import_conversation(json.dumps([{"role": "user", "content": "q"}, liked]))


@pytest.mark.parametrize(
    "messages",
    [
        [{"role": "user", "content": "q", "rating": "like"}, {"role": "assistant", "content": "a"}],
        [{"role": "system", "content": "s", "rating": "dislike"}],
    ],
)
def test_only_replies_are_rated(messages):
    with pytest.raises(DialogueError, match="Message 0 has a rating, but only replies are rated"):
        import_conversation(json.dumps(messages))


@pytest.mark.parametrize(
    "text",
    [
        "not json",
        '{"messages": 3}',
        '[{"role": "assistant", "content": "x"}]',
        '[{"role": "user", "content": 1}]',
        '[{"role": ["user"], "content": "x"}]',  # not a key: refused, not a TypeError
        "[1, 2]",
    ],
)
def test_bad_conversation_files_are_refused_with_a_reason(text):
    with pytest.raises(DialogueError):
        import_conversation(text)


def turn(question: str, reply: str) -> list[dict]:
    return [{"role": "user", "content": question}, {"role": "assistant", "content": reply}]


def test_retry_keeps_each_version_and_flipping_shows_it_with_its_note():
    first = turn("q", "first reply")
    versions = branch(first, {1: "3 tokens · finished"}, {}, 1, LIMIT)[0]  # Retry: the first reply is kept
    second = turn("q", "second reply")
    assert marks(versions) == {1: (2, 2)}
    versions = branch(second, {1: "4 tokens · finished"}, versions, 1, LIMIT)[0]
    third = turn("q", "third reply")
    assert marks(versions) == {1: (3, 3)}

    shown, notes, flipped = flip(third, {1: "5 tokens · finished"}, versions, 1, 0)
    assert shown == first and notes == {1: "3 tokens · finished"} and marks(flipped) == {1: (1, 3)}
    back, notes, again = flip(shown, notes, flipped, 1, 2)
    assert back == third and notes == {1: "5 tokens · finished"} and again == versions

    # Saved and loaded, every version comes back; a file without versions reads as before.
    text = export_conversation(shown, "be nice", {1: "3 tokens · finished"}, flipped)
    assert import_conversation(text) == (shown, "be nice", {1: "3 tokens · finished"}, flipped)
    assert json.loads(text)["messages"][2]["versions"]["shown"] == 0


def test_an_edit_keeps_the_tail_it_replaces_with_the_versions_inside_it():
    before = [*turn("q1", "a1"), *turn("q2", "a2")]
    inner = branch(before, {}, {}, 3, LIMIT)[0]  # a2 retried: its first version parts at message 3
    after = [*turn("q1", "a1"), *turn("q2", "a2 again")]
    versions = branch(after, {}, inner, 0, LIMIT)[0]  # then the first question edited: the whole tail is kept
    edited = turn("q1 edited", "b1")
    assert marks(versions) == {0: (2, 2)}

    shown, _, flipped = flip(edited, {}, versions, 0, 0)
    assert shown == after and marks(flipped) == {0: (1, 2), 3: (2, 2)}
    older, _, _ = flip(shown, {}, flipped, 3, 0)
    assert older == before
    assert import_conversation(export_conversation(shown, "", {}, flipped))[3] == flipped


def versions_of(*others: list[dict], shown: int = 1) -> dict:
    return {"shown": shown, "others": list(others)}


@pytest.mark.parametrize(
    ("versions", "reason"),
    [
        (versions_of([{"role": "assistant", "content": "x"}], shown=2), "which one is shown"),
        (versions_of([{"role": "assistant", "content": "x"}], shown=True), "which one is shown"),
        ({"shown": 0, "others": []}, "1 to 19 others"),
        ({"shown": 0}, "1 to 19 others"),
        ({"shown": 0, "others": "x"}, "1 to 19 others"),
        (versions_of(*[[{"role": "assistant", "content": "x"}]] * 20), "1 to 19 others"),
        (versions_of([]), "a list of messages"),
        (versions_of([{"role": "user", "content": "x"}]), "must start as the message does, with a reply"),
        (versions_of([{"role": "assistant", "content": "\ud800"}]), "surrogate"),
        (versions_of([{"role": "assistant", "content": "x", "note": "a\nb"}]), "one line"),
        (versions_of([{"role": "assistant", "content": "x"}, {"role": "assistant", "content": "y"}]), "from the user"),
        (versions_of(*[[{"role": "assistant", "content": "x" * 60_000}]] * 2), "more than 100000 characters in all"),
    ],
)
def test_bad_versions_are_refused_with_their_reason(versions, reason):
    messages = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "versions": versions}]
    with pytest.raises(DialogueError, match=reason):
        import_conversation(json.dumps(messages))


def test_versions_nested_past_any_page_are_refused():
    reply = {"role": "assistant", "content": "a"}
    for _ in range(40):
        reply = {"role": "assistant", "content": "a", "versions": versions_of([reply])}
    with pytest.raises(DialogueError, match="nested more than 32"):
        import_conversation(json.dumps([{"role": "user", "content": "q"}, reply]))


@pytest.mark.parametrize("empty", [None, {}, []])
def test_no_versions_written_as_null_or_empty_reads_as_none(empty):
    messages = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "versions": empty}]
    assert import_conversation(json.dumps(messages))[3] == {}


def test_what_the_page_makes_stays_within_what_a_file_may_hold():
    """Past the limits a reader holds a file to, the oldest versions go as they are made, and the page says
    how many: a reload or a saved file never meets a conversation it cannot read."""
    conversation, versions = turn("q", "reply 0"), {}
    for n in range(1, MAX_VERSIONS + 3):
        versions, dropped = branch(conversation, {}, versions, 1, LIMIT)
        conversation = turn("q", f"reply {n}")
        assert dropped == (n >= MAX_VERSIONS)
    assert marks(versions) == {1: (MAX_VERSIONS, MAX_VERSIONS)}
    assert versions[1]["others"][0][0]["content"] == "reply 3"  # 0, 1 and 2 went first

    long = turn("q", "x" * 40_000)
    versions, dropped = branch(long, {}, {}, 1, LIMIT)
    versions, dropped = branch(long, {}, versions, 1, LIMIT)
    assert dropped == 0 and marks(versions) == {1: (3, 3)}
    versions, dropped = branch(long, {}, versions, 1, LIMIT)  # a third 40,000 would pass 100,000
    assert dropped == 1 and marks(versions) == {1: (3, 3)}
    assert import_conversation(export_conversation(long, "", {}, versions), LIMIT)[3] == versions

    # Each edit of an earlier question nests what it replaces one deeper: past MAX_DEPTH the innermost go.
    conversation = [m for n in range(MAX_DEPTH + 2) for m in turn(f"q{n}", f"a{n}")]
    versions = {}
    for n in reversed(range(MAX_DEPTH + 2)):
        versions, dropped = branch(conversation, {}, versions, 2 * n, LIMIT)
        conversation = [*conversation[: 2 * n], *turn(f"q{n} edited", f"b{n}")]
        assert dropped == (n < 2)
    assert import_conversation(export_conversation(conversation, "", {}, versions))[3] == versions


def test_undo_takes_back_the_version_on_screen_and_the_newest_other_shows():
    versions = branch(turn("q", "first"), {1: "one"}, {}, 1, LIMIT)[0]
    versions = branch(turn("q", "second"), {1: "two"}, versions, 1, LIMIT)[0]
    shown, notes, left = take_back(turn("q", "third"), {1: "three"}, versions, 1)
    assert shown == turn("q", "second") and notes == {1: "two"} and marks(left) == {1: (2, 2)}
    shown, notes, left = take_back(shown, notes, left, 1)
    assert shown == turn("q", "first") and notes == {1: "one"} and left == {}
