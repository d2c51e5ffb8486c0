"""Messages -> input_ids/labels through playground.template: the chat tokens, loss masks, the length rule, packing."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import chain
from typing import TYPE_CHECKING

import torch

from playground.template import CHAT_TEMPLATE, CONTROL_TOKENS, EOS, Message, control_ids, encode_pieces, split_system

if TYPE_CHECKING:
    import datasets

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


def fit_dialogue(
    tokenizer, messages: Sequence[Message], block_size: int, train_on: str = "assistant"
) -> tuple[dict[str, list[int]] | None, bool]:
    """`tokenize_dialogue` within block_size tokens, and whether the dialogue had to be cut.

    The rule: a dialogue longer than block_size keeps its system prompt and its exchanges up to the
    last whole assistant turn that fits, so it ends as every dialogue ends (`<|end|>\n<|endoftext|>`);
    one whose first exchange alone does not fit is dropped (None).
    """
    _, turns = split_system(messages)
    head = list(messages[: len(messages) - len(turns)])
    for keep in range(len(turns), 0, -2):  # validated dialogues are user/assistant pairs
        example = tokenize_dialogue(tokenizer, head + list(turns[:keep]), train_on)
        if len(example["input_ids"]) <= block_size:
            return example, keep < len(turns)
    return None, True


def pack_blocks(examples: list[dict[str, list[int]]], block_size: int) -> datasets.Dataset:
    """Whole dialogues into blocks of at most block_size tokens (best fit decreasing, TRL's packer).

    Each block keeps `seq_lengths`, its dialogues' lengths, for PackedCollator. Dialogues must
    already fit (fit_dialogue): TRL would cut a longer one without saying so.
    """
    # Imported here: only training packs, the benchmark (on a GPU image without them) builds its own blocks.
    import datasets
    from trl.data_utils import pack_dataset

    if too_long := [len(e["input_ids"]) for e in examples if len(e["input_ids"]) > block_size]:
        raise ValueError(f"{len(too_long)} dialogue(s) longer than block_size {block_size}: fit them first")
    rows = datasets.Dataset.from_list([{"input_ids": e["input_ids"], "labels": e["labels"]} for e in examples])
    return pack_dataset(rows, block_size, strategy="bfd", map_kwargs={"load_from_cache_file": False})


@dataclass(frozen=True)
class PackedCollator:
    """Packed blocks in which every dialogue attends only to itself.

    Position ids restart at each dialogue and no attention mask is passed, so transformers builds a
    block-diagonal causal mask from them (sdpa, eager, flex attention); the model must not use a KV
    cache while training (load_model turns it off), or transformers ignores the packing. The first
    token of each dialogue gets no label: the previous dialogue's last token must not learn to
    predict it. By default each block is a row and a shorter block is padded at its end (the padding
    is a sequence of its own, outside the loss): transformers' DataCollatorWithFlattening and TRL's
    padding-free collator put the whole batch in one row, which makes SDPA's masked attention grow
    with the square of the batch's tokens. `flatten=True` makes that one row, no padding at all: what
    flash attention needs, as it finds the dialogues in the position ids of a single row only.
    """

    pad_token_id: int
    flatten: bool = False

    def __call__(self, features: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        rows = []
        for f in features:
            labels, positions, start = list(f["labels"]), [], 0
            for length in f["seq_lengths"]:
                labels[start] = IGNORE
                positions += range(length)
                start += length
            rows.append((list(f["input_ids"]), labels, positions))
        if self.flatten:
            rows = [tuple(list(chain.from_iterable(row[i] for row in rows)) for i in range(3))]
        width = max(len(ids) for ids, _, _ in rows)
        batch = {"input_ids": [], "labels": [], "position_ids": []}
        for ids, labels, positions in rows:
            pad = width - len(ids)
            batch["input_ids"].append(ids + [self.pad_token_id] * pad)
            batch["labels"].append(labels + [IGNORE] * pad)
            batch["position_ids"].append(positions + list(range(pad)))
        return {k: torch.tensor(v) for k, v in batch.items()}


def pack(examples: Iterable[dict[str, list[int]]], block_size: int) -> Iterator[dict[str, list[int]]]:
    """StarChat's packing: concatenates dialogues and cuts blocks of block_size under one causal mask.

    Dialogues in a block attend to each other; PackedCollator's packing keeps them apart. The last,
    shorter block is kept.
    """
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
