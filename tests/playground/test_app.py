"""The playground served on loopback, driven through its public `/chat` endpoint with gradio_client."""

import itertools
import threading
import time

import pytest
from gradio_client import Client
from gradio_client.exceptions import AppError

from playground.backends import load_backend
from playground.chat import Chat
from playground.settings import Settings
from playground.ui import build_ui
from tests.conftest import free_port


@pytest.fixture(scope="module")
def served(demo_model, tmp_path_factory):
    settings = Settings.from_args(
        ["--model", str(demo_model), "--cache-dir", str(tmp_path_factory.mktemp("cache")), "--queue-size", "1"],
        env={},
    )
    backend = load_backend(settings)
    demo = build_ui(Chat(backend, settings))
    demo.queue(max_size=settings.queue_size, default_concurrency_limit=settings.concurrency)
    _, url, _ = demo.launch(server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True)
    yield Client(url, verbose=False), backend
    demo.close()


@pytest.fixture
def client(served):
    return served[0]


@pytest.fixture
def endless(served, monkeypatch) -> list[int]:
    """The model never ends a reply by itself and takes 5 ms a step; returns the count of forward calls."""
    backend = served[1]
    stops = backend.tokenizer.convert_tokens_to_ids(["<|end|>", "<|endoftext|>"])
    original = backend.model.forward
    calls = []

    def forward(*args, **kwargs):
        calls.append(1)
        time.sleep(0.005)
        out = original(*args, **kwargs)
        out.logits[:, -1, stops] = -float("inf")
        return out

    monkeypatch.setattr(backend.model, "forward", forward)
    return calls


LONG = {"temperature": 1.0, "max_new_tokens": 800}


def generating() -> bool:
    return any(t.name == "starchat-generate" for t in threading.enumerate())


def wait_until_idle(seconds: float = 20) -> bool:
    deadline = time.monotonic() + seconds
    while generating() and time.monotonic() < deadline:
        time.sleep(0.05)
    return not generating()


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
        ({"history": [{"role": "assistant", "content": "x"}]}, "turn 0 should be from the user"),
        ({"history": "not a list"}, "history must be a list"),
        ({"history": [{"role": "user"}]}, "must be"),
        ({"message": "   "}, "empty"),
        ({"message": "word " * 5000}, "characters; the limit is|too long"),
        ({"message": "word " * 1500, "max_new_tokens": 64}, "too long"),
    ],
)
def test_bad_input_gets_a_clear_error_and_the_server_keeps_serving(client, kwargs, message):
    call = {"message": "hi", "history": [], "max_new_tokens": 8, **kwargs}
    with pytest.raises(AppError, match=message):
        client.predict(**call, api_name="/chat")
    assert client.predict(message="hi", history=[], max_new_tokens=4, api_name="/chat") is not None


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
    assert any("queue is full" in e.lower() for e in errors), errors
    assert wait_until_idle()
