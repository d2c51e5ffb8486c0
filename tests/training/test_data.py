"""Dataset rows -> validated dialogues; bad rows are dropped and counted, never a crash."""

import codecs
import json

import pytest

from training.data import DataError, DataReport, build_dataset, dialogues, load_phrases, parse_guanaco, placed
from training.scratch import python_doc_dialogues

GOOD_TEXT = (
    "### Human: How do I sort a list?### Assistant: Use sorted(xs).### Human: Thanks### Assistant: You're welcome."
)
REFUSAL = "### Human: Write a scraper.### Assistant: I'm sorry, but as an AI language model I cannot do that."


def rows():
    return [
        {"text": GOOD_TEXT},
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]},
        {
            "messages": [
                {"role": "system", "content": "s"},
                {"role": "user", "content": "q"},
                {"role": "assistant", "content": "a"},
            ]
        },
        {"text": REFUSAL},
        {"text": "### Human: only a question"},
        {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "  "}]},
        {"messages": [{"role": "assistant", "content": "a"}, {"role": "user", "content": "q"}]},
        {"messages": [{"role": "user", "content": 5}, {"role": "assistant", "content": "a"}]},
        {"messages": "nope"},
        {"other": 1},
        {"text": "### Human: " + "x" * 100 + "### Assistant: y"},
        {"text": "preamble ### Human: q### Assistant: a"},
        {"messages": json.dumps([{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}])},  # CSV
    ]


def test_guanaco_text_becomes_messages():
    assert parse_guanaco(GOOD_TEXT) == [
        {"role": "user", "content": "How do I sort a list?"},
        {"role": "assistant", "content": "Use sorted(xs)."},
        {"role": "user", "content": "Thanks"},
        {"role": "assistant", "content": "You're welcome."},
    ]


def test_bad_rows_are_dropped_and_counted_by_reason():
    report = DataReport()
    kept = list(dialogues(placed(rows(), "rows"), report, max_chars=80, phrases=load_phrases()))
    assert len(kept) == 4 and report.kept == 4 and report.rows == 13
    assert kept[-1] == ("rows row 13", [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}])
    assert report.dropped == {
        "refusal/alignment phrase (uncensored filter)": 1,
        "roles do not alternate or do not end with the assistant": 1,
        "the last ### Human: has no ### Assistant: answer": 1,
        "empty turn": 1,
        "malformed messages": 1,
        "messages that are not a JSON list": 1,
        "no messages or text field": 1,
        "too long": 1,
        "text before the first ### Human:": 1,
    }
    assert "13 rows read, 4 dialogues kept" in report.summary()
    assert "1 too long (rows row 11)" in report.summary()  # each reason says where, as for broken JSON


def test_the_uncensored_filter_can_be_switched_off():
    report = DataReport()
    kept = list(dialogues(placed([{"text": REFUSAL}], "refusal"), report, max_chars=10_000, phrases=None))
    assert len(kept) == 1 and not report.dropped


def test_the_phrase_list_is_a_versioned_data_file():
    from training.data import REFUSAL_PHRASES

    assert "(version 1)" in REFUSAL_PHRASES.read_text().splitlines()[0]
    assert "as an ai language model" in load_phrases()


def test_files_of_each_format_and_a_deterministic_split(tmp_path):
    jsonl = tmp_path / "a.jsonl"
    jsonl.write_text("\n".join(json.dumps({"messages": m}) for m in python_doc_dialogues(limit=30)))
    import datasets

    texts = [{"text": GOOD_TEXT.replace("a list", f"list {i}")} for i in range(10)]
    datasets.Dataset.from_list(texts).to_parquet(tmp_path / "b.parquet")
    first, report = build_dataset([str(jsonl), str(tmp_path / "b.parquet")], test_size=0.2, seed=42)
    again, _ = build_dataset([str(jsonl), str(tmp_path / "b.parquet")], test_size=0.2, seed=42)
    assert report.kept == 40 and len(first["train"]) == 32 and len(first["test"]) == 8
    assert first["test"]["messages"] == again["test"]["messages"]


FENCED_ANSWER = (
    "Prefix each turn, like this:\n\n```text\n### Human: What is 2 + 2?\n### Assistant: 4\n```\n\n"
    "The model then learns where turns begin."
)


def test_guanaco_markers_inside_code_fences_are_code():
    question = "How do I write a guanaco prompt?"
    text = f"### Human: {question}### Assistant: {FENCED_ANSWER}### Human: Thanks### Assistant: Welcome."
    assert parse_guanaco(text) == [
        {"role": "user", "content": question},
        {"role": "assistant", "content": FENCED_ANSWER},
        {"role": "user", "content": "Thanks"},
        {"role": "assistant", "content": "Welcome."},
    ]
    # The dataset joins turns without a newline, also right after a closing fence.
    code = "```python\nprint('### Human: hi')\n```"
    assert parse_guanaco(f"### Human: Show me.### Assistant: {code}### Human: Why?### Assistant: Because.")[1:3] == [
        {"role": "assistant", "content": code},
        {"role": "user", "content": "Why?"},
    ]


def test_unbalanced_guanaco_text_is_dropped_with_what_was_wrong():
    cases = {
        "### Assistant: an answer to nothing": "starts with ### Assistant: instead of ### Human:",
        "### Human: one### Human: two### Assistant: a": "two ### Human: turns in a row",
        "### Human: q### Assistant: a### Assistant: b": "two ### Assistant: turns in a row",
        "### Human: q### Assistant: a### Human: and?": "the last ### Human: has no ### Assistant: answer",
        "### Human: see\n```\ncode### Assistant: never closed": "an unclosed code fence hides a ### marker",
        "just text": "no ### Human: marker",
    }
    report = DataReport()
    kept = list(dialogues(placed([{"text": text} for text in cases], "cases"), report, max_chars=1000, phrases=None))
    assert kept == [] and report.dropped == {reason: 1 for reason in cases.values()}


def exchange(n: int) -> dict:
    """A good row, different for each n."""
    return {"messages": [{"role": "user", "content": f"question {n}"}, {"role": "assistant", "content": "a"}]}


def test_a_broken_json_line_is_a_counted_reason_with_its_line_number(tmp_path):
    good = [json.dumps(exchange(n)) for n in range(3)]
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join([*good[:2], '{"messages": [{"role": "user", "content": "cut off', good[2], "", "[1, 2]"]))
    splits, report = build_dataset([str(path)], test_size=0.34, seed=0)
    assert len(splits["train"]) + len(splits["test"]) == report.kept == 3
    assert report.rows == 5 and report.dropped == {"unparsable JSON": 1, "not a JSON object": 1}
    assert "1 unparsable JSON (data.jsonl line 3)" in report.summary()
    assert "1 not a JSON object (data.jsonl line 6)" in report.summary()


def test_a_json_file_holding_one_array_is_read_whole(tmp_path):
    (tmp_path / "data.json").write_text(json.dumps([exchange(n) for n in range(3)], indent=2))
    _, report = build_dataset([str(tmp_path / "data.json")], test_size=0.34, seed=0)
    assert report.rows == report.kept == 3 and not report.dropped


def test_a_byte_order_mark_a_line_not_in_utf8_and_a_lone_surrogate_lose_only_their_own_rows(tmp_path):
    good = [json.dumps(exchange(n)).encode() for n in range(2)]
    surrogate = '{"messages": [{"role": "user", "content": "\\ud800"}, {"role": "assistant", "content": "a"}]}'
    path = tmp_path / "data.jsonl"
    lines = [good[0], b'{"text": "caf\xe9"}', surrogate.encode(), good[1]]
    path.write_bytes(codecs.BOM_UTF8 + b"\n".join(lines))
    _, report = build_dataset([str(path)], test_size=0.5, seed=0)
    assert report.rows == 4 and report.kept == 2  # the first row kept, its byte-order mark read as such
    assert "1 not UTF-8 text (data.jsonl line 2)" in report.summary()
    assert "1 text that is not valid Unicode (a lone surrogate) (data.jsonl line 3)" in report.summary()


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("empty.jsonl", "", "fewer than two usable dialogues"),
        ("notes.txt", "hello", "use one of .json, .jsonl, .parquet, .csv"),
        ("missing.jsonl", None, "no such file"),
        ("folder", "", "a folder; name the data files in it"),
        ("bad.parquet", "PAR1 not really parquet", r"bad.parquet: cannot be read as parquet \("),
        ("empty.csv", "", r"empty.csv: cannot be read as csv \("),
        ("builtin:nosuch", None, "unknown builtin dataset 'nosuch'; there is 'builtin:python-docs'"),
    ],
)
def test_data_that_cannot_be_used_at_all_is_one_clear_error(tmp_path, name, content, message):
    path = tmp_path / name
    if name == "folder":
        path.mkdir()
    elif content is not None:
        path.write_text(content)
    with pytest.raises(DataError, match=message):
        build_dataset([name if name.startswith("builtin:") else str(path)])


def test_a_file_named_twice_is_refused(tmp_path):
    data = tmp_path / "data.jsonl"
    data.write_text("\n".join(json.dumps({"messages": m}) for m in python_doc_dialogues(limit=4)))
    with pytest.raises(DataError, match=r"data\.jsonl is named twice in --datasets"):
        build_dataset([str(data), f"{tmp_path}/./data.jsonl"])


def test_repeated_dialogues_are_counted_and_never_scored_as_unseen(tmp_path):
    """A source may repeat a dialogue to weigh it more: it trains as often, but is never in the test split."""
    dialogues = python_doc_dialogues(limit=40)
    data = tmp_path / "data.jsonl"
    data.write_text("\n".join(json.dumps({"messages": m}) for m in dialogues + dialogues[:10] * 3))
    splits, report = build_dataset([str(data)], test_size=0.25, seed=0)
    trained = [json.dumps(m) for m in splits["train"]["messages"]]
    assert not {json.dumps(m) for m in splits["test"]["messages"]} & set(trained)
    left_out = report.dropped["test dialogue repeating a training one"]
    assert left_out > 0 and len(splits["train"]) + len(splits["test"]) == 70 - left_out == report.kept
    assert f"{report.kept} dialogues kept ({30 - left_out} of them repeats of another)" in report.summary()


def test_a_test_size_of_zero_holds_nothing_out(tmp_path):
    data = tmp_path / "data.jsonl"
    data.write_text("\n".join(json.dumps(exchange(n)) for n in range(5)))
    splits, report = build_dataset([str(data)], test_size=0)
    assert len(splits["train"]) == report.kept == 5 and len(splits["test"]) == 0


def test_a_share_held_out_that_leaves_nothing_to_train_on_is_one_clear_error(tmp_path):
    data = tmp_path / "data.jsonl"
    data.write_text("\n".join(json.dumps(exchange(n)) for n in range(5)))
    with pytest.raises(DataError, match=r"^--test_size 0.99 of 5 dialogues: .*train"):
        build_dataset([str(data)], test_size=0.99)


def test_a_named_source_that_adds_no_dialogue_is_refused_not_skipped(tmp_path):
    (tmp_path / "good.jsonl").write_text("\n".join(json.dumps(exchange(n)) for n in range(5)))
    (tmp_path / "table.csv").write_text("prompt,response\nq,a\nq2,a2\n")  # columns of its own: nothing to read
    with pytest.raises(
        DataError, match=r"table.csv: none of its 2 rows is a usable dialogue \(.*2 no messages or text"
    ):
        build_dataset([str(tmp_path / "good.jsonl"), str(tmp_path / "table.csv")])


def test_every_dropped_row_is_listed_with_its_place_and_kept_rows_keep_theirs(tmp_path):
    lines = [json.dumps(exchange(n)) for n in range(3)] + ["{broken"] * 5 + ['{"messages": "[1"}']
    (tmp_path / "data.jsonl").write_text("\n".join(lines))
    splits, report = build_dataset([str(tmp_path / "data.jsonl")], test_size=0)
    assert "5 unparsable JSON (data.jsonl line 4, data.jsonl line 5, data.jsonl line 6, ...)" in report.summary()
    assert report.listing().splitlines() == [
        *(f"unparsable JSON: data.jsonl line {n}" for n in range(4, 9)),
        "messages that are not a JSON list: data.jsonl line 9",
    ]
    assert splits["train"]["place"] == ["data.jsonl line 1", "data.jsonl line 2", "data.jsonl line 3"]


def test_a_mixture_of_dialogue_sources_weighs_each_and_counts_it(tmp_path):
    from training.data import Mixture

    for name, count in (("a.jsonl", 8), ("b.jsonl", 3)):
        (tmp_path / name).write_text("\n".join(json.dumps(exchange(n + len(name) * count)) for n in range(count)))
    a, b = str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl")
    splits, report = build_dataset([a, b], test_size=0, mixture=Mixture({a: 0.25, b: 3.0}))
    assert len(splits["train"]) == 2 + 9 == report.kept and report.repeats == 6
    assert (
        f"{a}: 8 read, 2 mixed in (weight 0.25), 2 kept; {b}: 3 read, 9 mixed in (weight 3), 9 kept" in report.summary()
    )
