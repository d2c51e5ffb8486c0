"""Replies.leave: another conversation opens while a reply is on its way; the reply shows that one instead."""

import asyncio

from playground.ui.stop import Replies, Reply

ASKED = [{"role": "user", "content": "How do I sort a list?"}]


def test_a_streaming_reply_left_for_another_conversation_shows_what_opened_instead():
    async def scenario():
        replies, reply = Replies(), Reply([], {}, back="How do I sort a list?")
        replies.begin("tab", reply)

        async def reply_event():  # as Turn.run: streams until stopped, then shows what it is given instead
            await reply.stop.wait()
            reply.halted.set()
            shown = await reply.instead
            replies.end("tab", reply)
            return shown

        event = asyncio.ensure_future(reply_event())
        reply.conversation, reply.started = [*ASKED, {"role": "assistant", "content": "Use sor"}], True
        stopped, instead = await replies.leave("tab", [], {}, "typed meanwhile")
        assert stopped.conversation[-1]["content"] == "Use sor" and stopped.notes == {1: "stopped by you"}
        assert stopped.back is None and not event.done()
        instead.set_result({"chatbot": []})
        assert await event == {"chatbot": []} and not replies.live

    asyncio.run(scenario())


def test_a_message_taken_whose_reply_has_not_begun_comes_back_through_that_reply():
    async def scenario():
        replies = Replies()
        replies.taken("tab", "How do I sort a list?")
        stopped, instead = await replies.leave("tab", [], {}, "")
        assert stopped.back == "How do I sort a list?" and stopped.conversation == []
        assert not replies.starts("tab")  # the reply, when its event comes, does not run
        assert replies.left.pop("tab") is instead

    asyncio.run(scenario())


def test_leaving_with_no_reply_on_its_way_changes_nothing():
    async def scenario():
        replies = Replies()
        assert await replies.leave("tab", ASKED, {}, "") == (None, None)
        replies.coming("tab")
        assert replies.starts("tab")

    asyncio.run(scenario())


def test_a_page_that_shows_a_reply_the_server_has_ended_is_behind():
    replies, reply = Replies(), Reply(ASKED, {})
    replies.taken("tab", "How do I sort a list?")
    assert not replies.behind("tab", drawing=True)  # a message taken: its reply is on its way
    replies.starts("tab")
    replies.begin("tab", reply)
    assert not replies.behind("tab", drawing=True)  # streaming
    reply.shown = True
    assert replies.behind("tab", drawing=True) and not replies.behind("tab", drawing=False)
    replies.end("tab", reply)
    assert replies.behind("tab", drawing=True)  # its last updates may still be on their way
