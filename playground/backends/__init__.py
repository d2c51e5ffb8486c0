"""The one interface every backend serves: `stream(ChatRequest)`, text pieces and then how the reply ended."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
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

# What people see for the model served when no --model is given (the app's default_model): in the model
# list, in /v1/models (an id clients pass back) and on the console, never its cache folder's name.
DEMO_NAME = "StarChat demo (tiny, trained here)"


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


def check_model_path(model: str) -> None:
    """A model named by a path, or a folder that is here, must be a model's folder (a Hub id is checked as it
    loads)."""
    folder = Path(model).expanduser()
    if not model or not (model.startswith(("/", ".", "~")) or folder.is_dir()) or (folder / "config.json").is_file():
        return
    if (folder / "adapter_config.json").is_file():
        raise ValueError(
            f"{model}: a LoRA adapter, not a model: merge it into its base first "
            f"(python -m training.merge --base BASE --adapter {model} --output DIR), then serve DIR"
        )
    if (folder / "checkpoints").is_dir():
        raise ValueError(
            f"{model}: a training run that has not written its served checkpoint yet (stopped early?): "
            f"continue it with python -m training.train RECIPE.yaml --output_dir {model} --resume true"
        )
    raise ValueError(f"{model}: not a model's folder (no config.json there)")


def load_backend(settings, default_model: Callable[[], str | Path] | None = None) -> Backend:
    """The backend `settings` ask for; with no --model, the folder `default_model` gives (the app's demo)."""
    from playground.backends.local import LocalBackend

    check_model_path(settings.model)
    if settings.backend == "endpoint":
        from playground.backends.endpoint import EndpointBackend

        return EndpointBackend.connect(
            settings.model,
            settings.endpoint_url,
            settings.endpoint_protocol,
            settings.endpoint_token or None,
            settings.endpoint_timeout,
            settings.endpoint_model,
        )
    if not settings.model and default_model is None:
        raise ValueError("no model given: pass --model ID_OR_PATH")
    model = settings.model or str(default_model())
    return LocalBackend.from_pretrained(
        model,
        settings.quantize,
        demo=not settings.model,
        engine=settings.engine,
        slots=settings.batch_slots,
        name="" if settings.model else DEMO_NAME,
    )


def load_backends(settings, default_model: Callable[[], str | Path] | None = None) -> dict[str, Backend]:
    """Display name -> backend: the models file's entries in order, or the one model of the flags."""
    if not settings.models_file:
        backend = load_backend(settings, default_model)
        return {backend.info.model: backend}
    from playground.models_file import read_models_file

    backends = {}
    for i, (name, chosen) in enumerate(read_models_file(settings.models_file, settings)):
        try:
            backends[name] = load_backend(chosen, default_model)
        except (OSError, ValueError, BackendError) as exc:  # which of several models failed, and why
            raise ValueError(f"{settings.models_file}: entry {i} ({name}): {exc}") from None
    return backends
