"""ASGI guards around the whole server: bounded request bodies, throttled logins, a login page
that does not list the API, no file uploads, Gradio's routes that the page does not use closed.

Plain ASGI middleware rather than Starlette's BaseHTTPMiddleware, so that streamed replies
(SSE from /v1 and Gradio's queue) pass through untouched.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from dataclasses import dataclass, field
from urllib.parse import unquote_plus

from starlette.routing import compile_path

from playground.rate_window import SlidingWindow
from playground.settings import proxy_set

Scope = dict
ASGIApp = object


def error_body(message: str, kind: str = "invalid_request_error", param: str | None = None, code=None) -> dict:
    """An error as OpenAI's API gives it, for every refusal this server writes as JSON."""
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


async def respond(send, status: int, message: str, headers: dict[str, str] | None = None) -> None:
    body = json.dumps(error_body(message)).encode()
    extra = [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *extra],
        }
    )
    await send({"type": "http.response.body", "body": body})


def routes(*templates: str) -> tuple[re.Pattern, ...]:
    """Gradio route templates compiled as Starlette compiles a route's path, for `reaches` to match as its
    router matches, against the decoded path: every spelling that reaches one of these routes (a trailing
    slash where Gradio has both, percent-escapes) matches, and nothing else does."""
    return tuple(compile_path(template)[0] for template in templates)


def reaches(scope: Scope, patterns: tuple[re.Pattern, ...]) -> re.Match | None:
    path = scope["path"].removeprefix(scope.get("root_path", "")) or "/"
    return next(filter(None, (pattern.fullmatch(path) for pattern in patterns)), None)


BODY_SECONDS = 30.0  # from a request's first read of its body to its last byte: 2 MB at 70 KB/s


class BodySlow(Exception):
    pass


class BodyTooLarge(Exception):
    pass


@dataclass
class BodyLimit:
    """Refuses (413) a request whose body exceeds `max_bytes`, by its Content-Length or as it arrives, and
    (408) one whose body does not arrive whole within BODY_SECONDS: a client that stops sending holds no
    connection and no handler."""

    app: ASGIApp
    max_bytes: int

    async def __call__(self, scope: Scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        if scope["method"] in ("POST", "PUT", "PATCH") and b"content-length" not in headers:
            # A streamed (chunked) body would only be found too large once the app had written part
            # of it somewhere; every client this server has (browsers, gradio_client, openai) sends a length.
            return await respond(send, 411, "The request needs a Content-Length header.")
        length = headers.get(b"content-length", b"0")
        if not length.isdigit() or int(length) > self.max_bytes:
            return await respond(send, 413, self.message())
        received, started, whole = 0, False, False
        deadline = time.monotonic() + BODY_SECONDS

        async def limited_receive():
            nonlocal received, whole
            if whole:  # what comes after the body (a disconnect) has no deadline
                return await receive()
            try:
                event = await asyncio.wait_for(receive(), max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                raise BodySlow from None
            received += len(event.get("body", b""))
            whole = event["type"] != "http.request" or not event.get("more_body", False)
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
        except BodySlow:
            if not started:
                await respond(send, 408, f"The request's body did not arrive whole within {BODY_SECONDS:.0f} s.")

    def message(self) -> str:
        return f"The request is larger than this server takes ({self.max_bytes} bytes)."


LOGIN = routes("/login", "/login/")


@dataclass
class LoginThrottle:
    """After `failures` wrong logins from one client within `window` seconds, its logins get 429. A login is
    any request that reaches Gradio's login route, however its path is spelt."""

    app: ASGIApp
    failures: int = 5
    window: float = 60.0
    wrong: SlidingWindow = field(init=False)

    def __post_init__(self) -> None:
        self.wrong = SlidingWindow(self.failures, self.window)

    async def __call__(self, scope: Scope, receive, send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or not reaches(scope, LOGIN):
            return await self.app(scope, receive, send)
        client = (scope.get("client") or ("",))[0]
        # Counted as wrong until it succeeds, so parallel guesses count too.
        if wait := self.wrong.take(client):
            return await respond(
                send, 429, f"Too many wrong logins. Try again in {wait} s.", {"Retry-After": str(wait)}
            )

        async def watching_send(event):
            if event["type"] == "http.response.start" and event["status"] < 400:
                self.wrong.give_back(client)
            await send(event)

        await self.app(scope, receive, watching_send)


_API_INFO = re.compile(rb"window\.gradio_api_info = \{.*?\};</script>", re.S)


@dataclass
class LoginPageWithoutApi:
    """Gradio's login page (served before a person has logged in, at / and at its other page routes) embeds
    the whole API description: strip it from every such page; after the login a page is served as it is."""

    app: ASGIApp

    async def __call__(self, scope: Scope, receive, send) -> None:
        if scope["type"] != "http" or scope["method"] != "GET":  # HEAD has no body to hold the list
            return await self.app(scope, receive, send)
        start: dict = {}
        body, html = b"", False

        async def buffering_send(event):
            nonlocal body, html
            if event["type"] == "http.response.start":
                html = dict(event.get("headers", [])).get(b"content-type", b"").startswith(b"text/html")
                if not html:
                    return await send(event)
                start.update(event)
                return
            if not html:
                return await send(event)
            body += event.get("body", b"")
            if event.get("more_body"):
                return
            if b'"auth_required":true' in body:
                body = _API_INFO.sub(b"window.gradio_api_info = {};</script>", body)
            headers = [(k, v) for k, v in start["headers"] if k.lower() != b"content-length"]
            await send({**start, "headers": [*headers, (b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body})

        await self.app(scope, receive, buffering_send)


@dataclass
class ForwardedClient:
    """The client's address from X-Forwarded-For, but only when the peer is a trusted proxy.

    `trusted` is a comma-separated list of proxy addresses, or "*" for "whatever proxy is in front"
    (a Space). The address taken is the rightmost one that a trusted proxy did not add itself:
    anything to its left was written by the client and proves nothing. With "*" only the peer is
    trusted, so that is the last entry: the one the proxy appended.
    """

    app: ASGIApp
    trusted: str
    proxies: frozenset[str] = field(init=False)
    any_proxy: bool = field(init=False)

    def __post_init__(self) -> None:
        self.proxies = proxy_set(self.trusted)
        self.any_proxy = self.trusted.strip() == "*"

    async def __call__(self, scope: Scope, receive, send) -> None:
        proxies = self.proxies
        peer = (scope.get("client") or ("",))[0]
        forwarded = dict(scope.get("headers", [])).get(b"x-forwarded-for")
        if scope["type"] in ("http", "websocket") and forwarded and (self.any_proxy or peer in proxies):
            hops = [h.strip() for h in forwarded.decode("latin-1").split(",") if h.strip()]
            client = next((h for h in reversed(hops) if h not in proxies), hops[0] if hops else peer)
            scope = {**scope, "client": (client, 0)}
        await self.app(scope, receive, send)


@dataclass
class NoOutsideImages:
    """Pages may show images only from this server: a markdown image or an <img> in a reply that got
    past the chat's own escaping would otherwise make every viewer's browser fetch an outside URL
    (a way to leak a conversation). Scripts, styles and fonts are left as Gradio needs them."""

    app: ASGIApp

    async def __call__(self, scope: Scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def policy_send(event):
            if event["type"] == "http.response.start":
                kind = dict(event.get("headers", [])).get(b"content-type", b"")
                if kind.startswith(b"text/html"):
                    policy = (b"content-security-policy", b"img-src 'self' data: blob:; media-src 'self' data: blob:")
                    event = {**event, "headers": [*event.get("headers", []), policy]}
            await send(event)

        await self.app(scope, receive, policy_send)


@dataclass
class NoUploads:
    """Refuses Gradio's upload route: the page has no file input (Load reads its file in the browser), and
    every upload would stay in the served cache for anyone to fetch, with no cap on their sum."""

    app: ASGIApp

    async def __call__(self, scope: Scope, receive, send) -> None:
        if scope["type"] == "http" and scope["path"].rstrip("/").endswith("/upload"):
            return await respond(send, 403, "This server takes no file uploads.")
        await self.app(scope, receive, send)


DEEP_LINK = routes("/gradio_api/deep_link", "/gradio_api/deep_link/")
# Gradio's routes that run an event by name. /call (and /call/v2) name it in the path, and take only the
# forms below with a public name. /run runs the event its body's index names, unqueued ones only: the page
# itself runs its unqueued events there, so it stays (each does what the page does, with the page's checks);
# /api, an older name for /run, is closed.
BY_NAME = ("/gradio_api/call/", "/gradio_api/api/")
NAMED_CALL = routes(
    # v2 first: /call/v2/chat would otherwise read as the event "v2" with the id "chat"
    *(f"/gradio_api/call/{v2}{{api_name}}{end}" for v2 in ("v2/", "") for end in ("", "/", "/{event_id}"))
)
RECORDING = routes("/gradio_api/process_recording", "/gradio_api/process_recording/")  # an upload in all but name


@dataclass
class ClosedRoutes:
    """Gradio routes the page does not use, closed (404) by the route a request reaches:
    - deep links, which write the session's values (the open conversation) to a file on the server for
      anyone to read back, and the page's `deep_link` parameter, which would show such a file;
    - events called by name but the `public` ones (the page reaches its own by index, through the queue or,
      unqueued, through /run, where each runs with the page's checks);
    - Gradio's recording upload (the page records nothing)."""

    app: ASGIApp
    public: frozenset[str]

    async def __call__(self, scope: Scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if reaches(scope, DEEP_LINK) or reaches(scope, RECORDING) or not self.may_run(scope):
            return await respond(send, 404, "Not found.")
        pairs = scope.get("query_string", b"").split(b"&")
        kept = [p for p in pairs if unquote_plus(p.split(b"=")[0].decode("latin-1")) != "deep_link"]
        if len(kept) < len(pairs):
            scope = {**scope, "query_string": b"&".join(kept)}
        await self.app(scope, receive, send)

    def may_run(self, scope: Scope) -> bool:
        """Whether a path that calls an event by name names a public one (any other path may go on)."""
        path = scope["path"].removeprefix(scope.get("root_path", ""))
        if not path.startswith(BY_NAME):
            return True
        named = reaches(scope, NAMED_CALL)
        return bool(named) and named["api_name"] in self.public
