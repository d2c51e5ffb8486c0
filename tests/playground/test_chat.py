"""One chat turn as the UI and API run it, and conversation files."""

import asyncio

import pytest

from playground.backends import BackendError, Outcome, SamplingParams
from playground.backends.local import LocalBackend
from playground.chat import Chat, in_words
from playground.settings import Settings
from playground.template import DialogueError


@pytest.fixture(scope="module")
def chat(tiny_checkpoint) -> Chat:
    return Chat({"tiny": LocalBackend.from_pretrained(str(tiny_checkpoint))}, Settings.from_args([], env={}))


def run(chat, history, continuing=False, stop=(), **params):
    async def collect():
        params.setdefault("max_new_tokens", 16)
        updates = chat.respond(history, "system", SamplingParams(**params), stop=stop, continuing=continuing)
        return [u async for u in updates]

    return asyncio.run(collect())


def test_a_turn_streams_updates_ending_with_the_reply(chat):
    updates = run(chat, [{"role": "user", "content": "hi"}], seed=1)
    assert updates[0].conversation[-1] == {"role": "assistant", "content": ""}
    assert updates[-1].error is None and updates[-1].conversation[-1]["role"] == "assistant"
    assert "prompt tokens" in updates[-1].context and "of 256" in updates[-1].context
    assert "up to 16 reply tokens reserved (6%)" in updates[-1].context  # the two shares, apart


def test_the_reply_limit_leaves_the_prompt_room_in_the_models_context(chat):
    assert chat.reply_limit() == 256 - 128  # not the server's 2048
    updates = run(chat, [{"role": "user", "content": "hi"}], max_new_tokens=chat.reply_limit())
    assert updates[-1].error is None
    assert not updates[-1].conversation[-1]["content"].startswith("\n")  # the format's newline is not shown


def test_a_too_long_message_fails_before_anything_is_generated(chat):
    updates = run(chat, [{"role": "user", "content": "word " * 400}])
    assert len(updates) == 1 and "too long" in in_words(updates[0].error)
    assert updates[0].conversation[-1]["role"] == "user"  # the UI restores the box from this


def test_a_backend_failure_mid_reply_keeps_what_was_said(chat, monkeypatch):
    def failing(request):
        yield "partial"
        raise BackendError("The GPU ran out of memory")

    monkeypatch.setattr(chat.backend(), "stream", failing)
    updates = run(chat, [{"role": "user", "content": "hi"}])
    assert str(updates[-1].error) == "The GPU ran out of memory"
    assert updates[-1].conversation[-1] == {"role": "assistant", "content": "partial"}


def test_the_last_update_reports_the_streams_outcome_also_past_a_stop_string(chat, monkeypatch):
    def stream(request):
        yield from ("\nab", "cSTOP", "more")
        assert request.cancel.is_set()  # cut at the stop string: the backend is asked to stop
        yield Outcome(7, "cancelled")

    monkeypatch.setattr(chat.backend(), "stream", stream)
    cut = run(chat, [{"role": "user", "content": "hi"}], stop=["STOP"])[-1]
    assert (cut.conversation[-1]["content"], cut.finish, cut.tokens) == ("abc", "stop", 7)
    monkeypatch.setattr(chat.backend(), "stream", lambda request: (piece for piece in ("\nab", Outcome(2, "length"))))
    whole = run(chat, [{"role": "user", "content": "hi"}])[-1]
    assert (whole.conversation[-1]["content"], whole.finish, whole.tokens) == ("ab", "length", 2)


def test_message_limits(chat):
    with pytest.raises(DialogueError, match="empty"):
        chat.check_message("  \n")
    with pytest.raises(DialogueError, match="limit is 20000"):
        chat.check_message("x" * 20001)


def test_continue_extends_the_same_reply(chat):
    cut = run(chat, [{"role": "user", "content": "hi"}], seed=3, temperature=0, max_new_tokens=2)
    assert cut[-1].finish == "length"
    partial = cut[-1].conversation[-1]["content"]
    more = run(chat, cut[-1].conversation, continuing=True, seed=3, temperature=0, max_new_tokens=4)
    assert more[0].conversation[-1] == {"role": "assistant", "content": partial}  # the same bubble, from the start
    assert more[-1].conversation[-1]["content"].startswith(partial) and len(more[-1].conversation) == 2
    assert more[-1].finish in ("stop", "length") and more[-1].tokens >= 1
