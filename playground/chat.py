"""One chat turn as the UI and the APIs run it: check, admit, trim to the context, stream, report.

Every door (the page, Gradio's `/chat`, the OpenAI-compatible `/v1`) comes through `Chat.respond`,
so they share one set of input limits, one rate limit and one admission budget.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field

import anyio

from playground.backends import Backend, BackendError, ChatRequest, Outcome, Refused, SamplingParams, astream, ended
from playground.rate_window import SlidingWindow
from playground.sampling import ParamError
from playground.settings import Settings
from playground.template import ContextError, DialogueError, Message, Prompt, reply_text, validate

_SURROGATE = re.compile("[\ud800-\udfff]")


@dataclass(frozen=True)
class Update:
    """The conversation so far (ending with the partial reply once one streams), or why it failed.

    The last update of a reply that ran carries `finish` ("stop", "length", "cancelled" or
    "error"), the tokens generated and the timings.
    """

    conversation: list[Message]
    context: str = ""
    error: Exception | None = None  # each door words it: `in_words`
    status: int = 200  # for HTTP callers: 400 a bad request, 429 too many or the model's server full, 502 failed
    retry_after: int = 0  # seconds, with a 429
    prompt_tokens: int = 0
    finish: str = ""
    tokens: int = 0
    first_token_s: float | None = None  # from the request's arrival to the first visible text
    seconds: float = 0.0  # from the request's arrival to the end


# Tokens a reply at the slider's top still leaves for the system prompt and a short message.
PROMPT_ROOM = 128


def describe_context(prompt: Prompt) -> str:
    """The context's two shares: what the prompt takes, and what is reserved for the reply."""
    size, reply, whole = len(prompt.input_ids), prompt.max_new_tokens, prompt.context_length
    text = (
        f"Context: {size} prompt tokens ({100 * size / whole:.0f}%) + up to {reply} reply tokens "
        f"reserved ({100 * reply / whole:.0f}%) of {whole}"
    )
    if prompt.dropped_turns:
        text += f"; the {prompt.dropped_turns} oldest turn(s) are left out to fit"
    return text


def describe_budget(context_length: int, max_new_tokens: int) -> str:
    """The context line before a prompt exists: the reply's reserve, the rest for the prompt."""
    return (
        f"Context: up to {max_new_tokens} reply tokens reserved ({100 * max_new_tokens / context_length:.0f}%) "
        f"of {context_length}; the prompt may take the other {context_length - max_new_tokens}"
    )


@dataclass
class Admission:
    """Generations running (up to `running`) and waiting (up to `waiting` more); the rest are refused.

    Each admitted request is released exactly once, however it ends.
    """

    running: int
    waiting: int
    in_flight: int = 0
    slots: asyncio.Semaphore = field(init=False)

    def __post_init__(self) -> None:
        self.slots = asyncio.Semaphore(self.running)

    def enter(self) -> Callable[[], None]:
        if self.in_flight >= self.running + self.waiting:
            raise Refused("The server is busy: too many requests are waiting. Try again shortly.", 1)
        self.in_flight += 1
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self.in_flight -= 1

        return release


def in_words(error: Exception, limit: str = "max_new_tokens") -> str:
    """An error as a door says it; `limit` is that door's name for the reply's token limit."""
    if isinstance(error, ParamError):
        return error.named(limit if error.name == "max_new_tokens" else error.name)
    if not isinstance(error, ContextError):
        return str(error)
    if error.reply > error.message + error.system and error.room > 0:  # the reply's allowance is what to lower
        return (
            f"A reply of up to {error.reply} tokens does not fit: the model's context ({error.context}) leaves room "
            f"for {error.room} after the message ({error.message} tokens) and the system prompt ({error.system}). "
            f"Lower {limit} to {error.room} or less, or shorten the message."
        )
    longer = "system prompt" if error.system > error.message else "message"  # the one to shorten first
    return (
        f"The {longer} is too long: the message takes {error.message} tokens, the system prompt {error.system}, "
        f"and the reply may take {error.reply}, but the model's context holds {error.context}. "
        f"Shorten the {longer} or lower {limit}."
    )


def check_text(text: object, what: str, limit: int) -> str:
    """Text from anyone: a string, valid Unicode (no lone surrogates), at most `limit` characters."""
    if not isinstance(text, str):
        raise DialogueError(f"The {what} must be text, not {type(text).__name__}.")
    if bad := _SURROGATE.search(text):
        raise DialogueError(
            f"The {what} holds an invalid character (a lone surrogate, U+{ord(bad.group()):04X}) "
            f"at position {bad.start()}."
        )
    if len(text) > limit:
        raise DialogueError(f"The {what} has {len(text)} characters; the limit is {limit}.")
    return text


def sendable(text: str) -> str:
    """Text refused for a lone surrogate, as it can go back to the page (JSON has no lone surrogates): each
    one becomes U+FFFD, the rest stays as typed."""
    return _SURROGATE.sub("\ufffd", text)


def failed(exc: BackendError | DialogueError, history: list[Message], reply: str, context: str, size: int) -> Update:
    """The last update of a reply whose backend failed: the reply so far is kept."""
    kept = [*history, {"role": "assistant", "content": reply}] if reply else history
    status, wait = (429, exc.retry_after) if isinstance(exc, Refused) else (502, 0)
    return Update(kept, context, error=exc, status=status, retry_after=wait, prompt_tokens=size, finish="error")


def held_back(text: str, stops: Sequence[str]) -> int:
    """How many characters at the end of `text` could be the start of a stop string."""
    return max((n for stop in stops for n in range(len(stop) - 1, 0, -1) if text.endswith(stop[:n])), default=0)


@dataclass
class Chat:
    backends: dict[str, Backend]  # display name -> backend; the first is the default
    settings: Settings
    rate: SlidingWindow = field(init=False)
    admission: Admission = field(init=False)

    def __post_init__(self) -> None:
        self.rate = SlidingWindow(self.settings.rate_limit)
        self.admission = Admission(self.concurrency, self.settings.queue_size)

    @property
    def concurrency(self) -> int:
        return self.settings.concurrency or max(b.info.parallel for b in self.backends.values())

    def backend(self, name: object = "") -> Backend:
        if not name:
            return next(iter(self.backends.values()))
        if not isinstance(name, str) or name not in self.backends:
            raise DialogueError(f"Unknown model {name!r}; this server has: {', '.join(self.backends)}.")
        return self.backends[name]

    def reply_limit(self, model: str = "") -> int:
        """The largest max_new_tokens worth offering for `model`: what its context leaves a short prompt."""
        context = self.backend(model).info.context_length
        return max(1, min(self.settings.max_new_tokens_limit, context - PROMPT_ROOM))

    def params(self, **raw: object) -> SamplingParams:
        return SamplingParams.parse(max_new_tokens_limit=self.settings.max_new_tokens_limit, **raw)

    def check_message(self, text: object) -> str:
        check_text(text, "message", self.settings.max_message_chars)
        if not text.strip():
            raise DialogueError("The message is empty.")
        return text

    def check_conversation(self, history: object, system: object, last: str = "user") -> None:
        """Bounds what reaches the tokenizer: every turn, the system prompt and their sum."""
        limit = self.settings.max_message_chars
        check_text(system, "system prompt", limit)
        if not isinstance(history, list) or not all(isinstance(m, dict) for m in history):
            raise DialogueError("The history must be a list of {role, content} messages.")
        earlier = len(history) - 1
        if earlier > self.settings.max_history_messages:
            raise DialogueError(
                f"The conversation has {earlier} earlier messages; the limit is "
                f"{self.settings.max_history_messages}. Clear it or start from an earlier message."
            )
        for i, m in enumerate(history):
            check_text(m.get("content"), f"message {i}" if i < len(history) - 1 else "message", limit)
        validate(history, last=last, system_first=False)
        total = len(system) + sum(len(m["content"]) for m in history)
        if total > self.settings.max_conversation_chars:
            raise DialogueError(
                f"The conversation has {total} characters; the limit is {self.settings.max_conversation_chars}. "
                "Clear it or start from an earlier message."
            )

    async def respond(
        self,
        history: list[Message],
        system: str,
        params: SamplingParams,
        model: str = "",
        client: str = "",
        stop: Sequence[str] = (),
        continuing: bool = False,
    ) -> AsyncIterator[Update]:
        """Streams the assistant's reply to `history`, which ends with the user's message.

        `continuing`: `history` ends with a reply (cut at max new tokens) that goes on where it stopped;
        the updates carry the whole reply. A reply is cut before the first of the `stop` strings, also
        when it spans streamed pieces.
        """
        start = time.monotonic()
        try:
            self.check_conversation(history, system, "assistant" if continuing else "user")
            backend = self.backend(model)
            if self.settings.rate_limit and (wait := self.rate.take(client)):
                limit = self.settings.rate_limit
                raise Refused(f"Too many requests: the limit is {limit} a minute. Try again in {wait} s.", wait)
            release = self.admission.enter()
        except Refused as exc:
            yield Update(history, error=exc, status=429, retry_after=exc.retry_after)
            return
        except DialogueError as exc:
            yield Update(history, error=exc, status=400)
            return
        try:
            async for update in self._generate(backend, history, system, params, stop, start):
                yield update
        finally:
            release()

    async def _generate(self, backend, history, system, params, stop, start) -> AsyncIterator[Update]:
        messages = [{"role": "system", "content": system}, *history]
        # A reply being continued: its text so far, and the conversation before it.
        partial = history[-1]["content"] if history[-1]["role"] == "assistant" else None
        history = history[:-1] if partial is not None else history
        try:  # tokenizing takes a while for long conversations: not on the event loop
            prompt = await anyio.to_thread.run_sync(backend.prepare, messages, params.max_new_tokens)
        except DialogueError as exc:
            yield Update(history, error=exc, status=400)
            return
        context, size = describe_context(prompt), len(prompt.input_ids)
        request = ChatRequest(messages, params)
        generated, reply = "", partial or ""
        first_token_s, finish, outcome = None, "", Outcome(finish="cancelled")
        waiting = self.admission.slots.locked()
        yield Update(
            [*history, {"role": "assistant", "content": reply}],
            context + ("; waiting for a free slot" if waiting else ""),
            prompt_tokens=size,
        )
        async with self.admission.slots:
            if waiting:
                yield Update([*history, {"role": "assistant", "content": reply}], context, prompt_tokens=size)
            try:
                async with aclosing(astream(backend, request)) as pieces:
                    async for piece in pieces:
                        if isinstance(piece, Outcome):
                            outcome = piece
                            continue
                        generated += sendable(piece)  # a server's JSON may hold lone surrogates
                        # A continued reply goes on from its last character: no newline to drop.
                        text = partial + generated if partial is not None else reply_text(generated)
                        cut = min((i for s in stop if (i := text.find(s, len(partial or ""))) >= 0), default=-1)
                        if cut >= 0:
                            reply, finish = text[:cut], "stop"
                            outcome = await ended(pieces, request.cancel)  # counts what the backend generated
                            break
                        shown = text[: len(text) - held_back(text, stop)]
                        if shown != reply:
                            reply = shown
                            first_token_s = first_token_s or time.monotonic() - start
                            yield Update(
                                [*history, {"role": "assistant", "content": reply}], context, prompt_tokens=size
                            )
                    else:
                        reply = partial + generated if partial is not None else reply_text(generated)
            except (BackendError, DialogueError) as exc:
                yield failed(exc, history, reply, context, size)
                return
        if reply and first_token_s is None:
            first_token_s = time.monotonic() - start
        yield Update(
            [*history, {"role": "assistant", "content": reply}],
            context,
            prompt_tokens=size,
            finish=finish or outcome.finish,
            tokens=outcome.tokens,
            first_token_s=first_token_s,
            seconds=time.monotonic() - start,
        )
