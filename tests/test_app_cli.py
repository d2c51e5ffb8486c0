"""`python app.py` as a newcomer runs it: no argument, no network, a CPU."""

import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

from app import main as app_main
from app import page_url
from playground.backends.loading import DEMO_NAME
from playground.settings import Settings
from tests.conftest import ROOT, free_port

pytestmark = pytest.mark.slow  # Starts app.py, which builds or loads the demo model.


def test_help_lists_the_flags_and_their_environment_twins():
    env = {**os.environ, "STARCHAT_ENDPOINT_URL": "http://me:s3cret@127.0.0.1:8080"}
    out = subprocess.run(
        [sys.executable, "app.py", "--help"], cwd=ROOT, capture_output=True, text=True, check=True, env=env
    )
    for flag in ["--model", "--backend", "--quantize", "--host", "--port", "STARCHAT_MODEL", "STARCHAT_PORT"]:
        assert flag in out.stdout
    said = " ".join(out.stdout.split())
    assert "[env STARCHAT_MAX_MESSAGE_CHARS; default 20000]" in said  # each limit says its value
    assert "[env STARCHAT_API_KEY]" in said  # a secret's value is never shown
    assert "[env STARCHAT_ENDPOINT_URL]" in said and "s3cret" not in said  # a URL may carry credentials


def test_environment_twins_configure_without_flags_and_flags_win():
    env = {"STARCHAT_MODEL": "some/model", "STARCHAT_PORT": "9999", "STARCHAT_QUANTIZE": "4bit"}
    settings = Settings.from_args([], env=env)
    assert (settings.model, settings.port, settings.quantize) == ("some/model", 9999, "4bit")
    assert Settings.from_args(["--port", "1234"], env=env).port == 1234
    assert Settings.from_args([], env={}).host == "127.0.0.1"


def test_a_twin_that_cannot_be_read_still_lets_help_answer_and_a_flag_replace_it(capsys):
    env = {"STARCHAT_SPECULATE": "plenty", "STARCHAT_PORT": "x"}
    with pytest.raises(SystemExit) as exit:
        Settings.from_args(["--help"], env=env)
    said = " ".join(capsys.readouterr().out.split())
    assert exit.value.code == 0 and "[env STARCHAT_SPECULATE]" in said and "plenty" not in said
    assert Settings.from_args(["--speculate", "2", "--port", "80"], env=env).speculate == 2
    with pytest.raises(SystemExit) as exit:
        Settings.from_args(["--port", "80"], env=env)
    assert exit.value.code == 2 and "STARCHAT_SPECULATE='plenty' is not a whole number" in capsys.readouterr().err


@pytest.mark.parametrize(
    "flags, env, said",
    [
        (["--port", "70000"], {}, "--port (or STARCHAT_PORT) must be from 1 to 65535, not 70000"),
        ([], {"STARCHAT_PORT": ""}, "STARCHAT_PORT='' is not a whole number"),
        (
            [],
            {"STARCHAT_BACKEND": "bogus"},
            "--backend (or STARCHAT_BACKEND) must be one of local, endpoint, not 'bogus'",
        ),
        (
            ["--endpoint-timeout", "nan"],
            {},
            "--endpoint-timeout (or STARCHAT_ENDPOINT_TIMEOUT) must be a number, not nan",
        ),
        (["--batch-slots", "0"], {}, "--batch-slots (or STARCHAT_BATCH_SLOTS) must be from 1 to 1024, not 0"),
        (["--rate-limit", "-1"], {}, "--rate-limit (or STARCHAT_RATE_LIMIT) must be at least 0, not -1"),
        (["--max-new-tokens-limit", "0"], {}, "must be at least 1, not 0"),
        (["--endpoint-timeout", "1e308"], {}, "must be from 0.1 to 3600, not 1e+308"),
        (["--batch-slots", "10000000"], {}, "must be from 1 to 1024, not 10000000"),
        (["--host", " "], {}, "--host (or STARCHAT_HOST) must not be empty"),
        (
            ["--trusted-proxies", "not-an-ip,,"],
            {},
            "takes '*' or IP addresses separated by commas; 'not-an-ip' is not an IP address",
        ),
        ([], {"STARCHAT_TRUSTED_PROXIES": "*,10.0.0.1"}, "'*' is not an IP address"),
        (
            ["--endpoint-url", "ftp://x"],
            {},
            "--endpoint-url (or STARCHAT_ENDPOINT_URL) must be an http:// or https:// base URL: a host, if any a port "
            "from 1 to 65535, no space, ?query or #part",
        ),
        (["--endpoint-url", "http://h:99999"], {}, "if any a port from 1 to 65535, no space, ?query or #part"),
        (["--endpoint-url", "http://h/?"], {}, "no space, ?query or #part"),
        ([], {"STARCHAT_ENDPOINT_URL": " http://u:s3cret@h"}, "no space, ?query or #part"),  # the value not shown
        (["--cache-dir", ""], {}, "--cache-dir (or STARCHAT_CACHE_DIR) must not be empty"),
    ],
)
def test_a_setting_out_of_its_type_choices_or_bounds_is_one_line_before_anything_starts(flags, env, said, capsys):
    with pytest.raises(SystemExit) as exit:
        Settings.from_args(flags, env=env)
    lines = capsys.readouterr().err.strip().splitlines()
    assert exit.value.code == 2 and len(lines) == 2 and lines[-1].endswith(said)  # the usage line, then why


def test_the_address_printed_is_one_a_browser_opens():
    assert page_url("127.0.0.1", 7860) == "http://127.0.0.1:7860"
    assert page_url("::1", 7860) == "http://[::1]:7860"


def test_what_cannot_start_says_why_in_one_line(tmp_path, monkeypatch):
    """Before the model loads: a port in use, an address not here, a cache folder that is a file; after: a model,
    a file or a server that is not right."""
    import socket

    def start(*args: str) -> subprocess.CompletedProcess:
        env = {"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
        return subprocess.run([sys.executable, "app.py", *args], cwd=ROOT, capture_output=True, text=True, env=env)

    (tmp_path / "a-file").write_text("")
    (tmp_path / "models.yaml").write_text("models: [1, 2]")
    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "adapter_config.json").write_text("{}")  # a LoRA run's OUTPUT_DIR/adapter
    (tmp_path / "stopped" / "checkpoints").mkdir(parents=True)  # a run killed before its end
    cache = ["--cache-dir", str(tmp_path)]
    after_loading = [
        (["--model", str(tmp_path / "nope")], f"{tmp_path / 'nope'}: not a model's folder (no config.json there)"),
        (["--model", str(tmp_path / "adapter")], "a LoRA adapter, not a model: merge it into its base first"),
        (["--model", str(tmp_path / "stopped")], "a training run that has not written its served checkpoint yet"),
        (["--model", "tests"], "tests: not a model's folder (no config.json there)"),  # a folder here, not a Hub id
        (["--backend", "endpoint", "--model", "some/model"], "--backend endpoint needs --endpoint-url"),
        (["--models-file", str(tmp_path / "models.yaml")], "entry 0 needs a name (text) and only the keys"),
    ]
    # Each start is a new Python importing torch and Gradio (~7 s), so four starts show the console, two at a
    # time; the other refusals after loading go through the same main() in this process.
    with socket.socket() as taken, ThreadPoolExecutor(2) as pool:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        in_use = pool.submit(start, "--port", str(port), "--model", str(tmp_path))
        no_host = pool.submit(start, "--host", "no-such-host.invalid", *cache)
        a_file = pool.submit(start, "--cache-dir", str(tmp_path / "a-file"))
        (args, said) = after_loading[0]
        loaded = pool.submit(start, *args, *cache)
        run = in_use.result()
    assert run.returncode == 1 and run.stdout == ""
    assert run.stderr == f"app.py: cannot listen on 127.0.0.1:{port}: Address already in use\n"
    run = no_host.result()
    assert run.returncode == 1 and run.stderr.startswith("app.py: cannot listen on no-such-host.invalid:7860: ")
    run = a_file.result()
    assert (
        run.returncode == 1
        and run.stderr == f"app.py: cannot start: --cache-dir {tmp_path / 'a-file'}: a file, not a folder\n"
    )
    run = loaded.result()
    assert run.returncode == 1 and run.stderr.count("\n") == 1, run.stderr
    assert run.stderr.startswith("app.py: cannot start: ") and said in run.stderr
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "gradio"))  # main() would set it for this process
    for args, said in after_loading[1:]:
        with pytest.raises(SystemExit, match=f"^app.py: cannot start: .*{re.escape(said)}"):
            app_main([*args, *cache, "--port", str(free_port())])


def test_no_argument_serves_the_demo_model_and_answers_its_examples_on_topic(first_start):
    reply = first_start.chat_reply  # the first start's /chat answer to the page's Fibonacci example
    assert "fibonacci" in reply.lower() and "```" in reply
    assert "offline demo model" in str(first_start.config)  # the UI says it is a demo, and how to serve a real one
    assert f"**{DEMO_NAME}**" in str(first_start.config)  # by its name, not its cache folder's
    assert first_start.models == [DEMO_NAME]


def test_the_first_start_says_what_it_builds_shows_one_bar_and_no_warnings(first_start):
    """What a newcomer's console shows: one line saying why and where the demo is built, the training's
    bar, the line that serves it by name; a greedy first message adds nothing. Online, it asks the Hub
    nothing: the demo is built from what is on the machine, and bitsandbytes' import (through the Trainer)
    does not look for its CPU kernel there."""
    assert first_start.hub_requests == []
    segments = [s.strip() for s in re.split(r"[\r\n]+", first_start.console) if s.strip()]
    bars = [s for s in segments if re.search(r"\d+%\|", s)]
    lines = [s for s in segments if s not in bars]
    assert bars and all(bar.startswith("training:") for bar in bars), bars  # one bar: the training's
    assert re.search(r"training: 100%\|.*\| (\d+)/\1 ", bars[-1]), bars[-1]  # that went to its end
    explained, serving = lines  # and nothing else: no eval dicts, log lines, warnings or other bars
    assert f"serving {DEMO_NAME} " in serving
    # Exactly the README's lines, but for the demo's folder and the port.
    readme = (ROOT / "README.md").read_text().split("\nNo --model given", 1)[1].split("\n```", 1)[0]
    said_first, said_bar, said_serving = ("No --model given" + readme).splitlines()
    assert explained == re.sub(r"kept in \S+$", f"kept in {first_start.demo}", said_first)
    assert re.sub(r":\d+ ", ":7860 ", serving) == said_serving
    assert said_bar.startswith("training: 100%|")
