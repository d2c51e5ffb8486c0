"""One chat turn as the UI and the APIs run it: check, trim to the context, stream, report errors."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass

from playground.backends import Backend, BackendError, ChatRequest, SamplingParams, astream
from playground.settings import Settings
from playground.template import DialogueError, Message, Prompt, reply_text, split_system, validate


@dataclass(frozen=True)
class Update:
    """The conversation so far (ending with the partial reply once one streams), or why it failed."""

    conversation: list[Message]
    context: str = ""
    error: str | None = None


def describe_context(prompt: Prompt) -> str:
    share = 100 * prompt.used / prompt.context_length
    text = (
        f"Context: {len(prompt.input_ids)} prompt tokens + up to {prompt.max_new_tokens} new "
        f"of {prompt.context_length} ({share:.0f}%)"
    )
    if prompt.dropped_turns:
        text += f"; the {prompt.dropped_turns} oldest turn(s) are left out to fit"
    return text


@dataclass(frozen=True)
class Chat:
    backend: Backend
    settings: Settings

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

    async def respond(self, history: list[Message], system: str, params: SamplingParams) -> AsyncIterator[Update]:
        """Streams the assistant's reply to `history`, which ends with the user's message."""
        messages = [{"role": "system", "content": system}, *history]
        try:
            prompt = self.backend.prepare(messages, params.max_new_tokens)
        except DialogueError as exc:
            yield Update(history, error=str(exc))
            return
        context = describe_context(prompt)
        generated = reply = ""
        yield Update([*history, {"role": "assistant", "content": reply}], context)
        try:
            async for piece in astream(self.backend, ChatRequest(messages, params)):
                generated += piece
                reply = reply_text(generated)
                yield Update([*history, {"role": "assistant", "content": reply}], context)
        except (BackendError, DialogueError) as exc:
            kept = [*history, {"role": "assistant", "content": reply}] if reply else history
            yield Update(kept, context, error=str(exc))


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
