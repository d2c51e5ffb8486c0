"""The OpenAI-compatible API on the playground's server, used with the official `openai` client."""

import gzip
import json
import re
import time

import httpx
import openai
import pytest
from gradio_client.exceptions import AppError

from tests.conftest import logged, serve_model, slow_model, wait_until_idle


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
    assert all(c.usage is None for c in chunks)  # not asked for


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
        ({"max_tokens": 10**6}, "max_tokens must be between"),
        ({"max_completion_tokens": 0}, "max_completion_tokens must be between"),
        ({"messages": [MESSAGES[1], {"role": "assistant", "content": "x"}]}, "the last message must be from the user"),
        ({"messages": [{"role": "assistant", "content": "x"}]}, "message 0 should be from the user, not the assistant"),
        ({"messages": [{"role": "user", "content": "x" * 30000}]}, "limit is 20000"),
        ({"messages": [{"role": "user", "content": "word " * 400}]}, "too long"),
        ({"n": 2}, r"n: not supported \(only 1\)"),
        ({"extra_body": {"beam": 3, "tools": []}}, r"unsupported field\(s\): beam, tools"),
        (
            {"messages": [{"role": "bogus", "content": "hi"}]},
            "message 0's role must be one of system, user, assistant, not 'bogus'",
        ),
        ({"extra_body": {"stream": "false"}}, "stream: must be true or false"),
        ({"max_tokens": 250}, "A reply of up to 250 tokens does not fit: .* Lower max_tokens to"),  # context 256
        ({"max_completion_tokens": 250}, "Lower max_completion_tokens to"),
        (
            {"messages": [MESSAGES[1], MESSAGES[0], MESSAGES[1]]},
            "message 1 is a system message: only the first message may be one",
        ),
        ({"extra_body": {"stream_options": {"include_usage": True}}}, "stream_options is only for stream true"),
        (
            {"stream": True, "stream_options": {"include_usage": 1}},
            r"stream_options\.include_usage: must be true or false",
        ),
    ],
)
def test_bad_requests_get_400_with_a_reason(client, kwargs, message):
    limit = {} if "max_completion_tokens" in kwargs else {"max_tokens": 8}  # one of the two, not both
    with pytest.raises(openai.BadRequestError, match=message):
        client.chat.completions.create(**{"model": "tiny", "messages": MESSAGES, **limit, **kwargs})


def test_the_api_key_is_required(served):
    wrong = openai.OpenAI(base_url=served[0] + "v1", api_key="sk-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        wrong.models.list()
    refused = httpx.post(served[0] + "v1/chat/completions", json={})
    assert refused.status_code == 401  # in OpenAI's shape:
    assert refused.json()["error"] == {
        "message": "a valid API key is needed: Authorization: Bearer KEY",
        "type": "invalid_request_error",
        "param": None,
        "code": "invalid_api_key",
    }
    # Given twice, the key is refused whichever comes first: a proxy might read the other one.
    for keys in (["Bearer sk-test", "Bearer nope"], ["Bearer nope", "Bearer sk-test"]):
        headers = [("authorization", key) for key in keys]
        assert httpx.get(served[0] + "v1/models", headers=headers).status_code == 401


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
    from playground.chat import Admission, Refused

    admission = Admission(running=1, waiting=0)
    release = admission.enter()
    with pytest.raises(Refused, match="busy"):
        admission.enter()  # full
    release()
    release()  # a stream's end and its client's going away may both call it
    assert admission.in_flight == 0 and admission.enter() is not None


def raw(url: str, body: bytes | str, content_type: str = "application/json") -> httpx.Response:
    headers = {"authorization": "Bearer sk-test", "content-type": content_type}
    return httpx.post(url + "v1/chat/completions", content=body, headers=headers, timeout=30)


GOOD = json.dumps({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
BAD_BODIES = [
    json.dumps({"messages": [{"role": "user", "content": "hi \ud800"}]}),  # a lone surrogate, as JSON escapes it
    json.dumps({"messages": [{"role": "system", "content": "\udfff"}, {"role": "user", "content": "hi"}]}),
    json.dumps({"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]}),
    json.dumps({"messages": [{"role": "user", "content": "hi"}], "model": ["a", "list"]}),
    json.dumps({"messages": [{"role": "user", "content": "hi"}], "model": {"a": 1}}),
    json.dumps({"messages": [{"role": "user", "content": "hi"}], "temperature": 1e-300}),
    b"\xff\xfe not UTF-8",
    "[" * 100_000 + "]" * 100_000,
    "not json",
    '{"messages": [{"role": "user", "content": "hi"}], "\\ud800": 1}',  # a lone surrogate in a field name
    '{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1' + "0" * 400 + "}",
    json.dumps({"messages": [{"role": "user", "content": "hi"}], "stop": "x" * 201}),
]


def test_failing_requests_of_every_kind_never_use_up_the_server(served):
    url = served[0]
    for i in range(50):
        response = raw(url, BAD_BODIES[i % len(BAD_BODIES)])
        assert response.status_code == 400, (i, response.text)
        assert response.json()["error"]["message"]
    assert raw(url, '{"messages": [{"role": "user", "content": "hi"}]}', "text/plain").status_code == 415
    good = raw(url, json.dumps({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}))
    assert good.status_code == 200, good.text
    assert served[1].admission.in_flight == 0


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (BAD_BODIES[0], "lone surrogate, U.D800. at position 3"),
        (BAD_BODIES[3], "model: must be a string"),
        (BAD_BODIES[2], "message 1 should be from the assistant, not the user"),
        (BAD_BODIES[9], "the body: a field's name holds a lone surrogate"),
        (BAD_BODIES[5], "temperature must be 0 .greedy. or at least 0.01, got 1e-300"),
        (BAD_BODIES[6], "the body must be JSON in UTF-8"),
        (BAD_BODIES[7], "nested too deeply"),
        ('{"messages": [], "max_tokens": 3, "max_tokens": 999999}', "the key 'max_tokens' is given twice"),
        (
            '{"messages": [{"role": "user", "content": "hi", "name": "bob"}]}',
            r"unsupported field\(s\): messages\[0\]\.name",
        ),
        ('{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3, "max_completion_tokens": 4}', "not both"),
        # json.loads alone reads UTF-16 and UTF-32 bytes; OpenAI takes UTF-8 only, and so does this server.
        (GOOD.encode("utf-16"), "the body must be JSON in UTF-8"),
        (GOOD.encode("utf-32"), "the body must be JSON in UTF-8"),
        (GOOD.encode("utf-16-le"), "not valid JSON"),  # no byte order mark: valid UTF-8, with NULs, and no JSON
        (GOOD.encode("utf-8-sig"), "not valid JSON"),
    ],
)
def test_odd_bodies_say_what_is_wrong(served, body, message):
    assert re.search(message, raw(served[0], body).json()["error"]["message"])


def test_a_refusal_names_its_field_in_param(served):
    error = raw(served[0], json.dumps({"messages": MESSAGES, "max_completion_tokens": 0})).json()["error"]
    assert (error["param"], error["code"]) == ("max_completion_tokens", None)
    error = raw(served[0], json.dumps({"messages": [{"role": "user", "content": 5}]})).json()["error"]
    assert error["param"] == "messages[0].content" and "a string or a list of text parts" in error["message"]


def test_null_is_absent_and_a_body_read_otherwise_is_refused(served):
    # OpenAI's clients send null for what they leave unset.
    assert raw(served[0], json.dumps({"messages": MESSAGES, "max_tokens": 2, "tools": None})).status_code == 200
    assert raw(served[0], GOOD, "application/json; charset=latin-1").status_code == 415
    compressed = httpx.post(
        served[0] + "v1/chat/completions",
        content=gzip.compress(GOOD.encode()),
        headers={"authorization": "Bearer sk-test", "content-type": "application/json", "content-encoding": "gzip"},
    )
    assert compressed.status_code == 415 and "compressed" in compressed.json()["error"]["message"]


@pytest.mark.parametrize("max_tokens", [1, 16])
def test_a_reply_cut_by_max_tokens_says_length_and_counts_exactly(served, client, monkeypatch, max_tokens):
    slow_model(served[1], monkeypatch, delay=0, endless=True)
    plain = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=max_tokens, temperature=0)
    assert plain.choices[0].finish_reason == "length" and plain.usage.completion_tokens == max_tokens
    chunks = list(
        client.chat.completions.create(
            model="tiny",
            messages=MESSAGES,
            max_tokens=max_tokens,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    # As OpenAI streams it: the reason in the last chunk with a choice, then one with no choices and the usage.
    *replies, counted = chunks
    assert replies[-1].choices[0].finish_reason == "length" and all(c.usage is None for c in replies)
    assert counted.choices == [] and counted.usage.completion_tokens == max_tokens
    assert plain.usage.total_tokens == plain.usage.prompt_tokens + max_tokens


def test_a_reply_that_ends_says_stop_and_counts_its_end_token(served, client, monkeypatch):
    backend = served[1].backend()
    end = backend.tokenizer.convert_tokens_to_ids("<|end|>")
    calls = []

    def fifth_token_ends(module, inputs, logits):
        calls.append(1)
        if len(calls) == 5:
            logits[..., end] = 1e4
        return logits

    hook = backend.model.lm_head.register_forward_hook(fifth_token_ends)
    try:
        reply = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=50, temperature=0)
    finally:
        hook.remove()
    assert reply.choices[0].finish_reason == "stop" and reply.usage.completion_tokens == 5


def test_stop_strings_cut_the_reply_before_the_first_match_also_across_pieces(served, client, monkeypatch):
    slow_model(served[1], monkeypatch, delay=0, endless=True)
    whole = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=40, temperature=0)
    text = whole.choices[0].message.content
    assert len(text) > 12
    stop = text[5:11]  # spans several streamed pieces of a tiny model's reply
    cut = client.chat.completions.create(
        model="tiny", messages=MESSAGES, max_tokens=40, temperature=0, stop=["never there", stop]
    )
    assert cut.choices[0].message.content == text[: text.index(stop)] and cut.choices[0].finish_reason == "stop"
    chunks = list(
        client.chat.completions.create(
            model="tiny", messages=MESSAGES, max_tokens=40, temperature=0, stop=stop, stream=True
        )
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == text[: text.index(stop)]
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_content_as_a_list_of_text_parts_is_the_standard_format(client):
    parts = [{"type": "text", "text": "How do I "}, {"type": "text", "text": "sort a list?"}]
    as_parts = client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": parts}], max_tokens=8, temperature=0
    )
    as_text = client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "How do I sort a list?"}], max_tokens=8, temperature=0
    )
    assert as_parts.choices[0].message.content == as_text.choices[0].message.content
    image = [{"type": "image_url", "image_url": {"url": "http://127.0.0.1/x.png"}}]
    with pytest.raises(openai.BadRequestError, match="only text content parts"):
        client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": image}], max_tokens=8)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"frequency_penalty": 0.5},
        {"presence_penalty": 1.0},
        {"logit_bias": {"42": 5}},
        {"response_format": {"type": "json_object"}},
        {"stop": ["a", "b", "c", "d", "e"]},
        {"extra_body": {"tools": []}},
    ],
)
def test_what_is_not_supported_is_refused_not_ignored(client, kwargs):
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=4, **kwargs)


def test_neutral_values_of_unsupported_fields_are_fine(client):
    neutral = {"frequency_penalty": 0, "presence_penalty": 0.0, "logit_bias": {}, "response_format": {"type": "text"}}
    assert client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=4, **neutral).choices


def test_a_non_streamed_request_stops_when_its_client_leaves(served, monkeypatch):
    calls = slow_model(served[1], monkeypatch, delay=0.01, endless=True)
    body = json.dumps({"messages": MESSAGES, "max_tokens": 200})
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(
            served[0] + "v1/chat/completions",
            content=body,
            headers={"authorization": "Bearer sk-test", "content-type": "application/json"},
            timeout=httpx.Timeout(30, read=0.5),
        )
    assert wait_until_idle()
    assert len(calls) < 1000 and served[1].admission.in_flight == 0


def test_the_page_and_the_api_share_one_budget(served, client, monkeypatch):
    """Concurrency 1 and a queue of 2: three generations in, by either door, and the fourth is told busy."""
    from gradio_client import Client

    slow_model(served[1], monkeypatch, delay=0.01, endless=True)
    gradio = Client(served[0], verbose=False)
    jobs = [gradio.submit(message="go", history=[], max_new_tokens=200, api_name="/chat") for _ in range(2)]
    deadline = time.monotonic() + 30
    while served[1].admission.in_flight < 2:
        assert time.monotonic() < deadline, [job.status() for job in jobs]
        time.sleep(0.02)
    stream = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=200, stream=True)
    with pytest.raises(openai.RateLimitError, match="busy") as refused:
        client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=5)
    assert int(refused.value.response.headers["Retry-After"]) > 0
    late = gradio.submit(message="go", history=[], max_new_tokens=5, api_name="/chat")
    with pytest.raises(AppError, match="busy"):
        late.result()
    stream.close()
    for job in jobs:
        job.cancel()
    assert wait_until_idle()


def test_a_client_gone_before_its_body_is_whole_leaves_no_traceback(served):
    import socket

    host, port = served[0].removeprefix("http://").rstrip("/").split(":")
    with logged("uvicorn.error") as records:
        for _ in range(3):
            with socket.create_connection((host, int(port)), timeout=10) as sock:
                head = "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer sk-test\r\n"
                sock.sendall(f"{head}Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{".encode())
        assert raw(served[0], GOOD).status_code == 200  # the server went on
    assert not [r.getMessage() for r in records]  # and the three left nothing in the log
