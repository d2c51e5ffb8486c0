"""Connections as the hurried and the hostile open them: half-sent requests, many at once from one address."""

import os
import resource
import signal
import socket
import threading
import time
from pathlib import Path

import httpx
import pytest

from playground.connections import HEADER_SECONDS, ConnectionCap
from tests.conftest import logged, serve_model, start_app, stop_app

HALF_A_REQUEST = b"GET /v1/models HTTP/1.1\r\nHo"


def test_a_client_address_holds_at_most_its_cap_and_proxies_are_not_counted():
    cap = ConnectionCap(limit=3, exempt=frozenset({"10.0.0.1"}))
    with logged("uvicorn.error") as records:
        assert [cap.admit("10.0.0.9") for _ in range(5)] == [True, True, True, False, False]
        assert all(cap.admit("10.0.0.1") for _ in range(10))  # a trusted proxy carries many clients
        assert cap.admit("10.0.0.8")  # another address is not held back
        cap.release("10.0.0.9")
        assert cap.admit("10.0.0.9") and not cap.admit("10.0.0.9")
    refusals = [r for r in records if "Refusing connections from 10.0.0.9" in r.getMessage()]
    assert len(refusals) == 1  # three refusals, one line: once a minute per client
    assert ConnectionCap(limit=1, any_exempt=True).admit("x") and ConnectionCap(limit=1, any_exempt=True).admit("x")


def closed_by_the_server(sock: socket.socket, within: float) -> bool:
    """Whether the server closes `sock` within `within` seconds (what it sent before is read and dropped)."""
    sock.settimeout(within)
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        pass
    except TimeoutError:
        return False
    return True


def open_files_limit(pid: int) -> tuple[int, int]:
    line = next(x for x in Path(f"/proc/{pid}/limits").read_text().splitlines() if x.startswith("Max open files"))
    soft, hard = line.split()[3:5]
    return int(soft), int(hard)


@pytest.mark.slow  # starts app.py and waits out the header deadline
def test_half_sent_requests_from_one_address_leave_the_others_served(tiny_checkpoint, tmp_path):
    """1,100 connections that each send half a request line, under a 1,024 open-file limit (a common service
    default), sent while the server is stopped: another address is still served at once, the half-sent ones
    are closed after the header deadline, and the refusals are one log line, not one per attempt."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if max(soft, hard) < 1_500:
        pytest.skip("this test opens 1,100 connections: it needs an open-file limit over 1,500")
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    proc, url = start_app("--model", str(tiny_checkpoint), cache_dir=tmp_path, open_files=1024)
    port = int(url.rstrip("/").rsplit(":", 1)[1])
    held: list[socket.socket] = []
    try:
        assert open_files_limit(proc.pid) == (1024, 1024)  # the app raised its soft limit (512) to the hard one
        os.kill(proc.pid, signal.SIGSTOP)  # a server that falls behind, as on a loaded machine, for 2 s
        threading.Timer(2, os.kill, (proc.pid, signal.SIGCONT)).start()
        for _ in range(1_100):
            sock = socket.create_connection(("127.0.0.1", port))
            sock.sendall(HALF_A_REQUEST)
            held.append(sock)
        started = time.monotonic()
        other = httpx.HTTPTransport(local_address="127.0.0.2")
        with httpx.Client(transport=other, timeout=5) as http:
            assert http.get(f"http://127.0.0.1:{port}/v1/models").status_code == 200
        assert time.monotonic() - started < 5
        assert closed_by_the_server(held[0], within=HEADER_SECONDS + 5)  # its headers were late
    finally:
        for sock in held:
            sock.close()
        stop_app(proc)
    log = proc.stdout.read()
    assert log.count("Refusing connections from 127.0.0.1") == 1, log[-2000:]
    assert "Too many open files" not in log


def test_an_upgrade_request_is_plain_http_frees_its_place_and_logs_nothing(tiny_checkpoint, tmp_path):
    upgrade = (
        b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade, close\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    with (
        serve_model(tiny_checkpoint, tmp_path, "--max-connections-per-client", "2") as (url, _),
        logged("uvicorn.error") as records,  # after the start: uvicorn's logging config replaces handlers
    ):
        port = int(url.rstrip("/").rsplit(":", 1)[1])
        for _ in range(4):  # more than the cap: each gave its place back
            with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
                sock.sendall(upgrade)
                assert sock.recv(100).startswith(b"HTTP/1.1 200")
                assert closed_by_the_server(sock, within=5)
        assert httpx.get(url + "v1/models", timeout=10).status_code == 200
    assert not [r.getMessage() for r in records]
