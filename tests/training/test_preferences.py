"""Preference pairs from TRL's formats and ultrafeedback_binarized's layout; bad rows counted with their place."""

import json

import pytest

from training.data import DataError, Mixture
from training.preferences import build_preferences, pair_of

USER = {"role": "user", "content": "How do I sort a list?"}
GOOD, BAD = "Use sorted(xs).", "I cannot help."
SAME = {"prompt": [USER], "chosen": GOOD, "rejected": BAD}


@pytest.mark.parametrize(
    "row",
    [
        {
            "prompt": [USER],
            "chosen": [{"role": "assistant", "content": GOOD}],
            "rejected": [{"role": "assistant", "content": BAD}],
        },
        {"prompt": USER["content"], "chosen": GOOD, "rejected": BAD},  # TRL's standard format
        {  # ultrafeedback_binarized: the prompt as text, and again in the whole dialogues chosen and rejected
            "prompt": USER["content"],
            "chosen": [USER, {"role": "assistant", "content": GOOD}],
            "rejected": [USER, {"role": "assistant", "content": BAD}],
            "score_chosen": 9.0,
        },
        {
            "chosen": [USER, {"role": "assistant", "content": GOOD}],
            "rejected": [USER, {"role": "assistant", "content": BAD}],
        },
        {  # a CSV's cells: message lists as JSON text
            "prompt": json.dumps([USER]),
            "chosen": json.dumps([{"role": "assistant", "content": GOOD}]),
            "rejected": json.dumps([{"role": "assistant", "content": BAD}]),
        },
    ],
    ids=["trl-conversational", "trl-standard", "ultrafeedback", "implicit-prompt", "json-cells"],
)
def test_every_format_gives_the_same_pair(row):
    assert pair_of(row, max_chars=1000) == SAME


def test_a_system_prompt_and_earlier_turns_stay_in_the_prompt():
    earlier = [{"role": "system", "content": "be brief"}, USER, {"role": "assistant", "content": "sorted"}, USER]
    row = {
        "chosen": [*earlier, {"role": "assistant", "content": GOOD}],
        "rejected": [*earlier, {"role": "assistant", "content": BAD}],
    }
    assert pair_of(row, max_chars=1000)["prompt"] == earlier


def test_bad_rows_are_counted_with_their_place(tmp_path):
    assistant = [{"role": "assistant", "content": GOOD}]
    rows = [json.dumps(SAME | {"chosen": f"{GOOD} {n}"}) for n in range(4)] + [
        "{broken",
        json.dumps({"prompt": [USER], "chosen": GOOD}),
        json.dumps(SAME | {"rejected": GOOD}),
        json.dumps({"chosen": [USER, *assistant], "rejected": [{"role": "user", "content": "other"}, *assistant]}),
        json.dumps(SAME | {"prompt": [USER, *assistant]}),
        json.dumps(SAME | {"chosen": " "}),
    ]
    (tmp_path / "prefs.jsonl").write_text("\n".join(rows))
    splits, report = build_preferences([str(tmp_path / "prefs.jsonl")], test_size=0, mixture=Mixture())
    assert len(splits["train"]) == report.kept == 4 and report.rows == 10
    assert report.listing().splitlines() == [
        "unparsable JSON: prefs.jsonl line 5",
        "no chosen and rejected fields: prefs.jsonl line 6",
        "chosen and rejected are the same: prefs.jsonl line 7",
        "chosen and rejected answer different conversations: prefs.jsonl line 8",
        "roles do not alternate or do not end with the user: prefs.jsonl line 9",
        "empty turn: prefs.jsonl line 10",
    ]
    assert report.summary().startswith("10 rows read, 4 pairs kept; dropped: ")
    assert splits["train"][0]["place"] == "prefs.jsonl line 1"


def test_a_mixture_weighs_each_source_and_counts_it_before_and_after_filtering(tmp_path):
    def source(name: str, good: int, bad: int) -> str:
        rows = [json.dumps(SAME | {"chosen": f"{GOOD} {name}{n}"}) for n in range(good)] + ["{broken"] * bad
        (tmp_path / name).write_text("\n".join(rows))
        return str(tmp_path / name)

    half, twice = source("half.jsonl", 10, 0), source("twice.jsonl", 3, 2)
    mixture = Mixture({half: 0.5, twice: 2.0}, seed=0)
    splits, report = build_preferences([half, twice], test_size=0, mixture=mixture)
    assert len(splits["train"]) == 5 + 6 == report.kept and report.rows == 15
    assert f"{half}: 10 read, 5 mixed in (weight 0.5), 5 kept" in report.summary()
    assert f"{twice}: 5 read, 6 mixed in (weight 2), 6 kept" in report.summary()
    again, _ = build_preferences([half, twice], test_size=0, mixture=mixture)
    assert again["train"]["chosen"] == splits["train"]["chosen"]  # the same share each time (its seed)


def test_a_source_with_no_usable_pair_is_refused(tmp_path):
    (tmp_path / "sft.jsonl").write_text(json.dumps({"messages": [USER, {"role": "assistant", "content": GOOD}]}))
    with pytest.raises(DataError, match=r"fewer than two usable pairs .*1 no chosen and rejected fields"):
        build_preferences([str(tmp_path / "sft.jsonl")], mixture=Mixture())
