"""Raw conversation text -> the markdown the chatbot renders, and the note under each reply.

Gradio's chatbot renders HTML inside markdown (sanitized, but still rendered), so a person's
`<b>` or a model's `<script>` would not show as typed. Outside code, `&`, `<` and `>` become
entities, which markdown shows as the characters; code spans and fences are left as they are,
since markdown already shows them literally. What is copied or edited is never this text: the
page reads the raw conversation (`raw_json`) for its copy buttons and the edit box.
"""

from __future__ import annotations

import html
import json
import re

from playground.template import Message

# A fenced block (closed, or still open at the end while a reply streams), or a code span as CommonMark reads
# it: a run of backticks (not escaped) to the next run of as many, across lines but not a blank one.
_CODE = re.compile(r"(```.*?(?:```|\Z)|~~~.*?(?:~~~|\Z)|(?<!\\)(`+)(?!`)(?:(?!\n[ \t]*\n).)+?(?<!`)\2(?!`))", re.S)
_FENCE = re.compile(r" {0,3}(`{3,}|~{3,})(.*)")
_ESCAPES = {"&": "&amp;", "<": "&lt;", ">": "&gt;"}
# A markdown image would make every viewer's browser fetch its URL (a way to leak a conversation).
_IMAGE = re.compile(r"!(\[[^\]\n]*\][([])")
_MARKDOWN = re.compile(r"([\\`*_{}\[\]()#+\-!|~])")  # a note is one line, after a tag: no list markers
ENDINGS = {
    "stop": "finished",
    "length": "cut at max new tokens",
    "cancelled": "stopped by you",
    "error": "ended by an error",
    "interrupted": "interrupted: the page was left while it was written",
}
CONTINUABLE = (ENDINGS["length"], ENDINGS["interrupted"])  # a reply whose note ends so has Continue under it


def to_display(text: str) -> str:
    """Outside code: HTML shown as typed, and images as links."""
    parts, start = [], 0
    for code in _CODE.finditer(text):
        parts += [as_text(text[start : code.start()]), code.group()]
        start = code.end()
    return "".join([*parts, as_text(text[start:])])


def as_text(part: str) -> str:
    return _IMAGE.sub(r"\1", re.sub("[&<>]", lambda m: _ESCAPES[m.group()], part))


def open_fence(text: str) -> str:
    """The closing fence for a code block the text leaves open (a reply cut mid-code), or ''.

    Line by line, as markdown reads fences: a block closes on a line of at least as many of its
    fence characters and nothing else.
    """
    fence = ""
    for line in text.split("\n"):
        found = _FENCE.match(line)
        if not found:
            continue
        marks, rest = found.groups()
        if not fence and not (marks[0] == "`" and "`" in rest):
            fence = marks
        elif fence and marks[0] == fence[0] and len(marks) >= len(fence) and not rest.strip():
            fence = ""
    return fence


def reply_note(
    finish: str, tokens: int, first_token_s: float | None, seconds: float, earlier: int = 0, model: str = ""
) -> str:
    """How a reply went: its tokens, time to first token, decoding speed and why it ended; the `model` that
    wrote it first, where several are served. A continued reply counts the `earlier` tokens too; the times
    are the continuation's."""
    total = earlier + tokens
    parts = [f"{total} token{'s' * (total != 1)}" + (f" ({earlier} + {tokens} continued)" if earlier else "")]
    if first_token_s is not None:
        parts.append(f"first token {first_token_s:.2f} s")
        if tokens > 1 and seconds > first_token_s:
            parts.append(f"{(tokens - 1) / (seconds - first_token_s):.1f} tokens/s")
    return " · ".join([model, *parts, ENDINGS.get(finish, finish)] if model else [*parts, ENDINGS.get(finish, finish)])


def tokens_in(note: str) -> int:
    """The tokens a reply's note counts (0 for a note not written by `reply_note`, say from a file)."""
    found = re.search(r"(?:^|· )(\d{1,9}) tokens?( \(\d+ \+ \d+ continued\))? ·", note)
    return int(found[1]) if found else 0


def note_markup(note: str) -> str:
    """A note as literal text inside the chatbot's markdown: a note can come from a loaded file, and
    must not render as a heading, a link or code."""
    return _MARKDOWN.sub(r"\\\1", html.escape(note))


def display_messages(conversation: list[Message], notes: dict[int, str] | None = None) -> list[Message]:
    """What the chatbot shows; `notes` (by message index) go under replies, never into the conversation."""
    shown = []
    for i, m in enumerate(conversation):
        text = to_display(m["content"])
        if note := (notes or {}).get(i):
            fence = open_fence(text)
            text += (f"\n{fence}" if fence else "") + f'\n\n<span class="reply-note">{note_markup(note)}</span>'
        shown.append({"role": m["role"], "content": text})
    return shown


def raw_json(conversation: list[Message]) -> str:
    """The conversation exactly as typed and generated, for the page's copy buttons and edit box."""
    return json.dumps([{"role": m["role"], "content": m["content"]} for m in conversation])


def conversation_markdown(title: str, conversation: list[Message], system: str) -> str:
    """The conversation as a Markdown file: each message exactly as typed or generated, under a heading
    of its role; a code block a reply left open (cut mid-code) is closed, so the next heading stays one."""
    parts = [f"# {title}"]
    sections = [("System prompt", system)] if system else []
    for role, text in sections + [(m["role"].capitalize(), m["content"]) for m in conversation]:
        fence = open_fence(text)
        parts.append(f"## {role}\n\n{text}" + (f"\n{fence}" if fence else ""))
    return "\n\n".join(parts) + "\n"
