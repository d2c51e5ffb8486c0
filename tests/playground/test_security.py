"""The server as a hostile client meets it: login, file paths, private events, sizes, proxies, limits."""

import contextlib
import json
import re
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import httpx
import pytest
from gradio_client import Client
from gradio_client.exceptions import AppError

from playground.settings import Settings
from tests.conftest import ROOT, serve_model


@pytest.fixture(scope="module")
def locked(tiny_checkpoint, tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    with serve_model(tiny_checkpoint, cache, "--auth", "ada:lovelace", "--rate-limit", "3") as (url, _):
        yield url


def test_the_page_asks_for_a_login(locked):
    with pytest.raises(Exception):  # noqa: B017 - gradio_client raises its own kinds for a refused login
        Client(locked, verbose=False).predict(message="hi", history=[], max_new_tokens=4, api_name="/chat")
    client = Client(locked, auth=("ada", "lovelace"), verbose=False)
    assert isinstance(client.predict(message="hi", history=[], max_new_tokens=4, api_name="/chat"), str)


@pytest.mark.parametrize("path", ["/etc/passwd", str(ROOT / "app.py"), "app.py", "../../../../etc/passwd"])
def test_no_file_of_the_server_is_readable_through_gradios_file_routes(locked, path):
    with httpx.Client(base_url=locked) as http:
        http.post("login", data={"username": "ada", "password": "lovelace"})
        for route in (f"gradio_api/file={path}", f"file={path}"):
            response = http.get(route)
            assert response.status_code in (403, 404), (route, response.status_code)
            assert "root:" not in response.text and "def main" not in response.text


def test_a_client_over_the_rate_limit_is_told_to_wait(tiny_checkpoint, tmp_path):
    with serve_model(tiny_checkpoint, tmp_path, "--rate-limit", "2") as (url, _):
        client = Client(url, verbose=False)
        for _ in range(2):
            client.predict(message="hi", history=[], max_new_tokens=4, api_name="/chat")
        with pytest.raises(AppError, match="Too many requests: the limit is 2 a minute"):
            client.predict(message="hi", history=[], max_new_tokens=4, api_name="/chat")


def test_a_long_history_is_refused_with_its_limit(tiny_checkpoint, tmp_path):
    with serve_model(tiny_checkpoint, tmp_path, "--max-history-messages", "2") as (url, _):
        history = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}] * 2
        client = Client(url, verbose=False)
        with pytest.raises(AppError, match="has 4 earlier messages; the limit is 2"):
            client.predict(message="hi", history=history, max_new_tokens=4, api_name="/chat")
        assert isinstance(client.predict(message="hi", history=history[:2], max_new_tokens=4, api_name="/chat"), str)


def call_event(url: str, fn_index: int, data: list, http: httpx.Client | None = None, seen: list | None = None) -> dict:
    """Calls any event by its index through Gradio's queue, as a crafted client would; returns its last message
    (and appends every message to `seen`, if given)."""
    http = http or httpx.Client(base_url=url, timeout=30)
    session = uuid.uuid4().hex
    payload = json.dumps({"data": data, "fn_index": fn_index, "session_hash": session})  # lone surrogates escaped
    joined = http.post("gradio_api/queue/join", content=payload, headers={"content-type": "application/json"})
    if joined.status_code != 200:
        return {"msg": "refused", "status": joined.status_code, "text": joined.text}
    last = {}
    with http.stream("GET", f"gradio_api/queue/data?session_hash={session}") as events:
        for line in events.iter_lines():
            if line.startswith("data:"):
                last = json.loads(line[5:])
                if seen is not None:
                    seen.append(last)
                if last.get("msg") in ("process_completed", "close_stream", "unexpected_error"):
                    break
    return last


def event_id(url: str, handler: str) -> int:
    """The id of the page's event whose first step is `handler` (the handler's name)."""
    dependencies = httpx.get(url + "config").json()["dependencies"]
    return next(d["id"] for d in dependencies if d["api_name"] == handler)


def test_a_message_refused_for_a_lone_surrogate_goes_back_to_the_box_readable(open_server):
    url, _ = open_server
    result = call_event(url, event_id(url, "take"), ["hi \ud800 there", False])
    assert result["msg"] == "process_completed" and result["success"], result
    assert "hi \ufffd there" in json.dumps(result["output"]["data"], ensure_ascii=False)


def test_the_model_picker_keeps_its_reply_limit_a_number(open_server):
    url, chat = open_server
    name = next(iter(chat.backends))
    result = call_event(url, event_id(url, "pick_model"), [name, float("nan")])
    assert result["success"] and "nan" not in json.dumps(result["output"]["data"]).lower(), result
    result = call_event(url, event_id(url, "pick_model"), [name, -5])  # Gradio's slider refuses it itself
    assert not result["success"] and "less than minimum value 1" in result["output"]["error"], result


def forged_file(path: str) -> dict:
    return {"path": path, "orig_name": Path(path).name, "meta": {"_type": "gradio.FileData"}}


@pytest.fixture(scope="module")
def open_server(tiny_checkpoint, tmp_path_factory):
    with serve_model(tiny_checkpoint, tmp_path_factory.mktemp("cache")) as (url, chat):
        yield url, chat


@pytest.mark.slow  # calls each of the page's events four times: 10 s on 2 cores
def test_no_event_reads_a_path_a_client_names(open_server):
    """Every event with a server function, called directly with forged files for all its inputs."""
    import gradio.utils

    url, _ = open_server
    dependencies = httpx.get(url + "config").json()["dependencies"]
    upload_folder = Path(gradio.utils.get_upload_folder())
    for path in ("/etc/passwd", str(ROOT / "app.py"), "/dev/zero", "/no/such/file"):
        for dependency in dependencies:
            if dependency["backend_fn"]:
                result = call_event(url, dependency["id"], [forged_file(path)] * len(dependency["inputs"]))
                assert "root:x:0:0" not in json.dumps(result) and "def main" not in json.dumps(result)
    copied = [p for p in upload_folder.rglob("*") if p.is_file() and p.name in ("passwd", "app.py")]
    assert not copied, copied
    assert httpx.get(url + "v1/models", timeout=10).status_code == 200  # /dev/zero froze nothing


def test_a_saved_conversation_goes_to_the_browser_not_to_a_file_on_the_server(open_server):
    import gradio.utils

    url, _ = open_server
    dependencies = httpx.get(url + "config").json()["dependencies"]
    [save] = [d for d in dependencies if d["api_name"] == "export_conversation"]
    secret = f"my secret {uuid.uuid4().hex}"
    result = call_event(url, save["id"], [None, secret, None, None])
    assert secret in result["output"]["data"][0]  # the JSON text itself, for the page to download
    holders = [p for p in Path(gradio.utils.get_upload_folder()).rglob("*") if p.is_file() and secret in p.read_text()]
    assert not holders


def test_a_conversation_file_is_read_as_text_and_checked_before_it_replaces_anything(open_server):
    url, _ = open_server
    config = httpx.get(url + "config").json()
    [load] = [d for d in config["dependencies"] if d["api_name"] == "load"]
    [system] = [c["id"] for c in config["components"] if c.get("props", {}).get("elem_id") == "system"]
    good = json.dumps(
        {
            "messages": [
                {"role": "system", "content": "sys"},
                {"role": "user", "content": "q"},
                {"role": "assistant", "content": "a"},
            ]
        }
    )
    # Inputs: the browser's kept conversations, the file's text, the open conversation, its notes, versions,
    # system prompt, ...
    sent = json.dumps({"text": good})  # as the page's openFile sends a file it has read
    loaded = call_event(url, load["id"], [None, sent, None, None, None, "old system", None, False])["output"]["data"]
    shown = loaded[0]["value"]  # the chatbot's update: its messages, with their like / dislike marks
    assert loaded[load["outputs"].index(system)] == "sys" and [m["content"][0]["text"] for m in shown] == ["q", "a"]
    broken = json.dumps({"text": good.replace('"a"', '"\\ud800"')})
    kept = call_event(url, load["id"], [None, broken, None, None, None, "old system", None, False])["output"]["data"]
    assert "sys" not in json.dumps(kept) and '"q"' not in json.dumps(kept)  # nothing replaced


@pytest.mark.parametrize(
    ("sent", "said"),
    [
        ('{"error": "too_large", "bytes": 2000000}', "2,000,000 bytes: conversation files of up to 1,000,000"),
        ('{"error": "empty"}', "That file is empty"),
        ('{"error": "too_large", "bytes": "x"}', "no file that could be read"),
        ('{"error": "too_large", "bytes": ' + "9" * 5000 + "}", "no file that could be read"),
        ('{"error": "too_large", "bytes": NaN}', "no file that could be read"),
        ('{"error": "too_large", "bytes": -1}', "no file that could be read"),
        ('{"text": 5}', "no file that could be read"),
        ("[1, 2]", "no file that could be read"),
        ("\u0000too large: 5", "no file that could be read"),
    ],
)
def test_what_load_sends_besides_a_file_is_a_warning_not_an_error(open_server, sent, said):
    """The page's openFile sends the file's text, or why it did not read it, as JSON; a forged message."""
    url, _ = open_server
    [load] = [d for d in httpx.get(url + "config").json()["dependencies"] if d["api_name"] == "load"]
    seen: list[dict] = []
    result = call_event(url, load["id"], [None, sent, None, None, None, "", None, False], seen=seen)
    assert result["msg"] == "process_completed" and result["success"], result
    assert any(m.get("msg") == "log" and said in m.get("log", "") for m in seen), seen


@pytest.mark.parametrize(
    "to",
    ['{"at": true, "position": 0}', '{"at": 1, "position": 1e999}', "NaN", "[" * 100_000, "", '{"at": [1]}'],
)
def test_a_forged_version_flip_changes_nothing(open_server, to):
    url, _ = open_server
    [flip] = [d for d in httpx.get(url + "config").json()["dependencies"] if d["api_name"] == "flip"]
    result = call_event(url, flip["id"], [to, None, None, None, False])
    assert result["msg"] == "process_completed" and result["success"], result


def test_a_huge_request_is_refused_and_the_server_stays_responsive(open_server, capsys):
    url, _ = open_server
    latencies = []

    def probe():
        for _ in range(20):
            start = time.monotonic()
            assert httpx.get(url + "v1/models", timeout=30).status_code == 200
            latencies.append(time.monotonic() - start)

    prober = threading.Thread(target=probe)
    prober.start()
    body = {
        "model": "x",
        "messages": [{"role": "system", "content": "x" * 4_000_000}, {"role": "user", "content": "hi"}],
    }
    response = httpx.post(url + "v1/chat/completions", json=body, timeout=60)
    prober.join()
    assert response.status_code == 413 and "larger than this server takes" in response.json()["error"]["message"]
    with capsys.disabled():
        print(f"\n[security] /v1/models during a 4 MB request: slowest {max(latencies) * 1000:.0f} ms")
    event = httpx.post(url + "gradio_api/queue/join", content=b"x" * 3_000_000, timeout=60)
    assert event.status_code == 413


def test_a_large_system_prompt_or_earlier_turn_is_refused_by_its_limit(open_server):
    client = Client(open_server[0], verbose=False)
    with pytest.raises(AppError, match="system prompt has 400000 characters; the limit is 20000"):
        client.predict(message="hi", history=[], system_prompt="x" * 400_000, max_new_tokens=4, api_name="/chat")
    history = [{"role": "user", "content": "x" * 30_000}, {"role": "assistant", "content": "ok"}]
    with pytest.raises(AppError, match="message 0 has 30000 characters"):
        client.predict(message="hi", history=history, max_new_tokens=4, api_name="/chat")
    history = [{"role": "user", "content": "x" * 19_000}, {"role": "assistant", "content": "ok"}] * 6
    with pytest.raises(AppError, match="conversation has 114014 characters; the limit is 100000"):
        client.predict(message="hi", history=history, max_new_tokens=4, api_name="/chat")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"message": "hi \ud800 there"}, "invalid character .a lone surrogate, U.D800. at position 3"),
        ({"system_prompt": "\udfff"}, "system prompt holds an invalid character"),
        (
            {"history": [{"role": "user", "content": "\ud800"}, {"role": "assistant", "content": "a"}]},
            "message 0 holds",
        ),
        ({"message": ["a", "list"]}, "message must be text, not list"),
        ({"message": 42}, "message must be text, not int"),
        ({"temperature": 1e-300}, "temperature must be 0 .greedy. or at least 0.01, got 1e-300"),
        ({"seed": 2**31}, "seed must be between -1 and 2147483647, got 2147483648"),
    ],
)
def test_odd_input_on_chat_gets_a_clear_error(open_server, kwargs, message):
    """Sent as raw JSON, as a browser's JSON.stringify sends them (gradio_client cannot encode a lone surrogate)."""
    url, _ = open_server
    [chat] = [d for d in httpx.get(url + "config").json()["dependencies"] if d["api_name"] == "chat"]
    call = {"message": "hi", "history": [], "system_prompt": "", "temperature": 0.2, "top_p": 0.95, "top_k": 50}
    call |= {"max_new_tokens": 4, "repetition_penalty": 1.2, "seed": -1, "model": ""} | kwargs
    result = call_event(url, chat["id"], list(call.values()))
    assert result["success"] is False and re.search(message, result["output"]["error"]), result
    assert isinstance(
        Client(url, verbose=False).predict(message="hi", history=[], max_new_tokens=4, api_name="/chat"), str
    )


def test_x_forwarded_for_from_an_untrusted_peer_is_not_a_new_client(tiny_checkpoint, tmp_path):
    with serve_model(tiny_checkpoint, tmp_path, "--rate-limit", "2") as (url, _):
        body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
        answers = [
            httpx.post(url + "v1/chat/completions", json=body, headers={"X-Forwarded-For": f"10.0.0.{i}"}, timeout=30)
            for i in range(3)
        ]
    assert [a.status_code for a in answers] == [200, 200, 429]
    assert int(answers[2].headers["Retry-After"]) > 0


def test_behind_a_trusted_proxy_each_forwarded_client_has_its_own_limit(tiny_checkpoint, tmp_path):
    with serve_model(tiny_checkpoint, tmp_path, "--rate-limit", "1", "--trusted-proxies", "127.0.0.1") as (url, _):
        body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
        answers = [
            httpx.post(url + "v1/chat/completions", json=body, headers={"X-Forwarded-For": who}, timeout=30)
            for who in ("203.0.113.1", "203.0.113.2", "203.0.113.1")
        ]
    assert [a.status_code for a in answers] == [200, 200, 429]


def test_with_auth_and_no_api_key_the_api_is_off_and_says_so(locked):
    for call in (
        lambda: httpx.get(locked + "v1/models"),
        lambda: httpx.post(
            locked + "v1/chat/completions", content='{"messages": []}', headers={"content-type": "text/plain"}
        ),
    ):
        response = call()
        assert response.status_code == 403 and "--api-key" in response.text


def test_schema_pages_and_the_login_page_do_not_describe_the_api(locked):
    for path in ("docs", "redoc", "openapi.json"):
        assert httpx.get(locked + path).status_code == 404
    page = httpx.get(locked).text
    assert '"auth_required":true' in page and "named_endpoints" not in page and "/chat" not in page
    with httpx.Client(base_url=locked) as http:
        http.post("login", data={"username": "ada", "password": "lovelace"})
        assert "named_endpoints" in http.get("/").text  # a person who logged in gets the page as it is


def test_repeated_wrong_logins_are_slowed_down(tiny_checkpoint, tmp_path):
    with (
        serve_model(tiny_checkpoint, tmp_path, "--auth", "ada:lovelace") as (url, _),
        httpx.Client(base_url=url) as http,
    ):
        answers = [http.post("login", data={"username": "ada", "password": f"guess{i}"}) for i in range(8)]
        assert [a.status_code for a in answers] == [400] * 5 + [429] * 3
        assert int(answers[-1].headers["Retry-After"]) > 0 and "Too many wrong logins" in answers[-1].text
        assert http.post("login", data={"username": "ada", "password": "lovelace"}).status_code == 429  # even right


@pytest.mark.parametrize("auth", ["user", "user:", ":password"])
def test_an_auth_without_user_and_password_is_refused_before_anything_loads(auth, capsys):
    with pytest.raises(SystemExit):
        Settings.from_args(["--auth", auth], env={})
    assert "--auth takes USER:PASSWORD" in capsys.readouterr().err
    run = subprocess.run(
        [sys.executable, "app.py", "--auth", auth, "--model", "/no/such/model"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 2 and "--auth takes USER:PASSWORD" in run.stderr


def test_in_a_space_the_address_the_proxy_appended_counts_not_what_the_client_wrote(tiny_checkpoint, tmp_path):
    """The client writes the left of X-Forwarded-For; the proxy in front appends the real address on the right."""
    with serve_model(tiny_checkpoint, tmp_path, "--rate-limit", "2", "--trusted-proxies", "*") as (url, _):
        body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
        answers = [
            httpx.post(
                url + "v1/chat/completions", json=body, headers={"X-Forwarded-For": f"198.51.100.{i}, 203.0.113.9"}
            )
            for i in range(3)
        ]
    assert [a.status_code for a in answers] == [200, 200, 429]


def test_the_page_loads_no_outside_image_whatever_the_markdown(open_server):
    url, _ = open_server
    assert "img-src 'self'" in httpx.get(url).headers["content-security-policy"]
    tricks = [
        "![a\\]b](http://127.0.0.2:9/1.png)",
        "x ![a[b]c](http://127.0.0.2:9/2.png)",
        '\\`<img src="http://127.0.0.2:9/3.png">`',
        'see ~~~<img src="http://127.0.0.2:9/4.png">~~~',
    ]
    playwright = pytest.importorskip("playwright.sync_api")
    from tests.playground.test_ui_browser import CHROMIUM, FLAGS

    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = browser.new_page()
        outside = []  # (url, why it failed): no server listens there, so each ask fails one way or another
        page.on("requestfailed", lambda request: outside.append((request.url, request.failure)))
        page.goto(url)
        page.locator("#max_new_tokens input[type=number]").fill("16")  # the tiny model's context is 256
        page.locator("#max_new_tokens input[type=number]").press("Enter")
        page.locator("#message textarea").fill("\n\n".join(tricks))
        page.locator("#send").click()
        page.wait_for_function("document.querySelectorAll('#chatbot [data-testid=user]').length == 1")
        page.wait_for_function("document.querySelector('#chatbot .reply-note')")  # the reply drawn too
        # Three images are asked for as they are drawn (and fail: no server listens there). After an escaped
        # backtick there is no code span: the tag is text, as typed.
        with contextlib.suppress(playwright.TimeoutError):
            while len([url for url, _ in outside if "127.0.0.2" in url]) < 3:
                page.wait_for_event("requestfailed", timeout=10_000)
        shown = page.locator("#chatbot [data-testid=user]").inner_text()
        browser.close()
    asked = [(url, why) for url, why in outside if "127.0.0.2" in url]
    assert sorted(url[-5:] for url, _ in asked) == ["1.png", "2.png", "4.png"], asked
    assert all(why == "csp" for _, why in asked), asked  # blocked by the page's policy
    assert '<img src="http://127.0.0.2:9/3.png">' in shown


def test_a_streamed_body_without_a_length_is_refused(open_server):
    def chunks():
        for _ in range(30):
            yield b"x" * 100_000

    event = httpx.post(url := open_server[0] + "gradio_api/queue/join", content=chunks())
    assert event.status_code == 411, url


def test_the_server_takes_no_file_uploads(open_server):
    """The page has no file input; uploads would stay in the served cache for anyone to fetch, unbounded."""
    import gradio.utils

    url, _ = open_server
    before = {p for p in Path(gradio.utils.get_upload_folder()).rglob("*")}
    for path in ("gradio_api/upload", "gradio_api/upload/", "gradio_api/upload?upload_id=x"):
        upload = httpx.post(url + path, files={"files": ("page.html", b"<script>alert(1)</script>")})
        assert upload.status_code == 403 and "no file uploads" in upload.json()["error"]["message"], path
    assert {p for p in Path(gradio.utils.get_upload_folder()).rglob("*")} == before


def test_the_page_sends_no_usage_reports(open_server):
    """Gradio's analytics would tell Gradio's servers about each start and page of a private playground."""
    url, _ = open_server
    assert httpx.get(url + "config").json()["analytics_enabled"] is False


def test_parallel_wrong_logins_are_counted_too(tiny_checkpoint, tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    with serve_model(tiny_checkpoint, tmp_path, "--auth", "ada:lovelace") as (url, _), ThreadPoolExecutor(20) as pool:
        codes = list(
            pool.map(
                lambda i: httpx.post(url + "login", data={"username": "ada", "password": f"g{i}"}).status_code,
                range(20),
            )
        )
    assert codes.count(400) <= 5 and codes.count(429) >= 15


@pytest.mark.slow  # starts app.py
def test_start_up_says_the_api_is_off_when_the_page_has_a_login(tiny_checkpoint, tmp_path):
    from tests.conftest import start_app, stop_app

    proc, url = start_app("--model", str(tiny_checkpoint), "--auth", "ada:lovelace", cache_dir=tmp_path)
    try:
        assert httpx.get(url + "v1/models").status_code == 403
    finally:
        stop_app(proc)
    printed = proc.stdout.read()
    assert "OpenAI API at /v1 is off: the page has --auth; give --api-key KEY to turn it on" in printed
