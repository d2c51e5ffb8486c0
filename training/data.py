"""Dataset sources -> validated dialogues (lists of messages), with the card's "uncensored" filter.

Bad rows are dropped and counted by reason; nothing here raises on a row.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import datasets

from playground.template import DialogueError, Message, validate
from training.scratch import builtin_rows

REFUSAL_PHRASES = Path(__file__).with_name("refusal_phrases.txt")
_GUANACO_TURN = re.compile(r"###\s*(Human|Assistant)\s*:", re.I)
_FORMATS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv"}


class RowError(ValueError):
    """Why a row was dropped; str() is the reason counted in the report."""


@dataclass
class DataReport:
    rows: int = 0
    kept: int = 0
    dropped: Counter = field(default_factory=Counter)

    def summary(self) -> str:
        reasons = ", ".join(f"{n} {reason}" for reason, n in self.dropped.most_common()) or "none"
        return f"{self.rows} rows read, {self.kept} dialogues kept; dropped: {reasons}"


def load_phrases(path: Path = REFUSAL_PHRASES) -> list[str]:
    lines = path.read_text(encoding="utf-8").splitlines()
    return [line.strip().lower() for line in lines if line.strip() and not line.startswith("#")]


def load_rows(source: str, split: str = "train") -> datasets.Dataset:
    """A local JSON/JSONL/Parquet/CSV file, `builtin:NAME` (made offline), or a Hub dataset id."""
    if source.startswith("builtin:"):
        return datasets.Dataset.from_list(builtin_rows(source.removeprefix("builtin:")))
    path = Path(source)
    if path.exists():
        if path.suffix not in _FORMATS:
            raise ValueError(f"{source}: use one of {', '.join(_FORMATS)}")
        return datasets.load_dataset(_FORMATS[path.suffix], data_files=str(path), split="train")
    return datasets.load_dataset(source, split=split)


def parse_guanaco(text: str) -> list[Message]:
    """`### Human: ... ### Assistant: ...` turns in one string (openassistant-guanaco)."""
    parts = _GUANACO_TURN.split(text)
    if parts[0].strip():
        raise RowError("text before the first ### Human:")
    return [
        {"role": "user" if speaker.lower() == "human" else "assistant", "content": content.strip()}
        for speaker, content in zip(parts[1::2], parts[2::2], strict=True)
    ]


def row_to_messages(row: dict, max_chars: int) -> list[Message]:
    if isinstance(row.get("messages"), list):
        messages = row["messages"]
        if not all(isinstance(m, dict) for m in messages):
            raise RowError("malformed messages")
        messages = [{"role": m.get("role"), "content": m.get("content")} for m in messages]
        if not all(isinstance(m["content"], str) and m["role"] in ("system", "user", "assistant") for m in messages):
            raise RowError("malformed messages")
    elif isinstance(row.get("text"), str):
        messages = parse_guanaco(row["text"])
    else:
        raise RowError("no messages or text field")
    try:
        validate(messages, last="assistant")
    except DialogueError as exc:
        raise RowError("roles do not alternate or do not end with the assistant") from exc
    if any(not m["content"].strip() for m in messages if m["role"] != "system"):
        raise RowError("empty turn")
    if sum(len(m["content"]) for m in messages) > max_chars:
        raise RowError("too long")
    return messages


def is_refusal(messages: list[Message], phrases: list[str]) -> bool:
    return any(p in m["content"].lower() for m in messages if m["role"] == "assistant" for p in phrases)


def dialogues(
    rows: Iterable[dict], report: DataReport, *, max_chars: int, phrases: list[str] | None
) -> Iterable[list[Message]]:
    for row in rows:
        report.rows += 1
        try:
            messages = row_to_messages(row, max_chars)
        except RowError as exc:
            report.dropped[str(exc)] += 1
            continue
        if phrases is not None and is_refusal(messages, phrases):
            report.dropped["refusal/alignment phrase (uncensored filter)"] += 1
            continue
        report.kept += 1
        yield messages


def build_dataset(
    sources: list[str],
    *,
    max_chars: int = 32_000,
    uncensored: bool = True,
    test_size: float = 0.05,
    seed: int = 42,
) -> tuple[datasets.DatasetDict, DataReport]:
    """All sources as one {"messages": [...]} dataset, split deterministically into train and test."""
    report = DataReport()
    phrases = load_phrases() if uncensored else None
    kept = [
        {"messages": messages}
        for source in sources
        for messages in dialogues(load_rows(source), report, max_chars=max_chars, phrases=phrases)
    ]
    if len(kept) < 2:
        raise ValueError(f"fewer than two usable dialogues in {sources}: {report.summary()}")
    dataset = datasets.Dataset.from_list(kept)
    return dataset.train_test_split(test_size=test_size, seed=seed), report
