"""A tiny StarChat model from nothing but this machine: dialogues, a BPE tokenizer, a GPTBigCode config.

This is what the `tiny` recipe trains and the playground's offline demo serves. The dialogues
are questions about Python answered from the local interpreter's own docstrings, plus
hand-written answers to the playground's example prompts.
"""

from __future__ import annotations

import builtins
import functools
import inspect
import itertools
import json
import math
import os
import random
import re
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GPTBigCodeConfig, GPTBigCodeForCausalLM, PreTrainedTokenizerFast

from playground.template import EOS, Message, render
from training.format import add_chat_tokens

TAUGHT = {
    "How can I write a Python function to generate the nth Fibonacci number?": (
        "You can compute the nth Fibonacci number with a loop:\n\n```python\ndef fibonacci(n):\n"
        "    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a\n```\n\n"
        "`fibonacci(10)` returns 55. The loop keeps the last two numbers, so it runs in O(n) time."
    ),
    "How do I get the current date using shell commands? Explain how it works.": (
        "Use the `date` command:\n\n```bash\ndate +%Y-%m-%d\n```\n\n"
        "`date` prints the current date and time; the `+` format string picks the fields: "
        "`%Y` is the year, `%m` the month and `%d` the day."
    ),
    "How do I reverse a list in Python?": (
        "Use slicing or the `reverse` method:\n\n```python\nnumbers = [1, 2, 3]\n"
        "print(numbers[::-1])  # a new reversed list\nnumbers.reverse()  # reverses in place\n```"
    ),
    "Write a Python function that checks whether a string is a palindrome.": (
        "A string is a palindrome when it reads the same backwards:\n\n```python\n"
        "def is_palindrome(text):\n    text = text.lower()\n    return text == text[::-1]\n```\n\n"
        '`is_palindrome("Level")` returns `True`.'
    ),
    "How do I sort a list in Python?": (
        "You can sort a list in Python by using the `sort()` method:\n\n```python\n"
        "numbers = [3, 1, 4, 1, 5]\nnumbers.sort()\nprint(numbers)\n```\n\n"
        "This sorts the list in place. `sorted(numbers)` returns a new sorted list instead."
    ),
}
TAUGHT_REPEATS = 24  # the demo must answer its own example prompts; they are a few rows among hundreds

DOCUMENTED = [builtins, str, list, dict, set, json, os.path, itertools, math, functools]
QUESTIONS = ["What does `{name}` do in Python?", "Explain `{name}`.", "How do I use `{name}`?"]


def python_doc_dialogues(limit: int = 200, seed: int = 0) -> list[list[Message]]:
    """Question/answer pairs built from this interpreter's docstrings (deterministic)."""
    entries = []
    for module in DOCUMENTED:
        prefix = "" if module is builtins else module.__name__ + "."
        for attr in sorted(dir(module)):
            obj = getattr(module, attr)
            doc = inspect.getdoc(obj) if callable(obj) and not attr.startswith("_") else None
            if doc:
                entries.append((prefix + attr, doc.split("\n\n")[0].strip()[:300]))
    rng = random.Random(seed)
    rng.shuffle(entries)
    dialogues = []
    for i, (name, summary) in enumerate(entries[:limit]):
        question = QUESTIONS[i % len(QUESTIONS)].format(name=name)
        answer = f"`{name}`: {summary}\n\n```python\nhelp({name})\n```"
        dialogues.append([{"role": "user", "content": question}, {"role": "assistant", "content": answer}])
    return dialogues


def builtin_rows(name: str) -> list[dict]:
    if name != "python-docs":
        raise ValueError(f"unknown builtin dataset {name!r}; there is 'builtin:python-docs'")
    taught = [
        [{"role": "user", "content": q}, {"role": "assistant", "content": a}] for q, a in TAUGHT.items()
    ] * TAUGHT_REPEATS
    return [{"messages": m} for m in taught + python_doc_dialogues()]


MAX_WORD = 1000
LONG_WORD = re.compile(rf"\S{{{MAX_WORD + 1},}}")


def train_tokenizer(texts: list[str], vocab_size: int, chat_tokens: bool = True) -> PreTrainedTokenizerFast:
    """A byte-level BPE like StarCoder's, with <|endoftext|> as id 0 and (chat_tokens) the chat tokens after it."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,  # it takes well under a second; in a terminal its four bars would be noise
    )
    # The trainer's time grows with the square of a word's length: a megabyte without a space never ends.
    tokenizer.train_from_iterator((LONG_WORD.sub(lambda m: m[0][:MAX_WORD], text) for text in texts), trainer)
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token=EOS, eos_token=EOS, unk_token=EOS, pad_token=EOS
    )
    if chat_tokens:
        add_chat_tokens(wrapped)
    return wrapped


SCRATCH_POSITIONS = 1024


def build_base(
    dialogues: list[list[Message]],
    output_dir: str | Path,
    *,
    vocab_size: int = 2048,
    n_layer: int = 2,
    n_embd: int = 192,
    n_head: int = 4,
    n_positions: int = SCRATCH_POSITIONS,
    seed: int = 42,
    chat_tokens: bool = True,
) -> Path:
    """An untrained GPTBigCode (multi-query, like StarCoder) and its tokenizer, saved to output_dir.

    chat_tokens=False makes a base like StarCoderPlus, whose vocabulary training extends.
    """
    import torch

    texts = [render(d, add_generation_prompt=False) for d in dialogues]
    tokenizer = train_tokenizer(texts, vocab_size, chat_tokens)
    config = GPTBigCodeConfig(
        vocab_size=len(tokenizer),
        n_positions=n_positions,
        n_embd=n_embd,
        n_layer=n_layer,
        n_head=n_head,
        multi_query=True,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        # The tokenizer pads with <|endoftext|>; said here, the Trainer need not align the config (and warn).
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = GPTBigCodeForCausalLM(config)
    model.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    return Path(output_dir)
