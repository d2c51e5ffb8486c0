"""HumanEval's prompts through `training.evaluate`'s own path on a StarCoderPlus-shaped model with random
weights: the fast engine answering every problem it can at once, beside the seed's way (plain generate, one
problem at a time).

    python -m bench.humaneval           # one GPU: the 164 problems, greedy, up to 512 new tokens
    python -m bench.humaneval --tiny    # a tiny model on the CPU, for the test suite

What is timed is generation through `Chat` and the backend, as `python -m training.evaluate` runs it; the
answers are not scored (random weights pass nothing). Random weights seldom end a reply, so most problems
decode their whole allowance: a real model's run is shorter. No Hub here: the tokenizer is a byte-level BPE
trained on the prompts, and the model takes its vocabulary (otherwise StarCoderPlus's shape). The seed's way
is timed on the first `--seed-problems` and its wall time for all problems projected from its tokens/s.
"""

from __future__ import annotations

import argparse
import asyncio
import time

import torch
from transformers import GPTBigCodeForCausalLM

from bench.common import device_name, emit, log_bucket, model_config
from playground.backends import BackendInfo
from playground.backends.fast import FastEngine
from playground.backends.local import LocalBackend
from playground.chat import Chat
from playground.sampling import SamplingParams
from playground.settings import Settings
from training.evaluate import Problem, answer_all, humaneval, instruction
from training.scratch import python_doc_dialogues, train_tokenizer


def random_model(tiny: bool, vocab: int, device: torch.device) -> GPTBigCodeForCausalLM:
    torch.manual_seed(0)
    config = model_config(tiny)
    config.vocab_size = vocab
    with torch.device(device):
        model = GPTBigCodeForCausalLM(config)
    return model.to(torch.bfloat16 if device.type == "cuda" else torch.float32).eval()


def tokenizer_for(problems: list[Problem], vocab: int):
    texts = [instruction(p) for p in problems] + [m["content"] for d in python_doc_dialogues() for m in d]
    return train_tokenizer(texts, vocab)


def run(backend: LocalBackend, problems: list[Problem], new: int) -> dict:
    """Answers every problem as `training.evaluate` does; the wall time, tokens and how the replies ended."""
    settings = Settings(max_new_tokens_limit=max(new, 1))
    chat = Chat({backend.info.model: backend}, settings)
    params = SamplingParams(temperature=0.0, top_p=1.0, top_k=0, max_new_tokens=new, repetition_penalty=1.0)
    answered = []

    async def keep(sample) -> None:
        answered.append(sample)

    start = time.perf_counter()
    asyncio.run(answer_all(chat, [(p, 0, 0) for p in problems], lambda _: params, keep))
    seconds = time.perf_counter() - start
    tokens = sum(s.tokens for s in answered)
    finishes = {f: sum(s.finish == f for s in answered) for f in sorted({s.finish for s in answered})}
    return {"problems": len(answered), "seconds": seconds, "tokens": tokens, "tok_s": tokens / seconds, **finishes}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="a tiny model on the CPU")
    parser.add_argument("--limit", type=int, default=0, help="the first N problems (164; 8 with --tiny)")
    parser.add_argument("--new", type=int, default=0, help="new tokens at most (512; 16 with --tiny)")
    parser.add_argument("--slots", type=int, default=0, help="the fast engine's batch slots (32; 4 with --tiny)")
    parser.add_argument("--seed-problems", type=int, default=2, help="problems the seed's way is timed on")
    args = parser.parse_args(argv)
    problems = humaneval(args.limit or (8 if args.tiny else 0))
    new = args.new or (16 if args.tiny else 512)
    slots = args.slots or (4 if args.tiny else 32)
    device = torch.device("cuda" if torch.cuda.is_available() and not args.tiny else "cpu")
    tokenizer = tokenizer_for(problems, 1024 if args.tiny else 8192)
    model = random_model(args.tiny, len(tokenizer), device)
    context = model.config.n_positions
    common = {"bench": "humaneval", "device": device_name(device), "new_tokens_max": new}
    seed = LocalBackend(model, tokenizer, BackendInfo("random", device_name(device), "none", context))
    plain = run(seed, problems[: args.seed_problems], new)
    projected = plain["seconds"] / plain["problems"] * len(problems)
    emit({**common, "path": "seed: generate, one problem at a time", **plain, "projected_all_s": projected})
    engine = FastEngine(model, stop_ids=seed.stop_ids, slots=slots, compile=not args.tiny, on_bucket=log_bucket)
    info = BackendInfo("random", device_name(device), "none", context, parallel=slots)
    ours = run(LocalBackend(model, tokenizer, info, engine=engine), problems, new)
    emit({**common, "path": "ours: fast engine", "slots": slots, "warm_up_s": engine.warm_up_s, **ours})
    engine.close()


if __name__ == "__main__":
    main()
