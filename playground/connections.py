"""Limits below HTTP, on connections: uvicorn's HTTP/1.1 protocol with a deadline for each request's headers
and a cap on the connections one client address holds open, so that half-sent requests starve nobody.

uvicorn itself waits for a request's headers for ever and takes every connection the system gives it;
no ASGI middleware sees a request before its headers are complete, so this has to sit in the protocol.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import time
from collections import Counter
from dataclasses import dataclass, field
from functools import partial

from uvicorn.protocols.http.h11_impl import H11Protocol

from playground.settings import proxy_set

HEADER_SECONDS = 10.0  # from a connection's start, or a request's first byte, to the end of its headers
LOG_EVERY = 60.0  # seconds between two log lines about one client's refused connections

log = logging.getLogger("uvicorn.error")


@dataclass
class ConnectionCap:
    """At most `limit` open connections per client address; addresses in `exempt` (trusted proxies, which
    carry many clients' connections) and every address when `any_exempt` are not counted."""

    limit: int
    exempt: frozenset[str] = frozenset()
    any_exempt: bool = False
    open: Counter = field(default_factory=Counter)
    logged: dict[str, float] = field(default_factory=dict)

    def admit(self, client: str) -> bool:
        """Counts a new connection of `client`, or refuses it (False), logging once a minute per client."""
        if self.any_exempt or client in self.exempt:
            return True
        if self.open[client] < self.limit:
            self.open[client] += 1
            return True
        now = time.monotonic()
        if now - self.logged.get(client, -LOG_EVERY) >= LOG_EVERY:
            self.logged = {c: t for c, t in self.logged.items() if now - t < LOG_EVERY}  # forget the quiet
            self.logged[client] = now
            log.warning(
                "Refusing connections from %s: it holds %d open (the limit; logged once a minute)", client, self.limit
            )
        return False

    def release(self, client: str) -> None:
        self.open[client] -= 1
        if self.open[client] <= 0:
            del self.open[client]


class GuardedH11(H11Protocol):
    """uvicorn's h11 protocol, closing a connection whose request headers are late and one over its client's cap."""

    def __init__(self, *args, cap: ConnectionCap, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.cap = cap
        self.counted: str | None = None
        self.header_deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        client = self.client[0] if self.client else ""
        if not self.cap.admit(client):
            transport.abort()
            return
        self.counted = client if not (self.cap.any_exempt or client in self.cap.exempt) else None
        self.header_deadline = self.loop.call_later(HEADER_SECONDS, self.headers_late)

    def data_received(self, data: bytes) -> None:
        between_requests = self.cycle is None or self.cycle.response_complete
        if between_requests and self.header_deadline is None:  # a next request on a kept-alive connection
            self.header_deadline = self.loop.call_later(HEADER_SECONDS, self.headers_late)
        super().data_received(data)
        if self.cycle is not None and not self.cycle.response_complete:  # its headers are in
            self.cancel_deadline()

    def _should_upgrade(self) -> bool:
        # No route here is a WebSocket (Gradio streams with SSE): an Upgrade header is served as plain HTTP.
        # uvicorn would log two lines per such request (without a WebSocket library) or hand the connection
        # to another protocol, which never gives its place under the cap back.
        return False

    def headers_late(self) -> None:
        self.header_deadline = None
        if self.cycle is None or self.cycle.response_complete:
            self.transport.abort()

    def cancel_deadline(self) -> None:
        if self.header_deadline is not None:
            self.header_deadline.cancel()
            self.header_deadline = None

    def connection_lost(self, exc: Exception | None) -> None:
        self.cancel_deadline()
        if self.counted is not None:
            self.cap.release(self.counted)
            self.counted = None
        super().connection_lost(exc)


def protocol(limit: int, trusted_proxies: str) -> partial:
    """The `http` protocol for uvicorn.Config: GuardedH11 sharing one cap across the server's connections."""
    cap = ConnectionCap(limit, proxy_set(trusted_proxies), any_exempt=trusted_proxies.strip() == "*")
    return partial(GuardedH11, cap=cap)


def raise_open_files_limit() -> None:
    """The soft limit on open files up to the hard one: a service's default of 1,024 is a few hundred clients."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
