"""One chat turn as the UI and the APIs run it: check, trim to the context, stream, report errors."""

from __future__ import annotations

import json
import time
from collections import defaultdict, deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from playground.backends import Backend, BackendError, ChatRequest, SamplingParams, astream
from playground.settings import Settings
from playground.template import DialogueError, Message, Prompt, reply_text, split_system, validate


@dataclass(frozen=True)
class Update:
    """The conversation so far (ending with the partial reply once one streams), or why it failed."""

    conversation: list[Message]
    context: str = ""
    error: str | None = None
    status: int = 200  # for HTTP callers: 400 a bad request, 429 too many, 502 the backend failed
    prompt_tokens: int = 0


def describe_context(prompt: Prompt) -> str:
    share = 100 * prompt.used / prompt.context_length
    text = (
        f"Context: {len(prompt.input_ids)} prompt tokens + up to {prompt.max_new_tokens} new "
        f"of {prompt.context_length} ({share:.0f}%)"
    )
    if prompt.dropped_turns:
        text += f"; the {prompt.dropped_turns} oldest turn(s) are left out to fit"
    return text


class RateLimited(DialogueError):
    """A client asked more often than the server allows."""


@dataclass
class RateLimiter:
    """At most `per_minute` requests per client in any sliding minute; 0 means no limit."""

    per_minute: int
    seen: dict[str, deque] = field(default_factory=lambda: defaultdict(deque))

    def check(self, client: str) -> None:
        if not self.per_minute:
            return
        now = time.monotonic()
        times = self.seen[client]
        while times and now - times[0] >= 60:
            times.popleft()
        if len(times) >= self.per_minute:
            wait = 60 - (now - times[0])
            raise RateLimited(f"Too many requests: the limit is {self.per_minute} a minute. Try again in {wait:.0f} s.")
        times.append(now)


@dataclass
class Chat:
    backends: dict[str, Backend]  # display name -> backend; the first is the default
    settings: Settings
    rate: RateLimiter = field(init=False)

    def __post_init__(self) -> None:
        self.rate = RateLimiter(self.settings.rate_limit)

    @property
    def concurrency(self) -> int:
        return self.settings.concurrency or max(b.info.parallel for b in self.backends.values())

    def backend(self, name: str = "") -> Backend:
        if not name:
            return next(iter(self.backends.values()))
        if name not in self.backends:
            raise DialogueError(f"Unknown model {name!r}; this server has: {', '.join(self.backends)}.")
        return self.backends[name]

    def params(self, **raw: object) -> SamplingParams:
        return SamplingParams.parse(max_new_tokens_limit=self.settings.max_new_tokens_limit, **raw)

    def check_message(self, text: object) -> str:
        if not isinstance(text, str) or not text.strip():
            raise DialogueError("The message is empty.")
        if len(text) > self.settings.max_message_chars:
            raise DialogueError(
                f"The message has {len(text)} characters; the limit is {self.settings.max_message_chars}."
            )
        return text

    async def respond(
        self, history: list[Message], system: str, params: SamplingParams, model: str = "", client: str = ""
    ) -> AsyncIterator[Update]:
        """Streams the assistant's reply to `history`, which ends with the user's message."""
        messages = [{"role": "system", "content": system}, *history]
        try:
            if len(history) > self.settings.max_history_messages:
                raise DialogueError(
                    f"The conversation has {len(history)} messages; the limit is "
                    f"{self.settings.max_history_messages}. Clear it or start from an earlier message."
                )
            backend = self.backend(model)
            prompt = backend.prepare(messages, params.max_new_tokens)
            self.rate.check(client)
        except DialogueError as exc:
            yield Update(history, error=str(exc), status=429 if isinstance(exc, RateLimited) else 400)
            return
        context, size = describe_context(prompt), len(prompt.input_ids)
        generated = reply = ""
        yield Update([*history, {"role": "assistant", "content": reply}], context, prompt_tokens=size)
        try:
            async for piece in astream(backend, ChatRequest(messages, params)):
                generated += piece
                reply = reply_text(generated)
                yield Update([*history, {"role": "assistant", "content": reply}], context, prompt_tokens=size)
        except (BackendError, DialogueError) as exc:
            kept = [*history, {"role": "assistant", "content": reply}] if reply else history
            yield Update(kept, context, error=str(exc), status=502, prompt_tokens=size)


def export_conversation(conversation: list[Message], system: str) -> str:
    return json.dumps({"messages": [{"role": "system", "content": system}, *conversation]}, indent=2)


def import_conversation(text: str) -> tuple[list[Message], str]:
    """Reads what `export_conversation` writes (or a bare message list); returns (conversation, system)."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DialogueError(f"The file is not JSON: {exc}") from exc
    messages = data.get("messages") if isinstance(data, dict) else data
    if not isinstance(messages, list):
        raise DialogueError("The file must hold a list of messages or {'messages': [...]}.")
    messages = [{"role": m.get("role"), "content": m.get("content")} if isinstance(m, dict) else m for m in messages]
    only_system = len(messages) == 1 and isinstance(messages[0], dict) and messages[0]["role"] == "system"
    if messages and not only_system:
        validate(messages, last="assistant")
    system, conversation = split_system(messages)
    if not isinstance(system, str):
        raise DialogueError("The system prompt must be text.")
    return conversation, system
