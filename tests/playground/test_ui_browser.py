"""The playground in headless Debian Chromium, driven by Playwright as a person would use it."""

import base64
import hashlib
import json
import os
import threading
import time
from pathlib import Path

import pytest

from playground.backends.loading import DEMO_NAME
from playground.ui.browser import STORAGE_KEYS, STORAGE_SECRET
from playground.ui.layout import EXAMPLES
from tests.conftest import (
    KEPT,
    descendants,
    generating,
    local_and_remote,
    serve,
    serve_model,
    slow_model,
    wait_until_idle,
)
from tests.fakes import FakeServer

playwright = pytest.importorskip("playwright.sync_api")
CHROMIUM = "/usr/bin/chromium"
FOLLOW_UP = "Tell me more about <b>this</b> <script>alert(1)</script>"
BOTS = "#chatbot [data-testid=bot]"
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"]

# Records every length the newest reply goes through, to see it stream in.
WATCH_REPLY = """() => {
  window.lengths = [];
  new MutationObserver(() => {
    const bots = document.querySelectorAll('#chatbot [data-testid=bot]');
    if (bots.length) window.lengths.push(bots[bots.length - 1].innerText.length);
  }).observe(document.querySelector('#chatbot'), {subtree: true, childList: true, characterData: true});
}"""


@pytest.fixture(scope="module")
def app(demo_model, tmp_path_factory):
    with serve_model(demo_model, tmp_path_factory.mktemp("cache")) as served:
        yield served


@pytest.fixture(scope="module")
def as_started(demo_model):
    """The page as `python app.py` serves it with no flags: the demo model, by its name, with its notice."""
    with serve("--cache-dir", str(demo_model.parent)) as served:
        yield served


@pytest.fixture(autouse=True)
def no_event_fails(capfd):
    """Gradio's queue prints an event that failed and goes on: the page can look right while an event broke."""
    yield
    assert "in process_events" not in capfd.readouterr().err


@pytest.fixture(scope="module")
def browser():
    """One Chromium for the module; each test gets its own context (its own storage, as a fresh browser)."""
    before = descendants()
    with playwright.sync_playwright() as p:
        driver = descendants().keys() - before.keys()
        KEPT.update(driver)
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield browser
        browser.close()
    KEPT.difference_update(driver)


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    yield context.new_page()
    context.close()


def bot_texts(page) -> list[str]:
    return page.locator(BOTS).all_inner_texts()


# A reply's events all have the message box among their outputs, which Gradio marks while they run.
EVENT_ENDED = "!document.querySelector('#message .generating')"


def wait_for_stable_reply(page, count: int) -> str:
    """Waits until there are `count` replies, the newest finished (its note, Send back, its event ended),
    the server idle and the conversation kept in the browser; returns the newest reply with its note."""
    try:
        page.wait_for_function(
            f"document.querySelectorAll('{BOTS}').length == {count}"
            f" && document.querySelectorAll('{BOTS}')[{count - 1}]?.querySelector('.reply-note')"
            f" && document.querySelector('#send')?.checkVisibility() && {EVENT_ENDED}"
        )
    except Exception:
        raise AssertionError(f"the reply never finished: {bot_texts(page)}; generating: {generating()}") from None
    assert wait_until_idle(), "the server still generates after the reply's event ended"
    wait_until_kept(page)  # the reply's keeping comes a moment after it: nothing of it comes later
    return bot_texts(page)[-1]


# Sets window.replyRan once a reply's event has been seen running.
WATCH_REPLY_EVENT = """() => {
  window.replyRan = false;
  new MutationObserver((changes, observer) => {
    if (document.querySelector('#message .generating')) { window.replyRan = true; observer.disconnect(); }
  }).observe(document.querySelector('#message'), {subtree: true, childList: true, attributes: true});
}"""


def rerun(page, action) -> None:
    """Does `action`, which answers again (Retry, an edit): the replies stay as many, so this waits until
    its reply's event has run before `wait_for_stable_reply` can tell the new reply from the old."""
    page.evaluate(WATCH_REPLY_EVENT)
    action()
    page.wait_for_function("window.replyRan")


def test_ask_stream_stop_retry_undo(app, page, monkeypatch, tmp_path):
    url, chat = app
    page.goto(url)
    page.wait_for_selector("#chatbot")  # the page is drawn (the model info can come first)
    page.locator("#chatbot button.example").first.wait_for()
    assert page.locator(f"{RETRY}, {UNDO}, {CLEAR}").count() == 0  # nothing to act on in an empty chat

    # Ask: the reply streams in and its code block is rendered, with a copy button.
    slow_model(chat, monkeypatch, delay=0.02, endless=False)
    page.evaluate(WATCH_REPLY)
    page.locator("#message textarea").fill("How do I reverse a list in Python?")
    page.locator("#send").click()
    first = wait_for_stable_reply(page, 1)
    assert len(set(page.evaluate("window.lengths"))) >= 5, "the reply did not stream in"
    assert page.locator('#chatbot [data-testid="bot"] pre code').count() >= 1
    assert page.locator('#chatbot [data-testid="bot"] .copy_code_button').count() >= 1
    assert "reverse" in first.lower() or "slicing" in first.lower()
    assert "Context:" in page.locator("#context").inner_text()

    # Stop: a reply that would not end by itself stops where it is, and the server stops generating.
    calls = slow_model(chat, monkeypatch, delay=0.02, endless=True)
    page.locator("#message textarea").fill(FOLLOW_UP)
    page.locator("#send").click()
    page.wait_for_function(f"document.querySelectorAll('{BOTS}').length == 2")
    page.wait_for_function(f"document.querySelectorAll('{BOTS}')[1].innerText.length > 20")
    page.locator("#stop").click()
    assert wait_until_idle(), "generation went on after Stop"
    stopped = wait_for_stable_reply(page, 2)
    assert len(calls) < 512 and stopped
    assert FOLLOW_UP in page.locator("#chatbot [data-testid=user]").last.inner_text()  # shown as typed

    # Retry: the last reply is generated again (a new seed), the conversation keeps its length. (Forty
    # tokens that cannot end early: the demo model may well answer this follow-up with nothing.)
    calls = slow_model(chat, monkeypatch, delay=0.02, endless=True)
    page.locator("#max_new_tokens input[type=number]").fill("40")
    page.locator("#max_new_tokens input[type=number]").press("Enter")
    rerun(page, lambda: page.locator(RETRY).last.click())
    wait_for_stable_reply(page, 2)
    assert len(calls) > 1
    assert page.locator('#chatbot [data-testid="user"]').count() == 2

    # Undo takes back what was done last: the retried reply (the one before it shows again), then the
    # exchange, its question back in the message box.
    page.locator(UNDO).last.click()
    page.wait_for_function(
        "(text) => document.querySelectorAll('#chatbot [data-testid=bot]')[1]?.innerText === text", arg=stopped
    )
    page.locator(UNDO).last.click()
    page.wait_for_function(f"document.querySelectorAll('{BOTS}').length == 1")
    assert page.locator("#message textarea").input_value() == FOLLOW_UP
    assert bot_texts(page) == [first]

    page.screenshot(path=str(tmp_path / "playground.png"), full_page=True)
    assert (tmp_path / "playground.png").stat().st_size > 10_000


def open_first_edit(page, text: str) -> None:
    """Edit on the first message, once its box holds the message (Gradio fills it a few frames after the
    click, over anything typed before)."""
    page.locator('#chatbot button[aria-label="Edit"]').first.click()
    page.wait_for_function("(text) => document.querySelector('#chatbot textarea')?.value.startsWith(text)", arg=text)


DATE = "How do I get the current date using shell commands? Explain how it works."


def answered(page, url: str, chat, monkeypatch, *questions: str) -> str:
    """The page with `questions` asked and answered (the demo model ends its replies); returns the last reply."""
    slow_model(chat, monkeypatch, delay=0.0, endless=False)
    page.goto(url)
    page.wait_for_selector("#model-info")
    for n, question in enumerate(questions, 1):
        ask(page, question)
        reply = wait_for_stable_reply(page, n)
    return reply


def test_editing_an_earlier_message_regenerates_from_there(app, page, monkeypatch):
    url, chat = app
    answered(page, url, chat, monkeypatch, SORT, REVERSE)
    calls = slow_model(chat, monkeypatch, delay=0.0, endless=False)
    open_first_edit(page, "How do I sort")
    page.locator("#chatbot textarea").fill(DATE)
    rerun(page, lambda: page.locator('#chatbot button[aria-label="Submit"]').click())
    reply = wait_for_stable_reply(page, 1)
    assert calls and "date" in reply.lower()  # the later exchange is gone
    users = page.locator("#chatbot [data-testid=user]").all_inner_texts()
    assert len(users) == 1 and "current date" in users[0]


def test_an_edit_the_server_refuses_is_not_lost(app, page, monkeypatch):
    """Over the message limit, it waits in the message box; nothing but spaces is refused as an empty
    message from the box is."""
    url, chat = app
    reply = answered(page, url, chat, monkeypatch, DATE)
    open_first_edit(page, "How do I get the current date")
    page.locator("#chatbot textarea").fill("y" * 25_000)
    page.locator('#chatbot button[aria-label="Submit"]').click()
    page.wait_for_function("document.querySelector('#message textarea').value == 'y'.repeat(25000)")
    page.locator('[data-testid="toast-body"]', has_text="the limit is 20000").wait_for()
    assert bot_texts(page) == [reply] and "current date" in page.locator("#chatbot [data-testid=user]").inner_text()
    page.locator("#message textarea").fill("")

    open_first_edit(page, "How do I get the current date")
    page.locator("#chatbot textarea").fill("   \n  ")
    page.locator('#chatbot button[aria-label="Submit"]').click()
    wait_for_notice(page, "The message is empty")
    assert bot_texts(page) == [reply] and "current date" in page.locator("#chatbot [data-testid=user]").inner_text()


def test_save_clear_and_load_a_conversation_that_the_model_continues(app, page, monkeypatch, tmp_path):
    """Saved as JSON, cleared with the chatbot's own trash icon (it asks first), loaded back."""
    url, chat = app
    reply = answered(page, url, chat, monkeypatch, DATE)
    page.get_by_text("Conversation file").click()
    with page.expect_download() as download:  # made in the browser: no file on the server
        page.locator("#save").click()
    saved = tmp_path / "conversation.json"
    download.value.save_as(saved)
    assert "current date" in saved.read_text()
    asked = []
    page.once("dialog", lambda dialog: (asked.append(dialog.message), dialog.dismiss()))
    page.locator('#chatbot button[aria-label="Clear"]').click()  # Clear asks first: No keeps the conversation
    page.evaluate("0")  # answers once the page's click handler, which asked, has returned
    assert "cannot be brought back" in asked[0] and bot_texts(page) == [reply]
    page.once("dialog", lambda dialog: dialog.accept())
    page.locator('#chatbot button[aria-label="Clear"]').click()
    page.wait_for_function(f"document.querySelectorAll('{BOTS}').length == 0")
    assert "Context:" in page.locator("#context").inner_text()  # the line stays: Send and Stop keep their place
    before = uploaded()
    load_file(page, saved)
    page.wait_for_function(f"document.querySelectorAll('{BOTS}').length == 1")
    assert uploaded() == before  # read in the browser: no copy of it on the server
    assert bot_texts(page)[0] == reply  # with the note of how it went

    ask(page, "Thanks!")  # the loaded conversation is the one the model continues
    wait_for_stable_reply(page, 2)
    assert len(page.locator("#chatbot [data-testid=user]").all_inner_texts()) == 2


def test_a_file_too_large_or_empty_is_not_read_and_the_conversation_stays(app, page, monkeypatch, tmp_path):
    url, chat = app
    answered(page, url, chat, monkeypatch, DATE)
    page.get_by_text("Conversation file").click()
    huge = tmp_path / "huge.json"
    huge.write_text(json.dumps({"messages": [{"role": "user", "content": "x" * 1_200_000}]}))
    load_file(page, huge)
    page.locator('[data-testid="toast-body"]', has_text="can be loaded").wait_for()
    assert len(page.locator("#chatbot [data-testid=user]").all_inner_texts()) == 1
    empty = tmp_path / "empty.json"
    empty.write_text("")
    load_file(page, empty)
    wait_for_notice(page, "That file is empty")
    assert len(page.locator("#chatbot [data-testid=user]").all_inner_texts()) == 1


def test_a_conversation_longer_than_this_server_continues_opens_and_says_so(app, page, tmp_path):
    """It opens to be read and saved."""
    url, chat = app
    turns = chat.settings.max_history_messages // 2 + 1
    long = [{"role": role, "content": f"{role} {n}"} for n in range(turns) for role in ("user", "assistant")]
    (tmp_path / "long.json").write_text(json.dumps({"messages": long}))
    page.goto(url)
    page.get_by_text("Conversation file").click()
    load_file(page, tmp_path / "long.json")
    wait_for_notice(page, "Loaded, but this server cannot continue it")
    page.wait_for_function(f"document.querySelectorAll('{BOTS}').length == {turns}")


def test_switching_model_keeps_the_conversation(tiny_checkpoint, page, tmp_path, monkeypatch):
    with FakeServer() as tgi:
        models = local_and_remote(tmp_path, tiny_checkpoint, tgi.url, "Tiny")
        with serve("--models-file", str(models), "--cache-dir", str(tmp_path)) as (url, chat):
            slow_model(chat, monkeypatch, delay=0, endless=True)  # an untrained model may say nothing at all
            page.goto(url)
            page.locator("#max_new_tokens input[type=number]").fill("16")
            page.locator("#max_new_tokens input[type=number]").press("Enter")
            page.locator("#message textarea").fill("hello")
            page.locator("#send").click()
            first = wait_for_stable_reply(page, 1)
            page.locator("#model input").click()
            page.get_by_role("option", name="Remote").click()
            page.wait_for_function("document.querySelector('#model-info').innerText.includes('tgi server')")
            page.locator("#message textarea").fill("and now?")
            page.locator("#send").click()
            wait_for_stable_reply(page, 2)
            assert bot_texts(page)[0] == first  # the conversation is still there
            assert "sorted" in bot_texts(page)[1]  # and the endpoint answered it
            assert [note.split(" · ")[0] for note in page.locator(NOTES).all_inner_texts()] == ["Tiny", "Remote"]
            assert tgi.script.requests[-1]["body"]["inputs"].count("<|user|>") == 2


def test_closing_the_tab_ends_the_generation(app, page, monkeypatch):
    url, chat = app
    calls = slow_model(chat, monkeypatch, delay=0.02, endless=True)
    page.goto(url)
    page.locator("#message textarea").fill("Tell me everything.")
    page.locator("#send").click()
    page.wait_for_function(
        f"document.querySelectorAll('{BOTS}').length == 1 && document.querySelector('{BOTS}').innerText.length > 20"
    )
    page.close()
    assert wait_until_idle(), "generation went on after the tab closed"
    assert len(calls) < 512


TYPED = "Why is <b>bold</b> shown as typed? -> a < b && c > d, and &amp; stays &amp;"
NOTES = "#chatbot [data-testid=bot] .reply-note"
# The chatbot's own actions on its messages.
RETRY, UNDO, CLEAR = (f'#chatbot button[aria-label="{label}"]' for label in ("Retry", "Undo", "Clear"))


@pytest.fixture
def clipboard_page(browser):
    """A page whose clipboard the test can read back, as a person pastes what they copied."""
    context = browser.new_context(
        viewport={"width": 1400, "height": 1000}, permissions=["clipboard-read", "clipboard-write"]
    )
    yield context.new_page()
    context.close()


def ask(page, text: str) -> None:
    page.locator("#message textarea").fill(text)
    page.locator("#send").click()


def load_file(page, path: Path) -> None:
    """Load JSON: the browser opens the file and sends its text (nothing is uploaded to the server)."""
    with page.expect_file_chooser() as chooser:
        page.locator("#load").click()
    chooser.value.set_files(str(path))


def uploaded() -> set[Path]:
    import gradio

    return set(Path(gradio.utils.get_upload_folder()).rglob("*"))


def set_max_new_tokens(page, value: int) -> None:
    page.locator("#max_new_tokens input[type=number]").fill(str(value))
    page.locator("#max_new_tokens input[type=number]").press("Enter")
    page.wait_for_function(f"document.querySelector('#max_new_tokens input[type=range]').value === '{value}'")


def test_typing_while_a_reply_streams_loses_nothing(app, page, monkeypatch):
    url, chat = app
    slow_model(chat, monkeypatch, delay=0.02, endless=True)
    page.goto(url)
    box = page.locator("#message textarea")
    ask(page, "Tell me everything about lists.")
    box.press_sequentially("Next question")  # typed right after sending, before the first update
    page.wait_for_function(f"document.querySelector('{BOTS}')?.innerText.length > 20")
    assert box.input_value() == "Next question"

    # While the reply streams, Send is Stop, and Enter does not take the message away; Retry and Undo wait.
    assert page.locator("#send").is_hidden() and page.locator("#stop").is_visible()
    assert all(action.is_disabled() for action in page.locator(f"{RETRY}, {UNDO}").all())
    box.press_sequentially(", typed while it streams")
    box.press("Enter")
    page.wait_for_function(f"document.querySelector('{BOTS}').innerText.length > 60")
    assert box.input_value().startswith("Next question, typed while it streams")
    assert page.locator("#chatbot [data-testid=user]").count() == 1

    # Delete while it streams asks nothing and says to stop the reply first.
    asked: list[str] = []

    def answer_no(dialog) -> None:
        asked.append(dialog.message)
        dialog.dismiss()

    page.on("dialog", answer_no)
    item_action(page, 0, "Delete")
    wait_for_notice(page, "A reply is being written")
    assert not asked and page.locator("#chatbot [data-testid=user]").count() == 1
    page.remove_listener("dialog", answer_no)

    # Stopped, the message is sent as typed, and only what was sent leaves the box.
    page.locator("#stop").click()
    assert wait_until_idle()
    page.locator("#send").wait_for(state="visible")
    assert page.locator("#stop").is_hidden()
    box.fill("Next question, typed while it streams")
    page.locator("#send").click()
    page.wait_for_function("document.querySelectorAll('#chatbot [data-testid=user]').length == 2")
    assert "typed while it streams" in page.locator("#chatbot [data-testid=user]").last.inner_text()
    page.wait_for_function("document.querySelector('#message textarea').value === ''")

    # Clear while it streams (once asked): the reply stops and cannot write into the cleared conversation.
    page.wait_for_function(f"document.querySelectorAll('{BOTS}').length == 2")
    page.once("dialog", lambda dialog: dialog.accept())
    page.locator(CLEAR).click()
    assert wait_until_idle()
    page.locator("#send").wait_for(state="visible")
    # Cleared, and the stopped reply's event over: nothing of it can be drawn after this.
    page.wait_for_function(f"{USERS} == 0 && {EVENT_ENDED}")
    assert page.locator("#chatbot [data-testid=user]").count() == 0 and bot_texts(page) == []
    page.reload()
    page.locator("#message textarea").wait_for()
    assert page.locator("#chatbot [data-testid=user]").count() == 0


def test_a_message_sent_the_moment_a_reply_ends_is_sent(demo_model, page, tmp_path, monkeypatch):
    """Send is back with the reply's last update, while the reply's event may still be finishing."""
    import asyncio

    import gradio as gr

    from playground.ui.turn import Turn

    submit = Turn.submit

    async def lingering(self, values: dict, request: gr.Request):
        async for out in submit(self, values, request):
            yield out
        await asyncio.sleep(2)  # the event ends well after its last update has shown Send again

    monkeypatch.setattr(Turn, "submit", lingering)
    with serve_model(demo_model, tmp_path) as (url, _):
        page.goto(url)
        ask(page, "How do I reverse a list in Python?")
        page.wait_for_function(f"document.querySelectorAll('{NOTES}').length == 1")
        ask(page, "And a tuple?")  # as soon as Send shows
        page.wait_for_function(f"document.querySelectorAll('{NOTES}').length == 2")
        users = page.locator("#chatbot [data-testid=user]").all_inner_texts()
        assert [text.strip() for text in users] == ["How do I reverse a list in Python?", "And a tuple?"]
        assert page.locator("#message textarea").input_value() == ""
        assert wait_until_idle()


def test_stop_before_the_reply_starts_gives_the_message_back(demo_model, page, tmp_path, monkeypatch):
    """Stop shows the moment a message is sent, before its reply has started (the event may wait in the
    queue): Stop then gives the message back to the box, and the reply does not run when it comes."""
    import asyncio

    import gradio as gr

    from playground.ui.turn import Turn

    submit = Turn.submit

    ended = threading.Event()

    async def queued(self, values: dict, request: gr.Request):
        try:
            await asyncio.sleep(2)  # the reply's event starts late
            async for out in submit(self, values, request):
                yield out
        finally:
            ended.set()  # run to its end, or cancelled

    monkeypatch.setattr(Turn, "submit", queued)
    with serve_model(demo_model, tmp_path) as (url, _):
        page.goto(url)
        box = page.locator("#message textarea")
        ask(page, SORT)
        page.locator("#stop").click()
        page.wait_for_function("(text) => document.querySelector('#message textarea').value === text", arg=SORT)
        assert ended.wait(10), "the stopped reply's event never ended"
        page.wait_for_function(EVENT_ENDED)
        assert page.locator("#chatbot [data-testid=user]").count() == 0 and page.locator(BOTS).count() == 0
        assert box.input_value() == SORT and page.locator("#send").is_visible() and wait_until_idle()
        ended.clear()
        page.locator("#send").click()  # sent again, it is answered, once
        page.wait_for_function(f"document.querySelectorAll('{NOTES}').length == 1")
        assert ended.wait(10)
        page.wait_for_function(EVENT_ENDED)
        assert [text.strip() for text in page.locator("#chatbot [data-testid=user]").all_inner_texts()] == [SORT]


def test_keys_typed_right_after_enter_stay_for_the_next_message(app, page, monkeypatch):
    """Gradio reads the box for the send a moment after Enter (longer on a slow link): what is typed meanwhile
    is the next message, not the end of this one."""
    url, chat = app
    slow_model(chat, monkeypatch, delay=0.05, endless=True)
    page.goto(url)
    far_away(page)
    box, users = page.locator("#message textarea"), page.locator("#chatbot [data-testid=user]")
    for attempt in range(3):
        before = users.count()
        box.fill(f"Question {attempt}")
        box.press("Enter")
        page.keyboard.type("and then", delay=5)
        page.wait_for_function(f"document.querySelectorAll('#chatbot [data-testid=user]').length == {before + 1}")
        assert users.last.inner_text().strip() == f"Question {attempt}"
        assert box.input_value() == "and then"
        page.locator("#stop").click()  # before the reply's first word, the question comes back to the box
        page.locator("#send").wait_for(state="visible")
        assert wait_until_idle()
        box.fill("")


def test_stop_while_the_prompt_is_read_gives_the_message_back(app, page, monkeypatch):
    """The reply has started, but nothing has streamed yet (its prompt is still being read, which takes long
    on a busy machine): Stop ends it as if it had not started, and the message goes back to the box, before
    what was typed since."""
    url, chat = app
    backend, reading = chat.backend(), threading.Event()
    prepare = backend.prepare

    def slow_prepare(*args):
        reading.set()
        time.sleep(2)
        return prepare(*args)

    monkeypatch.setattr(backend, "prepare", slow_prepare)
    page.goto(url)
    ask(page, SORT)
    assert reading.wait(10)
    page.locator("#message textarea").fill("and one more thing")
    page.locator("#stop").click()
    page.wait_for_function(
        "(text) => document.querySelector('#message textarea').value === text", arg=f"{SORT}\n\nand one more thing"
    )
    assert page.locator("#chatbot [data-testid=user]").count() == 0 and page.locator("#send").is_visible()
    assert wait_until_idle()


def hold_first_word(chat, monkeypatch) -> tuple[threading.Event, threading.Event, threading.Event]:
    """The backend, once asked, holds its first word until `first_word` is set (a server with its own queue):
    returns (asked, first_word, woke)."""
    backend, asked, first_word, woke = chat.backend(), threading.Event(), threading.Event(), threading.Event()
    stream = backend.stream

    def late(request):
        asked.set()
        first_word.wait(30)
        woke.set()
        yield from stream(request)

    monkeypatch.setattr(backend, "stream", late)
    return asked, first_word, woke


@pytest.mark.parametrize("button", ["#stop", "#new-conversation"])
def test_stop_or_a_switch_before_the_first_word_gives_the_message_back_at_once(app, page, monkeypatch, button):
    """A server may take seconds to its first word (its own queue): Stop, or New conversation, does not wait
    for that word. The message goes back into the box, and the word, when it comes, shows nowhere."""
    url, chat = app
    asked, first_word, woke = hold_first_word(chat, monkeypatch)
    page.goto(url)
    ask(page, SORT)
    assert asked.wait(10)
    page.locator(button).click()
    page.wait_for_function("(text) => document.querySelector('#message textarea').value === text", arg=SORT)
    assert not woke.is_set()  # the message came back while the first word was still held
    first_word.set()
    assert wait_until_idle()  # the first word has come, and found its reply stopped
    page.wait_for_function(EVENT_ENDED)
    assert page.evaluate(f"{RAW} === '[]'") and page.locator(BOTS).count() == 0
    assert page.locator("#send").is_visible() and wait_until_idle()


def test_a_message_refused_as_sent_says_why_and_stays_in_the_box(app, page):
    url, chat = app
    page.goto(url)
    box = page.locator("#message textarea")
    too_long = "B" * (chat.settings.max_message_chars + 1)
    box.fill(too_long)
    box.press("Enter")
    wait_for_notice(page, f"the limit is {chat.settings.max_message_chars}")
    assert box.input_value() == too_long and page.locator("#chatbot [data-testid=user]").count() == 0
    page.evaluate("() => { const box = document.querySelector('#message textarea'); box.value = 'x\\uD800y';"
                  " box.dispatchEvent(new Event('input', {bubbles: true})); }")  # fmt: skip
    box.press("Enter")
    wait_for_notice(page, "lone surrogate")
    assert box.input_value() == "x\ufffdy" and page.locator("#chatbot [data-testid=user]").count() == 0


# Clicks Stop the instant it shows: before the page has heard back from the server about the reply.
STOP_AT_ONCE = """() => new MutationObserver((changes, observer) => {
  const stop = document.querySelector('#stop');
  if (stop?.checkVisibility()) { observer.disconnect(); stop.click(); }
}).observe(document.body, {subtree: true, childList: true, attributes: true})"""


def test_stop_at_any_moment_ends_the_reply_and_the_page_shows_what_is_kept(app, page, monkeypatch):
    url, chat = app
    slow_model(chat, monkeypatch, delay=0.02, endless=True)  # 512 tokens would take over 10 s
    page.goto(url)
    for attempt in range(3):  # the instant Stop shows: the reply does not run on, nothing is lost
        before, noted = page.locator("#chatbot [data-testid=user]").count(), page.locator(NOTES).count()
        page.evaluate(STOP_AT_ONCE)
        ask(page, SORT)
        page.wait_for_function(  # the reply stopped (its note), or the message back in the box
            f"([n, text]) => document.querySelectorAll('{NOTES}').length > n"
            " || document.querySelector('#message textarea').value === text",
            arg=[noted, SORT],
        )
        assert wait_until_idle(5)
        users = page.locator("#chatbot [data-testid=user]").count()
        back = page.locator("#message textarea").input_value()
        assert (users == before + 1 and back == "") or (users == before and back == SORT), (attempt, users, back)
        page.locator("#message textarea").fill("")

    # Mid-stream: the reply ends where it got, and what the page shows is what is kept, also a moment later.
    page.locator("#new-conversation").click()
    page.wait_for_function(f"{RAW} === '[]'")
    ask(page, SORT)
    page.wait_for_function(f"document.querySelector('{BOTS}')?.innerText.length > 40")
    page.locator("#stop").click()
    page.wait_for_function(f"document.querySelector('{NOTES}')?.innerText.includes('stopped by you')")
    assert wait_until_idle(5)
    page.wait_for_function(EVENT_ENDED)  # its last update drawn: nothing comes after it
    reply = json.loads(page.evaluate(RAW))[-1]["content"]
    shown = bot_texts(page)[-1]
    assert shown.startswith(reply.strip()[:40]) and shown.endswith("stopped by you")
    page.reload()
    page.wait_for_function(f"document.querySelector('{NOTES}')?.innerText.includes('stopped by you')")
    assert json.loads(page.evaluate(RAW))[-1]["content"] == reply and bot_texts(page)[-1] == shown


def test_copies_and_edits_are_exactly_what_was_typed(app, clipboard_page, monkeypatch):
    url, chat = app
    page = clipboard_page
    slow_model(chat, monkeypatch, delay=0.0, endless=False)
    page.goto(url)
    set_max_new_tokens(page, 24)
    ask(page, TYPED)
    reply = wait_for_stable_reply(page, 1)
    user = page.locator("#chatbot [data-testid=user]")
    assert TYPED in user.inner_text()  # shown as typed, not rendered as HTML
    assert page.locator("#chatbot [data-testid=user] b").count() == 0

    page.locator("#chatbot .message-buttons").first.locator('button[aria-label="Copy message"]').click()
    assert page.evaluate("navigator.clipboard.readText()") == TYPED

    page.locator('#chatbot button[aria-label="Copy conversation"]').click()
    copied = page.evaluate("navigator.clipboard.readText()")
    assert copied.startswith(f"user: {TYPED}\n\nassistant: ")
    assert copied.count("&lt;") == 0 and copied.count("&amp;") == 2  # the two typed ones
    assert reply.split("\n")[0] in copied and "reply-note" not in copied  # the note is not the reply

    # The edit box holds the message as typed; the edited message goes to the model as typed.
    page.locator('#chatbot button[aria-label="Edit"]').first.click()
    edit_box = page.locator("#chatbot textarea")
    page.wait_for_function("document.querySelector('#chatbot textarea')?.value.includes('&&')")
    assert edit_box.input_value() == TYPED
    edit_box.fill(TYPED + " <i>again</i>")
    page.locator('#chatbot button[aria-label="Submit"]').click()
    page.wait_for_function("document.querySelector('#raw-conversation textarea').value.includes('again')")
    page.locator("#chatbot .message-buttons").first.locator('button[aria-label="Copy message"]').click()
    assert page.evaluate("navigator.clipboard.readText()") == TYPED + " <i>again</i>"


def test_the_demo_notice_is_one_line_that_closes_for_good(demo_model, page):
    with serve("--cache-dir", str(demo_model.parent)) as (url, chat):
        assert chat.backend().info.demo
        page.set_viewport_size({"width": 1280, "height": 900})
        page.goto(url)
        notice = page.locator("#demo-notice")
        notice.wait_for()
        assert "offline demo model" in notice.inner_text() and notice.bounding_box()["height"] < 40  # one line
        notice.get_by_role("button", name="Close this notice").click()
        notice.wait_for(state="hidden")
        page.reload()
        page.locator("#message textarea").wait_for()
        page.wait_for_function("document.querySelector('#demo-notice')?.classList.contains('closed')")
        assert notice.is_hidden()


def test_an_edit_box_is_wide_enter_saves_shift_enter_adds_a_line_escape_cancels(app, page):
    url, _ = app
    page.set_viewport_size({"width": 1280, "height": 900})
    page.goto(url)
    ask(page, "A question")
    page.wait_for_function(f"document.querySelectorAll('{NOTES}').length == 1")
    edit, box = page.locator('#chatbot button[aria-label="Edit"]').first, page.locator("#chatbot .edit-textarea")

    edit.click()
    chat_width = page.locator("#chatbot").bounding_box()["width"]
    assert box.bounding_box()["width"] > 0.6 * chat_width
    shown = (
        "(label) => getComputedStyle(document.querySelector(`#chatbot button[aria-label=${label}]`), '::after').content"
    )
    assert [page.evaluate(shown, label) for label in ("Submit", "Cancel")] == ['"Save"', '"Cancel"']
    box.press("Escape")
    box.wait_for(state="detached")
    assert page.locator(BOTS).count() == 1  # nothing sent

    edit.click()
    box.press("End")
    box.press("Shift+Enter")
    box.press_sequentially("on two lines")
    box.press("Enter")
    box.wait_for(state="detached")
    page.wait_for_function(f"document.querySelectorAll('{NOTES}').length == 1 && {RAW}.includes('on two lines')")
    assert json.loads(page.evaluate(RAW))[0]["content"] == "A question\non two lines"
    assert wait_until_idle()


def test_a_code_blocks_copy_button_copies_the_code_as_written(app, clipboard_page, tmp_path):
    """Gradio's renderer turns tabs into spaces: a copied Makefile would no longer run. Each block says its
    language, and its button says Copy."""
    url, _ = app
    page = clipboard_page
    makefile, script = "all:\n\techo\t'<hi>' && true", "for x in xs:\n\tprint(x)"
    reply = f"A Makefile:\n\n```make\n{makefile}\n```\n\nand a loop:\n\n~~~python\n{script}\n~~~"
    conversation = tmp_path / "code.json"
    conversation.write_text(json.dumps([{"role": "user", "content": "Tabs?"}, {"role": "assistant", "content": reply}]))
    page.goto(url)
    page.get_by_text("Conversation file").click()
    load_file(page, conversation)
    buttons = page.locator("#chatbot [data-testid=bot] .copy_code_button")
    buttons.nth(1).wait_for()
    shown = (
        "([selector, part]) => [...document.querySelectorAll(selector)].map((e) => getComputedStyle(e, part).content)"
    )
    page.wait_for_function(f"({shown})(['#chatbot .code_wrap', '::before']).join() === '\"make\",\"python\"'")
    assert page.evaluate(shown, ["#chatbot .copy_code_button", "::after"]) == ['"Copy"', '"Copy"']
    for button, code in zip(buttons.all(), [makefile, script], strict=True):
        button.click()
        page.wait_for_function("(code) => navigator.clipboard.readText().then((text) => text === code)", arg=code)


def test_every_reply_says_how_it_went(app, page, monkeypatch):
    url, chat = app
    page.goto(url)

    # Finished by itself: tokens, time to first token, speed.
    slow_model(chat, monkeypatch, delay=0.0, endless=False)
    ask(page, "How do I reverse a list in Python?")
    page.wait_for_function(f"document.querySelectorAll('{NOTES}').length == 1")
    note = page.locator(NOTES).first.inner_text()
    assert "tokens" in note and "first token" in note and "tokens/s" in note and "finished" in note

    # One new token at most: the reply says it was cut, not an empty bubble.
    set_max_new_tokens(page, 1)
    ask(page, "And a tuple?")
    page.wait_for_function(f"document.querySelectorAll('{NOTES}').length == 2")
    assert page.locator(NOTES).last.inner_text().startswith("1 token")
    assert "cut at max new tokens" in page.locator(NOTES).last.inner_text()

    # Stopped by the person: the reply keeps what it had and says so.
    slow_model(chat, monkeypatch, delay=0.02, endless=True)
    set_max_new_tokens(page, 400)
    ask(page, "Tell me everything.")
    page.wait_for_function(f"document.querySelectorAll('{BOTS}')[2]?.innerText.length > 20")
    page.locator("#stop").click()
    page.wait_for_function(f"document.querySelectorAll('{NOTES}').length == 3")
    assert "stopped by you" in page.locator(NOTES).last.inner_text()
    assert wait_until_idle()

    # An error is a notice: no reply bubble, nothing added to the conversation, the message kept.
    set_max_new_tokens(page, int(page.locator("#max_new_tokens input[type=range]").get_attribute("max")))
    ask(page, "A question that leaves no room for the reply, " + "really " * 300)
    page.wait_for_selector('[data-testid="toast-body"]')
    warned = page.locator('[data-testid="toast-body"]').first.inner_text()
    assert "does not fit" in warned and "Lower 'max new tokens' to" in warned  # the limit as the page names it
    page.wait_for_function("document.querySelector('#message textarea').value.startsWith('A question')")
    assert page.locator(BOTS).count() == 3 and page.locator("#chatbot [data-testid=user]").count() == 3
    assert page.locator("#send").is_visible()


def test_a_reply_cut_at_max_new_tokens_continues_in_the_same_bubble(app, page, monkeypatch):
    url, chat = app
    slow_model(chat, monkeypatch, delay=0.0, endless=True)
    page.goto(url)
    assert page.locator("#continue").is_hidden()
    set_max_new_tokens(page, 12)
    ask(page, "Write a long explanation of Python lists.")
    page.wait_for_function(f"document.querySelector('{NOTES}')?.innerText.includes('cut at max new tokens')")
    page.locator("#continue").wait_for(state="visible")
    cut = json.loads(page.locator("#raw-conversation textarea").input_value())[-1]["content"]
    mark(page, "Like")

    page.locator("#continue").click()
    page.wait_for_function(
        "(cut) => { const raw = JSON.parse(document.querySelector('#raw-conversation textarea').value);"
        " return raw.at(-1).content.length > cut.length; }",
        arg=cut,
    )
    page.wait_for_function(f"document.querySelector('{NOTES}')?.innerText.includes('24 tokens (12 + 12 continued)')")
    raw = json.loads(page.locator("#raw-conversation textarea").input_value())
    assert len(raw) == 2 and raw[-1]["content"].startswith(cut)  # the same reply, longer
    assert page.locator(BOTS).count() == 1 and page.locator(NOTES).count() == 1
    wait_for_marks(page, [""])  # the like was for the text before: it goes
    page.locator("#continue").wait_for(state="visible")  # cut again: it can go on again
    page.reload()  # its note says it was cut: Continue is there after a reload too
    page.wait_for_function(f"document.querySelector('{NOTES}')?.innerText.includes('cut at max new tokens')")
    page.locator("#continue").wait_for(state="visible")


def test_keys_examples_and_the_way_in_from_code(app, clipboard_page, monkeypatch):
    url, chat = app
    page = clipboard_page
    page.set_viewport_size({"width": 1280, "height": 900})
    slow_model(chat, monkeypatch, delay=0.0, endless=False)
    page.goto(url)
    box, send = page.locator("#message textarea"), page.locator("#send")
    assert "Enter sends, Shift+Enter adds a line" in box.get_attribute("placeholder")
    assert send.is_disabled() and page.locator("#stop").is_hidden()  # nothing to send, nothing to stop

    # The examples are on the first screen; one click sends one.
    examples = page.locator("#chatbot button.example")
    examples.nth(3).wait_for()  # drawn once the page has restored its (empty) conversation
    assert examples.count() == 4
    assert all(b["y"] + b["height"] <= 900 for b in (e.bounding_box() for e in examples.all()))
    examples.nth(2).click()
    wait_for_stable_reply(page, 1)
    assert page.locator("#chatbot [data-testid=user]").inner_text().strip() == EXAMPLES[2]
    assert box.input_value() == "" and examples.count() == 0

    # Shift+Enter adds a line, Enter sends.
    box.press_sequentially("And a tuple?")
    box.press("Shift+Enter")
    box.press_sequentially("Show an example.")
    assert box.input_value() == "And a tuple?\nShow an example."
    assert page.locator("#chatbot [data-testid=user]").count() == 1
    box.press("Enter")
    wait_for_stable_reply(page, 2)
    assert page.locator("#chatbot [data-testid=user]").last.inner_text().strip() == "And a tuple?\nShow an example."
    assert box.input_value() == ""
    page.wait_for_function("document.querySelector('#send').disabled")

    # From code: the snippet names this page's address; copied, it runs.
    page.get_by_text("Use from code").click()
    page.locator("#api-snippet button[aria-label='Copy']").click()
    snippet = page.evaluate("navigator.clipboard.readText()")
    assert f'Client("{url}")' in snippet and f'base_url="{url}v1"' in snippet and 'api_name="/chat"' in snippet
    exec(compile(snippet, "snippet", "exec"), {"print": lambda *args: None})


# Whether each sidebar (the list, the settings) is on the screen, once neither is sliding.
SIDEBARS = """() => ['#history', '#settings'].map((id) => {
  const box = document.querySelector(id)?.getBoundingClientRect();
  return box && box.right > 0 && box.left < innerWidth;
})"""


def page_size(page) -> tuple[int, int]:
    return page.evaluate("[document.documentElement.scrollWidth, document.documentElement.scrollHeight]")


def screenshot(page, name: str) -> None:
    """The README's pictures: `STARCHAT_SCREENSHOTS=docs/screenshots pytest -k layout` takes them anew."""
    if folder := os.environ.get("STARCHAT_SCREENSHOTS"):
        page.screenshot(path=str(Path(folder) / f"{name}.png"))


def test_the_layout_fills_the_window_and_only_the_conversation_scrolls(as_started, page, monkeypatch):
    url, chat = as_started
    slow_model(chat, monkeypatch, delay=0.0, endless=False)
    page.set_viewport_size({"width": 1280, "height": 900})
    page.goto(url)
    box = page.locator("#message textarea")
    for n, example in enumerate(EXAMPLES[:3]):  # more than a window of conversation
        box.fill(example)
        box.press("Enter")
        wait_for_stable_reply(page, n + 1)
        if n == 0:
            screenshot(page, "desktop")  # the demo answers one question well: a conversation is beyond it
    assert page_size(page) == [1280, 900]  # the page is the window
    assert page.locator("#model-info").inner_text().startswith(DEMO_NAME)  # by its name, not its folder's
    chat_box, message = page.locator("#chatbot").bounding_box(), box.bounding_box()
    assert chat_box["height"] > 900 * 0.55 and message["y"] + message["height"] > 900 - 140  # at the foot
    assert page.evaluate("(e => e.scrollHeight > e.clientHeight)(document.querySelector('#chatbot .bubble-wrap'))")
    assert page.locator("#history #conversations").is_visible() and page.locator("#settings #system").is_visible()
    # A window that narrows keeps the chat in view: past 1,100 px the settings close, past 768 px the list.
    page.set_viewport_size({"width": 1000, "height": 700})
    page.wait_for_function(f"({SIDEBARS})().join() === 'true,false'")
    assert page_size(page) == [1000, 700] and page.locator("#chatbot").bounding_box()["width"] > 500
    page.set_viewport_size({"width": 390, "height": 844})
    page.wait_for_function(f"({SIDEBARS})().join() === 'false,false'")
    assert page_size(page) == [390, 844] and box.bounding_box()["y"] + box.bounding_box()["height"] <= 844


def test_the_layout_on_a_phone_opens_on_the_chat_with_the_sidebars_over_it(as_started, browser):
    url, _ = as_started
    page = browser.new_page(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
    page.goto(url)
    page.wait_for_function(f"({SIDEBARS})().join() === 'false,false'")  # closed at the start
    assert page_size(page) == [390, 844]
    box = page.locator("#message textarea").bounding_box()
    send = page.locator("#send").bounding_box()
    assert box["y"] + box["height"] <= 844 and send["y"] + send["height"] <= 844
    assert send["x"] > box["x"] + box["width"] - 1  # beside the box, not under it
    screenshot(page, "phone")
    page.locator("#settings > .toggle-button").click()  # the settings open over the chat
    page.wait_for_function("document.querySelector('#settings').getBoundingClientRect().x === 0")
    page.locator("#system textarea").fill("Answer in Python.")  # in reach
    assert page_size(page)[0] == 390
    tablet = browser.new_page(viewport={"width": 768, "height": 1024}, is_mobile=True, has_touch=True)
    tablet.goto(url)
    tablet.wait_for_function(f"({SIDEBARS})().join() === 'false,false'")  # a sidebar there is the whole page
    page.context.close()
    tablet.context.close()


def test_the_reply_limit_fits_the_model_and_the_context_is_shown_before_sending(app, page, monkeypatch):
    url, chat = app
    slow_model(chat, monkeypatch, delay=0.0, endless=False)
    page.goto(url)
    before = page.locator("#context").inner_text()
    assert "up to 512 reply tokens reserved (50%) of 1024" in before  # before the first send

    # At the slider's top a short question still fits: the range follows the model's context.
    top = int(page.locator("#max_new_tokens input[type=range]").get_attribute("max"))
    assert top < 1024
    set_max_new_tokens(page, top)
    ask(page, "How do I reverse a list in Python?")
    page.wait_for_function(f"document.querySelectorAll('{NOTES}').length == 1")
    assert page.locator('[data-testid="toast-body"]').count() == 0
    after = page.locator("#context").inner_text()
    assert "prompt tokens" in after and f"up to {top} reply tokens reserved" in after


SORT, REVERSE = "How do I sort a list in Python?", "How do I reverse a list in Python?"
RAW = "document.querySelector('#raw-conversation textarea')?.value"
LISTED = "JSON.stringify([...document.querySelectorAll('#conversations label')].map((l) => l.innerText.trim()))"


def wait_for_conversation(page, raw: str) -> None:
    page.wait_for_function(f"(raw) => {RAW} === raw", arg=raw)


def wait_for_json(page, expression: str, expected: list, what: str) -> None:
    """Waits until the JSON text the page's `expression` gives is `expected`'s; else says what it is."""
    try:
        page.wait_for_function(f"(expected) => {expression} === JSON.stringify(expected)", arg=expected, timeout=10_000)
    except Exception:
        raise AssertionError(f"{what} is {page.evaluate(expression)}, not {expected}") from None


def wait_for_list(page, labels: list[str]) -> None:
    wait_for_json(page, LISTED, labels, "the list")


def wait_for_notice(page, text: str) -> None:
    notices = "[...document.querySelectorAll('[data-testid=toast-body]')].map((t) => t.innerText).join(' ')"
    page.wait_for_function(f"(text) => {notices}.includes(text)", arg=text)


def kept_after(page, action) -> None:
    """Does `action`, then waits until the open conversation is written to localStorage again."""
    before = page.evaluate("(key) => localStorage.getItem(key)", STORAGE_KEYS[0])
    action()
    page.wait_for_function("([key, before]) => localStorage.getItem(key) !== before", arg=[STORAGE_KEYS[0], before])


def item_action(page, index: int, action: str) -> None:
    """An item of the conversations' list: its own Rename or Delete, shown on hover."""
    item = page.locator("#conversations label").nth(index)
    item.hover()
    item.locator(f'button[aria-label="{action}"]').click()


def groups(page) -> list[str]:
    return page.locator("#conversations .list-group").all_inner_texts()


def kept_conversations(page, url: str, chat, monkeypatch, *questions: str) -> list[tuple[str, str]]:
    """The page with one conversation per question, each answered (8 tokens) and listed, the last open;
    returns each one's raw conversation and its reply's note."""
    slow_model(chat, monkeypatch, delay=0.0, endless=False)
    page.goto(url)
    set_max_new_tokens(page, 8)
    raws = []
    for n, question in enumerate(questions):
        if n:
            page.locator("#new-conversation").click()
            page.wait_for_function(f"{RAW} === '[]'")
        ask(page, question)
        wait_for_stable_reply(page, 1)
        wait_for_list(page, list(reversed(questions[: n + 1])))
        raws.append((page.evaluate(RAW), page.locator(NOTES).inner_text()))
    return raws


def test_a_reload_keeps_the_conversation_its_system_prompt_and_how_each_reply_went(app, page, monkeypatch):
    """A theme switch reloads the page too."""
    url, chat = app
    [(_, note)] = kept_conversations(page, url, chat, monkeypatch, SORT)
    kept_after(
        page,
        lambda: (
            page.locator("#system textarea").fill("Answer in one line."),
            page.locator("#message textarea").click(),
        ),
    )
    first = page.evaluate(RAW)
    page.reload()
    wait_for_conversation(page, first)
    wait_for_list(page, [SORT])
    assert page.locator("#system textarea").input_value() == "Answer in one line."
    assert page.locator(NOTES).all_inner_texts() == [note]


def test_a_new_conversation_leaves_the_first_in_the_list_and_both_survive_a_reload(app, page, monkeypatch):
    url, chat = app
    _, (second, _) = kept_conversations(page, url, chat, monkeypatch, SORT, REVERSE)
    page.reload()
    wait_for_conversation(page, second)
    wait_for_list(page, [REVERSE, SORT])


def test_a_listed_conversation_reopens_and_keeps_the_name_it_is_given(app, page, monkeypatch):
    url, chat = app
    (first, note), _ = kept_conversations(page, url, chat, monkeypatch, SORT, REVERSE)
    page.locator("#conversations label", has_text=SORT).click()
    wait_for_conversation(page, first)
    wait_for_list(page, [SORT, REVERSE])
    assert page.locator(NOTES).all_inner_texts() == [note]  # how its reply went comes back with it
    item_action(page, 0, "Rename")
    page.locator("#conversations .rename-box").fill("Sorting")
    page.locator("#conversations .rename-box").press("Enter")
    wait_for_list(page, ["Sorting", REVERSE])
    page.reload()
    wait_for_list(page, ["Sorting", REVERSE])
    wait_for_conversation(page, first)


def test_delete_asks_first_and_takes_the_open_conversation_out_of_the_browser(app, page, monkeypatch):
    """Declined, nothing changes; accepted, the conversation is gone from the list and from the browser,
    and an empty one is open."""
    url, chat = app
    _, (second, _) = kept_conversations(page, url, chat, monkeypatch, SORT, REVERSE)
    asked: list[str] = []
    page.once("dialog", lambda dialog: (asked.append(dialog.message), dialog.dismiss()))
    item_action(page, 0, "Delete")
    page.evaluate("0")  # answers once the page's click handler, which asked, has returned
    assert asked and "cannot be undone" in asked[0]
    wait_for_list(page, [REVERSE, SORT])
    assert page.evaluate(RAW) == second
    page.once("dialog", lambda dialog: dialog.accept())
    item_action(page, 0, "Delete")
    wait_for_list(page, [SORT])
    assert page.evaluate(RAW) == "[]"
    page.reload()
    wait_for_list(page, [SORT])
    assert page.evaluate(RAW) == "[]"


def test_each_listed_conversation_renames_and_deletes_itself_grouped_today_and_earlier(app, page, monkeypatch):
    url, chat = app
    slow_model(chat, monkeypatch, delay=0.0, endless=False)
    page.goto(url)
    page.locator("#message textarea").wait_for()
    last_week = time.time() - 7 * 86_400
    old = [
        {"id": f"{n}" * 32, "title": f"Old {n}", "updated": last_week, "messages": [{"role": "user", "content": "q"}]}
        for n in (1, 2)
    ]
    keep_by_hand(page, STORAGE_KEYS[1], json.dumps(old))
    page.reload()
    wait_for_list(page, ["Old 1", "Old 2"])
    assert groups(page) == ["Earlier"]
    ask(page, SORT)
    wait_for_stable_reply(page, 1)
    wait_for_list(page, [SORT, "Old 1", "Old 2"])
    page.wait_for_function("document.querySelectorAll('#conversations .list-group').length === 2")
    assert groups(page) == ["Today", "Earlier"]

    # Another item than the open one: renamed in place (Escape keeps the old title), deleted after asking.
    item_action(page, 2, "Rename")
    page.locator("#conversations .rename-box").fill("Not this")
    page.locator("#conversations .rename-box").press("Escape")
    item_action(page, 2, "Rename")
    page.locator("#conversations .rename-box").fill("  Renamed\tby hand ")
    page.locator("#conversations .rename-box").press("Enter")
    wait_for_list(page, [SORT, "Old 1", "Renamed by hand"])
    page.once("dialog", lambda dialog: dialog.accept())
    item_action(page, 1, "Delete")
    wait_for_list(page, [SORT, "Renamed by hand"])
    assert raw_conversation(page)[0]["content"] == SORT  # the open one stays open
    page.reload()
    wait_for_list(page, [SORT, "Renamed by hand"])
    assert groups(page) == ["Today", "Earlier"]


def test_switching_conversation_while_a_reply_streams_stops_it_and_keeps_what_streamed(app, page, monkeypatch):
    """New conversation, or another from the list, is not refused while a reply streams: the reply stops,
    and its conversation goes to the list as far as it got."""
    url, chat = app
    slow_model(chat, monkeypatch, delay=0.02, endless=True)
    page.goto(url)
    ask(page, SORT)
    page.wait_for_function(f"document.querySelector('{BOTS}')?.innerText.length > 20")
    page.locator("#new-conversation").click()
    page.wait_for_function(f"{RAW} === '[]'")
    assert wait_until_idle(), "the reply went on in a conversation that was left"
    wait_for_list(page, [SORT])

    ask(page, REVERSE)
    page.wait_for_function(f"document.querySelector('{BOTS}')?.innerText.length > 20")
    page.locator("#conversations label", has_text=SORT).click()
    page.wait_for_function(f"(text) => {RAW}.includes(text)", arg=SORT)
    assert wait_until_idle()
    wait_for_list(page, [SORT, REVERSE])
    assert page.locator(NOTES).inner_text().endswith("stopped by you") and len(bot_texts(page)[0]) > 20
    notices = page.locator("[data-testid=toast-body]").all_inner_texts()
    assert not any("being written" in text for text in notices), notices

    page.locator("#conversations label", has_text=REVERSE).click()
    page.wait_for_function(f"(text) => {RAW}.includes(text)", arg=REVERSE)
    assert page.locator(NOTES).inner_text().endswith("stopped by you") and len(bot_texts(page)[0]) > 20


def test_a_reply_shown_as_finished_takes_new_conversation_at_once(demo_model, page, tmp_path, monkeypatch):
    """A reply's generator may wind down a while after its last piece (on a loaded server). The reply shows
    its note with the page given back, so New conversation right then is not refused as "being written",
    and the reply's event, ending right after, does not bring the old conversation back."""
    import asyncio

    from playground.chat import Chat

    respond, wound_down = Chat.respond, threading.Event()

    async def lingering(self, *args, **kwargs):
        try:
            async for update in respond(self, *args, **kwargs):
                yield update
        finally:
            await asyncio.sleep(3)  # after the reply's last update
            wound_down.set()

    monkeypatch.setattr(Chat, "respond", lingering)
    with serve_model(demo_model, tmp_path) as (url, _):
        page.goto(url)
        ask(page, SORT)
        page.wait_for_function(f"document.querySelectorAll('{NOTES}').length == 1")
        assert wound_down.is_set()
        page.locator("#new-conversation").click()
        page.wait_for_function(f"{RAW} === '[]'", timeout=10_000)
        wait_for_list(page, [SORT])
        notices = page.locator("[data-testid=toast-body]").all_inner_texts()
        assert not any("being written" in text for text in notices), notices
        page.wait_for_function(EVENT_ENDED)  # the reply's event has ended, and sent its last update again
        assert page.evaluate(RAW) == "[]" and page.locator(BOTS).count() == 0
        assert wait_until_idle()


@pytest.mark.parametrize("how", ["send", "retry"])
def test_new_conversation_as_a_reply_event_ends_is_not_drawn_over(demo_model, page, tmp_path, monkeypatch, how):
    """Gradio ends a reply's event by sending its last update again, a moment after it: New conversation
    clicked in that moment waits for it, so the old conversation is not drawn back over the new one."""
    import asyncio

    import gradio as gr

    from playground.ui.turn import Turn

    name, slow = ("submit" if how == "send" else "retry"), threading.Event()
    handler = getattr(Turn, name)

    ended = threading.Event()

    async def ending_slowly(self, values: dict, request: gr.Request):
        async for out in handler(self, values, request):
            yield out
        if slow.is_set():
            await asyncio.sleep(1.5)  # the event ends well after its last update
            ended.set()

    monkeypatch.setattr(Turn, name, ending_slowly)
    with serve_model(demo_model, tmp_path) as (url, _):
        page.goto(url)
        ask(page, SORT)
        page.wait_for_function(f"document.querySelectorAll('{NOTES}').length == 1")
        assert wait_until_idle()
        page.wait_for_function(EVENT_ENDED)  # this first reply's event ends as it would
        slow.set()
        if how == "send":
            ask(page, REVERSE)
        else:
            page.locator(RETRY).last.click()
        page.wait_for_function(  # the new reply has finished (its note, Send back), its event not yet
            f"document.querySelectorAll('{NOTES}').length == {2 if how == 'send' else 1}"
            " && document.querySelector('#send')?.checkVisibility() && document.querySelector('#message .generating')"
        )
        page.locator("#new-conversation").click()
        page.wait_for_function(f"{RAW} === '[]'", timeout=10_000)
        assert ended.wait(10)
        page.wait_for_function(EVENT_ENDED)  # past the event's end, its last update drawn
        assert page.evaluate(RAW) == "[]" and page.locator(BOTS).count() == 0


def test_two_tabs_share_the_list_and_each_keeps_its_own_conversation(app, browser):
    """A tab draws the list anew when another writes it, and takes another tab's open conversation into its
    list: neither tab's conversation is lost, whichever writes last. Only a tab whose open conversation
    another tab opens too stops keeping, and says so."""
    url, _ = app
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    first, second = context.new_page(), context.new_page()
    first.goto(url)
    ask(first, REVERSE)
    wait_for_stable_reply(first, 1)
    second.goto(url)
    wait_for_conversation(second, first.evaluate(RAW))

    second.locator("#new-conversation").click()
    second.wait_for_function(f"{RAW} === '[]'")
    ask(second, SORT)
    wait_for_stable_reply(second, 1)
    sorting = second.evaluate(RAW)
    wait_for_list(first, [REVERSE, SORT])  # the second tab's conversation, in the first's list
    wait_for_list(second, [SORT, REVERSE])

    ask(first, "And a tuple?")  # the first goes on keeping its own
    wait_for_stable_reply(first, 2)
    kept = first.evaluate(RAW)
    first.reload()
    wait_for_conversation(first, kept)
    wait_for_list(first, [REVERSE, SORT])
    assert first.locator("#other-tab").count() == 0 and second.locator("#other-tab").count() == 0

    # Both tabs on one conversation: the one that had it open stops keeping, and says so.
    first.locator("#conversations label", has_text=SORT).click()
    wait_for_conversation(first, sorting)  # the second tab's, whole
    second.wait_for_selector("#other-tab")
    assert "another tab" in second.locator("#other-tab").inner_text() and first.locator("#other-tab").count() == 0
    context.close()


CODE_REPLY = (
    "Use `sorted`:\n\n```python\nnumbers = [3, 1, 2]\nprint(sorted(numbers))  # <b>&amp;\n```\n\n  and  spaces  "
)
FILE = {
    "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Sort <this>?"},
        {"role": "assistant", "content": CODE_REPLY},
        {"role": "user", "content": "And a reply cut in its code?"},
        {"role": "assistant", "content": "```js\nlet x = 1;"},
    ]
}
USERS = "document.querySelectorAll('#chatbot [data-testid=user]').length"


def open_with_a_loaded_file(page, url: str, tmp_path: Path) -> Path:
    """The page, with FILE loaded (and listed); returns the file."""
    conversation = tmp_path / "conversation.json"
    conversation.write_text(json.dumps(FILE))
    page.goto(url)
    page.get_by_text("Conversation file").click()
    load_file(page, conversation)
    wait_for_list(page, ["Sort <this>?"])
    return conversation


def test_markdown_export_is_exact_and_clear_or_load_close_an_open_edit(app, page, tmp_path):
    url, _ = app
    conversation = open_with_a_loaded_file(page, url, tmp_path)
    page.wait_for_function(f"{USERS} == 2")

    with page.expect_download() as download:  # made in the browser, like Save as JSON
        page.locator("#save-markdown").click()
    assert download.value.suggested_filename.endswith(".md")
    assert Path(download.value.path()).read_text() == (
        "# Sort <this>?\n\n## System prompt\n\nBe brief.\n\n## User\n\nSort <this>?\n\n## Assistant\n\n"
        f"{CODE_REPLY}\n\n## User\n\nAnd a reply cut in its code?\n\n## Assistant\n\n```js\nlet x = 1;\n```\n"
    )

    # An edit box open when the conversation is replaced is closed, not left on the new conversation.
    page.locator('#chatbot button[aria-label="Edit"]').first.click()
    page.locator("#chatbot textarea").wait_for()
    other = tmp_path / "other.json"
    other.write_text(
        json.dumps({"messages": [{"role": "user", "content": "Other"}, {"role": "assistant", "content": "a"}]})
    )
    load_file(page, other)  # opens as a new conversation: the list holds both
    wait_for_list(page, ["Other", "Sort <this>?"])
    assert page.locator("#chatbot textarea").count() == 0
    page.locator('#chatbot button[aria-label="Edit"]').first.click()
    page.locator("#chatbot textarea").wait_for()
    page.once("dialog", lambda dialog: dialog.accept())
    page.locator(CLEAR).click()
    page.wait_for_function(f"{USERS} == 0")
    load_file(page, conversation)
    page.wait_for_function(f"{USERS} == 2")
    wait_for_list(page, ["Sort <this>?", "Sort <this>?"])  # the cleared one (empty) is not listed
    assert page.locator("#chatbot textarea").count() == 0


FORGE_JS = """async ([key, rawKey, iv, salt, text]) => {
  const aes = await crypto.subtle.importKey('raw', new Uint8Array(rawKey), 'AES-CBC', false, ['encrypt']);
  const plain = new TextEncoder().encode(text);
  const sealed = new Uint8Array(await crypto.subtle.encrypt({name: 'AES-CBC', iv: new Uint8Array(iv)}, aes, plain));
  const bytes = new Uint8Array([...new TextEncoder().encode('Salted__'), ...salt, ...sealed]);
  let binary = '';
  for (let i = 0; i < bytes.length; i += 8192) binary += String.fromCharCode(...bytes.subarray(i, i + 8192));
  localStorage.setItem(key, btoa('iv: not used....') + ':' + btoa(binary));
}"""


def sealing(salt: bytes) -> tuple[bytes, bytes]:
    """gr.BrowserState's AES key and iv for `salt`: from the app's secret, the OpenSSL way."""
    passphrase, derived, block = hashlib.sha256(STORAGE_SECRET.encode()).hexdigest().encode(), b"", b""
    while len(derived) < 48:
        block = hashlib.md5(block + passphrase + salt).digest()
        derived += block
    return derived[:32], derived[32:48]


def keep_by_hand(page, key: str, text: str) -> None:
    """Writes the JSON `text` as gr.BrowserState would (CryptoJS AES, key and iv from the app's secret the OpenSSL
    way), as anyone can by hand: the secret is in the page's config."""
    salt = os.urandom(8)
    derived = b"".join(sealing(salt))
    page.mouse.click(5, 5)  # a tab writes nothing it keeps before its first click or keystroke
    page.evaluate(FORGE_JS, [key, list(derived[:32]), list(derived[32:48]), list(salt), text])


UNSEAL_JS = """async ([sealed, key, iv]) => {
  const bytes = Uint8Array.from(atob(sealed.split(':')[1]), (c) => c.charCodeAt(0)).slice(16);
  const aes = await crypto.subtle.importKey('raw', new Uint8Array(key), 'AES-CBC', false, ['decrypt']);
  return new TextDecoder().decode(await crypto.subtle.decrypt({name: 'AES-CBC', iv: new Uint8Array(iv)}, aes, bytes));
}"""


def kept_by_the_browser(page, key: str):
    """The JSON value that gr.BrowserState keeps under `key`, read back as the page does."""
    sealed = page.evaluate("(key) => localStorage.getItem(key)", key)
    if not sealed:
        return None
    key_bytes, iv = sealing(base64.b64decode(sealed.split(":")[1])[8:16])
    return json.loads(page.evaluate(UNSEAL_JS, [sealed, list(key_bytes), list(iv)]))


def wait_until_kept(page) -> None:
    """Waits, write by write, until the conversation kept in the browser is the one on screen."""
    while True:
        sealed = page.evaluate("(key) => localStorage.getItem(key)", STORAGE_KEYS[0])
        kept = (kept_by_the_browser(page, STORAGE_KEYS[0]) or {}).get("messages")
        shown = [{"role": m["role"], "content": m["content"]} for m in kept or [] if m["role"] != "system"]
        if shown == raw_conversation(page):
            return
        page.wait_for_function("([key, before]) => localStorage.getItem(key) !== before", arg=[STORAGE_KEYS[0], sealed])


def test_forged_stored_values_are_left_out_and_the_page_goes_on(app, page, monkeypatch, tmp_path):
    url, chat = app
    open_with_a_loaded_file(page, url, tmp_path)
    opened = page.evaluate(RAW)

    # A hand-edited list: one good conversation among wrong types and a lone surrogate.
    good = {"id": "a" * 32, "title": "Kept one", "messages": FILE["messages"][:3]}
    lone = {"id": "b" * 32, "messages": [{"role": "user", "content": "\ud800"}, {"role": "assistant", "content": "x"}]}
    role = {"id": "c" * 32, "messages": [{"role": ["user"], "content": "q"}, {"role": "assistant", "content": "a"}]}
    keep_by_hand(page, STORAGE_KEYS[1], json.dumps([{"id": 5}, "text", lone, good, role, None]))
    page.reload()
    wait_for_conversation(page, opened)  # the open conversation is not lost
    wait_for_list(page, ["Sort <this>?", "Kept one"])
    wait_for_notice(page, "5 conversations kept in this browser could not be read")
    page.locator("#conversations label", has_text="Kept one").click()
    page.wait_for_function(f"{USERS} == 1")

    # Wrong types, nesting deeper than Python reads, megabytes, a value that is not even encrypted: each
    # refused with a notice, and the page works.
    keep_by_hand(page, STORAGE_KEYS[0], json.dumps({"id": "d" * 32, "messages": 7}))
    keep_by_hand(page, STORAGE_KEYS[1], "[" * 3000 + "]" * 3000)
    page.reload()
    wait_for_notice(page, "The conversation kept in this browser could not be read: a new one is open.")
    wait_for_notice(page, "1 conversation kept in this browser could not be read")
    page.mouse.click(5, 5)
    page.evaluate("(key) => localStorage.setItem(key, 'not:encrypted')", STORAGE_KEYS[0])
    keep_by_hand(page, STORAGE_KEYS[1], json.dumps(["x" * 1_500_000]))
    page.reload()
    wait_for_notice(page, "1 conversation kept in this browser could not be read")
    slow_model(chat, monkeypatch, delay=0.0, endless=False)
    set_max_new_tokens(page, 4)
    ask(page, SORT)
    wait_for_stable_reply(page, 1)
    wait_for_list(page, [SORT])


# Records each value the page writes to a localStorage key, in window.written.
RECORD_WRITES = """(key) => {
  window.written = [];
  const setItem = Storage.prototype.setItem;
  Storage.prototype.setItem = function (k, value) {
    if (this === window.localStorage && k === key) window.written.push(value);
    return setItem.call(this, k, value);
  };
}"""


VERSIONS = "#chatbot .versions"


def version_bar(page, index: int) -> str:
    return page.locator("#chatbot .message-row").nth(index).locator(".versions span").inner_text()


def versioned(page, url: str, chat, monkeypatch, *, edited: bool = False) -> tuple[list[dict], list[dict]]:
    """The page with a reply retried once (six tokens at temperature 2: versions that differ), and, if
    `edited`, its question then edited to "Second question". Returns the conversation as first answered and
    as retried."""
    slow_model(chat, monkeypatch, delay=0.0, endless=True)
    page.goto(url)
    set_max_new_tokens(page, 6)
    page.locator("#temperature input[type=number]").fill("2")
    page.locator("#temperature input[type=number]").press("Enter")
    ask(page, "First question")
    wait_for_stable_reply(page, 1)
    first = raw_conversation(page)
    assert page.locator(VERSIONS).count() == 0  # nothing to flip yet
    rerun(page, lambda: page.locator(RETRY).last.click())
    wait_for_stable_reply(page, 1)
    page.wait_for_function(f"document.querySelector('{VERSIONS} span')?.innerText === '2/2'")
    assert version_bar(page, 1) == "2/2"
    second = raw_conversation(page)
    if edited:  # the whole turn it replaces is a version of the question, with the reply's own
        open_first_edit(page, "First question")
        page.locator("#chatbot textarea").fill("Second question")
        rerun(page, lambda: page.locator('#chatbot button[aria-label="Submit"]').click())
        wait_for_stable_reply(page, 1)
        # Its versions are drawn: the question's, and none under the new reply.
        page.wait_for_function(
            f"document.querySelectorAll('{VERSIONS}').length === 1"
            " && document.querySelector('#chatbot .message-row .versions span')?.innerText === '2/2'"
        )
    return first, second


def test_a_retried_reply_flips_back_to_the_earlier_version(app, page, monkeypatch):
    """‹ 2/2 › under a retried reply flips between its versions."""
    url, chat = app
    first, second = versioned(page, url, chat, monkeypatch)
    page.locator('#chatbot button[aria-label="Previous version"]').click()
    wait_for_conversation(page, json.dumps(first))
    assert version_bar(page, 1) == "1/2"
    page.locator('#chatbot button[aria-label="Next version"]').click()
    wait_for_conversation(page, json.dumps(second))


def test_an_edited_questions_versions_are_kept_through_a_reload_and_in_the_files(app, page, monkeypatch):
    """Every version is kept in the browser and in the saved file; the Markdown file holds the version on
    screen."""
    url, chat = app
    first, second = versioned(page, url, chat, monkeypatch, edited=True)
    assert page.locator(VERSIONS).count() == 1 and version_bar(page, 0) == "2/2"
    page.locator('#chatbot button[aria-label="Previous version"]').click()
    wait_for_conversation(page, json.dumps(second))
    wait_until_kept(page)
    assert version_bar(page, 0) == "1/2" and version_bar(page, 1) == "2/2"

    page.reload()  # kept in the browser, every version
    wait_for_conversation(page, json.dumps(second))
    page.wait_for_function(f"document.querySelectorAll('{VERSIONS}').length === 2")
    page.locator('#chatbot button[aria-label="Previous version"]').last.click()
    wait_for_conversation(page, json.dumps(first))

    page.get_by_text("Conversation file").click()
    with page.expect_download() as download:
        page.locator("#save").click()
    saved = json.loads(Path(download.value.path()).read_text())
    assert saved["messages"][2]["versions"]["shown"] == 0
    with page.expect_download() as download:
        page.locator("#save-markdown").click()
    markdown = Path(download.value.path()).read_text()
    assert first[1]["content"] in markdown and second[1]["content"] not in markdown


def test_undo_takes_back_the_reply_version_then_the_edited_question_then_its_turn(app, page, monkeypatch):
    """Undo takes back what was done last, and only that: the reply's version on screen, then the edited
    question (back into the box) with the other version of it shown, then that one's whole turn."""
    url, chat = app
    first, second = versioned(page, url, chat, monkeypatch, edited=True)
    page.locator('#chatbot button[aria-label="Previous version"]').click()
    wait_for_conversation(page, json.dumps(second))
    page.wait_for_function(f"document.querySelectorAll('{VERSIONS}').length === 2")
    page.locator('#chatbot button[aria-label="Previous version"]').last.click()
    wait_for_conversation(page, json.dumps(first))

    page.locator(UNDO).last.click()
    wait_for_conversation(page, json.dumps([first[0], second[1]]))
    assert page.locator(VERSIONS).count() == 1 and version_bar(page, 0) == "1/2"
    page.locator(UNDO).last.click()
    page.wait_for_function("document.querySelector('#message textarea').value === 'First question'")
    assert raw_conversation(page)[0]["content"] == "Second question" and page.locator(VERSIONS).count() == 0
    page.locator("#message textarea").fill("")
    page.locator(UNDO).last.click()
    page.wait_for_function(f"{RAW} === '[]'")
    assert page.locator("#message textarea").input_value() == "Second question"


STOP_SHOWN = "document.querySelector('#stop')?.checkVisibility()"
# The mark each reply shows, in order: "Liked", "Disliked" or "" (its two thumbs, as Gradio draws them).
MARKS = """JSON.stringify((() => {
  const thumbs = [...document.querySelectorAll('#chatbot button[aria-label]')].map((b) => b.getAttribute('aria-label'))
    .filter((label) => ['Like', 'Liked', 'Dislike', 'Disliked'].includes(label));
  const pairs = Array.from({length: thumbs.length / 2}, (_, i) => thumbs.slice(2 * i, 2 * i + 2));
  return pairs.map((pair) => pair.find((label) => label.endsWith('d')) ?? '');
})())"""


def wait_for_marks(page, marks: list[str]) -> None:
    wait_for_json(page, MARKS, marks, "the replies' marks")


def mark(page, label: str) -> None:
    """Clicks the last reply's thumb labelled `label`, and waits until the conversation is kept with it."""
    kept_after(page, lambda: page.locator(f'#chatbot button[aria-label="{label}"]').last.click())


def saved_preferences(page) -> list[dict]:
    with page.expect_download() as download:
        page.locator("#save-preferences").click()
    assert download.value.suggested_filename.startswith("preferences-")
    return [json.loads(line) for line in Path(download.value.path()).read_text().splitlines()]


def test_likes_stay_with_their_versions_and_save_as_preference_pairs(app, page, monkeypatch):
    """A disliked reply, retried, the new version liked: the marks are each version's own, kept through a
    reload and in the list, and Save preferences downloads the pair (nothing before there is one). A mark
    clicked again is taken back."""
    url, chat = app
    downloads = []
    page.on("download", lambda download: downloads.append(download))
    slow_model(chat, monkeypatch, delay=0.0, endless=True)
    page.goto(url)
    set_max_new_tokens(page, 6)
    page.locator("#temperature input[type=number]").fill("2")  # versions that differ
    page.locator("#temperature input[type=number]").press("Enter")
    ask(page, "First question")
    wait_for_stable_reply(page, 1)
    mark(page, "Dislike")
    wait_for_marks(page, ["Disliked"])
    first = raw_conversation(page)
    page.get_by_text("Conversation file").click()
    page.locator("#save-preferences").click()  # a dislike alone makes no pair
    wait_for_notice(page, "No preference pairs yet")

    rerun(page, lambda: page.locator(RETRY).last.click())
    wait_for_stable_reply(page, 1)
    wait_for_marks(page, [""])  # the new version is not marked
    mark(page, "Like")
    second = raw_conversation(page)
    page.locator('#chatbot button[aria-label="Previous version"]').click()
    wait_for_conversation(page, json.dumps(first))
    wait_for_marks(page, ["Disliked"])
    page.locator('#chatbot button[aria-label="Next version"]').click()
    wait_for_conversation(page, json.dumps(second))
    wait_until_kept(page)

    page.reload()
    wait_for_conversation(page, json.dumps(second))
    wait_for_marks(page, ["Liked"])
    page.locator("#new-conversation").click()  # it goes to the list: saved from there
    page.wait_for_function(f"{RAW} === '[]'")
    page.get_by_text("Conversation file").click()
    pair = {"prompt": [first[0]], "chosen": [second[1]], "rejected": [first[1]]}
    assert saved_preferences(page) == [pair] and len(downloads) == 1
    page.locator("#conversations label", has_text="First question").click()
    wait_for_conversation(page, json.dumps(second))
    wait_for_marks(page, ["Liked"])
    mark(page, "Liked")  # clicked again: taken back
    wait_for_marks(page, [""])
    reply = kept_by_the_browser(page, STORAGE_KEYS[0])["messages"][2]
    assert "rating" not in reply and reply["versions"]["others"][0][0]["rating"] == "dislike"


def test_a_forged_like_changes_nothing_and_none_is_taken_while_a_reply_streams(app, page, monkeypatch):
    """The page's own like event sent with another message's index (the question, one past the end): the
    conversation stays as it was, and the next like counts. While a reply streams the thumbs wait."""
    url, chat = app
    answered(page, url, chat, monkeypatch, DATE)
    forged, likes = [], []

    def forge(route) -> None:
        body = json.loads(route.request.post_data or "{}")
        liked = "liked" in (body.get("event_data") or {})
        if liked:
            likes.append(body["event_data"])
            body["event_data"]["index"] = forged.pop(0) if forged else body["event_data"]["index"]
        route.continue_(post_data=json.dumps(body) if liked else None)

    page.route("**/gradio_api/queue/join*", forge)
    for index, label in [(0, "Like"), (2, "Dislike")]:
        forged.append(index)
        mark(page, label)
        assert "rating" not in json.dumps(kept_by_the_browser(page, STORAGE_KEYS[0]))
    mark(page, "Like")
    assert kept_by_the_browser(page, STORAGE_KEYS[0])["messages"][2]["rating"] == "like"
    wait_for_marks(page, ["Liked"])

    slow_model(chat, monkeypatch, delay=0.05, endless=True)
    ask(page, "And the time?")
    page.wait_for_function(f"JSON.parse({RAW})[3]?.content && {STOP_SHOWN}")  # the reply streams
    before = len(likes)
    page.locator('#chatbot button[aria-label="Dislike"]').first.click()
    assert len(likes) == before and json.loads(page.evaluate(MARKS)) == ["Liked", ""]
    page.locator("#stop").click()
    wait_for_stable_reply(page, 2)
    page.reload()
    wait_for_marks(page, ["Liked", ""])


def test_a_like_that_arrives_after_another_conversation_opened_marks_nothing(app, page, monkeypatch):
    """Liked, then New conversation at once: the like, held back until the empty conversation shows, marks
    neither conversation, and the page says why."""
    url, chat = app
    answered(page, url, chat, monkeypatch, DATE)
    held = []

    def hold_likes(route) -> None:
        body = json.loads(route.request.post_data or "{}")
        held.append(route) if "liked" in (body.get("event_data") or {}) else route.continue_()

    page.route("**/gradio_api/queue/join*", hold_likes)
    page.locator('#chatbot button[aria-label="Like"]').last.click()
    page.locator("#new-conversation").click()
    page.wait_for_function(f"{RAW} === '[]'")
    for _ in range(200):  # the like's request reaches the route while Playwright waits on the page
        if held:
            break
        page.wait_for_function("true")
    held.pop().continue_()
    page.locator('[data-testid="toast-body"]', has_text="no longer open").wait_for()
    assert page.evaluate(RAW) == "[]"
    assert "rating" not in json.dumps(kept_by_the_browser(page, STORAGE_KEYS[1]))


def raw_conversation(page) -> list[dict]:
    return json.loads(page.locator("#raw-conversation textarea").input_value())


def test_a_reload_while_a_reply_streams_keeps_what_streamed_and_continue_goes_on(app, page, monkeypatch):
    """What streamed before the reload stays as the reply, noted interrupted; Continue goes on from it and
    counts its tokens too."""
    url, chat = app
    slow_model(chat, monkeypatch, delay=0.02, endless=True)
    page.goto(url)
    ask(page, "A question worth keeping")
    page.wait_for_function(f"document.querySelector('{BOTS}')?.innerText.length > 20")
    page.reload()
    page.wait_for_function(f"document.querySelector('{NOTES}')?.innerText.includes('interrupted')")
    assert wait_until_idle(), "the reply went on after the page that asked for it reloaded"
    question, partial = raw_conversation(page)
    assert question["content"] == "A question worth keeping" and partial["content"]
    wait_for_list(page, ["A question worth keeping"])

    set_max_new_tokens(page, 12)
    page.locator("#continue").click()
    page.wait_for_function(f"document.querySelector('{NOTES}')?.innerText.includes('12 continued')")
    reply = raw_conversation(page)[-1]["content"]
    assert reply.startswith(partial["content"]) and len(reply) > len(partial["content"])
    earlier = len(chat.backend().tokenizer(partial["content"], add_special_tokens=False)["input_ids"])
    assert f"{earlier + 12} tokens ({earlier} + 12 continued)" in page.locator(NOTES).inner_text()


def reloaded_before_the_reply_starts(page, url: str, chat, monkeypatch, *, turn_before: bool = False):
    """The page with a question that has no reply: sent, then the page reloaded before its reply's first
    step (held by a gate). `turn_before`: a finished turn before it. Returns the locator of the user messages."""
    gate = threading.Event()
    gate.set()
    slow_model(chat, monkeypatch, delay=0.02, endless=True, gate=gate)
    page.goto(url)
    page.locator("#message textarea").wait_for()
    if turn_before:
        set_max_new_tokens(page, 8)
        ask(page, "A question worth keeping")
        wait_for_stable_reply(page, 1)
    gate.clear()
    question = "A second question" if turn_before else "A question worth keeping"
    kept_after(page, lambda: ask(page, question))
    page.reload()
    users = page.locator("#chatbot [data-testid=user]")
    page.wait_for_function(f"{USERS} == {2 if turn_before else 1}")
    gate.set()
    assert wait_until_idle(), "the reply went on after the page that asked for it reloaded"
    return users


def test_a_reload_before_the_reply_starts_keeps_the_message_sent(app, page, monkeypatch):
    """The reply ends with the page, its message does not: it comes back after the reload."""
    url, chat = app
    users = reloaded_before_the_reply_starts(page, url, chat, monkeypatch)
    assert users.all_inner_texts() == ["A question worth keeping"] and bot_texts(page) == []
    wait_for_list(page, ["A question worth keeping"])


def test_another_message_while_one_has_no_reply_says_how_to_have_it_answered(app, page, monkeypatch):
    """The new message stays in the box; whatever the page stores meanwhile reads back as the waiting
    conversation, at whatever moment a reload would come."""
    url, chat = app
    users = reloaded_before_the_reply_starts(page, url, chat, monkeypatch)
    page.evaluate(RECORD_WRITES, STORAGE_KEYS[0])
    ask(page, "Something else")
    wait_for_notice(page, "The last message has no reply yet")
    page.locator("#send").wait_for(state="visible")
    assert page.locator("#message textarea").input_value() == "Something else"
    assert users.all_inner_texts() == ["A question worth keeping"]
    assert wait_until_idle()
    page.wait_for_function("window.written.length > 0")  # the keeping after the refused send has written
    for written in page.evaluate("window.written"):
        page.evaluate("([key, value]) => localStorage.setItem(key, value)", [STORAGE_KEYS[0], written])
        page.reload()
        users.first.wait_for()
        assert users.all_inner_texts() == ["A question worth keeping"] and bot_texts(page) == []


def test_answer_it_answers_the_message_that_has_no_reply(app, page, monkeypatch):
    url, chat = app
    users = reloaded_before_the_reply_starts(page, url, chat, monkeypatch)
    assert page.locator(RETRY).count() == 0  # the chatbot's Retry goes with a reply: this one says Answer it
    page.locator("#answer").click()
    page.wait_for_function(f"document.querySelector('{BOTS}')?.innerText.length > 20")
    assert page.locator("#answer").is_hidden() and page.locator("#take-back").is_hidden()
    kept_after(page, lambda: page.locator("#stop").click())
    page.reload()
    page.wait_for_function(f"document.querySelector('{NOTES}')?.innerText.includes('stopped by you')")
    assert users.all_inner_texts() == ["A question worth keeping"] and len(bot_texts(page)) == 1


def test_undo_takes_a_question_with_no_reply_back_into_the_box(app, page, monkeypatch):
    """It leaves the answered turn before it, and goes before what was typed since."""
    url, chat = app
    users = reloaded_before_the_reply_starts(page, url, chat, monkeypatch, turn_before=True)
    assert len(bot_texts(page)) == 1
    page.locator("#message textarea").fill("typed meanwhile")
    page.locator("#take-back").click()
    page.wait_for_function(
        "document.querySelector('#message textarea').value === 'A second question\\n\\ntyped meanwhile'"
    )
    assert users.all_inner_texts() == ["A question worth keeping"] and len(bot_texts(page)) == 1


def test_an_edited_question_is_kept_as_its_reply_starts(app, page, monkeypatch):
    """As a sent one is: a reload before its reply's first word keeps the edit."""
    url, chat = app
    gate = threading.Event()
    gate.set()
    slow_model(chat, monkeypatch, delay=0.02, endless=True, gate=gate)
    page.goto(url)
    set_max_new_tokens(page, 8)
    ask(page, "A question worth keeping")
    wait_for_stable_reply(page, 1)
    gate.clear()
    open_first_edit(page, "A question worth keeping")
    page.locator("#chatbot textarea").fill("An edited question")
    kept_after(page, lambda: page.locator('#chatbot button[aria-label="Submit"]').click())
    page.reload()
    page.wait_for_function("document.querySelector('#chatbot [data-testid=user]')?.innerText === 'An edited question'")
    gate.set()
    assert wait_until_idle() and page.locator("#chatbot [data-testid=user]").count() == 1 and bot_texts(page) == []


def far_away(page) -> None:
    """150 ms each way, as a Space far from its visitor."""
    cdp = page.context.new_cdp_session(page)
    cdp.send("Network.enable")
    cdp.send(
        "Network.emulateNetworkConditions",
        {"offline": False, "latency": 150, "downloadThroughput": -1, "uploadThroughput": -1},
    )


def test_stop_right_after_send_on_a_slow_connection_ends_the_reply(app, page, monkeypatch):
    """Stop comes before the page knows its reply's event, so Gradio cannot cancel that event; the reply
    still ends where it got, or never starts."""
    url, chat = app
    slow_model(chat, monkeypatch, delay=0.02, endless=True)
    page.goto(url)
    far_away(page)
    for attempt in range(3):
        question = f"Question {attempt}"
        before, noted = page.locator("#chatbot [data-testid=user]").count(), page.locator(NOTES).count()
        ask(page, question)
        page.locator("#stop").click()
        assert wait_until_idle(5), f"the reply went on after Stop (attempt {attempt})"
        page.wait_for_function(  # the reply stopped (its note), or the message back in the box
            f"([n, text]) => document.querySelectorAll('{NOTES}').length > n"
            " || document.querySelector('#message textarea').value === text",
            arg=[noted, question],
        )
        page.locator("#send").wait_for(state="visible")
        users = page.locator("#chatbot [data-testid=user]").count()
        back = page.locator("#message textarea").input_value()
        stopped = page.locator(NOTES).last.inner_text() if users > before else ""
        assert (users == before + 1 and back == "" and stopped.endswith("stopped by you")) or (
            users == before and back == question
        ), (attempt, users, back, stopped)
        page.locator("#message textarea").fill("")


def test_a_reload_on_a_slow_connection_ends_the_reply_the_page_left(app, page, monkeypatch):
    """Gradio may keep running a reply whose page has gone: it would generate to its end for nobody while
    later replies wait for the slot. Whenever the reload comes, the reply ends or never starts."""
    url, chat = app
    calls = slow_model(chat, monkeypatch, delay=0.1, endless=True)  # 512 tokens would take 50 s
    backend, generates = chat.backend(), threading.Event()
    slowed = backend.model.forward

    def forward(*args, **kwargs):
        generates.set()
        return slowed(*args, **kwargs)

    monkeypatch.setattr(backend.model, "forward", forward)
    page.goto(url)
    far_away(page)
    for moment in ("once it generates", "at once"):
        # The page settled: its load events have filled in the context line.
        page.wait_for_function("document.querySelector('#context')?.innerText.includes('reserved')")
        ask(page, f"A question, then a reload {moment}")
        if moment == "once it generates":  # a fresh page: its question is answered
            assert generates.wait(10), "the reply never started"
        page.reload()
        assert wait_until_idle(5), f"the reply went on after its page left ({moment})"
    assert len(calls) < 100
