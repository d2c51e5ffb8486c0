"""Shared fixtures: tiny StarChat checkpoints built on the fly (no network), and a served app."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import resource
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from training.checkpoint import model_card, save_checkpoint
from training.scratch import build_base, python_doc_dialogues

ROOT = Path(__file__).resolve().parent.parent
# Inductor compiles in a pool of worker processes that outlive the test that started them; on 2 cores
# one compile thread is as fast and leaves no process behind.
os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")


def descendants(pid: int | None = None) -> dict[int, str]:
    """Living (not zombie) descendant processes of `pid` (default: this one), by pid, with their command line."""
    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if fields[0] != "Z":
                parents.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = {}, [pid or os.getpid()]
    while todo:
        for child in parents.get(todo.pop(), []):
            with contextlib.suppress(OSError):
                found[child] = (Path("/proc") / str(child) / "cmdline").read_bytes().replace(b"\0", b" ").decode()[:200]
            todo.append(child)
    return found


# Processes a module's fixture keeps for its tests (a browser's driver): they, and what they start, outlive a test.
KEPT: set[int] = set()


def survivors(before: dict[int, str], seconds: float) -> dict[int, str]:
    """Descendants not in `before`, nor kept, that are still alive after waiting up to `seconds` for them to end."""
    deadline = time.monotonic() + seconds
    while True:
        kept = {pid for root in KEPT for pid in (root, *descendants(root))}
        left = {p: c for p, c in descendants().items() if p not in before and p not in kept}
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(0.1)


@pytest.fixture(scope="session", autouse=True)
def gradio_folder(tmp_path_factory) -> Path:
    """Gradio's uploads and cache for this run alone (not the machine's shared /tmp/gradio)."""
    folder = tmp_path_factory.mktemp("gradio")
    os.environ["GRADIO_TEMP_DIR"] = str(folder)
    return folder


# What builds the demo model (~65 s on 2 cores, once a run): whatever needs it is slow, so the quick loop
# (-m "not slow") never builds it.
NEEDS_THE_DEMO = {"first_start", "demo_model"}


def needs_the_demo(item: pytest.Item) -> set[str]:
    return NEEDS_THE_DEMO & set(getattr(item, "fixturenames", ()))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    needing = [item for item in items if needs_the_demo(item)]
    for item in needing:
        item.add_marker(pytest.mark.slow)
    # Last: the demo model builds meanwhile (`launched_first_start`), on what the tests before leave idle.
    items[:] = [item for item in items if not needs_the_demo(item)] + needing


@pytest.fixture(scope="session", autouse=True)
def inductor_cache(tmp_path_factory) -> Path:
    """One Inductor cache for the run, in this process and every one it starts: a graph one test compiled
    (bench.generate --tiny's, say) is read from it by the next test that compiles it (bench/gpu.sh --tiny
    runs the same), not compiled again. A run's own folder, so no earlier run's kernels are read."""
    folder = os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(tmp_path_factory.mktemp("inductor")))
    return Path(folder)


@pytest.fixture(autouse=True)
def no_process_left_behind():
    """Every process a test starts (servers, training runs, browsers) has ended when the test ends."""
    before = descendants()
    yield
    left = survivors(before, seconds=15)
    for pid in left:
        with contextlib.suppress(OSError):
            os.kill(pid, 9)
    assert not left, f"processes outlived the test: {left}"


@pytest.fixture(scope="session", autouse=True)
def no_process_left_at_the_end():
    yield
    left = survivors({}, seconds=15)
    assert not left, f"processes outlived the test run: {left}"


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """An untrained one-layer StarChat-format GPTBigCode with a 256-token context, as a served folder."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = build_base(
        python_doc_dialogues(limit=60),
        tmp_path_factory.mktemp("base"),
        vocab_size=400,
        n_layer=1,
        n_embd=32,
        n_head=2,
        n_positions=256,
    )
    out = tmp_path_factory.mktemp("tiny")
    model = AutoModelForCausalLM.from_pretrained(base)
    save_checkpoint(model, AutoTokenizer.from_pretrained(base), out, model_card("tiny", "scratch", {}, []))
    return out


@pytest.fixture(scope="session")
def tokenizer(tiny_checkpoint):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_checkpoint)


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """The app's cache; STARCHAT_TEST_CACHE keeps the demo model between local runs."""
    return Path(os.environ.get("STARCHAT_TEST_CACHE") or tmp_path_factory.mktemp("cache"))


@dataclass(frozen=True)
class FirstStart:
    demo: Path  # the demo checkpoint it built
    console: str  # everything it printed, from its start to after its first reply
    hub_requests: list[str]  # what it asked the Hub (a fake one on loopback), online
    chat_reply: str  # its /chat answer (gradio_client, seed 0) to the page's Fibonacci example
    config: dict  # the page's /config
    models: list[str]  # the ids /v1/models lists


def demo_built(cache: Path) -> bool:
    from training.demo import demo_folder

    return (demo_folder(cache) / "config.json").exists()


@dataclass(frozen=True)
class Launched:
    proc: subprocess.Popen
    url: str
    cache: Path  # where it builds the demo
    hub_requests: list[str]


@pytest.fixture(scope="session", autouse=True)
def launched_first_start(request, cache_dir, tmp_path_factory) -> Iterator[Launched | None]:
    """The session's first start of `python app.py` (see `first_start`), launched as the session begins when a
    test will need it: it builds the demo model (~65 s on 2 cores) at a lower priority, on what the tests
    before those that need it (run last) leave idle. A cache_dir that already holds the demo (STARCHAT_TEST_CACHE
    between local runs) would make it no first start: then it runs in a fresh folder, if a test asks for it."""
    from tests.fakes import FakeHub

    needed = set().union(*(needs_the_demo(item) for item in request.session.items))
    if "first_start" not in needed and ("demo_model" not in needed or demo_built(cache_dir)):
        yield None
        return
    cache = tmp_path_factory.mktemp("first-start") if demo_built(cache_dir) else cache_dir
    with FakeHub() as hub:
        env = {"HF_HUB_OFFLINE": "0", "HF_ENDPOINT": hub.url}
        proc, url = launch_app(cache_dir=cache, env=env, nice=10)
        try:
            yield Launched(proc, url, cache, hub.requests)
        finally:
            stop_app(proc)


@pytest.fixture(scope="session")
def first_start(launched_first_start) -> FirstStart:
    """`python app.py` on a machine without the demo: it builds it (the session's one build, in cache_dir),
    serves, answers one message at temperature 0, and stops. It runs online, against a fake Hub on loopback."""
    import httpx
    from gradio_client import Client

    from training.demo import demo_checkpoint

    proc, url = launched_first_start.proc, launched_first_start.url
    try:
        wait_for_app(proc, url, timeout=900)
        message = {"role": "user", "content": "How do I reverse a list in Python?"}
        reply = httpx.post(url + "v1/chat/completions", json={"messages": [message], "temperature": 0}, timeout=60)
        reply.raise_for_status()
        # What the other first-start tests read, asked while it runs: one start of the app serves them all.
        example = "How can I write a Python function to generate the nth Fibonacci number?"
        page = Client(url, verbose=False)
        chat_reply = page.predict(message=example, history=[], seed=0, api_name="/chat")
        config = httpx.get(url + "config").json()
        models = [m["id"] for m in httpx.get(url + "v1/models").json()["data"]]
    finally:
        stop_app(proc)
    console, requests = proc.stdout.read(), launched_first_start.hub_requests
    return FirstStart(demo_checkpoint(launched_first_start.cache), console, requests, chat_reply, config, models)


@pytest.fixture(scope="session")
def demo_model(cache_dir, request) -> Path:
    """The offline demo checkpoint, built by the real first-run path (`python app.py`, the tiny recipe)."""
    if demo_built(cache_dir):
        from training.demo import demo_checkpoint

        return demo_checkpoint(cache_dir)
    return request.getfixturevalue("first_start").demo


@contextlib.contextmanager
def logged(name: str):
    """Yields the list of records that logger `name` handles within the block, whatever its propagation
    (uvicorn's loggers do not propagate to the root logger, where caplog listens). Enter it after a server
    has started: uvicorn's logging config replaces its loggers' handlers."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger(name)
    logger.addHandler(handler)
    try:
        yield records
    finally:
        logger.removeHandler(handler)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serve(*flags: str):
    """The whole server (UI, /chat, /v1) on a free loopback port in this process; yields (url, chat)."""
    import uvicorn

    from playground.server import create_app, uvicorn_options
    from playground.settings import Settings

    settings = Settings.from_args(list(flags), env={})
    app, chat = create_app(settings)
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=free_port(),
        log_level="warning",
        timeout_graceful_shutdown=1,
        **uvicorn_options(settings),
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{server.config.port}/", chat
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def serve_model(model: Path, cache: Path, *flags: str):
    """`serve` for one model folder with its own cache."""
    return serve("--model", str(model), "--cache-dir", str(cache), *flags)


def slow_model(chat, monkeypatch, *, delay: float, endless: bool, gate: threading.Event | None = None) -> list[int]:
    """Each decode step takes `delay` seconds; `endless` forbids <|end|> and <|endoftext|>; a `gate` holds
    every step until it is set (20 s at most).

    Returns the list that counts forward calls, so a test can tell how far generation went.
    """
    backend = chat.backend()
    stops = backend.tokenizer.convert_tokens_to_ids(["<|end|>", "<|endoftext|>"])
    original = type(backend.model).forward.__get__(backend.model)
    calls: list[int] = []

    def forward(*args, **kwargs):
        calls.append(1)
        if gate:
            gate.wait(20)
        time.sleep(delay)
        out = original(*args, **kwargs)
        if endless:
            out.logits[:, -1, stops] = -float("inf")
        return out

    monkeypatch.setattr(backend.model, "forward", forward)
    return calls


def generating() -> bool:
    return any(t.name == "starchat-generate" for t in threading.enumerate())


def wait_until_idle(seconds: float = 20) -> bool:
    deadline = time.monotonic() + seconds
    while generating() and time.monotonic() < deadline:
        time.sleep(0.05)
    return not generating()


def start_app(
    *args: str, cache_dir: Path, env: dict | None = None, timeout: float = 240, open_files: int | None = None
) -> tuple[subprocess.Popen, str]:
    """`python app.py ARGS` on a free loopback port; returns the process and its URL once it answers, and
    proc.stdout reads what it printed.
    open_files: the app starts under that hard limit on open files (its soft limit half of it)."""
    proc, url = launch_app(*args, cache_dir=cache_dir, env=env, open_files=open_files)
    wait_for_app(proc, url, timeout)
    return proc, url


def launch_app(
    *args: str, cache_dir: Path, env: dict | None = None, open_files: int | None = None, nice: int = 0
) -> tuple[subprocess.Popen, str]:
    """`python app.py ARGS` on a free loopback port, not waited for; `nice`: its lower priority."""
    port = free_port()
    full_env = {
        **os.environ,
        "STARCHAT_CACHE_DIR": str(cache_dir),
        "GRADIO_ANALYTICS_ENABLED": "False",
        "HF_HUB_OFFLINE": "1",
        **(env or {}),
    }

    def limits() -> None:
        os.nice(nice)
        if open_files:
            resource.setrlimit(resource.RLIMIT_NOFILE, (open_files // 2, open_files))

    # Its output goes to a file, not a pipe: a pipe nobody reads while the test runs fills at 64 KB and then
    # stops the server at its next log line.
    fd, log = tempfile.mkstemp(prefix="app-", suffix=".log")
    with os.fdopen(fd, "ab") as sink:
        proc = subprocess.Popen(
            [sys.executable, str(ROOT / "app.py"), "--port", str(port), *args],
            cwd=ROOT,
            env=full_env,
            stdout=sink,
            stderr=subprocess.STDOUT,
            preexec_fn=limits,
        )
    proc.stdout = open(log, encoding="utf-8", errors="replace")  # noqa: SIM115 (read after it ends)
    os.unlink(log)
    return proc, f"http://127.0.0.1:{port}/"


def wait_for_app(proc: subprocess.Popen, url: str, timeout: float) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"app.py exited with {proc.returncode}:\n{proc.stdout.read()}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.5)
    proc.kill()
    raise TimeoutError(f"app.py did not answer on {url}:\n{proc.stdout.read()}")


def stop_app(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()


def bench_records(module: str, *args: str) -> list[dict]:
    """Runs `python -m MODULE ARGS` and returns the JSON lines it printed."""
    out = subprocess.run(
        [sys.executable, "-m", module, *args], cwd=ROOT, capture_output=True, text=True, timeout=300, check=True
    ).stdout
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def local_and_remote(folder: Path, checkpoint: Path, url: str, local_name: str) -> Path:
    """A models file: the tiny checkpoint served here, and the same checkpoint behind an endpoint."""
    import yaml

    remote = {"name": "Remote", "model": str(checkpoint), "backend": "endpoint", "endpoint_url": url}
    models = folder / "models.yaml"
    models.write_text(yaml.safe_dump({"models": [{"name": local_name, "model": str(checkpoint)}, remote]}))
    return models
