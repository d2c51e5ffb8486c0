"""ASGI guards around the whole server: bounded request bodies, throttled logins, a login page
that does not list the API.

Plain ASGI middleware rather than Starlette's BaseHTTPMiddleware, so that streamed replies
(SSE from /v1 and Gradio's queue) pass through untouched.
"""

from __future__ import annotations

import json
import re
import time
from collections import defaultdict, deque
from dataclasses import dataclass, field

Scope = dict
ASGIApp = object


async def respond(send, status: int, message: str, headers: dict[str, str] | None = None) -> None:
    body = json.dumps({"error": {"message": message, "type": "invalid_request_error", "code": status}}).encode()
    extra = [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *extra],
        }
    )
    await send({"type": "http.response.body", "body": body})


class BodyTooLarge(Exception):
    pass


@dataclass
class BodyLimit:
    """Refuses (413) a request whose body exceeds `max_bytes`, by its Content-Length or as it arrives."""

    app: ASGIApp
    max_bytes: int

    async def __call__(self, scope: Scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length", b"0")
        if not length.isdigit() or int(length) > self.max_bytes:
            return await respond(send, 413, self.message())
        received, started = 0, False

        async def limited_receive():
            nonlocal received
            event = await receive()
            received += len(event.get("body", b""))
            if received > self.max_bytes:
                raise BodyTooLarge
            return event

        async def tracking_send(event):
            nonlocal started
            started = started or event["type"] == "http.response.start"
            await send(event)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLarge:
            if not started:
                await respond(send, 413, self.message())

    def message(self) -> str:
        return f"The request is larger than this server takes ({self.max_bytes} bytes)."


@dataclass
class LoginThrottle:
    """After `failures` wrong logins from one client within `window` seconds, its logins get 429."""

    app: ASGIApp
    failures: int = 5
    window: float = 60.0
    seen: dict[str, deque] = field(default_factory=lambda: defaultdict(deque))

    async def __call__(self, scope: Scope, receive, send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or not scope["path"].endswith("/login"):
            return await self.app(scope, receive, send)
        client = (scope.get("client") or ("",))[0]
        now = time.monotonic()
        times = self.seen[client]
        while times and now - times[0] >= self.window:
            times.popleft()
        if len(times) >= self.failures:
            wait = max(1, round(self.window - (now - times[0])))
            headers = {"Retry-After": str(wait)}
            return await respond(send, 429, f"Too many wrong logins. Try again in {wait} s.", headers)

        async def watching_send(event):
            if event["type"] == "http.response.start" and event["status"] >= 400:
                times.append(time.monotonic())
            await send(event)

        await self.app(scope, receive, watching_send)


_API_INFO = re.compile(rb"window\.gradio_api_info = \{.*?\};</script>", re.S)


@dataclass
class LoginPageWithoutApi:
    """Gradio's login page (served before a person has logged in) embeds the whole API description:
    strip it there; after the login the page is served as it is."""

    app: ASGIApp

    async def __call__(self, scope: Scope, receive, send) -> None:
        if scope["type"] != "http" or scope["method"] != "GET" or scope["path"] not in ("/", ""):
            return await self.app(scope, receive, send)
        start: dict = {}
        body = b""

        async def buffering_send(event):
            nonlocal body
            if event["type"] == "http.response.start":
                start.update(event)
                return
            body += event.get("body", b"")
            if event.get("more_body"):
                return
            if b'"auth_required":true' in body:
                body = _API_INFO.sub(b"window.gradio_api_info = {};</script>", body)
            headers = [(k, v) for k, v in start["headers"] if k.lower() != b"content-length"]
            await send({**start, "headers": [*headers, (b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body})

        await self.app(scope, receive, buffering_send)
