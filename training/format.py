"""Messages -> input_ids/labels through playground.template: the chat tokens, loss masks, packing."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import torch

from playground.template import CHAT_TEMPLATE, CONTROL_TOKENS, EOS, Message, control_ids, encode_pieces

IGNORE = -100  # the label the loss skips


def add_chat_tokens(tokenizer) -> int:
    """Adds the control tokens (in the format's order) and the chat template; returns how many were new."""
    added = tokenizer.add_special_tokens(
        {"extra_special_tokens": list(CONTROL_TOKENS)}, replace_extra_special_tokens=False
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    if tokenizer.pad_token is None:
        tokenizer.pad_token = EOS
    return added


def tokenize_dialogue(tokenizer, messages: Sequence[Message], train_on: str = "assistant") -> dict[str, list[int]]:
    """A whole dialogue and its <|endoftext|>; labels are the ids where the loss counts, else IGNORE.

    train_on="assistant": the assistant's text and its <|end|>; "all": every token.
    """
    if train_on not in ("assistant", "all"):
        raise ValueError(f"train_on must be 'assistant' or 'all', got {train_on!r}")
    input_ids: list[int] = []
    labels: list[int] = []
    for piece, ids in encode_pieces(tokenizer, messages, add_generation_prompt=False):
        input_ids += ids
        labels += ids if train_on == "all" or piece.trained else [IGNORE] * len(ids)
    eos = control_ids(tokenizer)[EOS]
    input_ids.append(eos)
    labels.append(eos if train_on == "all" else IGNORE)
    return {"input_ids": input_ids, "labels": labels}


def pack(examples: Iterable[dict[str, list[int]]], block_size: int) -> Iterator[dict[str, list[int]]]:
    """Concatenates dialogues and cuts blocks of block_size; the last, shorter block is kept."""
    ids: list[int] = []
    labels: list[int] = []
    for example in examples:
        ids += example["input_ids"]
        labels += example["labels"]
        while len(ids) >= block_size:
            yield {"input_ids": ids[:block_size], "labels": labels[:block_size]}
            ids, labels = ids[block_size:], labels[block_size:]
    if ids:
        yield {"input_ids": ids, "labels": labels}


@dataclass(frozen=True)
class Collator:
    """Pads a batch on the right; padding is masked from attention and loss."""

    pad_token_id: int

    def __call__(self, features: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        width = max(len(f["input_ids"]) for f in features)
        batch = {"input_ids": [], "labels": [], "attention_mask": []}
        for f in features:
            pad = width - len(f["input_ids"])
            batch["input_ids"].append(f["input_ids"] + [self.pad_token_id] * pad)
            batch["labels"].append(f["labels"] + [IGNORE] * pad)
            batch["attention_mask"].append([1] * len(f["input_ids"]) + [0] * pad)
        return {k: torch.tensor(v) for k, v in batch.items()}
