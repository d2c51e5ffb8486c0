"""Real HTTP servers on 127.0.0.1 that speak TGI's and OpenAI's streaming protocols, for the tests.

They stream a fixed reply word by word, remember what they were sent, and can be told to fail:
`error` answers 500, `die_after` closes the connection mid-stream, `pings` keeps it alive with no token,
and a few more ways of misbehaving (see Script).
"""

from __future__ import annotations

import json
import threading
import time
from base64 import b64decode
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Script:
    reply: str = "Use `sorted(xs)` to sort.\n\n```python\nprint(sorted([3, 1, 2]))\n```"
    delay: float = 0.002  # seconds between tokens
    error: bool = False
    die_after: int | None = None  # tokens sent before the connection is cut
    pings: int = 0  # keep-alive comments sent before the first token, one each `delay`
    busy: int | None = None  # answer 429 with this Retry-After, as TGI does when its queue is full
    page: bool = False  # answer 200 with an HTML page, as a proxy's login page would
    specials: int = 0  # events with no visible text (TGI: special tokens; OpenAI: empty text) before the reply
    drip_headers: bool = False  # a header line every 0.2 s, never ending the headers: no read waits long
    requests: list[dict] = field(default_factory=list)
    disconnects: int = 0  # streams the client closed before the end

    answer: Callable[[dict], str] | None = None  # the reply to a request's body, in place of `reply`
    echo_seed: bool = False  # start the reply with the request's seed, to tell clients' replies apart
    claimed_tokens: int | None = None  # the reply's length the server claims (usage, details), if not the truth

    def tokens(self, body: dict | None = None) -> list[str]:
        reply = self.reply_for(body or {})
        words = reply.split(" ")
        return [w + (" " if i < len(words) - 1 else "") for i, w in enumerate(words)]

    def reply_for(self, body: dict) -> str:
        reply = self.answer(body) if self.answer else self.reply
        seed = body.get("seed", body.get("parameters", {}).get("seed"))
        return f"seed {seed}: {reply}" if self.echo_seed else reply


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    script: Script

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        if self.path.rstrip("/") == "/v1/models":
            self.send_json(200, {"object": "list", "data": [{"id": "fake-starchat", "object": "model"}]})
        elif self.path == "/info":
            self.send_json(200, {"model_id": "fake-starchat", "max_total_tokens": 8192})
        else:
            self.send_json(404, {"error": "not found"})

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
        self.script.requests.append({"path": self.path, "body": body, "auth": self.headers.get("Authorization")})
        if self.script.drip_headers:
            self.wfile.write(b"HTTP/1.1 200 OK\r\n")
            try:
                for i in range(300):
                    self.wfile.write(f"X-Wait-{i}: 1\r\n".encode())
                    self.wfile.flush()
                    time.sleep(0.2)
            except (BrokenPipeError, ConnectionResetError):
                self.script.disconnects += 1
            self.close_connection = True
            return
        if self.script.page:
            page = b"<html><body>Sign in</body></html>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(page)))
            self.end_headers()
            self.wfile.write(page)
            return
        if self.script.busy is not None:
            self.send_json(429, {"error": "Model is overloaded"}, {"Retry-After": str(self.script.busy)})
            return
        if self.script.error:  # as a careless proxy answers: the request's headers in the error, decoded too
            auth = self.headers.get("Authorization") or ""
            decoded = b64decode(auth.removeprefix("Basic ")).decode() if auth.startswith("Basic ") else ""
            said = f"the model crashed (you sent {auth}; user:password {decoded})"
            self.send_json(500, {"error": said, "error_type": "generation"})
            return
        openai = self.path.startswith("/v1/")
        if not body.get("stream"):
            self.send_json(200, {"generated_text": self.script.reply})
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.end_headers()
        try:
            for _ in range(self.script.pings):
                self.wfile.write(b": ping\n\n")
                self.wfile.flush()
                time.sleep(self.script.delay)
            for i in range(self.script.specials):
                self.event(self.openai_chunk("", None) if openai else self.tgi_chunk(i, "<|endoftext|>", None, True))
            tokens = self.script.tokens(body)
            for i, token in enumerate(tokens):
                if self.script.die_after is not None and i >= self.script.die_after:
                    self.connection.shutdown(2)  # the server dies mid-stream
                    return
                self.event(self.openai_chunk(token, None) if openai else self.tgi_chunk(i, token, None))
                time.sleep(self.script.delay)
            if openai:
                self.event(self.openai_chunk("", "stop"))
                if body.get("stream_options", {}).get("include_usage"):
                    usage = self.usage(body, tokens, self.script.claimed_tokens)
                    self.event({**self.openai_chunk("", None), "choices": [], "usage": usage})
                self.wfile.write(b"data: [DONE]\n\n")
            else:
                final = self.tgi_chunk(len(tokens), "<|end|>", "".join(tokens), special=True)
                claimed = self.script.claimed_tokens
                generated = len(tokens) + 1 if claimed is None else claimed
                details = {"finish_reason": "eos_token", "generated_tokens": generated, "seed": None}
                self.event({**final, "details": {**details, "input_length": 0}})
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            self.script.disconnects += 1
        self.close_connection = True

    def event(self, payload: dict) -> None:
        self.wfile.write(f"data: {json.dumps(payload)}\n\n".encode())
        self.wfile.flush()

    @staticmethod
    def tgi_chunk(i: int, text: str, final: str | None, special: bool = False) -> dict:
        token = {"id": i, "text": text, "logprob": -0.1, "special": special}
        return {"index": i, "token": token, "generated_text": final, "details": None, "top_tokens": None}

    @staticmethod
    def usage(body: dict, tokens: list[str], claimed: int | None = None) -> dict:
        prompt, generated = len(body.get("prompt") or []), len(tokens) + 1 if claimed is None else claimed
        return {"prompt_tokens": prompt, "completion_tokens": generated, "total_tokens": prompt + generated}

    @staticmethod
    def openai_chunk(text: str, finish: str | None) -> dict:
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
        return {
            "id": "cmpl-fake",
            "object": "text_completion",
            "created": 0,
            "model": "fake-starchat",
            "choices": [choice],
        }

    def send_json(self, status: int, payload: dict, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)


class FakeServer:
    """`with FakeServer() as server:` serves on server.url until the block ends."""

    def __init__(self, script: Script | None = None):
        self.script = script or Script()
        handler = type("BoundHandler", (Handler,), {"script": self.script})
        server = type("Server", (ThreadingHTTPServer,), {"request_queue_size": 128})  # many clients connect at once
        self.httpd = server(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __enter__(self) -> FakeServer:
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class HubHandler(BaseHTTPRequestHandler):
    """The calls `HfApi.create_repo`, `create_branch` and `upload_folder` make, for small files sent inline; any
    other is a 404. Every request's method and path is kept in `requests`."""

    protocol_version = "HTTP/1.1"
    commits: list[list[str]]
    revisions: list[str]  # the branch of each commit
    branches: list[str]  # the branches created
    requests: list[str]

    def log_request(self, code="-", size="-") -> None:
        self.requests.append(f"{self.command} {self.path}")

    def log_message(self, *args) -> None:
        pass

    def reply(self, payload: dict) -> None:
        data = json.dumps(payload).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        base = f"http://127.0.0.1:{self.server.server_address[1]}"
        if self.path == "/api/validate-yaml":  # upload_folder has the Hub check a README's front matter
            self.reply({"errors": [], "warnings": []})
        elif self.path == "/api/repos/create":
            name = json.loads(body)
            self.reply({"url": f"{base}/{name.get('organization')}/{name['name']}"})
        elif "/preupload/" in self.path:
            files = json.loads(body)["files"]
            self.reply({"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]})
        elif "/branch/" in self.path:  # HfApi.create_branch
            self.branches.append(self.path.rsplit("/branch/", 1)[1])
            self.reply({})
        elif "/commit/" in self.path:
            lines = [json.loads(line) for line in body.decode().splitlines() if line]
            self.commits.append([line["value"]["path"] for line in lines if line["key"] == "file"])
            self.revisions.append(self.path.rsplit("/commit/", 1)[1])
            repo = self.path.split("/api/models/")[1].split("/commit/")[0]
            self.reply({"commitUrl": f"{base}/{repo}/commit/{'a' * 40}", "commitOid": "a" * 40})
        else:
            self.send_error(404)

    def do_GET(self) -> None:
        self.send_error(404)

    do_HEAD = do_GET


class FakeHub(FakeServer):
    """A loopback stand-in for the Hub's upload API (HF_ENDPOINT=hub.url); `commits` lists the paths of each
    commit, `revisions` its branch, `branches` those created, `requests` every request it was sent."""

    def __init__(self):
        self.commits: list[list[str]] = []
        self.revisions: list[str] = []
        self.branches: list[str] = []
        self.requests: list[str] = []
        shared = {"commits": self.commits, "revisions": self.revisions, "branches": self.branches}
        handler = type("BoundHub", (HubHandler,), {**shared, "requests": self.requests})
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
