"""The StarChat dialogue format: render, token-safe encode, fit to the context window.

This is the only module that knows the control tokens; training imports it.

    <|system|>\\n{system}<|end|>\\n<|user|>\\n{u1}<|end|>\\n<|assistant|>\\n{a1}<|end|>\\n<|user|>\\n{u2}<|end|>\\n<|assistant|>
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

SYSTEM = "<|system|>"
USER = "<|user|>"
ASSISTANT = "<|assistant|>"
END = "<|end|>"
# Added to the base vocabulary in this order, so on StarCoderPlus' 49152 tokens <|end|> is 49155.
CONTROL_TOKENS = (SYSTEM, USER, ASSISTANT, END)
EOS = "<|endoftext|>"
ROLE_TOKENS = {"system": SYSTEM, "user": USER, "assistant": ASSISTANT}

Message = dict[str, str]

# Jinja twin of `render`, stored in every checkpoint's tokenizer so that
# `apply_chat_template(..., add_generation_prompt=True)` gives exactly our prompt. Engines that
# tokenize the rendered text (vLLM's or TGI's chat API) would read a control string typed by a
# person as the control token itself, so the template makes them inert exactly as `inert` does.
_INERT = {token: token[0] + "\u200b" + token[1:] for token in (*CONTROL_TOKENS, EOS)}
_JINJA_INERT = "".join(f" | replace('{token}', '{safe}')" for token, safe in _INERT.items())
CHAT_TEMPLATE = (
    "{%- if messages and messages[0]['role'] == 'system' -%}"
    "{%- set system = messages[0]['content'] -%}{%- set turns = messages[1:] -%}"
    "{%- else -%}{%- set system = '' -%}{%- set turns = messages -%}{%- endif -%}"
    "{{ '<|system|>\\n' + (system" + _JINJA_INERT + ") + '<|end|>\\n' }}"
    "{%- for m in turns -%}"
    "{%- set text = '\\n' + (m['content']" + _JINJA_INERT + ") + '<|end|>' -%}"
    # {% generation %} marks what the assistant says, exactly the pieces training puts in the loss
    # (return_assistant_tokens_mask, TRL's assistant-only loss).
    "{{ '<|' + m['role'] + '|>' }}"
    "{%- if m['role'] == 'assistant' -%}{% generation %}{{ text }}{% endgeneration %}"
    "{%- else -%}{{ text }}{%- endif -%}{{ '\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|assistant|>' }}{%- endif -%}"
)


class DialogueError(ValueError):
    """A conversation that does not fit the format; the message is meant for people."""


class ContextError(DialogueError):
    """The newest message, the system prompt and the reply's allowance (in tokens) exceed the context."""

    def __init__(self, message: int, system: int, reply: int, context: int):
        self.message, self.system, self.reply, self.context = message, system, reply, context
        super().__init__(
            f"a message of {message} tokens, a system prompt of {system} and a reply of up to {reply} "
            f"exceed the context of {context}"
        )

    @property
    def room(self) -> int:
        """The longest reply this message and system prompt leave room for (0 or less: none)."""
        return self.context - self.message - self.system


@dataclass(frozen=True)
class Piece:
    text: str
    role: str
    control: bool  # a control token, encoded as its single id; else text from a person or the model
    trained: bool  # what the assistant says: its text and its closing <|end|>


def split_system(messages: Sequence[Message]) -> tuple[str, list[Message]]:
    if messages and messages[0]["role"] == "system":
        return messages[0]["content"], list(messages[1:])
    return "", list(messages)


def validate(messages: Sequence[Message], *, last: str | None, system_first: bool = True) -> None:
    """Roles alternate user/assistant after an optional system message (`system_first`: else the system
    prompt comes apart); the last role is `last` (None: either). Messages are named by their index."""
    for i, m in enumerate(messages):
        role = m.get("role") if isinstance(m, dict) else None  # a JSON list or object is no key: no lookup
        if not isinstance(role, str) or not isinstance(m.get("content"), str):
            raise DialogueError(f"message {i} must be {{'role': 'system'|'user'|'assistant', 'content': str}}")
        if role not in ROLE_TOKENS:
            shown = repr(role) if len(role) <= 40 else repr(role[:37] + "...")
            raise DialogueError(f"message {i}'s role must be one of {', '.join(ROLE_TOKENS)}, not {shown}")
    _, turns = split_system(messages) if system_first else ("", list(messages))
    if not turns:
        raise DialogueError("the conversation has no user message")
    first = len(messages) - len(turns)
    for i, m in enumerate(turns):
        expected = "user" if i % 2 == 0 else "assistant"
        if m["role"] == "system":
            where = "only the first message may be one" if system_first else "the system prompt is given apart"
            raise DialogueError(f"message {first + i} is a system message: {where}")
        if m["role"] != expected:
            raise DialogueError(f"message {first + i} should be from the {expected}, not the {m['role']}")
    if last is not None and turns[-1]["role"] != last:
        raise DialogueError(f"the last message must be from the {last}")


def turn_pieces(role: str, content: str) -> list[Piece]:
    trained = role == "assistant"
    return [
        Piece(ROLE_TOKENS[role], role, control=True, trained=False),
        Piece("\n" + content, role, control=False, trained=trained),
        Piece(END, role, control=True, trained=trained),
        Piece("\n", role, control=False, trained=False),
    ]


def pieces(messages: Sequence[Message], add_generation_prompt: bool = True) -> Iterator[Piece]:
    system, turns = split_system(messages)
    yield from turn_pieces("system", system)
    for m in turns:
        yield from turn_pieces(m["role"], m["content"])
    if add_generation_prompt:
        yield Piece(ASSISTANT, "assistant", control=True, trained=False)


def render(messages: Sequence[Message], add_generation_prompt: bool = True) -> str:
    return "".join(p.text for p in pieces(messages, add_generation_prompt))


def render_prompt(messages: Sequence[Message]) -> str:
    """The prompt as text: for the next reply, or, when the last message is the assistant's, for more of it.

    A reply being continued stays open: `<|assistant|>\n{partial}` with no `<|end|>` after it.
    """
    if messages and messages[-1]["role"] == "assistant":
        return render(messages[:-1]) + "\n" + messages[-1]["content"]
    return render(messages)


def inert(text: str) -> str:
    """Control-token strings in a person's text, made inert for a server that tokenizes text itself.

    A zero-width space after the `<` keeps them visible as typed but no longer a special token.
    """
    for token, safe in _INERT.items():
        text = text.replace(token, safe)
    return text


def inert_messages(messages: Sequence[Message]) -> list[Message]:
    return [{"role": m["role"], "content": inert(m["content"])} for m in messages]


def reply_text(generated: str) -> str:
    """The assistant's text: what follows `<|assistant|>\n` (the model writes that newline itself)."""
    return generated.removeprefix("\n")


def control_ids(tokenizer) -> dict[str, int]:
    """Ids of the control tokens and <|endoftext|>, asked of the tokenizer (never hard-coded)."""
    ids = {}
    for token in (*CONTROL_TOKENS, EOS):
        token_id = tokenizer.convert_tokens_to_ids(token)
        if token_id is None or (token_id == tokenizer.unk_token_id and token != tokenizer.unk_token):
            raise DialogueError(f"the tokenizer has no {token} token: this is not a StarChat checkpoint")
        ids[token] = token_id
    return ids


def stop_ids(tokenizer) -> list[int]:
    ids = control_ids(tokenizer)
    return [ids[END], ids[EOS]]


def encode_text(tokenizer, text: str) -> list[int]:
    """Text from a person or a model: typed control strings become `inert` text, the very tokens the exported
    chat template and the endpoint backends give them; other special tokens' strings become ordinary text."""
    if not text:
        return []
    return tokenizer(inert(text), add_special_tokens=False, split_special_tokens=True)["input_ids"]


def encode_piece(piece: Piece, tokenizer, ids: dict[str, int]) -> list[int]:
    return [ids[piece.text]] if piece.control else encode_text(tokenizer, piece.text)


def encode_pieces(tokenizer, messages: Sequence[Message], add_generation_prompt: bool = True):
    """Yields (piece, ids); control ids come only from here."""
    ids = control_ids(tokenizer)
    for piece in pieces(messages, add_generation_prompt):
        yield piece, encode_piece(piece, tokenizer, ids)


def encode(tokenizer, messages: Sequence[Message], add_generation_prompt: bool = True) -> list[int]:
    return [i for _, ids in encode_pieces(tokenizer, messages, add_generation_prompt) for i in ids]


def encode_turn(tokenizer, role: str, content: str) -> list[int]:
    ids = control_ids(tokenizer)
    return [i for piece in turn_pieces(role, content) for i in encode_piece(piece, tokenizer, ids)]


@dataclass(frozen=True)
class Prompt:
    input_ids: list[int]
    dropped_turns: int  # earlier user/assistant pairs left out to fit the context
    context_length: int
    max_new_tokens: int

    @property
    def used(self) -> int:
        return len(self.input_ids) + self.max_new_tokens


def fit_to_context(tokenizer, messages: Sequence[Message], max_new_tokens: int, context_length: int) -> Prompt:
    """Encodes a conversation that ends with a user message, dropping the oldest whole turns.

    A conversation that ends with an assistant message asks for more of that reply: the prompt
    ends with it, open (as `render_prompt`), and it stays with the user message before it.
    The system prompt and the newest message always stay; if they alone leave no room for
    `max_new_tokens`, a ContextError holds the figures.
    """
    continuing = bool(messages) and messages[-1]["role"] == "assistant"
    validate(messages, last="assistant" if continuing else "user")
    system, turns = split_system(messages)
    head = encode_turn(tokenizer, "system", system)
    tail = [control_ids(tokenizer)[ASSISTANT]]
    if continuing:
        tail += encode_text(tokenizer, "\n" + turns[-1]["content"])
        turns = turns[:-1]
    blocks = [encode_turn(tokenizer, m["role"], m["content"]) for m in turns]
    budget = context_length - max_new_tokens - len(tail)
    fixed = len(head) + len(blocks[-1])
    if fixed > budget:
        raise ContextError(len(blocks[-1]) + len(tail), len(head), max_new_tokens, context_length)
    start = 0
    total = len(head) + sum(len(b) for b in blocks)
    while total > budget:
        total -= len(blocks[start]) + len(blocks[start + 1])
        start += 2
    input_ids = head + [i for b in blocks[start:] for i in b] + tail
    return Prompt(input_ids, start // 2, context_length, max_new_tokens)
