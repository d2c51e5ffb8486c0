"""Raw conversation text <-> the markdown the chatbot renders.

Gradio's chatbot renders HTML inside markdown (sanitized, but still rendered), so a person's
`<b>` or a model's `<script>` would not show as typed. Outside code, `&`, `<` and `>` become
entities, which markdown shows as the characters; code spans and fences are left as they are,
since markdown already shows them literally. `from_display` undoes it for edited messages.
"""

from __future__ import annotations

import html
import re

from playground.template import Message

# A fenced block (closed, or still open at the end while a reply streams) or an inline code span.
_CODE = re.compile(r"(```.*?(?:```|\Z)|~~~.*?(?:~~~|\Z)|`[^`\n]+`)", re.S)
_ESCAPES = {"&": "&amp;", "<": "&lt;", ">": "&gt;"}
_ESCAPED = re.compile("|".join(_ESCAPES.values()))
_UNESCAPES = {v: k for k, v in _ESCAPES.items()}


def _map_prose(text: str, fn) -> str:
    parts = _CODE.split(text)
    return "".join(part if i % 2 else fn(part) for i, part in enumerate(parts))


# A markdown image would make every viewer's browser fetch its URL (a way to leak a conversation).
_IMAGE = re.compile(r"!(\[[^\]\n]*\][([])")


def to_display(text: str) -> str:
    """Outside code: HTML shown as typed, and images as links."""
    return _map_prose(text, lambda prose: _IMAGE.sub(r"\1", re.sub("[&<>]", lambda m: _ESCAPES[m.group()], prose)))


def from_display(text: str) -> str:
    return _map_prose(text, lambda prose: _ESCAPED.sub(lambda m: _UNESCAPES[m.group()], prose))


def display_messages(conversation: list[Message]) -> list[Message]:
    return [{"role": m["role"], "content": to_display(m["content"])} for m in conversation]


def error_notice(text: str) -> Message:
    """Shown in the chat, never part of the conversation the model sees."""
    return {"role": "assistant", "content": "⚠️ " + html.escape(text, quote=False)}
