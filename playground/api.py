"""OpenAI-compatible routes on the playground's own server: `/v1/models` and `/v1/chat/completions`.

They run through the same `Chat` as the UI: the same backends, limits, rate limit and admission
budget. What the API does not support is refused with a 400 that says so, never silently ignored.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing, suppress
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictStr,
    ValidationError,
    model_validator,
)
from starlette.requests import ClientDisconnect

from playground.chat import Chat, Update, check_text, in_words
from playground.guards import error_body
from playground.sampling import ParamError, SamplingParams
from playground.settings import Settings
from playground.template import DialogueError, split_system, validate

SAMPLING = ("temperature", "top_p", "seed", "top_k", "repetition_penalty")  # the last two are ours
MAX_STOPS = 4
MAX_STOP_CHARS = 200  # each is looked for at the end of the reply after every streamed piece


@dataclass
class APIError(Exception):
    """A refusal, answered in OpenAI's error format: `param` the field as the request wrote it, `code` a
    machine-readable reason where there is one."""

    status: int
    message: str
    kind: str = "invalid_request_error"
    retry_after: int = 0
    param: str | None = None
    code: str | None = None


def error(refusal: APIError) -> JSONResponse:
    headers = {"Retry-After": str(refusal.retry_after)} if refusal.retry_after else None
    message = refusal.message.encode("utf-8", "backslashreplace").decode()  # it may quote a lone surrogate
    return JSONResponse(error_body(message, refusal.kind, refusal.param, refusal.code), refusal.status, headers=headers)


def content_text(content: object) -> object:
    """OpenAI's content: a string, or a list of parts of which we take text parts only."""
    if not isinstance(content, list):
        return content
    if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str) for p in content):
        raise ValueError("only text content parts ({'type': 'text', 'text': ...}) are supported")
    return "".join(p["text"] for p in content)


def parse_stop(stop: object) -> list[str]:
    stops = [stop] if isinstance(stop, str) else stop if stop is not None else []
    if not isinstance(stops, list) or len(stops) > MAX_STOPS or not all(isinstance(s, str) and s for s in stops):
        raise ValueError(f"a string or a list of at most {MAX_STOPS} non-empty strings")
    return [check_text(s, "stop string", MAX_STOP_CHARS) for s in stops]


def only(*neutral: object) -> AfterValidator:
    """A field we accept only at the value that changes nothing."""

    def check(value: object) -> object:
        if value is not None and value not in neutral:
            raise ValueError(f"not supported (only {json.dumps(neutral[0])})")
        return value

    return AfterValidator(check)


class WireMessage(BaseModel, extra="forbid"):
    role: StrictStr  # which roles, and in which order: `template.validate`, as for every door
    content: Annotated[StrictStr, BeforeValidator(content_text)]


class StreamOptions(BaseModel, extra="forbid"):
    include_usage: StrictBool = False


class ChatBody(BaseModel):
    """The fields of OpenAI's chat request this server takes; any other is refused by name."""

    model_config = ConfigDict(extra="forbid")

    messages: Annotated[list[WireMessage], Field(min_length=1)]
    model: StrictStr | None = None
    stream: StrictBool | None = None
    stream_options: StreamOptions | None = None
    stop: Annotated[list[str], BeforeValidator(parse_stop)] = []
    user: Any = None
    n: Annotated[Any, only(1)] = None
    # Numbers are checked by SamplingParams, as for every door.
    max_tokens: Any = None
    max_completion_tokens: Any = None
    temperature: Any = None
    top_p: Any = None
    seed: Any = None
    top_k: Any = None
    repetition_penalty: Any = None
    frequency_penalty: Annotated[Any, only(0, 0.0)] = None
    presence_penalty: Annotated[Any, only(0, 0.0)] = None
    logit_bias: Annotated[Any, only({})] = None
    logprobs: Annotated[Any, only(False)] = None
    response_format: Annotated[Any, only({"type": "text"})] = None

    @model_validator(mode="after")
    def options_only_when_streaming(self) -> ChatBody:
        if self.stream_options is not None and not self.stream:
            raise ValueError("stream_options is only for stream true")
        return self

    @model_validator(mode="after")
    def one_limit(self) -> ChatBody:
        if self.max_tokens is not None and self.max_completion_tokens is not None:
            raise ValueError("give max_tokens or max_completion_tokens, not both")
        return self

    @property
    def limit(self) -> str:
        """How the request names its reply's limit."""
        return "max_completion_tokens" if "max_completion_tokens" in self.model_fields_set else "max_tokens"


# Pydantic's findings in the words of a JSON API.
WORDS = {
    "model_type": "must be a JSON object",
    "dict_type": "must be a JSON object",
    "too_short": "must not be empty",
    "missing": "is required",
    "string_type": "must be a string",
    "bool_type": "must be true or false",
    "list_type": "must be a list",
}
LISTED = 5  # unknown fields named in a refusal; the rest are counted


def quoted(name: str) -> str:
    return name if len(name) <= 60 else name[:57] + "..."


def described(exc: ValidationError) -> APIError:
    """Pydantic's findings as one 400, each naming the field as the caller wrote it: `messages[0].content`."""
    unknown, problems = [], []
    for found in exc.errors(include_url=False):
        where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in found["loc"]).lstrip(".")
        if found["type"] == "extra_forbidden":
            unknown.append(quoted(where))
            continue
        text = str(found["ctx"]["error"]) if found["type"] == "value_error" else WORDS.get(found["type"], found["msg"])
        if found["type"] == "string_unicode" and not where:  # pydantic reads no key with a lone surrogate
            text = "a field's name holds a lone surrogate (text that is not Unicode)"
        if where.endswith(".content") and found["type"] == "string_type":
            text = "must be a string or a list of text parts"
        problems.append((where, f"{where or 'the body'}: {text}"))
    if unknown:
        more = f" and {len(unknown) - LISTED} more" if len(unknown) > LISTED else ""
        problems.insert(0, (unknown[0], f"unsupported field(s): {', '.join(unknown[:LISTED])}{more}"))
    return APIError(400, "; ".join(text for _, text in problems), param=problems[0][0] or None)


def authorized(settings: Settings) -> Callable[[Request], None]:
    def check(request: Request) -> None:
        if settings.auth and not settings.api_key:
            message = "the OpenAI-compatible API is off: this server's page has a login; start it with --api-key KEY"
            raise APIError(403, message, code="api_off")
        # One header, exactly: with two, a proxy reading the other one would disagree with this check.
        if settings.api_key and request.headers.getlist("authorization") != [f"Bearer {settings.api_key}"]:
            raise APIError(401, "a valid API key is needed: Authorization: Bearer KEY", code="invalid_api_key")

    return check


def json_only(request: Request) -> None:
    """A cross-site form or text/plain POST (no CORS preflight) is refused; so is a body this server would
    read otherwise than it was written (another charset, compressed)."""
    kind, *options = [part.strip().lower() for part in request.headers.get("content-type", "").split(";")]
    charset = next((o.split("=", 1)[1].strip('"') for o in options if o.startswith("charset=")), "utf-8")
    if kind != "application/json" or charset not in ("utf-8", "utf8"):
        raise APIError(415, "the body must be JSON in UTF-8, with Content-Type: application/json")
    if request.headers.get("content-encoding", "identity").strip().lower() != "identity":
        raise APIError(415, "the body must not be compressed (no Content-Encoding)")


async def chat_body(request: Request) -> ChatBody:
    try:
        text = (await request.body()).decode("utf-8")  # as OpenAI: json.loads alone would take UTF-16 or -32
    except UnicodeDecodeError:
        raise APIError(400, "the body must be JSON in UTF-8") from None
    except ClientDisconnect:  # gone before its body was whole: nobody to answer, nothing to log
        raise APIError(400, "the body did not arrive whole") from None
    try:
        raw = json.loads(text, object_pairs_hook=unique_keys)
    except RecursionError:
        raise APIError(400, "the body's JSON is nested too deeply") from None
    except ValueError as exc:  # not JSON, a key given twice, or a number of more digits than Python reads
        raise APIError(400, str(exc) if isinstance(exc, DuplicateKey) else "the body is not valid JSON") from None
    if isinstance(raw, dict):  # null is absent, as OpenAI's clients send it for what they leave unset
        raw = {key: value for key, value in raw.items() if value is not None}
    try:
        return ChatBody.model_validate(raw)
    except ValidationError as exc:
        raise described(exc) from None


class DuplicateKey(ValueError):
    pass


def unique_keys(pairs: list[tuple[str, object]]) -> dict:
    """A JSON object whose keys are each given once: with two, the app and a proxy could read different ones."""
    keys = [key for key, _ in pairs]
    if len(set(keys)) < len(keys):
        again = next(key for i, key in enumerate(keys) if key in keys[:i])
        raise DuplicateKey(f"the key {quoted(again)!r} is given twice in one object")
    return dict(pairs)


@dataclass(frozen=True)
class Asked:
    history: list
    system: str
    params: SamplingParams
    model: str
    body: ChatBody


def ask(chat: Chat, body: ChatBody) -> Asked:
    """What the request asks of this server: the checks that need its models and limits."""
    messages = [{"role": m.role, "content": m.content} for m in body.messages]
    try:
        validate(messages, last="user")
        system, turns = split_system(messages)
        chat.check_message(turns[-1]["content"])
        params = chat.params(max_new_tokens=getattr(body, body.limit), **{k: getattr(body, k) for k in SAMPLING})
    except ParamError as exc:
        named = body.limit if exc.name == "max_new_tokens" else exc.name
        raise APIError(400, in_words(exc, body.limit), param=named) from None
    except DialogueError as exc:
        raise APIError(400, in_words(exc, body.limit), param="messages") from None
    model = "" if body.model not in chat.backends and len(chat.backends) == 1 else body.model or ""
    return Asked(turns, system, params, model, body)


def refusal(update: Update, limit: str, kind: str = "invalid_request_error") -> APIError:
    code = "rate_limit_exceeded" if update.status == 429 else None
    return APIError(update.status, in_words(update.error, limit), kind, update.retry_after, code=code)


def finish_reason(update: Update) -> str:
    return "length" if update.finish == "length" else "stop"


def usage(first: Update, last: Update) -> dict:
    return {
        "prompt_tokens": first.prompt_tokens,
        "completion_tokens": last.tokens,
        "total_tokens": first.prompt_tokens + last.tokens,
    }


class ClosingStream(StreamingResponse):
    """A streamed response that runs `on_close` however it ends, also when the client left before
    the first byte (the body then never starts, so its own `finally` would not run)."""

    def __init__(self, body: AsyncIterator[str], on_close: Callable[[], Awaitable[None]]):
        super().__init__(body, media_type="text/event-stream")
        self.on_close = on_close

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.on_close()


async def until_done_or_gone(request: Request, work: Awaitable[Update]) -> Update | None:
    """Awaits `work`, cancelling it if the client disconnects first (then returns None)."""
    task = asyncio.ensure_future(work)
    while not task.done():
        await asyncio.wait({task}, timeout=0.25)
        if not task.done() and await request.is_disconnected():
            task.cancel()
            with suppress(asyncio.CancelledError):
                await task
            return None
    return task.result()


def add_openai_api(app: FastAPI, chat: Chat) -> None:
    app.include_router(openai_routes(chat))
    app.add_exception_handler(APIError, answer_refusal)


async def answer_refusal(request: Request, exc: APIError) -> JSONResponse:
    return error(exc)


def openai_routes(chat: Chat) -> APIRouter:
    router = APIRouter(prefix="/v1", dependencies=[Depends(authorized(chat.settings))])

    @router.get("/models")
    def models():
        data = [
            {"id": name, "object": "model", "created": 0, "owned_by": "starchat-playground"} for name in chat.backends
        ]
        return {"object": "list", "data": data}

    @router.post("/chat/completions", dependencies=[Depends(json_only)])
    async def completions(request: Request, body: Annotated[ChatBody, Depends(chat_body)]):
        asked = ask(chat, body)
        client = request.client.host if request.client else ""
        updates = chat.respond(asked.history, asked.system, asked.params, asked.model, client, body.stop)
        first = await anext(updates)
        if first.error:
            await updates.aclose()
            raise refusal(first, body.limit)
        meta = {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "created": int(time.time()),
            "model": asked.model or next(iter(chat.backends)),
        }
        if not body.stream:
            return await completion(request, updates, first, meta, body.limit)
        return ClosingStream(chunks(updates, first, meta, body), updates.aclose)  # closing cancels the generation

    return router


async def completion(request: Request, updates: AsyncIterator[Update], first: Update, meta: dict, limit: str):
    async with aclosing(updates):
        last = await until_done_or_gone(request, last_of(updates, first))
    if last is None:
        return error(APIError(499, "the client closed the request"))
    if last.error:
        raise refusal(last, limit, "server_error")
    message = {"role": "assistant", "content": last.conversation[-1]["content"]}
    choice = {"index": 0, "message": message, "finish_reason": finish_reason(last)}
    return {"object": "chat.completion", **meta, "choices": [choice], "usage": usage(first, last)}


async def chunks(updates: AsyncIterator[Update], first: Update, meta: dict, body: ChatBody) -> AsyncIterator[str]:
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    # As OpenAI sends it: with include_usage every chunk has "usage" (null), and one more chunk, with no
    # choices, holds it.
    counted = {"usage": None} if include_usage else {}

    def chunk(delta: dict, reason: str | None = None) -> str:
        choice = {"index": 0, "delta": delta, "finish_reason": reason}
        return sse({**meta, "object": "chat.completion.chunk", "choices": [choice], **counted})

    yield chunk({"role": "assistant", "content": ""})
    sent, last = "", first
    async for last in updates:
        if last.error:
            message = in_words(last.error, body.limit)
            yield sse(error_body(message, "server_error"))
            return
        reply = last.conversation[-1]["content"]
        if len(reply) > len(sent):
            yield chunk({"content": reply[len(sent) :]})
            sent = reply
    yield chunk({}, finish_reason(last))
    if include_usage:
        yield sse({**meta, "object": "chat.completion.chunk", "choices": [], "usage": usage(first, last)})
    yield "data: [DONE]\n\n"


async def last_of(updates: AsyncIterator[Update], first: Update) -> Update:
    last = first
    async for last in updates:  # noqa: B007 - the last update holds the whole reply
        pass
    return last


def sse(payload: dict) -> str:
    return f"data: {json.dumps(payload)}\n\n"
