"""Preference pairs (a prompt, a chosen and a rejected reply) from TRL's formats and ultrafeedback_binarized's.

A row is read as one of:
- TRL's conversational format: `prompt` a list of messages ending with the user's, `chosen` and `rejected`
  lists holding the assistant's reply (what the playground's "Save preferences" writes, as JSONL);
- TRL's standard format: `prompt`, `chosen` and `rejected` as text (the prompt is the user's message);
- whole dialogues (ultrafeedback_binarized, orca_dpo_pairs; TRL's implicit prompt): `chosen` and `rejected`
  message lists that share every message but the last, the assistant's reply.
Bad rows are dropped and counted with their place, as training.data does for dialogues.
"""

from __future__ import annotations

import json

import datasets

from playground.template import Message
from training.data import DataReport, Mixture, RowError, read_sources, split_off, validated


def decoded(value):
    """A JSON list in a string (a CSV cell holding messages) as the list; anything else as it is."""
    if isinstance(value, str) and value.lstrip().startswith("["):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def messages_of(value, what: str) -> list[Message]:
    """A list of {"role", "content"} messages."""
    if not isinstance(value, list) or not all(isinstance(m, dict) for m in value):
        raise RowError(f"{what} that is neither text nor a list of messages")
    messages = [{"role": m.get("role"), "content": m.get("content")} for m in value]
    if not all(isinstance(m["content"], str) and m["role"] in ("system", "user", "assistant") for m in messages):
        raise RowError(f"malformed messages in {what}")
    return messages


def reply_of(value, what: str) -> tuple[list[Message], str]:
    """The messages before the reply (none for text) and the reply's text."""
    if isinstance(value, str):
        return [], value
    messages = messages_of(value, what)
    if not messages or messages[-1]["role"] != "assistant":
        raise RowError(f"{what} that does not end with the assistant's reply")
    return messages[:-1], messages[-1]["content"]


def pair_of(row: dict, max_chars: int) -> dict:
    """{"prompt": messages ending with the user's, "chosen": text, "rejected": text}, or RowError."""
    if "chosen" not in row or "rejected" not in row:
        raise RowError("no chosen and rejected fields")
    before_chosen, chosen = reply_of(decoded(row["chosen"]), "chosen")
    before_rejected, rejected = reply_of(decoded(row["rejected"]), "rejected")
    if before_chosen != before_rejected:
        raise RowError("chosen and rejected answer different conversations")
    prompt = decoded(row.get("prompt"))
    if isinstance(prompt, str):
        prompt = before_chosen or [{"role": "user", "content": prompt}]  # ultrafeedback repeats it in `chosen`
    elif prompt is not None:
        prompt = messages_of(prompt, "prompt") + before_chosen
    elif before_chosen:
        prompt = before_chosen
    else:
        raise RowError("no prompt")
    validated(prompt, "user")
    if not chosen.strip() or not rejected.strip() or any(not m["content"].strip() for m in prompt[-1:]):
        raise RowError("empty turn")
    if chosen == rejected:
        raise RowError("chosen and rejected are the same")
    if sum(len(m["content"]) for m in prompt) + max(len(chosen), len(rejected)) > max_chars:
        raise RowError("too long")
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected}


def builtin_pairs(count: int = 48) -> list[dict]:
    """`builtin:python-docs-pairs`, made offline in TRL's conversational format: a docstring question, its
    answer chosen, another question's answer rejected."""
    from training.scratch import python_doc_dialogues

    dialogues = python_doc_dialogues(limit=count)
    return [
        {"prompt": dialogue[:1], "chosen": dialogue[1:], "rejected": other[1:]}
        for dialogue, other in zip(dialogues, dialogues[1:] + dialogues[:1], strict=True)
    ]


def build_preferences(
    sources: list[str], *, max_chars: int = 32_000, test_size: float = 0.05, seed: int = 42, mixture: Mixture
) -> tuple[datasets.DatasetDict, DataReport]:
    """All sources' pairs, with their places, split deterministically into train and test."""
    report = DataReport(what="pairs", cut_rule="with a reply cut to fit max_length")
    kept = read_sources(sources, lambda row: pair_of(row, max_chars), report, mixture)
    return split_off(kept, test_size, seed, report, pair_key), report


def pair_key(row: dict) -> str:
    return json.dumps([row["prompt"], row["chosen"], row["rejected"]], sort_keys=True)
