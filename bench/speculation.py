"""The workloads of bench.generate's speculative rows: prompts and sampling values, each run through the fast
engine without drafts and with them, in the same run; alone, edit on a trained checkpoint's own text.

    python -m bench.speculation --model DIR     # edit in the chat format, DIR's tokenizer, on the CPU

- edit: a code file (323 tokens; 355 with the request) in the prompt, asked back with a rename; greedy.
- echo: a prompt, the engine's own greedy reply to it, the prompt again; greedy: the ceiling.
- no match: prompts of distinct tokens, sampled at temperature 1: nothing to copy, the cost of trying.

The model has random weights and no tokenizer: the file is cut into words, runs of spaces and single
signs, each piece an id, about as a code tokenizer cuts it. Random weights do not copy a file as a trained
model does; their greedy replies fall into loops of their own, where most of edit's and echo's drafts
are kept.
"""

from __future__ import annotations

import argparse
import re
import time

import torch

from bench.common import device_name, emit
from playground.backends import ChatRequest, SamplingParams
from playground.backends.fast import FastEngine, Job
from playground.backends.local import LocalBackend

EDIT_FILE = '''"""Word counts for a folder of text files."""

import collections
import pathlib


def tally(path: pathlib.Path) -> collections.Counter:
    """Counts each word of one file, lower-cased."""
    counts = collections.Counter()
    for line in path.read_text().splitlines():
        for word in line.split():
            counts[word.strip(".,;:!?").lower()] += 1
    return counts


def tally_folder(folder: pathlib.Path) -> collections.Counter:
    """Counts each word of every text file in a folder."""
    total = collections.Counter()
    for path in sorted(folder.glob("*.txt")):
        total.update(tally(path))
    return total


def most_common(folder: pathlib.Path, n: int = 10) -> list[tuple[str, int]]:
    """The n most common words of a folder, with their counts."""
    return tally_folder(folder).most_common(n)
'''
ASK = "Rename `tally` to `count_words` in this file and give the whole file back:\n\n"
PIECES = re.compile(r"\w+|\n *| +|\S")
GREEDY = {"temperature": 0.0, "top_p": 1.0, "top_k": 0, "repetition_penalty": 1.0}
SAMPLED = {"temperature": 1.0, "top_p": 1.0, "top_k": 0, "repetition_penalty": 1.0}


def pieces(text: str, vocab: int) -> list[int]:
    """The text as ids, one per word, run of spaces or sign; ids in order of first appearance, from 1."""
    ids: dict[str, int] = {}
    return [ids.setdefault(piece, len(ids) % (vocab - 1) + 1) for piece in PIECES.findall(text)]


def greedy_replies(engine: FastEngine, prompts: list[list[int]], new: int) -> list[list[int]]:
    jobs = [Job(ChatRequest([], SamplingParams(max_new_tokens=new, **GREEDY)), prompt) for prompt in prompts]
    for job in jobs:
        engine.submit(job)
    return [list(job) for job in jobs]


def workloads(engine: FastEngine, streams: int, prompt_len: int, new: int) -> dict[str, tuple[torch.Tensor, dict]]:
    """name -> (prompts [streams, tokens], sampling values) for each workload."""
    vocab, device = engine.model.config.vocab_size, engine.device
    edit = torch.tensor([pieces(ASK + EDIT_FILE, vocab)] * streams, device=device)
    starts = torch.randint(1, vocab, (streams, prompt_len)).tolist()
    echo = [start + reply + start for start, reply in zip(starts, greedy_replies(engine, starts, new), strict=True)]
    distinct = torch.stack([torch.randperm(vocab - 1)[:prompt_len] + 1 for _ in range(streams)])
    return {
        "edit": (edit, GREEDY),
        "echo": (torch.tensor(echo, device=device), GREEDY),
        "no match": (distinct.to(device), SAMPLED),
    }


def longest_prompt(prompt_len: int, new: int) -> int:
    """The most tokens a workload's prompt holds, for the engine's context."""
    return max(len(pieces(ASK + EDIT_FILE, 2**31)), 2 * prompt_len + new)


def on_real_text(backend: LocalBackend, streams: int, speculate: int, new: int) -> dict:
    """The edit request as a person sends it, greedy, to `streams` conversations at once: tok/s (from the
    request to its last token), the share of drafts kept, tokens per row per step."""
    engine = backend.engine
    messages = [{"role": "user", "content": f"{ASK}```python\n{EDIT_FILE}```"}]
    prompt = backend.prepare(messages, new).input_ids
    jobs = [Job(ChatRequest([], SamplingParams(max_new_tokens=new, **GREEDY)), prompt) for _ in range(streams)]
    engine.speculate = speculate
    engine.stats.__init__()
    start = time.perf_counter()
    for job in jobs:
        engine.submit(job)
    tokens = sum(len(list(job)) for job in jobs)
    seconds, stats = time.perf_counter() - start, engine.stats
    return {
        "prompt": len(prompt),
        "tokens": tokens,
        "tok_s": tokens / seconds,
        "acceptance": stats.accepted / stats.drafted if stats.drafted else 0.0,
        "tokens_per_step": (stats.row_steps + stats.accepted) / max(stats.row_steps, 1),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="a served checkpoint's folder (e.g. the demo model's)")
    parser.add_argument("--speculate", type=int, default=4, help="draft tokens a row verifies per step")
    parser.add_argument("--new", type=int, default=512, help="new tokens at most")
    parser.add_argument("--streams", default="1,8", help="comma-separated stream counts")
    args = parser.parse_args(argv)
    streams = [int(s) for s in args.streams.split(",")]
    backend = LocalBackend.from_pretrained(args.model, engine="fast", slots=max(streams), speculate=args.speculate)
    device = device_name(backend.engine.device)
    for n in streams:
        plain = on_real_text(backend, n, 0, args.new)
        for drafts, run in ((0, plain), (args.speculate, on_real_text(backend, n, args.speculate, args.new))):
            path = "ours: fast engine, edit, real text" + (f", speculate {drafts}" if drafts else "")
            emit(
                {
                    "bench": "speculation",
                    "path": path,
                    "device": device,
                    "streams": n,
                    **run,
                    "vs_plain": run["tok_s"] / plain["tok_s"],
                }
            )
    backend.engine.close()


if __name__ == "__main__":
    main()
