"""The local transformers backend: stops, seeds, cancel, errors."""

import threading
import time

import pytest

from playground.backends import BackendError, ChatRequest, SamplingParams, collect
from playground.backends.local import LocalBackend, quantization_config
from playground.sampling import ParamError
from playground.template import CONTROL_TOKENS, ContextError


@pytest.fixture(scope="module")
def backend(tiny_checkpoint) -> LocalBackend:
    return LocalBackend.from_pretrained(str(tiny_checkpoint))


def ask(text: str, **params) -> ChatRequest:
    params.setdefault("max_new_tokens", 32)
    return ChatRequest([{"role": "system", "content": ""}, {"role": "user", "content": text}], SamplingParams(**params))


def generate_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "starchat-generate"]


def test_loads_a_local_folder_in_fp32_on_cpu_and_reads_the_context(backend):
    assert backend.info.device == "CPU" and backend.info.context_length == 256
    assert next(backend.model.parameters()).dtype.is_floating_point
    assert str(next(backend.model.parameters()).dtype) == "torch.float32"


def test_same_seed_same_reply_and_no_control_tokens(backend):
    first = collect(backend.stream(ask("hello", seed=7, max_new_tokens=24, temperature=1.0)))[0]
    again = collect(backend.stream(ask("hello", seed=7, max_new_tokens=24, temperature=1.0)))[0]
    other = collect(backend.stream(ask("hello", seed=8, max_new_tokens=24, temperature=1.0)))[0]
    assert first == again and first != other
    assert not any(token in first for token in CONTROL_TOKENS)


def test_generation_stops_at_end_of_turn(backend, monkeypatch):
    end = backend.tokenizer.convert_tokens_to_ids("<|end|>")
    original = backend.model.forward
    calls = []

    def forward(*args, **kwargs):  # the prefill and two tokens, then the model says <|end|>
        out = original(*args, **kwargs)
        calls.append(1)
        if len(calls) >= 3:
            out.logits[:, -1, :] = -1e9
            out.logits[:, -1, end] = 0
        return out

    monkeypatch.setattr(backend.model, "forward", forward)
    reply, _ = collect(backend.stream(ask("hi", temperature=0, max_new_tokens=50)))
    assert len(calls) == 3  # nothing decoded after <|end|>
    assert reply and "<|end|>" not in reply


def test_cancel_ends_the_generate_thread_within_a_step(backend):
    request = ask("tell me everything", max_new_tokens=200, temperature=1.0, seed=3)  # a long reply, every run
    stream = backend.stream(request)
    next(stream)
    assert generate_threads()
    request.cancel.set()
    *rest, _ = stream  # the last item says how it ended
    assert len(rest) < 10  # what was already decoded, not the 200 asked for
    assert not generate_threads()


def test_closing_the_stream_cancels_and_joins(backend):
    request = ask("tell me everything", max_new_tokens=200, temperature=1.0, seed=3)  # a long reply, every run
    stream = backend.stream(request)
    next(stream)
    stream.close()
    assert request.cancel.is_set() and not generate_threads()


def test_greedy_when_temperature_is_zero(backend):
    one, _ = collect(backend.stream(ask("x", temperature=0, seed=1, max_new_tokens=16)))
    two, _ = collect(backend.stream(ask("x", temperature=0, seed=2, max_new_tokens=16)))
    assert one == two


def test_an_oversized_message_is_a_context_error(backend):
    with pytest.raises(ContextError) as refused:
        list(backend.stream(ask("word " * 500)))
    assert refused.value.room < 0


def test_out_of_memory_frees_and_says_so(backend, monkeypatch):
    import torch

    def boom(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(backend.model, "generate", boom)
    with pytest.raises(BackendError, match="ran out of memory"):
        list(backend.stream(ask("hi")))
    monkeypatch.undo()
    after = ask("hi", max_new_tokens=4)
    _, outcome = collect(backend.stream(after))  # still serving (an untrained model may well say nothing at all)
    assert outcome.tokens >= 1 and outcome.finish in ("stop", "length")


def test_quantization_needs_cuda_and_says_so():
    assert quantization_config("none") is None
    with pytest.raises(BackendError, match="needs a CUDA GPU"):
        quantization_config("4bit")


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"temperature": float("nan")}, "finite"),
        ({"temperature": -1}, "between 0 and 2"),
        ({"top_p": 0}, "between"),
        ({"top_k": 2.5}, "whole number"),
        ({"max_new_tokens": 10**9}, "between 1 and"),
        ({"repetition_penalty": "1.2"}, "must be a number"),
        ({"seed": True}, "must be a number"),
    ],
)
def test_nonsense_parameters_get_a_clear_error(raw, message):
    with pytest.raises(ParamError, match=message):
        SamplingParams.parse(**raw)


def test_a_parameter_error_names_the_parameter_as_the_caller_calls_it():
    with pytest.raises(ParamError) as refused:
        SamplingParams.parse(max_new_tokens_limit=100, max_new_tokens=2**60)
    assert (refused.value.name, refused.value.must) == ("max_new_tokens", "between 1 and 100")
    assert refused.value.named("max_tokens") == "max_tokens must be between 1 and 100, got a 61-bit number"
    with pytest.raises(TypeError, match="unknown parameter"):
        SamplingParams.parse(beam_width=3)


def test_valid_parameters_parse_to_their_types():
    params = SamplingParams.parse(max_new_tokens_limit=100, temperature=0, top_k=40.0, max_new_tokens=100, seed=-1)
    assert params == SamplingParams(temperature=0.0, top_k=40, max_new_tokens=100, seed=-1)
    with pytest.raises(ParamError, match="between 1 and 100"):
        SamplingParams.parse(max_new_tokens_limit=100, max_new_tokens=101)


def test_a_waiting_request_cancelled_before_its_turn_never_runs(backend):
    request = ask("hi", max_new_tokens=50)
    replies = []
    with backend._lock:  # another request is generating
        consumer = threading.Thread(target=lambda: replies.append(collect(backend.stream(request))[0]))
        consumer.start()
        time.sleep(0.2)
        request.cancel.set()
    consumer.join(timeout=10)
    assert replies == [""] and not generate_threads()
