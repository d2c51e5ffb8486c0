"""The playground served on loopback, driven through its public `/chat` endpoint with gradio_client."""

import itertools
import time

import pytest
from gradio_client import Client
from gradio_client.exceptions import AppError

from tests.conftest import generating, serve_model, slow_model, wait_until_idle


@pytest.fixture(scope="module")
def served(demo_model, tmp_path_factory):
    cache = str(tmp_path_factory.mktemp("cache"))
    with serve_model(demo_model, cache, "--queue-size", "1") as (url, chat):
        yield Client(url, verbose=False), chat


@pytest.fixture
def client(served):
    return served[0]


@pytest.fixture
def endless(served, monkeypatch) -> list[int]:
    return slow_model(served[1], monkeypatch, delay=0.005, endless=True)


LONG = {"temperature": 1.0, "max_new_tokens": 800}


def test_chat_streams_the_reply_and_ends_with_the_whole_of_it(client):
    job = client.submit(message="How do I reverse a list in Python?", history=[], seed=3, api_name="/chat")
    outputs = list(job)
    final = job.result()
    assert len(outputs) > 3 and outputs[-1] == final and final
    assert all(later.startswith(earlier) for earlier, later in itertools.pairwise(outputs))


def test_same_seed_same_reply_with_history_and_system_prompt(client):
    kwargs = dict(
        message="and now?",
        history=[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}],
        system_prompt="Be brief.",
        temperature=1.0,
        max_new_tokens=20,
        seed=11,
        api_name="/chat",
    )
    assert client.predict(**kwargs) == client.predict(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"temperature": -3}, "temperature must be between"),
        ({"top_p": 7}, "top_p must be between"),
        ({"top_k": "many"}, "top_k must be a number"),
        ({"max_new_tokens": 10**7}, "max_new_tokens must be between"),
        ({"repetition_penalty": None, "seed": 1.5}, "seed must be a whole number"),
        ({"history": [{"role": "assistant", "content": "x"}]}, "message 0 should be from the user"),
        ({"history": "not a list"}, "history must be a list"),
        ({"system_prompt": 3}, "system_prompt must be a string"),
        ({"history": [{"role": "user"}]}, "must be"),
        ({"message": "   "}, "empty"),
        ({"message": "word " * 5000}, "characters; the limit is|too long"),
        ({"message": "word " * 1500, "max_new_tokens": 64}, "too long"),
    ],
)
def test_bad_input_gets_a_clear_error_and_the_server_keeps_serving(client, kwargs, message, capfd):
    call = {"message": "hi", "history": [], "max_new_tokens": 8, **kwargs}
    with pytest.raises(AppError, match=message):
        client.predict(**call, api_name="/chat")
    assert client.predict(message="hi", history=[], max_new_tokens=4, api_name="/chat") is not None
    assert "Traceback" not in capfd.readouterr().err  # a caller's mistake is the caller's: anyone could fill the log


def test_cancel_ends_generation_on_the_server(client, endless):
    job = client.submit(message="go on", history=[], **LONG, api_name="/chat")
    deadline = time.monotonic() + 30
    while not job.outputs() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert generating()
    job.cancel()
    assert wait_until_idle(), "a generate thread was still running after cancel"
    assert len(endless) < 400, "generation ran on after the cancel"


def test_a_full_queue_answers_busy(client, endless):
    # concurrency 1 and a queue of 1: a third request while two are in has no room.
    jobs = [client.submit(message="go", history=[], **LONG, api_name="/chat") for _ in range(3)]
    errors = []
    for job in jobs:
        try:
            job.result()
        except Exception as exc:  # gradio_client raises the queue's own error type
            errors.append(str(exc))
    assert any("the server is busy" in e.lower() for e in errors), errors
    assert wait_until_idle()
