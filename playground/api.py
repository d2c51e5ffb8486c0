"""OpenAI-compatible routes on the playground's own server: `/v1/models` and `/v1/chat/completions`.

They run through the same `Chat` as the UI: the same backends, limits and rate limit. Requests
beyond `concurrency + queue_size` in flight are told the server is busy (429), as a full Gradio
queue tells the UI's users.
"""

from __future__ import annotations

import json
import time
import uuid
import weakref
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import JSONResponse, StreamingResponse

from playground.backends import ParamError
from playground.chat import Chat, Update
from playground.template import DialogueError, encode_text, split_system

EXTRA = {"top_k", "repetition_penalty"}  # ours, beside OpenAI's own sampling fields
IGNORED = {
    "model",
    "messages",
    "stream",
    "n",
    "stop",
    "user",
    "stream_options",
    "frequency_penalty",
    "presence_penalty",
    "logit_bias",
    "response_format",
}


def error(status: int, message: str, kind: str = "invalid_request_error") -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "param": None, "code": status}}, status)


def parse(chat: Chat, body: object) -> tuple[list, str, object, str, bool]:
    """(history, system, params, model, stream) from an OpenAI chat request; raises with a clear reason."""
    if not isinstance(body, dict):
        raise DialogueError("the body must be a JSON object")
    unknown = set(body) - IGNORED - EXTRA - {"temperature", "top_p", "max_tokens", "max_completion_tokens", "seed"}
    if unknown:
        raise DialogueError(f"unsupported field(s): {', '.join(sorted(unknown))}")
    if body.get("n", 1) != 1:
        raise DialogueError("n must be 1")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
        raise DialogueError("messages must be a non-empty list of {role, content}")
    messages = [{"role": m.get("role"), "content": m.get("content")} for m in messages]
    system, turns = split_system(messages)
    if not turns or turns[-1]["role"] != "user":
        raise DialogueError("the last message must be from the user")
    chat.check_message(turns[-1]["content"])
    raw = {k: body[k] for k in ("temperature", "top_p", "seed", *EXTRA) if k in body}
    tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    if tokens is not None:
        raw["max_new_tokens"] = tokens
    model = body.get("model") or ""
    model = "" if model not in chat.backends and len(chat.backends) == 1 else model
    return turns, system or "", chat.params(**raw), model, bool(body.get("stream"))


@dataclass
class Admission:
    """Counts requests in flight; each admitted request is released exactly once, however it ends."""

    limit: int
    in_flight: int = 0

    def enter(self) -> Callable[[], None] | None:
        if self.in_flight >= self.limit:
            return None
        self.in_flight += 1
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self.in_flight -= 1

        return release


def openai_routes(chat: Chat) -> APIRouter:
    admission = Admission(chat.concurrency + chat.settings.queue_size)

    def require_key(request: Request) -> None:
        key = chat.settings.api_key
        if key and request.headers.get("authorization") != f"Bearer {key}":
            message = "a valid API key is needed: Authorization: Bearer KEY"
            raise HTTPException(401, {"message": message, "type": "invalid_api_key"})

    router = APIRouter(prefix="/v1", dependencies=[Depends(require_key)])

    @router.get("/models")
    def models() -> dict:
        data = [
            {"id": name, "object": "model", "created": 0, "owned_by": "starchat-playground"} for name in chat.backends
        ]
        return {"object": "list", "data": data}

    @router.post("/chat/completions")
    async def completions(request: Request):
        try:
            history, system, params, model, stream = parse(chat, await request.json())
        except json.JSONDecodeError:
            return error(400, "the body is not JSON")
        except (ParamError, DialogueError) as exc:
            return error(400, str(exc))
        release = admission.enter()
        if release is None:
            return error(429, "The server is busy: too many requests are waiting. Try again shortly.", "server_busy")
        updates = chat.respond(history, system, params, model, request.client.host if request.client else "")
        first = await anext(updates)
        if first.error:
            release()
            return error(first.status, first.error)
        name = model or next(iter(chat.backends))
        tokenizer = chat.backend(model).tokenizer
        meta = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": name}

        def finish(reply: str) -> tuple[str, dict]:
            completion_tokens = len(encode_text(tokenizer, reply))
            reason = "length" if completion_tokens >= params.max_new_tokens else "stop"
            usage = {
                "prompt_tokens": first.prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": first.prompt_tokens + completion_tokens,
            }
            return reason, usage

        async def collect() -> Update:
            last = first
            async for last in updates:  # noqa: B007 - the last update holds the whole reply
                pass
            return last

        if not stream:
            try:
                last = await collect()
            finally:
                release()
            if last.error:
                return error(last.status, last.error, "server_error")
            reply = last.conversation[-1]["content"]
            reason, usage = finish(reply)
            message = {"role": "assistant", "content": reply}
            choice = {"index": 0, "message": message, "finish_reason": reason}
            return {"object": "chat.completion", **meta, "choices": [choice], "usage": usage}

        async def events() -> AsyncIterator[str]:
            sent = ""
            try:
                yield sse(
                    {
                        **meta,
                        "object": "chat.completion.chunk",
                        "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}],
                    }
                )
                async for update in updates:
                    if update.error:
                        yield sse({"error": {"message": update.error, "type": "server_error", "code": update.status}})
                        return
                    reply = update.conversation[-1]["content"]
                    if len(reply) > len(sent):
                        yield sse(
                            {
                                **meta,
                                "object": "chat.completion.chunk",
                                "choices": [
                                    {"index": 0, "delta": {"content": reply[len(sent) :]}, "finish_reason": None}
                                ],
                            }
                        )
                        sent = reply
                reason, usage = finish(sent)
                yield sse(
                    {
                        **meta,
                        "object": "chat.completion.chunk",
                        "usage": usage,
                        "choices": [{"index": 0, "delta": {}, "finish_reason": reason}],
                    }
                )
                yield "data: [DONE]\n\n"
            finally:
                release()
                await updates.aclose()  # a client that went away cancels the generation

        body = events()
        weakref.finalize(body, release)  # a client gone before the body started: the generator never runs
        return StreamingResponse(body, media_type="text/event-stream")

    return router


def sse(payload: dict) -> str:
    return f"data: {json.dumps(payload)}\n\n"
