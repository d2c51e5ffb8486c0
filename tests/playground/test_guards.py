"""The ASGI guards on a real server on loopback, as a hostile client meets them: Gradio routes the page does
not use, every spelling of the login, cross-site reads of a logged-in session, pages that list the API."""

import contextlib
import json
import re
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from playground import guards
from tests.conftest import serve_model

LOGIN = {"username": "ada", "password": "wrong"}


@pytest.fixture(scope="module")
def open_server(tiny_checkpoint, tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    with serve_model(tiny_checkpoint, cache) as (url, _):
        yield url, cache


@pytest.fixture(scope="module")
def locked(tiny_checkpoint, tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    flags = ("--auth", "ada:lovelace", "--allowed-origins", "https://friend.example")
    with serve_model(tiny_checkpoint, cache, *flags) as (url, _):
        yield url


def test_deep_links_write_nothing_on_the_server_and_are_not_found(open_server):
    import gradio.utils

    url, _ = open_server
    folder = gradio.utils.get_upload_folder()
    with httpx.Client(base_url=url) as http:
        http.get("/")  # a session, as the page opens one
        for _ in range(5):
            response = http.get("/gradio_api/deep_link", params={"session_hash": uuid.uuid4().hex})
            assert response.status_code == 404
        assert http.get("/gradio_api/deep_link/", params={"session_hash": "x"}).status_code in (404, 307)
        assert http.get("/gradio_api/deep%5Flink", params={"session_hash": "x"}).status_code == 404
    assert not list(Path(folder).rglob("deep_links*"))


@pytest.mark.parametrize("name", ["deep_link", "deep%5Flink", "deep_link%00"])
def test_the_page_shows_no_deep_link_state_whatever_file_is_there(open_server, name):
    import gradio.utils

    url, _ = open_server
    planted = Path(gradio.utils.get_upload_folder()) / "deep_links" / "abcdef12"
    planted.mkdir(parents=True, exist_ok=True)
    # As Gradio writes one: the session's components, each with its id and props.
    (planted / "state.json").write_text(
        json.dumps([{"id": 1, "type": "textbox", "props": {"value": "planted secret"}}])
    )
    page = httpx.get(f"{url}?{name}=abcdef12").text
    assert "planted secret" not in page and '"deep_link_state":"valid"' not in page


@pytest.mark.parametrize("path", ["/login", "/login/", "/%6Cogin", "/login%2F"])
def test_every_spelling_of_the_login_is_throttled_together(tiny_checkpoint, tmp_path, path):
    with (
        serve_model(tiny_checkpoint, tmp_path, "--auth", "ada:lovelace") as (url, _),
        httpx.Client(base_url=url) as http,
    ):
        answers = [http.post(path if i % 2 else "/login", data=LOGIN).status_code for i in range(7)]
        assert answers == [400] * 5 + [429] * 2, answers
        assert http.post(path, data={"username": "ada", "password": "lovelace"}).status_code == 429


@pytest.mark.parametrize("path", ["//login", "/gradio_api/login"])
def test_paths_that_do_not_reach_the_login_cannot_log_in(locked, path):
    response = httpx.post(locked.rstrip("/") + path, data={"username": "ada", "password": "lovelace"})
    assert response.status_code in (404, 405) and "set-cookie" not in response.headers


@contextlib.contextmanager
def logged_in(url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=url, headers={"Host": "playground.example"}) as http:  # not localhost: Gradio's rule
        assert http.post("/login", data={"username": "ada", "password": "lovelace"}).status_code == 200
        yield http


def test_another_site_cannot_read_a_logged_in_session(locked):
    with logged_in(locked) as http:
        read = http.get("/config", headers={"Origin": "https://evil.example"})
        assert read.status_code == 200 and "access-control-allow-origin" not in read.headers
        asked = http.options(
            "/gradio_api/call/chat",
            headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
        )
        assert "access-control-allow-origin" not in asked.headers  # so the browser sends no call


def test_an_allowed_origin_may_read_with_the_login(locked):
    with logged_in(locked) as http:
        read = http.get("/config", headers={"Origin": "https://friend.example"})
        assert read.headers["access-control-allow-origin"] == "https://friend.example"
        assert read.headers["access-control-allow-credentials"] == "true"


@pytest.mark.parametrize("path", ["/", "/gradio_api/runs", "/runs/", "/?view=api"])
def test_no_page_lists_the_api_before_the_login(locked, path):
    page = httpx.get(locked.rstrip("/") + path)
    assert "named_endpoints" not in page.text and '"/chat"' not in page.text


def test_the_pages_private_events_are_not_callable_by_name(open_server):
    url, _ = open_server
    dependencies = httpx.get(url + "config").json()["dependencies"]
    private = [d["api_name"] for d in dependencies if d["backend_fn"] and d["api_visibility"] == "private"]
    assert {"take", "undo", "pick_model", "load"} <= set(private)
    take = next(d["id"] for d in dependencies if d["api_name"] == "take")
    with httpx.Client(base_url=url) as http:
        for name in [*private, "chat", "x"]:
            for form in ("call/", "call/v2/", "api/"):
                if form.startswith("call") and name == "chat":
                    continue
                for route in (f"gradio_api/{form}{name}", f"gradio_api/{form}{name}/", f"gradio_api/{form}{name}%2F"):
                    assert http.post(route, json={"data": [], "fn_index": take}).status_code == 404, route
        assert http.post("gradio_api/process_recording", files={"video": b"x"}).status_code == 404
        # The public API stays, in both forms: a list of values, and (v2) values by name.
        event = http.post("gradio_api/call/chat", json={"data": ["hi", [], "", 0.2, 0.95, 50, 4, 1.2, 0, None]})
        assert event.status_code == 200 and "event_id" in event.json(), event.text
        event = http.post("gradio_api/call/v2/chat", json={"message": "hi", "history": [], "max_new_tokens": 4})
        assert event.status_code == 200 and "event_id" in event.json(), event.text


def test_through_run_only_the_unqueued_events_run_as_the_page_runs_them(open_server):
    """/gradio_api/run is how the page runs its unqueued events (by index, in the body): forged values there
    get what the page's checks give them, and a queued event (a reply) is not run this way."""
    url, _ = open_server
    dependencies = [d for d in httpx.get(url + "config").json()["dependencies"] if d["backend_fn"]]
    forged = {"path": "/etc/passwd", "orig_name": "passwd", "meta": {"_type": "gradio.FileData"}}
    with httpx.Client(base_url=url, timeout=30) as http:
        for dependency in dependencies:
            for values in ([forged] * len(dependency["inputs"]), ["\ud800" * 3] * len(dependency["inputs"])):
                body = {"data": values, "fn_index": dependency["id"], "session_hash": uuid.uuid4().hex}
                answer = http.post(  # json.dumps escapes the lone surrogates, as a browser's JSON.stringify does
                    f"gradio_api/run/{dependency['api_name']}",
                    content=json.dumps(body),
                    headers={"content-type": "application/json"},
                )
                assert "root:x:0:0" not in answer.text, dependency["api_name"]
                if dependency["queue"] is not False:
                    assert answer.status_code == 404, (dependency, answer.text)  # replies go through the queue only
        assert http.get("v1/models").status_code == 200  # and the server goes on


def test_a_body_that_stops_arriving_gets_408_and_frees_its_connection(open_server, monkeypatch):
    monkeypatch.setattr(guards, "BODY_SECONDS", 1.0)
    port = int(open_server[0].rstrip("/").rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=15) as sock:
        head = "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        sock.sendall(f"{head}Content-Length: 500\r\n\r\n{{".encode())  # one byte of 500, then nothing
        answer = whole_response(sock)
    assert answer.startswith("HTTP/1.1 408") and "did not arrive whole within 1 s" in answer


def whole_response(sock: socket.socket) -> str:
    """One HTTP response as it comes, its headers and then as many bytes as they announce."""
    data = b""
    while (chunk := sock.recv(4096)) and b"\r\n\r\n" not in data + chunk:
        data += chunk
    head, _, body = (data + chunk).partition(b"\r\n\r\n")
    length = int(re.search(rb"content-length: (\d+)", head, re.IGNORECASE)[1])
    while len(body) < length and (chunk := sock.recv(4096)):
        body += chunk
    return (head + b"\r\n\r\n" + body).decode()
