"""`/chat`: the page's own endpoint for `gradio_client`, a reply streamed as its growing text."""

from __future__ import annotations

from collections.abc import AsyncIterator

import gradio as gr

from playground.chat import Chat, in_words
from playground.sampling import ParamError, SamplingParams
from playground.template import DialogueError


def refused(message: str) -> gr.Error:
    """The caller's error, told to the caller: not a traceback in the server's log (anyone could fill it)."""
    return gr.Error(message, print_exception=False)


def chat_api(chat: Chat):
    defaults = SamplingParams()

    async def chat_endpoint(
        message: str,
        history: list[dict],
        system_prompt: str = "",
        temperature: float = defaults.temperature,
        top_p: float = defaults.top_p,
        top_k: int = defaults.top_k,
        max_new_tokens: int = defaults.max_new_tokens,
        repetition_penalty: float = defaults.repetition_penalty,
        seed: int = defaults.seed,
        model: str = "",
        request: gr.Request = None,
    ) -> AsyncIterator[str]:
        """Streams the assistant's reply to `message` after `history`; the last value is the whole reply.

        `model` picks one of the server's models by its display name (default: the first).
        """
        try:
            params = chat.params(
                temperature=temperature,
                top_p=top_p,
                top_k=top_k,
                max_new_tokens=max_new_tokens,
                repetition_penalty=repetition_penalty,
                seed=seed,
            )
            message = chat.check_message(message)
            if not isinstance(history, list):
                raise DialogueError("history must be a list of {role, content} messages")
            if not isinstance(system_prompt, str):
                raise DialogueError("system_prompt must be a string")
        except (ParamError, DialogueError) as exc:
            raise refused(in_words(exc)) from None
        history = [*history, {"role": "user", "content": message}]
        client = request.client.host if request and request.client else ""
        async for update in chat.respond(history, system_prompt, params, model, client):
            if update.error:
                raise refused(in_words(update.error))
            yield update.conversation[-1]["content"]

    return chat_endpoint
