"""The OpenAI-compatible API on the playground's server, used with the official `openai` client."""

import httpx
import openai
import pytest

from tests.conftest import serve_model, slow_model, wait_until_idle


@pytest.fixture(scope="module")
def served(tiny_checkpoint, tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    with serve_model(tiny_checkpoint, cache, "--api-key", "sk-test", "--queue-size", "2") as (url, chat):
        yield url, chat


@pytest.fixture
def client(served) -> openai.OpenAI:
    return openai.OpenAI(base_url=served[0] + "v1", api_key="sk-test", max_retries=0)


MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "How do I sort a list?"}]


def test_models_lists_the_served_model(client, tiny_checkpoint):
    assert [m.id for m in client.models.list().data] == [tiny_checkpoint.name]


def test_a_plain_completion_is_the_same_as_its_stream(client):
    plain = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=12, seed=4, temperature=1)
    chunks = list(
        client.chat.completions.create(
            model="tiny", messages=MESSAGES, max_tokens=12, seed=4, temperature=1, stream=True
        )
    )
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert plain.choices[0].message.content == streamed and streamed
    assert plain.choices[0].finish_reason in ("stop", "length") and chunks[-1].choices[0].finish_reason
    assert plain.usage.prompt_tokens > 0 and plain.usage.completion_tokens > 0
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) > 1  # it really streamed


def test_our_extra_sampling_fields_and_multi_turn(client):
    messages = [*MESSAGES, {"role": "assistant", "content": "Use sorted."}, {"role": "user", "content": "More?"}]
    reply = client.chat.completions.create(
        model="tiny", messages=messages, max_tokens=8, extra_body={"top_k": 5, "repetition_penalty": 1.1}
    )
    assert reply.choices[0].message.role == "assistant"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"temperature": 9}, "temperature must be between"),
        ({"max_tokens": 10**6}, "max_new_tokens must be between"),
        ({"messages": [{"role": "assistant", "content": "x"}]}, "last message must be from the user"),
        ({"messages": [{"role": "user", "content": "x" * 30000}]}, "limit is 20000"),
        ({"messages": [{"role": "user", "content": "word " * 400}]}, "too long"),
        ({"n": 2}, "n must be 1"),
        ({"extra_body": {"beam": 3}}, "unsupported field"),
    ],
)
def test_bad_requests_get_400_with_a_reason(client, kwargs, message):
    call = {"model": "tiny", "messages": MESSAGES, "max_tokens": 8, **kwargs}
    with pytest.raises(openai.BadRequestError, match=message):
        client.chat.completions.create(**call)


def test_the_api_key_is_required(served):
    wrong = openai.OpenAI(base_url=served[0] + "v1", api_key="sk-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        wrong.models.list()
    assert httpx.post(served[0] + "v1/chat/completions", json={}).status_code == 401


def test_a_client_that_goes_away_stops_generation(served, client, monkeypatch):
    calls = slow_model(served[1], monkeypatch, delay=0.01, endless=True)
    stream = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=200, stream=True)
    for _, _chunk in zip(range(3), stream, strict=False):
        pass
    stream.close()
    assert wait_until_idle()
    assert len(calls) < 150


def test_beyond_the_queue_the_server_says_busy(served, client, monkeypatch):
    slow_model(served[1], monkeypatch, delay=0.01, endless=True)
    streams = [
        client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=100, stream=True) for _ in range(3)
    ]  # concurrency 1 + queue 2 are in
    with pytest.raises(openai.RateLimitError, match="busy"):
        client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=5)
    for stream in streams:
        stream.close()
    assert wait_until_idle()


def test_an_admission_is_released_exactly_once():
    from playground.api import Admission

    admission = Admission(limit=1)
    release = admission.enter()
    assert admission.enter() is None  # full
    release()
    release()  # the stream's finally and its finalizer may both call it
    assert admission.in_flight == 0 and admission.enter() is not None
