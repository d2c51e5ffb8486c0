"""The one interface every backend serves: `stream(ChatRequest) -> iterator of text pieces`."""

from __future__ import annotations

import math
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Protocol

import anyio

from playground.template import Message, Prompt


class BackendError(RuntimeError):
    """Something went wrong while answering; the message is shown to the person as it is."""


class ParamError(ValueError):
    """A sampling parameter that the server will not take; the message says which and why."""


# name -> (type, low, high); the sliders use the same ranges, API callers meet them here.
PARAM_RANGES: dict[str, tuple[type, float, float]] = {
    "temperature": (float, 0.0, 2.0),
    "top_p": (float, 0.01, 1.0),
    "top_k": (int, 0, 1000),
    "max_new_tokens": (int, 1, 8192),
    "repetition_penalty": (float, 1.0, 2.0),
    "seed": (int, -1, 2**31 - 1),
}


MIN_TEMPERATURE = 0.01


def number(value: float) -> str:
    """A number as people write it: 2147483647, 0.95, 1e-300 (not 2.14748e+09)."""
    return str(int(value)) if float(value).is_integer() and abs(value) < 1e16 else repr(float(value))


@dataclass(frozen=True)
class SamplingParams:
    """The card's defaults. temperature 0 means greedy; top_k 0 means no top-k; seed -1 is random."""

    temperature: float = 0.2
    top_p: float = 0.95
    top_k: int = 50
    max_new_tokens: int = 512
    repetition_penalty: float = 1.2
    seed: int = -1

    @classmethod
    def parse(cls, max_new_tokens_limit: int | None = None, **raw: object) -> SamplingParams:
        """Checks values that may come from anyone (API callers bypass the sliders)."""
        unknown = set(raw) - {f.name for f in fields(cls)}
        if unknown:
            raise ParamError(f"unknown parameter(s): {', '.join(sorted(unknown))}")
        values = {}
        for name, value in raw.items():
            if value is None:
                continue
            kind, low, high = PARAM_RANGES[name]
            if name == "max_new_tokens" and max_new_tokens_limit is not None:
                high = min(high, max_new_tokens_limit)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ParamError(f"{name} must be a number, got {value!r}")
            if isinstance(value, int) and abs(value) > 2**53:  # beyond every range, and beyond a float
                raise ParamError(
                    f"{name} must be between {number(low)} and {number(high)}, got a {value.bit_length()}-bit number"
                )
            if not math.isfinite(value):
                raise ParamError(f"{name} must be a finite number, got {value!r}")
            if kind is int:
                if value != int(value):
                    raise ParamError(f"{name} must be a whole number, got {value!r}")
                value = int(value)
            if not low <= value <= high:
                raise ParamError(f"{name} must be between {number(low)} and {number(high)}, got {number(value)}")
            if name == "temperature" and 0 < value < MIN_TEMPERATURE:  # dividing by it overflows the logits
                raise ParamError(f"temperature must be 0 (greedy) or at least {MIN_TEMPERATURE}, got {number(value)}")
            values[name] = kind(value)
        return cls(**values)


@dataclass
class Outcome:
    """How a reply ended; the backend fills it in before its stream ends."""

    tokens: int = 0  # tokens the model generated, its closing stop token included
    finish: str = ""  # "stop": the model ended its turn; "length": max_new_tokens or the context ran out;
    # "cancelled": the request was cancelled; "error": the backend failed mid-reply


@dataclass
class ChatRequest:
    messages: list[Message]  # an optional system message, then user/assistant turns ending with the user
    params: SamplingParams = field(default_factory=SamplingParams)
    cancel: threading.Event = field(default_factory=threading.Event)
    outcome: Outcome = field(default_factory=Outcome)


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

    def stream(self, request: ChatRequest) -> Iterator[str]:
        """Text pieces of the reply, without control tokens, until <|end|> or request.cancel."""


def context_length(config) -> int:
    for key in ("max_position_embeddings", "n_positions", "n_ctx"):
        if isinstance(getattr(config, key, None), int):
            return getattr(config, key)
    raise BackendError("the model's config gives no context length (max_position_embeddings / n_positions)")


_DONE = object()


async def astream(backend: Backend, request: ChatRequest) -> AsyncIterator[str]:
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


def load_backend(settings) -> Backend:
    """The backend `settings` ask for; with no --model, the offline demo checkpoint."""
    from playground.backends.local import LocalBackend
    from playground.demo import demo_checkpoint

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
    model = settings.model or str(demo_checkpoint(settings.cache_dir))
    return LocalBackend.from_pretrained(
        model, settings.quantize, demo=not settings.model, engine=settings.engine, slots=settings.batch_slots
    )


MODEL_KEYS = {
    "model",
    "backend",
    "quantize",
    "endpoint_url",
    "endpoint_protocol",
    "endpoint_model",
    "endpoint_token",
    "endpoint_timeout",
}


def load_backends(settings) -> dict[str, Backend]:
    """Display name -> backend: the models file's entries in order, or the one model of the flags."""
    if not settings.models_file:
        backend = load_backend(settings)
        return {backend.info.model: backend}
    import dataclasses

    import yaml

    entries = (yaml.safe_load(Path(settings.models_file).read_text()) or {}).get("models") or []
    if not entries:
        raise ValueError(f"{settings.models_file}: no entries under 'models:'")
    backends = {}
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or "name" not in entry or set(entry) - MODEL_KEYS - {"name"}:
            raise ValueError(f"{settings.models_file}: entry {i} needs a name and only the keys {sorted(MODEL_KEYS)}")
        overrides = {k: v for k, v in entry.items() if k != "name"}
        backends[str(entry["name"])] = load_backend(dataclasses.replace(settings, **overrides))
    return backends
