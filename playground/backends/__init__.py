"""The one interface every backend serves: `stream(ChatRequest)`, text pieces and then how the reply ended."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

import anyio

from playground.sampling import SamplingParams
from playground.template import Message, Prompt


class BackendError(RuntimeError):
    """Something went wrong while answering; the message is shown to the person as it is."""


class Refused(BackendError):
    """Not now: the client asks too often, or this server or the model's is full. `retry_after` is in seconds."""

    def __init__(self, message: str, retry_after: int):
        super().__init__(message)
        self.retry_after = retry_after


@dataclass
class Outcome:
    """How a reply ended: the last item of a backend's stream."""

    tokens: int = 0  # tokens the model generated, its closing stop token included
    finish: str = ""  # "stop": the model ended its turn; "length": max_new_tokens or the context ran out;
    # "cancelled": the request was cancelled; "error": the backend failed mid-reply


@dataclass
class ChatRequest:
    messages: list[Message]  # an optional system message, then user/assistant turns ending with the user
    params: SamplingParams = field(default_factory=SamplingParams)
    cancel: threading.Event = field(default_factory=threading.Event)


@dataclass(frozen=True)
class BackendInfo:
    model: str
    device: str
    quantization: str
    context_length: int
    demo: bool = False
    parallel: int = 1  # requests it serves at once: more wait in the queue

    def describe(self) -> str:
        return (
            f"**{self.model}** · {self.device} · quantization: {self.quantization} · "
            f"context {self.context_length} tokens"
        )


class Backend(Protocol):
    info: BackendInfo
    tokenizer: object  # the served checkpoint's: for trimming, and for counting tokens

    def prepare(self, messages: list[Message], max_new_tokens: int) -> Prompt:
        """The prompt the request would send (after trimming old turns); raises ContextError."""

    def stream(self, request: ChatRequest) -> Iterator[str | Outcome]:
        """Text pieces of the reply, without control tokens, until <|end|> or request.cancel; then, last, one
        Outcome. A stream closed before its end gives none."""


def context_length(config) -> int:
    for key in ("max_position_embeddings", "n_positions", "n_ctx"):
        if isinstance(getattr(config, key, None), int):
            return getattr(config, key)
    raise BackendError("the model's config gives no context length (max_position_embeddings / n_positions)")


_DONE = object()


async def astream(backend: Backend, request: ChatRequest) -> AsyncIterator[str | Outcome]:
    """Runs `backend.stream` off the event loop; a cancelled or closed consumer cancels the request."""
    pieces = backend.stream(request)
    # A cancelled consumer leaves its `next` running in the worker thread; closing the generator then
    # would fail ("generator already executing"), so closing waits for that step under the same lock.
    stepping = threading.Lock()

    def step() -> object:
        with stepping:
            return next(pieces, _DONE)

    def close() -> None:
        with stepping:
            pieces.close()

    try:
        while (piece := await anyio.to_thread.run_sync(step)) is not _DONE:
            yield piece
    finally:
        request.cancel.set()
        # Shielded: a cancelled consumer still waits the one decode step it takes to stop.
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(close)


def collect(stream: Iterable[str | Outcome]) -> tuple[str, Outcome]:
    """A whole stream's text and its final Outcome ("cancelled" where it gave none)."""
    text, outcome = [], Outcome(finish="cancelled")
    for piece in stream:
        if isinstance(piece, Outcome):
            outcome = piece
        else:
            text.append(piece)
    return "".join(text), outcome


async def ended(pieces: AsyncIterator[str | Outcome], cancel: threading.Event) -> Outcome:
    """Cancels a stream's request and drops the rest of its text: its Outcome then counts the tokens
    generated before the backend stopped ("cancelled" where none comes)."""
    cancel.set()
    async for piece in pieces:
        if isinstance(piece, Outcome):
            return piece
    return Outcome(finish="cancelled")
