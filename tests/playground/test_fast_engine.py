"""The batched fast path against plain generate, on the CPU: same greedy tokens, join/leave, cancel."""

import threading

import pytest
import torch

from playground.backends import ChatRequest, Outcome, SamplingParams, collect
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
    return collect(backend.stream(request))[0]


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


def rows(n: int, **values) -> dict:
    """Sampling values for `n` rows, as the engine keeps them on the device."""
    import torch

    defaults = {"temperature": 1.0, "top_k": 0, "top_p": 1.0, "penalty": 1.0, "seed": 0}
    out = {k: torch.full((n,), float(values.get(k, v))) for k, v in defaults.items()}
    out["top_k"], out["seed"] = out["top_k"].long(), out["seed"].long()
    out["draw"] = torch.arange(n)  # row i is the i-th draw of one request
    return out


def test_top_k_and_top_p_keep_only_the_tokens_they_should():
    import torch

    from playground.backends.fast import sample

    logits = torch.full((300, 64), -1e9)
    logits[:, [5, 6, 7]] = torch.tensor([0.5, 0.3, 0.2]).log()
    seen = torch.zeros(300, 64, dtype=torch.bool)
    cases = {"top-k 2": {"top_k": 2}, "top-p 0.6": {"top_p": 0.6}, "top-p 0.4": {"top_p": 0.4}}
    drawn = {name: sample(logits, seen, **rows(300, **values)).tolist() for name, values in cases.items()}
    assert set(drawn["top-k 2"]) == {5, 6}
    assert set(drawn["top-p 0.6"]) == {5, 6}  # 0.5 is not enough, 0.5 + 0.3 is
    assert set(drawn["top-p 0.4"]) == {5}  # the first token alone
    share = drawn["top-k 2"].count(5) / 300
    assert 0.5 < share < 0.75  # 0.5 / 0.8 = 0.625 after top-k renormalises


def test_sampling_draws_from_the_distribution_and_a_row_never_depends_on_its_neighbours():
    import torch

    from playground.backends.fast import sample

    probs = torch.tensor([0.1, 0.2, 0.3, 0.4])
    n = 4000
    logits, seen = probs.log().expand(n, 4).clone(), torch.zeros(n, 4, dtype=torch.bool)
    counts = torch.bincount(sample(logits, seen, **rows(n, seed=11)), minlength=4) / n
    assert (counts - probs).abs().max() < 0.03
    alone = sample(logits[:1], seen[:1], **{k: v[7:8] for k, v in rows(n, seed=11).items()})
    crowd = sample(logits[:50], seen[:50], **{**rows(50, seed=11), "draw": torch.full((50,), 7)})
    assert (crowd == alone).all()  # the same (seed, draw) gives the same token, whatever the batch
    other_seed = sample(logits, seen, **rows(n, seed=12))
    assert (other_seed != sample(logits, seen, **rows(n, seed=11))).float().mean() > 0.5


def test_repetition_penalty_and_greedy_rows_sit_beside_sampled_ones():
    import torch

    from playground.backends.fast import sample

    logits = torch.tensor([[2.0, 1.9, -1.0, -1.1]] * 2)
    seen = torch.tensor([[True, False, False, False], [True, False, True, False]])
    values = rows(2, temperature=0.0, penalty=1.2)
    assert sample(logits, seen, **values).tolist() == [1, 1]  # 2.0 / 1.2 < 1.9
    values["penalty"] = torch.tensor([1.0, 2.0])
    logits = torch.tensor([[2.0, 1.9, -1.0, -1.1], [-5.0, -5.0, -1.0, -1.1]])
    assert sample(logits, seen, **values).tolist() == [0, 3]  # a seen negative logit is multiplied: -2 < -1.1
    values["temperature"] = torch.tensor([0.0, 1.0])
    values["top_k"] = torch.tensor([0, 1])
    assert sample(logits, seen, **values).tolist() == [0, 3]  # greedy row, and top-k 1 on a sampled row


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


def test_the_compiled_decode_step_gives_the_same_tokens_and_never_recompiles_once_warm(
    plain, tiny_checkpoint, monkeypatch, capsys
):
    """Each layer is one Inductor graph shared by every layer, compiled at start-up for every bucket, and
    the start says how long that took. On the CPU this is Inductor without CUDA graphs; on a GPU the
    same step is captured and replayed."""
    import functools

    from torch._dynamo.utils import counters

    import playground.backends.local as local

    monkeypatch.setattr(local, "FastEngine", functools.partial(local.FastEngine, compile=True))
    monkeypatch.setattr(local, "SLOW_BUCKET_S", 0)  # every bucket counts as slow: each is named as it is ready
    compiled = LocalBackend.from_pretrained(str(tiny_checkpoint), engine="fast", slots=2)
    engine = compiled.engine
    buckets = len(engine.batch_buckets) * len(engine.context_buckets)
    out = capsys.readouterr().out
    assert f"Fast engine: {buckets} (batch, context) buckets compiled in " in out
    named = [line.split(" ready after ")[0] for line in out.splitlines() if line.startswith("Fast engine: batch ")]
    assert named == [
        f"Fast engine: batch {b}, context {n}" for b in engine.batch_buckets for n in engine.context_buckets
    ]
    graphs = counters["stats"]["unique_graphs"]
    assert reply(compiled, ask(PROMPTS[0])) == reply(plain, ask(PROMPTS[0]))
    assert together(compiled, [ask(PROMPTS[1]), ask(PROMPTS[3], max_new_tokens=90)]) == [
        reply(plain, ask(PROMPTS[1])),
        reply(plain, ask(PROMPTS[3], max_new_tokens=90)),
    ]
    assert counters["stats"]["unique_graphs"] == graphs  # every (batch, context) bucket was ready


def watch_runs(engine, monkeypatch) -> list[tuple[str, object]]:
    """Records, in order, each packed prefill (its pieces' spans) and each decode step's batch size."""
    events: list[tuple[str, object]] = []
    prefill, run = engine.prefill, engine.run

    def watched_prefill(pieces):
        events.append(("prefill", [(id(job), a, b) for job, a, b in pieces]))
        return prefill(pieces)

    def watched_run(batch, length):
        events.append(("decode", batch))
        run(batch, length)

    monkeypatch.setattr(engine, "prefill", watched_prefill)
    monkeypatch.setattr(engine, "run", watched_run)
    return events


@pytest.fixture
def roomy(tiny_checkpoint):
    """An engine of 8 slots that prefills at most 16 tokens per iteration, over its own model."""
    from playground.backends.fast import FastEngine
    from playground.template import stop_ids

    backend = LocalBackend.from_pretrained(str(tiny_checkpoint), engine="plain")
    backend.engine = FastEngine(backend.model, stop_ids(backend.tokenizer), slots=8, prefill_tokens=16)
    return backend


def test_a_step_decodes_only_the_live_conversations_padded_to_a_power_of_two(plain, roomy, monkeypatch):
    events = watch_runs(roomy.engine, monkeypatch)
    short, long = ask("hi", max_new_tokens=3), ask("hello there", max_new_tokens=30)
    assert together(roomy, [short, long]) == [
        reply(plain, ask("hi", max_new_tokens=3)),
        reply(plain, ask("hello there", max_new_tokens=30)),
    ]
    batches = [batch for kind, batch in events if kind == "decode"]
    assert set(batches) <= {1, 2} and batches[-1] == 1  # never the 8 slots; alone again: a batch of one
    assert reply(roomy, ask("hello")) == reply(plain, ask("hello"))
    assert roomy.engine.busy() == 0


def test_waiting_prompts_are_prefilled_together(plain, fast, monkeypatch):
    from playground.backends.fast import Job

    engine = fast.engine
    events = watch_runs(engine, monkeypatch)
    prompts = [fast.prepare(ask(text).messages, 40).input_ids for text in PROMPTS[:3]]
    jobs = [Job(ask(text), prompt) for text, prompt in zip(PROMPTS[:3], prompts, strict=True)]
    with engine.waiting.mutex:  # the idle engine waits on the queue: let it find all three at once
        engine.waiting.queue.extend(jobs[1:])
    engine.submit(jobs[0])
    replies = [fast.tokenizer.decode(list(job), skip_special_tokens=True) for job in jobs]
    assert events[0] == ("prefill", [(id(job), 0, len(job.prompt)) for job in jobs[1:] + jobs[:1]])
    assert replies == [reply(plain, ask(text)) for text in PROMPTS[:3]]


def test_prompts_that_arrive_while_nothing_decodes_share_one_batch_beyond_the_chunk_size(plain, roomy, monkeypatch):
    from playground.backends.fast import IDLE_PREFILL, Job

    engine = roomy.engine
    events = watch_runs(engine, monkeypatch)
    texts = PROMPTS[:2]
    jobs = [Job(ask(text), roomy.prepare(ask(text).messages, 40).input_ids) for text in texts]
    assert engine.prefill_tokens < sum(len(job.prompt) for job in jobs) <= engine.prefill_tokens * IDLE_PREFILL
    with engine.waiting.mutex:  # the idle engine waits on the queue: let it find both at once
        engine.waiting.queue.extend(jobs[1:])
    engine.submit(jobs[0])
    replies = [roomy.tokenizer.decode(list(job), skip_special_tokens=True) for job in jobs]
    assert events[0] == ("prefill", [(id(job), 0, len(job.prompt)) for job in jobs[1:] + jobs[:1]])
    assert replies == [reply(plain, ask(text)) for text in texts]


def test_a_long_prompt_is_prefilled_in_chunks_between_decode_steps(plain, roomy, monkeypatch):
    stops = roomy.tokenizer.convert_tokens_to_ids(["<|end|>", "<|endoftext|>"])
    hooks = [
        backend.model.lm_head.register_forward_hook(lambda m, i, out: out.index_fill_(-1, torch.tensor(stops), -1e9))
        for backend in (plain, roomy)
    ]
    try:
        events = watch_runs(roomy.engine, monkeypatch)
        running, long_text = ask("hi", max_new_tokens=150), "Explain `sorted` in detail " * 6
        first = threading.Event()
        pieces: list[str | Outcome] = []

        def consume():
            for piece in roomy.stream(running):
                pieces.append(piece)
                first.set()

        thread = threading.Thread(target=consume)
        thread.start()
        first.wait(timeout=60)
        long = ask(long_text, max_new_tokens=5)
        answer = reply(roomy, long)
        thread.join(timeout=120)
        assert answer == reply(plain, ask(long_text, max_new_tokens=5))
        assert collect(pieces)[0] == reply(plain, ask("hi", max_new_tokens=150))
    finally:
        for hook in hooks:
            hook.remove()
    chunks = [i for i, (kind, spans) in enumerate(events) if kind == "prefill" and spans[0][1] > 0]
    assert len(chunks) >= 3  # a 60-odd token prompt in pieces of at most 16
    between = events[chunks[0] - 1 : chunks[-1]]
    assert sum(kind == "decode" for kind, _ in between) >= len(chunks)  # the running stream kept going


def test_text_is_made_from_token_ids_outside_the_decode_thread(fast, monkeypatch):
    threads = set()
    decode = fast.tokenizer.decode

    def watched(*args, **kwargs):
        threads.add(threading.current_thread().name)
        return decode(*args, **kwargs)

    monkeypatch.setattr(fast.tokenizer, "decode", watched)
    assert reply(fast, ask("hello", max_new_tokens=12))
    assert threads and "starchat-batch" not in threads


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
    _, cut = collect(backend.stream(ask("Explain `sorted` in detail", max_new_tokens=1)))
    assert (cut.tokens, cut.finish) == (1, "length")

    end = backend.tokenizer.convert_tokens_to_ids("<|end|>")
    calls = []

    def third_token_ends_the_turn(module, inputs, logits):
        calls.append(1)
        if len(calls) == 3:  # the prefill gives the first token, each decode step the next
            logits[..., end] = 1e4
        return logits

    hook = backend.model.lm_head.register_forward_hook(third_token_ends_the_turn)
    try:
        _, ended = collect(backend.stream(ask("hi", max_new_tokens=200)))
    finally:
        hook.remove()
    assert (ended.tokens, ended.finish) == (3, "stop")  # two tokens of text and <|end|>


def test_closing_lets_the_requests_in_flight_finish_then_ends_the_thread_and_refuses_more(plain, tiny_checkpoint):
    from playground.backends import BackendError
    from playground.backends.fast import Job

    backend = LocalBackend.from_pretrained(str(tiny_checkpoint), engine="fast", slots=2)
    engine = backend.engine
    request = ask(PROMPTS[0], max_new_tokens=20)
    job = Job(request, backend.prepare(request.messages, 20).input_ids)
    engine.submit(job)
    engine.close()
    expected = reply(plain, ask(PROMPTS[0], max_new_tokens=20))
    assert backend.tokenizer.decode(list(job), skip_special_tokens=True) == expected
    assert job.finish in ("stop", "length") and not engine.thread.is_alive()
    with pytest.raises(BackendError, match="closed"):
        engine.submit(Job(ask("hi"), job.prompt))
