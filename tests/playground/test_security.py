"""Login, Gradio's file routes, per-client rate limit."""

import httpx
import pytest
from gradio_client import Client
from gradio_client.exceptions import AppError

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
        with pytest.raises(AppError, match="has 5 messages; the limit is 2"):
            Client(url, verbose=False).predict(message="hi", history=history, max_new_tokens=4, api_name="/chat")
