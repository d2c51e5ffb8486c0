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

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.requests import ClientDisconnect

from playground.chat import Chat, Update, check_text, in_words
from playground.sampling import ParamError, SamplingParams
from playground.template import ROLE_TOKENS, DialogueError, split_system

SAMPLING = {"temperature", "top_p", "seed", "top_k", "repetition_penalty"}  # the last two are ours
ACCEPTED = {"model", "messages", "stream", "stream_options", "n", "stop", "user", "max_tokens", "max_completion_tokens"}
# Fields we accept only at the value that changes nothing.
NEUTRAL = {
    "frequency_penalty": (0, 0.0),
    "presence_penalty": (0, 0.0),
    "logit_bias": ({},),
    "logprobs": (False,),
    "response_format": ({"type": "text"},),
}
MAX_STOPS = 4
MAX_STOP_CHARS = 200  # each is looked for at the end of the reply after every streamed piece


def error(status: int, message: str, kind: str = "invalid_request_error", retry_after: int = 0) -> JSONResponse:
    headers = {"Retry-After": str(retry_after)} if retry_after else None
    message = message.encode("utf-8", "backslashreplace").decode()  # it may quote a client's lone surrogate
    body = {"error": {"message": message, "type": kind, "param": None, "code": status}}
    return JSONResponse(body, status, headers=headers)


def content_text(content: object) -> object:
    """OpenAI's content: a string, or a list of parts of which we take text parts only."""
    if not isinstance(content, list):
        return content
    if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str) for p in content):
        raise DialogueError("only text content parts ({'type': 'text', 'text': ...}) are supported")
    return "".join(p["text"] for p in content)


def parse_stop(stop: object) -> list[str]:
    stops = [stop] if isinstance(stop, str) else stop if stop is not None else []
    if not isinstance(stops, list) or len(stops) > MAX_STOPS or not all(isinstance(s, str) and s for s in stops):
        raise DialogueError(f"stop must be a string or a list of at most {MAX_STOPS} non-empty strings")
    return [check_text(s, "stop string", MAX_STOP_CHARS) for s in stops]


@dataclass(frozen=True)
class Parsed:
    history: list
    system: str
    params: SamplingParams
    model: str
    stream: bool
    stop: list[str]
    limit: str  # how the request named its reply's limit: max_tokens or max_completion_tokens
    include_usage: bool


def parse(chat: Chat, body: object) -> Parsed:
    """An OpenAI chat request, read and checked; raises with a clear reason."""
    if not isinstance(body, dict):
        raise DialogueError("the body must be a JSON object")
    if unknown := set(body) - ACCEPTED - SAMPLING - set(NEUTRAL):
        raise DialogueError(f"unsupported field(s): {', '.join(sorted(unknown))}")
    for name, neutral in NEUTRAL.items():
        if name in body and body[name] is not None and body[name] not in neutral:
            raise DialogueError(f"{name} is not supported (only {neutral[0]!r})")
    if body.get("n", 1) not in (1, None):
        raise DialogueError("n must be 1")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
        raise DialogueError("messages must be a non-empty list of {role, content}")
    for i, m in enumerate(messages):
        if not isinstance(role := m.get("role"), str) or role not in ROLE_TOKENS:
            raise DialogueError(f"messages[{i}].role must be one of {', '.join(ROLE_TOKENS)}, not {role!r}")
    if again := next((i for i, m in enumerate(messages) if i and m["role"] == "system"), None):
        raise DialogueError(f"messages[{again}] is a system message: only the first message may be one")
    messages = [{"role": m.get("role"), "content": content_text(m.get("content"))} for m in messages]
    system, turns = split_system(messages)
    if not turns or turns[-1]["role"] != "user":
        raise DialogueError("the last message must be from the user")
    chat.check_message(turns[-1]["content"])
    raw = {k: body[k] for k in SAMPLING if k in body}
    limit = "max_completion_tokens" if "max_completion_tokens" in body else "max_tokens"
    if (tokens := body.get(limit)) is not None:
        raw["max_new_tokens"] = tokens
    model = body.get("model") or ""
    if not isinstance(model, str):
        raise DialogueError("model must be a string")
    model = "" if model not in chat.backends and len(chat.backends) == 1 else model
    stop = parse_stop(body.get("stop"))
    if (stream := body.get("stream")) is not None and not isinstance(stream, bool):
        raise DialogueError(f"stream must be true or false, not {stream!r}")
    options = body.get("stream_options")
    if options is not None and not (
        stream
        and isinstance(options, dict)
        and set(options) <= {"include_usage"}
        and isinstance(options.get("include_usage", False), bool)
    ):
        raise DialogueError("stream_options takes only include_usage (true or false), and only with stream true")
    try:
        params = chat.params(**raw)
    except ParamError as exc:
        raise DialogueError(in_words(exc, limit)) from None
    return Parsed(
        turns, system or "", params, model, bool(stream), stop, limit, bool((options or {}).get("include_usage"))
    )


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


def openai_routes(chat: Chat) -> APIRouter:
    settings = chat.settings

    def denied(request: Request) -> JSONResponse | None:
        if settings.auth and not settings.api_key:
            message = "the OpenAI-compatible API is off: this server's page has a login; start it with --api-key KEY"
            return error(403, message, "api_off")
        if settings.api_key and request.headers.get("authorization") != f"Bearer {settings.api_key}":
            return error(401, "a valid API key is needed: Authorization: Bearer KEY", "invalid_api_key")
        return None

    router = APIRouter(prefix="/v1")

    @router.get("/models")
    def models(request: Request):
        if refusal := denied(request):
            return refusal
        data = [
            {"id": name, "object": "model", "created": 0, "owned_by": "starchat-playground"} for name in chat.backends
        ]
        return {"object": "list", "data": data}

    @router.post("/chat/completions")
    async def completions(request: Request):
        if refusal := denied(request):
            return refusal
        # JSON only: a cross-site form or text/plain POST (no CORS preflight) is refused.
        if request.headers.get("content-type", "").split(";")[0].strip().lower() != "application/json":
            return error(415, "the body must be JSON, with Content-Type: application/json")
        try:
            text = (await request.body()).decode("utf-8")  # as OpenAI: json.loads alone would take UTF-16 or -32
        except UnicodeDecodeError:
            return error(400, "the body must be JSON in UTF-8")
        except ClientDisconnect:  # gone before its body was whole: nobody to answer, nothing to log
            return error(400, "the body did not arrive whole")
        try:
            body = json.loads(text)
        except (ValueError, RecursionError):  # not JSON, or nested beyond reason
            return error(400, "the body is not valid JSON")
        try:
            asked = parse(chat, body)
        except (ParamError, DialogueError) as exc:
            return error(400, str(exc))
        client = request.client.host if request.client else ""
        updates = chat.respond(asked.history, asked.system, asked.params, asked.model, client, asked.stop)
        first = await anext(updates)
        if first.error:
            await updates.aclose()
            kind = "rate_limit_exceeded" if first.status == 429 else "invalid_request_error"
            return error(first.status, in_words(first.error, asked.limit), kind, first.retry_after)
        meta = {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "created": int(time.time()),
            "model": asked.model or next(iter(chat.backends)),
        }

        if not asked.stream:
            async with aclosing(updates):
                last = await until_done_or_gone(request, last_of(updates, first))
            if last is None:
                return error(499, "the client closed the request")
            if last.error:
                kind = "rate_limit_exceeded" if last.status == 429 else "server_error"
                return error(last.status, in_words(last.error, asked.limit), kind, last.retry_after)
            message = {"role": "assistant", "content": last.conversation[-1]["content"]}
            choice = {"index": 0, "message": message, "finish_reason": finish_reason(last)}
            return {"object": "chat.completion", **meta, "choices": [choice], "usage": usage(first, last)}

        # As OpenAI sends it: with include_usage every chunk has "usage" (null), and one more chunk, with no
        # choices, holds it.
        counted = {"usage": None} if asked.include_usage else {}

        def chunk(delta: dict, reason: str | None = None) -> str:
            choice = {"index": 0, "delta": delta, "finish_reason": reason}
            return sse({**meta, "object": "chat.completion.chunk", "choices": [choice], **counted})

        async def events() -> AsyncIterator[str]:
            yield chunk({"role": "assistant", "content": ""})
            sent, last = "", first
            async for last in updates:
                if last.error:
                    message = in_words(last.error, asked.limit)
                    yield sse({"error": {"message": message, "type": "server_error", "code": last.status}})
                    return
                reply = last.conversation[-1]["content"]
                if len(reply) > len(sent):
                    yield chunk({"content": reply[len(sent) :]})
                    sent = reply
            yield chunk({}, finish_reason(last))
            if asked.include_usage:
                yield sse({**meta, "object": "chat.completion.chunk", "choices": [], "usage": usage(first, last)})
            yield "data: [DONE]\n\n"

        return ClosingStream(events(), updates.aclose)  # closing cancels the generation

    return router


async def last_of(updates: AsyncIterator[Update], first: Update) -> Update:
    last = first
    async for last in updates:  # noqa: B007 - the last update holds the whole reply
        pass
    return last


def sse(payload: dict) -> str:
    return f"data: {json.dumps(payload)}\n\n"
