"""The offline demo checkpoint: built once by the tiny recipe, then found in the cache."""

import re
import subprocess
import sys
from datetime import date

from playground.backends import ChatRequest, collect
from playground.backends.local import LocalBackend
from playground.sampling import SamplingParams
from playground.ui.layout import EXAMPLES
from training.demo import demo_checkpoint
from training.scratch import TAUGHT


def test_the_demo_is_taught_every_example_the_playground_shows():
    assert set(EXAMPLES) <= set(TAUGHT)


def test_a_built_demo_is_found_again_without_training(demo_model, monkeypatch):
    import training.train

    monkeypatch.setattr(training.train, "main", lambda argv: (_ for _ in ()).throw(AssertionError("retrained")))
    assert demo_checkpoint(demo_model.parent) == demo_model


# Each example's check: the fence's language, what follows the code block in the same program, and what
# the program must print. The page's examples run at its defaults: a reply may vary with the seed.
CHECKS: dict[str, tuple[str, str, str]] = {
    EXAMPLES[0]: (
        "python",
        "\nprint([fibonacci(n) for n in range(11)])",
        "[0, 1, 1, 2, 3, 5, 8, 13, 21, 34, 55]",
    ),
    EXAMPLES[1]: ("bash", "", "{today}"),
    EXAMPLES[2]: ("python", "\nprint(numbers)", "[3, 2, 1]\n[3, 2, 1]"),
    EXAMPLES[3]: (
        "python",
        "\nprint([is_palindrome(w) for w in ('Level', 'racecar', 'python', '')])",
        "[True, True, False, True]",
    ),
}
SEEDS = range(6)


def run_code_block(reply: str, language: str, after: str) -> str:
    """The reply's fenced code block (it must have one, in `language`) run with `after`; what it printed."""
    found = re.search(r"```(\w*)\n(.*?)```", reply, re.DOTALL)
    assert found, f"no fenced code block in {reply!r}"
    assert found.group(1) == language, reply
    command = [sys.executable, "-c"] if language == "python" else ["bash", "-c"]
    done = subprocess.run([*command, found.group(2) + after], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, f"{reply!r} failed:\n{done.stderr}"
    return done.stdout.strip()


def test_the_demo_answers_each_example_with_code_that_runs_and_is_right(demo_model):
    assert set(CHECKS) == set(EXAMPLES)  # a new example needs its check
    backend = LocalBackend.from_pretrained(str(demo_model), demo=True)
    for example, (language, after, expected) in CHECKS.items():
        for seed in SEEDS:  # the page's defaults: temperature 0.2, top-k 50, top-p 0.95, repetition penalty 1.2
            request = ChatRequest([{"role": "user", "content": example}], SamplingParams(seed=seed))
            reply, outcome = collect(backend.stream(request))
            assert outcome.finish == "stop", reply
            days = {date.today().isoformat()}
            printed = run_code_block(reply, language, after)
            days.add(date.today().isoformat())  # a run across midnight may print either day
            assert printed in {expected.format(today=day) for day in days}, (example, seed, reply)
