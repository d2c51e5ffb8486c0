"""Dataset sources -> validated dialogues (lists of messages), with the card's "uncensored" filter.

Bad rows are dropped and counted by reason; nothing here raises on a row. A source that cannot be read
at all, or data with fewer than two usable dialogues, raises DataError (training.train prints it).
"""

from __future__ import annotations

import codecs
import json
import random
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path

import datasets

from playground.template import DialogueError, Message, validate
from training.scratch import builtin_rows

REFUSAL_PHRASES = Path(__file__).with_name("refusal_phrases.txt")
# A Markdown code fence: up to three spaces, then three or more backticks or tildes.
_FENCE = re.compile(r"[ \t]{0,3}(`{3,}|~{3,})")
_GUANACO_EVENT = re.compile(r"^[ \t]{0,3}(?P<fence>`{3,}|~{3,})|###\s*(?P<speaker>Human|Assistant)\s*:", re.I | re.M)
_FORMATS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv"}
SHOWN_PLACES = 3  # places named per reason in the summary


class RowError(ValueError):
    """Why a row was dropped; str() is the reason counted in the report."""


class DataError(ValueError):
    """Why the data as a whole cannot be used: a source that cannot be read, or too few dialogues."""


@dataclass
class Counts:
    """One source's rows: read, taken into the mixture (its weight applied), and kept after filtering."""

    read: int = 0
    mixed: int = 0
    kept: int = 0
    weight: float = 1.0

    def __str__(self) -> str:
        weighed = f", {self.mixed} mixed in (weight {self.weight:g})" if self.weight != 1 else ""
        return f"{self.read} read{weighed}, {self.kept} kept"


@dataclass
class DataReport:
    rows: int = 0
    kept: int = 0
    dropped: Counter = field(default_factory=Counter)
    places: dict[str, list[str]] = field(default_factory=dict)  # reason -> where, e.g. "data.jsonl line 3"
    cut: int = 0  # dialogues whose later turns were left out to fit block_size (training.format.fit_dialogue)
    repeats: int = 0  # dialogues kept that are the same as one before them
    what: str = "dialogues"  # what a kept row is: "dialogues", "pairs"
    cut_rule: str = "after their last whole turn that fits block_size"  # how the `cut` ones were cut
    sources: dict[str, Counts] = field(default_factory=dict)  # each source's rows, with several sources

    def drop(self, reason: str, place: str | None = None) -> None:
        self.dropped[reason] += 1
        if place is not None:
            self.places.setdefault(reason, []).append(place)

    def summary(self) -> str:
        reasons = ", ".join(self._reason(reason, n) for reason, n in self.dropped.most_common()) or "none"
        cut = f"; {self.cut} cut {self.cut_rule}" if self.cut else ""
        repeats = f" ({self.repeats} of them repeats of another)" if self.repeats else ""
        each = "".join(f"; {source}: {counts}" for source, counts in self.sources.items())
        return f"{self.rows} rows read, {self.kept} {self.what} kept{repeats}{cut}; dropped: {reasons}{each}"

    def listing(self) -> str:
        """Every dropped row's place, a line each: the summary names only the first few per reason."""
        return "".join(f"{reason}: {place}\n" for reason, places in self.places.items() for place in places)

    def _reason(self, reason: str, n: int) -> str:
        places = self.places.get(reason, [])
        if not places:
            return f"{n} {reason}"
        more = ", ..." if len(places) > SHOWN_PLACES else ""
        return f"{n} {reason} ({', '.join(places[:SHOWN_PLACES])}{more})"


def load_phrases(path: Path = REFUSAL_PHRASES) -> list[str]:
    lines = path.read_text(encoding="utf-8").splitlines()
    return [line.strip().lower() for line in lines if line.strip() and not line.startswith("#")]


def placed(rows: Iterable[dict], name: str) -> Iterator[tuple[str, dict]]:
    """Each row with where it came from, for the report: "NAME row 3"."""
    return ((f"{name} row {n}", row) for n, row in enumerate(rows, 1))


def load_rows(source: str, report: DataReport, split: str = "train") -> Iterable[tuple[str, dict]]:
    """A local JSON/JSONL/Parquet/CSV file, `builtin:NAME` (made offline), or a Hub dataset id: its rows,
    each with its place."""
    if source == "builtin:python-docs-pairs":
        from training.preferences import builtin_pairs  # preferences reads its sources through this module

        return placed(builtin_pairs(), source)
    if source.startswith("builtin:"):
        try:
            return placed(builtin_rows(source.removeprefix("builtin:")), source)
        except ValueError as exc:
            raise DataError(str(exc)) from None
    path = Path(source)
    if path.is_file():
        if path.suffix not in _FORMATS:
            raise DataError(f"{source}: use one of {', '.join(_FORMATS)}")
        if _FORMATS[path.suffix] == "json":
            return json_rows(path, report)
        try:
            rows = datasets.load_dataset(_FORMATS[path.suffix], data_files=str(path), split="train")
        except Exception as exc:  # pyarrow's and datasets' many errors all mean: not a readable file of that kind
            why = " ".join(str(exc.__cause__ or exc).split())
            raise DataError(f"{source}: cannot be read as {_FORMATS[path.suffix]} ({why})") from exc
        return placed(rows, path.name)
    if path.is_dir():
        raise DataError(f"{source}: a folder; name the data files in it")
    if path.suffix in _FORMATS or source.startswith(("/", ".", "~")):
        raise DataError(f"{source}: no such file")
    try:
        return placed(datasets.load_dataset(source, split=split), source if split == "train" else f"{source}[{split}]")
    except Exception as exc:  # the Hub's many failures (offline, no such id, gated) all mean the same here
        raise DataError(f"{source}: not a local file, and not a dataset the Hub gave: {exc}") from exc


def json_rows(path: Path, report: DataReport) -> Iterator[tuple[str, dict]]:
    """A JSON array, or JSON Lines read line by line.

    datasets' JSON loader fails the whole file on one broken line; here a broken line is one
    dropped row, counted with its line number.
    """
    raw = path.read_bytes().removeprefix(codecs.BOM_UTF8)  # editors on Windows start files with one
    try:
        whole = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        whole = None  # not one JSON document: JSON Lines
    if isinstance(whole, list):
        lines = [(f"{path.name} item {i}", row) for i, row in enumerate(whole)]
    elif whole is not None:
        lines = [(path.name, whole)]
    else:
        lines = [(f"{path.name} line {n}", line) for n, line in enumerate(raw.splitlines(), 1) if line.strip()]
    for place, line in lines:
        if isinstance(line, bytes):
            try:
                line = json.loads(line.decode("utf-8"))
            except ValueError as exc:  # UnicodeDecodeError and JSONDecodeError both are
                report.rows += 1
                report.drop("not UTF-8 text" if isinstance(exc, UnicodeDecodeError) else "unparsable JSON", place)
                continue
        if not isinstance(line, dict):
            report.rows += 1
            report.drop("not a JSON object", place)
            continue
        yield place, line


def parse_guanaco(text: str) -> list[Message]:
    """`### Human: ... ### Assistant: ...` turns in one string (openassistant-guanaco).

    A marker inside a fenced code block is code, not a turn. The dataset joins turns without a
    newline (`...research.### Assistant: ...`, also right after a closing fence), so outside a fence
    a marker counts wherever it stands; a fence opens at the start of a line or of a turn.
    """
    turns: list[tuple[str, int, int]] = []  # (speaker, start, end) of each turn's text
    first = 0  # where the first marker stands
    fence = ""  # the opening run of backticks or tildes while inside a code block
    hidden = False  # a marker inside the code block that is open now
    for event in _GUANACO_EVENT.finditer(text):
        run, speaker = event.group("fence"), event.group("speaker")
        if run and not fence:
            fence = run if _opens(text, event.end(), run) else ""
            hidden = False
        elif run:
            fence = "" if run[0] == fence[0] and len(run) >= len(fence) else fence
        elif fence:
            hidden = True
        else:
            if turns:
                turns[-1] = (turns[-1][0], turns[-1][1], event.start())
            else:
                first = event.start()
            turns.append((speaker.lower(), event.end(), len(text)))
            opener = _FENCE.match(text, event.end())  # "### Assistant: ```python"
            if opener and _opens(text, opener.end(), opener.group(1)):
                fence, hidden = opener.group(1), False
    if fence and hidden:
        raise RowError("an unclosed code fence hides a ### marker")
    if not turns:
        raise RowError("no ### Human: marker")
    if text[:first].strip():
        raise RowError("text before the first ### Human:")
    speakers = [speaker for speaker, _, _ in turns]
    if speakers[0] != "human":
        raise RowError("starts with ### Assistant: instead of ### Human:")
    for a, b in pairwise(speakers):
        if a == b:
            raise RowError(f"two ### {a.title()}: turns in a row")
    if speakers[-1] == "human":
        raise RowError("the last ### Human: has no ### Assistant: answer")
    return [
        {"role": "user" if speaker == "human" else "assistant", "content": text[start:end].strip()}
        for speaker, start, end in turns
    ]


def _opens(text: str, after: int, run: str) -> bool:
    """A run of backticks opens a fence only if its line holds no other backtick (else it is inline code)."""
    end = text.find("\n", after)
    return run[0] != "`" or "`" not in text[after : len(text) if end < 0 else end]


def row_to_messages(row: dict, max_chars: int) -> list[Message]:
    messages = row.get("messages")
    if isinstance(messages, str):  # a CSV cell (or any table's text column) holding the list as JSON
        try:
            messages = json.loads(messages)
        except ValueError:
            raise RowError("messages that are not a JSON list") from None
    if isinstance(messages, list):
        if not all(isinstance(m, dict) for m in messages):
            raise RowError("malformed messages")
        messages = [{"role": m.get("role"), "content": m.get("content")} for m in messages]
        if not all(isinstance(m["content"], str) and m["role"] in ("system", "user", "assistant") for m in messages):
            raise RowError("malformed messages")
    elif isinstance(row.get("text"), str):
        messages = parse_guanaco(row["text"])
    else:
        raise RowError("no messages or text field")
    validated(messages, "assistant")
    if any(not m["content"].strip() for m in messages if m["role"] != "system"):
        raise RowError("empty turn")
    try:
        for m in messages:
            m["content"].encode("utf-8")
    except UnicodeEncodeError:  # JSON's "\ud800" escapes decode to lone surrogates, which no file can hold
        raise RowError("text that is not valid Unicode (a lone surrogate)") from None
    if sum(len(m["content"]) for m in messages) > max_chars:
        raise RowError("too long")
    return messages


def validated(messages: list[Message], last: str) -> None:
    """RowError unless the roles alternate (after an optional system message) and end with `last`'s."""
    try:
        validate(messages, last=last)
    except DialogueError as exc:
        raise RowError(f"roles do not alternate or do not end with the {last}") from exc


def is_refusal(messages: list[Message], phrases: list[str]) -> bool:
    return any(p in m["content"].lower() for m in messages if m["role"] == "assistant" for p in phrases)


def dialogues(
    rows: Iterable[tuple[str, dict]], report: DataReport, *, max_chars: int, phrases: list[str] | None
) -> Iterable[tuple[str, list[Message]]]:
    """The rows' dialogues with their places; each row dropped is counted with its place (`placed`)."""
    for place, row in rows:
        report.rows += 1
        try:
            messages = dialogue_of(row, max_chars, phrases)
        except RowError as exc:
            report.drop(str(exc), place)
            continue
        report.kept += 1
        yield place, messages


def dialogue_of(row: dict, max_chars: int, phrases: list[str] | None) -> list[Message]:
    messages = row_to_messages(row, max_chars)
    if phrases is not None and is_refusal(messages, phrases):
        raise RowError("refusal/alignment phrase (uncensored filter)")
    return messages


def build_dataset(
    sources: list[str],
    *,
    max_chars: int = 32_000,
    uncensored: bool = True,
    test_size: float = 0.05,
    seed: int = 42,
    mixture: Mixture | None = None,
) -> tuple[datasets.DatasetDict, DataReport]:
    """All sources as one {"messages": [...]} dataset, split deterministically into train and test."""
    report = DataReport()
    phrases = load_phrases() if uncensored else None
    to_dialogue = lambda row: {"messages": dialogue_of(row, max_chars, phrases)}  # noqa: E731
    kept = read_sources(sources, to_dialogue, report, mixture or Mixture(seed=seed))
    return split_off(kept, test_size, seed, report, lambda row: key(row["messages"])), report


@dataclass(frozen=True)
class Mixture:
    """How sources are read and mixed (the alignment-handbook's dataset_mixer): `weights` by source, below 1
    the share of its rows taken, 1 or more how many times they are repeated (a fraction of a time: that share
    more); `splits` read from each Hub dataset; `columns`, if any, the only ones a row keeps."""

    weights: dict[str, float] = field(default_factory=dict)
    splits: tuple[str, ...] = ("train",)
    columns: tuple[str, ...] = ()
    seed: int = 42

    def rows(self, source: str, report: DataReport) -> list[tuple[str, dict]]:
        """The source's rows in the mixture, each with its place; its counts go to report.sources."""
        before = report.rows
        hub = not Path(source).is_file() and not source.startswith("builtin:")
        rows = [row for split in (self.splits if hub else ("train",)) for row in load_rows(source, report, split)]
        if self.columns:
            rows = [(place, {k: row[k] for k in self.columns if k in row}) for place, row in rows]
        report.rows += len(rows)  # and json_rows has counted its unreadable lines
        weight = self.weights.get(source, 1.0)
        counts = report.sources.setdefault(source, Counts(weight=weight))
        counts.read = report.rows - before
        if weight != 1:
            shuffled = [rows[i] for i in random.Random(self.seed).sample(range(len(rows)), len(rows))]
            whole, share = divmod(weight, 1)
            rows = rows * int(whole) + shuffled[: round(share * len(rows))]
        counts.mixed = len(rows)
        return rows


def read_sources(
    sources: list[str], convert: Callable[[dict], dict], report: DataReport, mixture: Mixture
) -> list[dict]:
    """Each source's rows through `convert` (a RowError drops the row, counted with its place), with their places."""
    files = [Path(source).resolve() for source in sources if Path(source).is_file()]
    if len(set(files)) < len(files):
        again = next(path for path in files if files.count(path) > 1)
        raise DataError(f"{again} is named twice in --datasets; its {report.what} would count twice")
    kept = []
    for source in sources:
        rows = mixture.rows(source, report)
        before = len(kept)
        for place, row in rows:
            try:
                kept.append(convert(row) | {"place": place})
            except RowError as exc:
                report.drop(str(exc), place)
        report.sources[source].kept = len(kept) - before
        report.kept += len(kept) - before
        if len(sources) > 1 and len(kept) == before:  # named to be trained on, it would add nothing
            raise DataError(
                f"{source}: none of its {len(rows)} rows is a usable {report.what[:-1]} "
                f"(all sources so far: {report.summary()})"
            )
    if len(sources) == 1:
        report.sources.clear()  # the summary's totals say it all
    if len(kept) < 2:
        raise DataError(f"fewer than two usable {report.what} in {', '.join(sources)}: {report.summary()}")
    return kept


def split_off(
    kept: list[dict], test_size: float, seed: int, report: DataReport, key_of: Callable[[dict], str]
) -> datasets.DatasetDict:
    """Train and test splits; a test row repeating a training one (`key_of`) is dropped, as it is not unseen."""
    dataset = datasets.Dataset.from_list(kept)
    if test_size == 0:
        splits = datasets.DatasetDict(train=dataset, test=dataset.select([]))
    else:
        try:
            splits = dataset.train_test_split(test_size=test_size, seed=seed)
        except ValueError as exc:  # a share that leaves nothing to train on
            raise DataError(f"--test_size {test_size} of {len(kept)} {report.what}: {exc}") from None
    trained = {key_of(row) for row in splits["train"]}
    fresh = []
    for i, row in enumerate(splits["test"]):
        if key_of(row) not in trained:
            fresh.append(i)
            continue
        report.drop(f"test {report.what[:-1]} repeating a training one", row["place"])
        report.kept -= 1
    splits["test"] = splits["test"].select(fresh)
    report.repeats = report.kept - len({key_of(row) for row in kept})
    return splits


def key(messages: list[Message]) -> str:
    return json.dumps(messages, sort_keys=True)
