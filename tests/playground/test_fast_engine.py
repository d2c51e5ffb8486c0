"""The batched fast path against plain generate, on the CPU: same greedy tokens, join/leave, cancel."""

import threading

import pytest

from playground.backends import ChatRequest, SamplingParams
from playground.backends.local import LocalBackend

PROMPTS = ["How do I reverse a list in Python?", "What does `len` do?", "hi", "Explain `sorted` " * 5]


@pytest.fixture(scope="module")
def plain(tiny_checkpoint):
    return LocalBackend.from_pretrained(str(tiny_checkpoint), engine="plain")


@pytest.fixture(scope="module")
def fast(tiny_checkpoint):
    return LocalBackend.from_pretrained(str(tiny_checkpoint), engine="fast", slots=3)


def ask(text: str, **params) -> ChatRequest:
    params = {"temperature": 0, "max_new_tokens": 40, **params}
    return ChatRequest([{"role": "user", "content": text}], SamplingParams(**params))


def reply(backend, request: ChatRequest) -> str:
    return "".join(backend.stream(request))


def together(backend, requests: list[ChatRequest]) -> list[str]:
    results = [None] * len(requests)

    def run(i):
        results[i] = reply(backend, requests[i])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(requests))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    return results


@pytest.mark.parametrize("text", PROMPTS)
def test_greedy_gives_the_same_tokens_as_plain_generate(plain, fast, text):
    assert reply(fast, ask(text)) == reply(plain, ask(text))


def test_more_requests_than_slots_join_and_leave_and_each_gets_its_own_reply(plain, fast):
    requests = [ask(text, max_new_tokens=n) for text, n in zip(PROMPTS * 2, [40, 7, 25, 3, 12, 30, 40, 9], strict=True)]
    expected = [reply(plain, ask(r.messages[-1]["content"], max_new_tokens=r.params.max_new_tokens)) for r in requests]
    assert together(fast, requests) == expected
    assert fast.engine.busy() == 0


def test_a_cancel_mid_batch_leaves_the_other_streams_untouched(plain, fast, monkeypatch):
    victim = ask("tell me everything", max_new_tokens=200)
    others = [ask(text, max_new_tokens=60) for text in PROMPTS[:2]]
    expected = [reply(plain, ask(text, max_new_tokens=60)) for text in PROMPTS[:2]]
    uncancelled = reply(plain, ask("tell me everything", max_new_tokens=200))
    step, steps = fast.engine.step, []

    def counting_step():  # the victim is cancelled after five decode steps of the shared batch
        steps.append(1)
        if len(steps) == 5:
            victim.cancel.set()
        step()

    monkeypatch.setattr(fast.engine, "step", counting_step)
    results = together(fast, [victim, *others])
    assert results[1:] == expected
    assert len(results[0]) < len(uncancelled) / 4  # it stopped after a few tokens of 200
    assert fast.engine.busy() == 0


def test_each_request_keeps_its_own_sampling_and_seed(fast):
    solo = reply(fast, ask("hi", temperature=1.0, seed=42))
    crowd = together(
        fast,
        [ask("hi", temperature=1.0, seed=42), ask("x", temperature=1.5, seed=1), ask("y", temperature=0.7, seed=2)],
    )
    assert crowd[0] == solo  # the same seed, whatever else runs beside it
    assert reply(fast, ask("hi", temperature=1.0, seed=43)) != solo


def test_top_k_and_top_p_keep_only_the_tokens_they_should(fast):
    import torch

    from playground.backends.fast import Job

    engine = fast.engine  # idle: its thread waits for work, so its rows are ours for this test
    logits = torch.full((engine.logits.shape[1],), -1e9)
    logits[[5, 6, 7]] = torch.tensor([0.5, 0.3, 0.2]).log()
    cases = {0: {"top_k": 2, "top_p": 1.0}, 1: {"top_k": 0, "top_p": 0.6}, 2: {"top_k": 0, "top_p": 0.4}}
    for row, params in cases.items():
        job = Job(ask("", temperature=1.0, repetition_penalty=1.0, **params), [], None)
        job.generator = torch.Generator().manual_seed(row)
        engine.jobs[row] = job
        engine.logits[row] = logits
        engine.seen[row] = False
    try:
        drawn = [engine.sample([0, 1, 2]) for _ in range(300)]
    finally:
        engine.jobs[:3] = [None] * 3
    assert {d[0] for d in drawn} == {5, 6}  # top-k 2
    assert {d[1] for d in drawn} == {5, 6}  # top-p 0.6: 0.5 is not enough, 0.5 + 0.3 is
    assert {d[2] for d in drawn} == {5}  # top-p 0.4: the first token alone
    share = sum(d[0] == 5 for d in drawn) / len(drawn)
    assert 0.5 < share < 0.75  # 0.5 / 0.8 = 0.625 after top-k renormalises


def test_top_k_one_is_greedy(fast):
    assert reply(fast, ask("hello", temperature=1.5, top_k=1, seed=3)) == reply(fast, ask("hello"))


def test_auto_falls_back_to_plain_generate_when_the_engine_cannot_start(tiny_checkpoint, monkeypatch, capsys):
    import playground.backends.local as local

    def broken(*args, **kwargs):
        raise RuntimeError("no CUDA graphs here")

    monkeypatch.setattr(local.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(local, "FastEngine", broken)
    monkeypatch.setattr(local, "describe_device", lambda model: "CPU")
    monkeypatch.setattr(local.torch.cuda, "is_bf16_supported", lambda: False)  # loads in fp16, on the CPU here
    backend = LocalBackend.from_pretrained(str(tiny_checkpoint), engine="auto")
    assert backend.engine is None and "serving with plain generate" in capsys.readouterr().out
    assert reply(backend, ask("hi", max_new_tokens=4)) is not None
    with pytest.raises(RuntimeError, match="no CUDA graphs"):
        LocalBackend.from_pretrained(str(tiny_checkpoint), engine="fast")


def test_the_compiled_decode_step_gives_the_same_tokens(plain, tiny_checkpoint):
    """torch.compile traces the whole step as one graph (fullgraph=True) and warms it up at start.

    On the CPU this is Inductor without CUDA graphs; on a GPU the same graph is captured and replayed.
    """
    from playground.backends.fast import FastEngine
    from playground.template import stop_ids

    compiled = LocalBackend.from_pretrained(str(tiny_checkpoint), engine="plain")
    compiled.engine = FastEngine(compiled.model, stop_ids(compiled.tokenizer), slots=2, compile=True, max_context=128)
    assert reply(compiled, ask(PROMPTS[0])) == reply(plain, ask(PROMPTS[0]))


def test_people_using_the_playground_at_once_share_the_batch(tiny_checkpoint, tmp_path, monkeypatch):
    from concurrent.futures import ThreadPoolExecutor

    from gradio_client import Client

    from tests.conftest import serve_model

    with serve_model(tiny_checkpoint, tmp_path, "--engine", "fast", "--batch-slots", "4") as (url, chat):
        assert chat.concurrency == 4  # the Gradio group lets as many in as the engine decodes together
        engine, step, together_at_once = chat.backend().engine, chat.backend().engine.step, []

        def watched_step():
            together_at_once.append(sum(job is not None for job in engine.jobs))
            step()

        monkeypatch.setattr(engine, "step", watched_step)
        client = Client(url, verbose=False)

        def ask_api(seed):
            return client.predict(
                message="hi", history=[], seed=seed, temperature=1.0, max_new_tokens=120, api_name="/chat"
            )

        with ThreadPoolExecutor(4) as pool:
            replies = list(pool.map(ask_api, range(4)))
        assert all(isinstance(r, str) for r in replies)
        assert max(together_at_once) > 1


@pytest.mark.parametrize("engine", ["plain", "fast"])
def test_each_reply_reports_its_token_count_and_why_it_ended(plain, fast, engine):
    backend = {"plain": plain, "fast": fast}[engine]
    cut = ask("Explain `sorted` in detail", max_new_tokens=1)
    assert reply(backend, cut) is not None and (cut.outcome.tokens, cut.outcome.finish) == (1, "length")

    end = backend.tokenizer.convert_tokens_to_ids("<|end|>")
    calls = []

    def third_token_ends_the_turn(module, inputs, logits):
        calls.append(1)
        if len(calls) == 3:  # the prefill gives the first token, each decode step the next
            logits[..., end] = 1e4
        return logits

    hook = backend.model.lm_head.register_forward_hook(third_token_ends_the_turn)
    try:
        ended = ask("hi", max_new_tokens=200)
        reply(backend, ended)
    finally:
        hook.remove()
    assert (ended.outcome.tokens, ended.outcome.finish) == (3, "stop")  # two tokens of text and <|end|>
