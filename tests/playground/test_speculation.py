"""Prompt-lookup speculation in the fast engine, on the CPU: drafts, the same replies as without it (greedy and
sampled, seed for seed), the distribution of sampled tokens, stops and limits inside a kept run, the counters."""

from collections import Counter

import pytest
import torch
from transformers import GPTBigCodeConfig, GPTBigCodeForCausalLM
from transformers.generation.logits_process import (
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from playground.backends import ChatRequest, SamplingParams
from playground.backends.fast import FastEngine, Job
from playground.backends.fast.speculation import Lookup, accepted, seen_before
from playground.settings import Settings

GREEDY = {"temperature": 0.0, "repetition_penalty": 1.0}


def random_model(vocab: int, scale: float, seed: int = 0) -> GPTBigCodeForCausalLM:
    """A tiny GPTBigCode with random weights; at a large `scale` its greedy replies fall into loops, so drafts
    are often right, and as often wrong."""
    torch.manual_seed(seed)
    config = GPTBigCodeConfig(
        vocab_size=vocab, n_positions=128, n_embd=32, n_layer=2, n_head=2, multi_query=True, initializer_range=scale
    )
    return GPTBigCodeForCausalLM(config).eval()


@pytest.fixture(scope="module")
def model():
    return random_model(vocab=64, scale=0.2)


@pytest.fixture(scope="module")
def plain(model):
    engine = FastEngine(model, stop_ids=[], slots=3)
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def speculative(model):
    engine = FastEngine(model, stop_ids=[], slots=3, speculate=4)
    yield engine
    engine.close()


def replies(engine: FastEngine, prompts: list[list[int]], limits: list[int] | None = None, **params) -> list[list[int]]:
    """Every prompt submitted at once (more than the slots: rows join as others leave), each reply's ids."""
    params = {**GREEDY, **params}
    limits = limits or [30] * len(prompts)
    jobs = [
        Job(ChatRequest([], SamplingParams(max_new_tokens=n, **params)), prompt)
        for prompt, n in zip(prompts, limits, strict=True)
    ]
    for job in jobs:
        engine.submit(job)
    return [list(job) for job in jobs]


def random_prompts(count: int, vocab: int, seed: int) -> list[list[int]]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(1, vocab, (int(n),), generator=generator).tolist() for n in range(3, 3 + 4 * count, 4)]


def echo(engine: FastEngine, prompts: list[list[int]]) -> list[list[int]]:
    """Each prompt, its greedy reply, the prompt again: the reply to that is mostly the same reply."""
    return [p + r + p for p, r in zip(prompts, replies(engine, prompts), strict=True)]


def test_a_draft_follows_the_most_recent_earlier_match_of_the_longest_run_of_newest_tokens():
    assert Lookup([1, 2, 3, 9, 1, 2, 3, 7, 8, 5, 2, 3]).draft(3) == [7, 8, 5]  # (2, 3) last seen before 7
    assert Lookup([4, 1, 2, 3, 9, 9, 1, 2, 3, 6, 2, 3, 1, 2, 3]).draft(2) == [6, 2]  # 3 tokens before 2
    assert Lookup([5, 6, 7, 8, 6]).draft(4) == [7, 8, 6, 7]  # the continuation reaches the newest token: it repeats
    assert Lookup([7, 7, 7]).draft(3) == [7, 7, 7]
    assert Lookup([1, 2, 3, 4]).draft(4) == [] and Lookup([3]).draft(2) == []  # nothing earlier to match
    lookup = Lookup([1, 2, 3])
    lookup.add(1)
    assert lookup.draft(5) == [2, 3, 1, 2, 3] and lookup.draft(0) == [] and lookup.draft(-1) == []


def test_a_row_keeps_its_drafts_while_each_is_the_token_sampled_before_it():
    targets = torch.tensor([[4, 5, 6, 7], [4, 9, 6, 7], [1, 5, 6, 7], [4, 5, 6, 7]])
    drafts = torch.tensor([[4, 5, 6], [4, 5, 6], [4, 5, 6], [4, 5, 6]])
    assert accepted(targets, drafts, torch.tensor([3, 3, 3, 1])).tolist() == [3, 1, 0, 1]  # the last: 1 drafted
    seen = seen_before(torch.tensor([[True, False, False, False]]), torch.tensor([[2, 3]]))
    assert seen[0].tolist() == [[True, False, False, False], [True, False, True, False], [True, False, True, True]]


def test_greedy_replies_are_token_for_token_those_without_speculation(plain, speculative):
    looping = [[5, 6, 7, 8] * 6, [9] * 12, list(range(1, 40))]  # a pattern, a run, no token twice
    prompts = random_prompts(8, 64, seed=1) + looping
    prompts += echo(plain, random_prompts(4, 64, seed=2))
    limits = [30, 7, 25, 3, 12, 30, 1, 9, 30, 30, 30, 30, 30, 20, 2]
    speculative.stats.__init__()
    assert replies(speculative, prompts, limits) == replies(plain, prompts, limits)
    stats = speculative.stats
    assert 0 < stats.accepted < stats.drafted  # drafts were kept and drafts were refused
    assert speculative.busy() == 0


def test_an_echoed_reply_takes_more_than_one_token_a_step():
    """At a small scale the tied embedding decides each greedy token from the one before: an echoed reply
    repeats what the prompt holds, and almost every draft is right."""
    model = random_model(vocab=64, scale=0.02)
    plain, speculative = (FastEngine(model, stop_ids=[], slots=1, speculate=n) for n in (0, 4))
    try:
        prompts = echo(plain, random_prompts(1, 64, seed=3))
        assert replies(speculative, prompts) == replies(plain, prompts)
    finally:
        plain.close()
        speculative.close()
    stats = speculative.stats
    assert stats.accepted / stats.drafted > 0.8
    assert (stats.row_steps + stats.accepted) / stats.row_steps > 3 and plain.stats.steps > 3 * stats.steps


def test_nothing_to_copy_means_plain_steps(speculative, monkeypatch):
    widths = []
    run = speculative.run
    monkeypatch.setattr(speculative, "run", lambda batch, length, width=1: widths.append(width) or run(batch, length))
    speculative.stats.__init__()
    replies(speculative, [list(range(1, 30))], [1])
    assert speculative.stats.drafted == 0 and widths == []  # the prefill's token alone


def test_a_stop_token_or_the_limit_inside_a_kept_run_ends_the_reply_where_it_would_without(model, plain, speculative):
    prompts = echo(plain, random_prompts(3, 64, seed=4))
    full = replies(plain, prompts)
    limits = [1, 2, 3, 4, 5, 6, 8, 11, 13, 17]
    for prompt, reply in zip(prompts, full, strict=True):
        assert replies(speculative, [prompt] * len(limits), limits) == [reply[:n] for n in limits]
    stop = full[0][7]  # inside a run the echo drafts
    ends = [FastEngine(model, stop_ids=[stop], slots=2, speculate=speculate) for speculate in (0, 4)]
    try:
        stopped = [replies(engine, prompts[:1])[0] for engine in ends]
        assert stopped[0] == stopped[1] == full[0][: full[0].index(stop) + 1]
        assert ends[1].stats.accepted > 0
    finally:
        for engine in ends:
            engine.close()


SAMPLED = [
    {"temperature": 1.0},
    {"temperature": 0.7, "top_k": 5},
    {"temperature": 1.2, "top_p": 0.8, "repetition_penalty": 1.3},
]


@pytest.mark.parametrize("params", SAMPLED, ids=["plain", "top-k", "top-p and penalty"])
def test_sampled_replies_are_those_without_speculation_for_the_same_seed(plain, speculative, params):
    prompts = [*echo(plain, random_prompts(3, 64, seed=5)), [5, 6, 7, 8] * 6]
    for seed in (1, 2):
        once = replies(speculative, prompts, seed=seed, **params)
        assert once == replies(speculative, prompts, seed=seed, **params)  # the same seed, the same reply
        assert once == replies(plain, prompts, seed=seed, **params)
    assert replies(speculative, prompts, seed=3, **params) != once


def exact(model, prefix: list[int], params: dict) -> torch.Tensor:
    """The next token's probabilities after `prefix` as transformers' own processors make them."""
    ids = torch.tensor([prefix])
    with torch.inference_mode():
        scores = model(ids).logits[:, -1].float()
    for processor in (
        RepetitionPenaltyLogitsProcessor(params["repetition_penalty"]),
        TemperatureLogitsWarper(params["temperature"]),
        TopKLogitsWarper(params["top_k"]) if params["top_k"] else None,
        TopPLogitsWarper(params["top_p"]),
    ):
        scores = processor(ids, scores) if processor else scores
    return scores.softmax(-1)[0]


def test_the_first_sampled_tokens_follow_the_models_distribution():
    """3,000 replies of three tokens (the prefill's, then a verify step's), one seed each: the tokens after the
    first against transformers' probabilities, by a chi-square over the cells expected 5 times or more. With
    the prompt holding every token, every row has a draft."""
    vocab, count = 6, 3000
    model = random_model(vocab, scale=0.5, seed=1)
    params = {"temperature": 0.9, "top_k": 0, "top_p": 0.9, "repetition_penalty": 1.2}
    prompt = [1, 2, 3, 4, 5, 0, 1, 2, 3]
    engine = FastEngine(model, stop_ids=[], slots=8, speculate=3)
    try:
        jobs = [Job(ChatRequest([], SamplingParams(max_new_tokens=3, seed=s, **params)), prompt) for s in range(count)]
        for job in jobs:
            engine.submit(job)
        drawn = Counter(tuple(job) for job in jobs)
        stats = engine.stats
    finally:
        engine.close()
    assert stats.drafted >= count and stats.accepted > count / 10  # drafts kept and refused alike
    firsts = Counter(first for first, _, _ in drawn.elements())
    chi2, cells = 0.0, 0
    for first, n in firsts.items():
        after = exact(model, [*prompt, first], params)
        for second in range(vocab):
            third = exact(model, [*prompt, first, second], params)
            for last in range(vocab):
                expected = n * after[second].item() * third[last].item()
                if expected >= 5:
                    chi2 += (drawn[first, second, last] - expected) ** 2 / expected
                    cells += 1
    assert cells > 20
    assert chi2 < cells + 6 * (2 * cells) ** 0.5, (chi2, cells)  # six standard deviations of a chi-square


def test_speculate_is_a_setting_the_engine_gets(tiny_checkpoint, monkeypatch):
    import playground.backends.local as local
    from playground.backends.loading import load_backend

    assert Settings().speculate == 0 and Settings.from_args(["--speculate", "4"], env={}).speculate == 4
    assert Settings.from_args([], env={"STARCHAT_SPECULATE": "2"}).speculate == 2
    built = []
    monkeypatch.setattr(local, "FastEngine", lambda *args, **kwargs: built.append(kwargs) or None)
    load_backend(Settings(model=str(tiny_checkpoint), engine="fast", speculate=3))
    assert built[0]["speculate"] == 3


def test_speculate_says_at_start_up_whether_it_is_used(tiny_checkpoint, capsys):
    """On the CPU the default engine is plain generate, which does not draft: the setting says so rather
    than look as if it worked."""
    from playground.backends.loading import load_backend

    load_backend(Settings(model=str(tiny_checkpoint), speculate=3))
    assert "--speculate 3 is not used" in capsys.readouterr().out
    backend = load_backend(Settings(model=str(tiny_checkpoint), engine="fast", speculate=3))
    assert "drafts up to 3 tokens a step" in capsys.readouterr().out and backend.engine.speculate == 3
    load_backend(Settings(model=str(tiny_checkpoint)))
    assert "speculate" not in capsys.readouterr().out


def test_speculate_says_it_is_not_used_with_an_endpoint(tiny_checkpoint, capsys, monkeypatch):
    from playground.backends.endpoint import EndpointBackend
    from playground.backends.loading import load_backend

    monkeypatch.setattr(EndpointBackend, "connect", lambda *args: "the server's backend")
    settings = Settings(model=str(tiny_checkpoint), backend="endpoint", endpoint_url="http://127.0.0.1:9", speculate=4)
    assert load_backend(settings) == "the server's backend"
    assert "--speculate 4 is not used with --backend endpoint" in capsys.readouterr().out
