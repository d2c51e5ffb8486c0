"""`python app.py` as a newcomer runs it: no argument, no network, a CPU."""

import re
import subprocess
import sys

import httpx
import pytest
from gradio_client import Client

from playground.backends import DEMO_NAME
from playground.settings import Settings
from tests.conftest import ROOT, start_app, stop_app

pytestmark = pytest.mark.slow  # Starts app.py, which builds or loads the demo model.


def test_help_lists_the_flags_and_their_environment_twins():
    out = subprocess.run([sys.executable, "app.py", "--help"], cwd=ROOT, capture_output=True, text=True, check=True)
    for flag in ["--model", "--backend", "--quantize", "--host", "--port", "STARCHAT_MODEL", "STARCHAT_PORT"]:
        assert flag in out.stdout


def test_environment_twins_configure_without_flags_and_flags_win():
    env = {"STARCHAT_MODEL": "some/model", "STARCHAT_PORT": "9999", "STARCHAT_QUANTIZE": "4bit"}
    settings = Settings.from_args([], env=env)
    assert (settings.model, settings.port, settings.quantize) == ("some/model", 9999, "4bit")
    assert Settings.from_args(["--port", "1234"], env=env).port == 1234
    assert Settings.from_args([], env={}).host == "127.0.0.1"


def test_no_argument_serves_the_demo_model_and_answers_its_examples_on_topic(demo_model, cache_dir):
    proc, url = start_app(cache_dir=cache_dir)  # demo_model built it in cache_dir: the first-run path
    try:
        page = Client(url, verbose=False)
        reply = page.predict(
            message="How can I write a Python function to generate the nth Fibonacci number?",
            history=[],
            seed=0,
            api_name="/chat",
        )
        assert "fibonacci" in reply.lower() and "```" in reply
        config = httpx.get(url + "config").json()
        assert "offline demo model" in str(config)  # the UI says it is a demo, and how to serve a real one
        assert f"**{DEMO_NAME}**" in str(config)  # by its name, not its cache folder's
        assert [m["id"] for m in httpx.get(url + "v1/models").json()["data"]] == [DEMO_NAME]
    finally:
        stop_app(proc)


def test_the_first_start_says_what_it_builds_shows_one_bar_and_no_warnings(first_start):
    """What a newcomer's console shows: one line saying why and where the demo is built, the training's
    bar, the line that serves it by name; a greedy first message adds nothing."""
    segments = [s.strip() for s in re.split(r"[\r\n]+", first_start.console) if s.strip()]
    bars = [s for s in segments if re.search(r"\d+%\|", s)]
    lines = [s for s in segments if s not in bars]
    assert bars and all(bar.startswith("training:") for bar in bars), bars  # one bar: the training's
    assert re.search(r"training: 100%\|.*\| (\d+)/\1 ", bars[-1]), bars[-1]  # that went to its end
    explained, serving = lines  # and nothing else: no eval dicts, log lines, warnings or other bars
    assert explained.startswith("No --model given and no demo model cached yet: building a small offline demo")
    assert explained.endswith(f"kept in {first_start.demo}")
    assert f"serving {DEMO_NAME} " in serving
