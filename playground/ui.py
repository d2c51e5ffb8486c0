"""The Gradio Blocks playground: `layout` places the components, `Handlers` says what each event does,
`wire` connects the events to them (`wire_shelf` those of the conversations kept in the browser).

The turn itself is playground.chat; what the chatbot renders is playground.display.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import gradio as gr

from playground.chat import Chat, Update, describe_budget, export_conversation, import_conversation, sendable
from playground.display import ENDINGS, conversation_markdown, display_messages, raw_json, reply_note
from playground.history import (
    MAX_CONVERSATIONS,
    MAX_TITLE,
    STORE_BYTES,
    Kept,
    check_title,
    choices,
    new_id,
    read_current,
    read_past,
    sent_size,
    shelve,
)
from playground.sampling import PARAM_RANGES, ParamError, SamplingParams
from playground.template import DialogueError, Message

EXAMPLES = [
    "How can I write a Python function to generate the nth Fibonacci number?",
    "How do I get the current date using shell commands? Explain how it works.",
    "How do I reverse a list in Python?",
    "Write a Python function that checks whether a string is a palindrome.",
]

DEMO_NOTICE = (
    "The **offline demo model**, trained on this machine: for trying the page, not for real answers. "
    "StarChat-β: `python app.py --model HuggingFaceH4/starchat-beta` on a GPU (`--quantize 4bit` on 16 GB)."
)


def download_js(kind: str, extension: str) -> str:
    """The browser saves the text as a file: nothing is written on the server for another visitor to fetch."""
    return f"""(text) => {{
  const link = document.createElement('a');
  link.href = URL.createObjectURL(new Blob([text], {{type: '{kind}'}}));
  link.download = 'conversation-' + new Date().toISOString().slice(0, 19).replaceAll(':', '') + '.{extension}';
  link.click();
  setTimeout(() => URL.revokeObjectURL(link.href), 10000);
}}"""


# The app's own localStorage keys, so that another Gradio app on the same address keeps its values.
STORAGE_PREFIX = "starchat-playground/"
STORAGE_KEYS = (STORAGE_PREFIX + "open-conversation", STORAGE_PREFIX + "past-conversations")
# BrowserState encrypts what it stores with a secret that the page's config hands to every browser, so
# it hides nothing; a fixed one keeps the conversations readable after the server restarts (a Space
# that wakes up), where Gradio's default, a random one per process, would lose them all.
STORAGE_SECRET = "starchat-playground"
# A stored value goes to the server as its JSON text: flat however deeply a hand-edited value nests, and
# measured as sent; one too large for the request limit goes as '' (unreadable) instead of a 413.
STORED_JS = f"""(value) => {{
  if (value === null || value === undefined) return null;
  try {{
    const text = JSON.stringify(value);
    return new Blob([JSON.stringify(text)]).size <= {STORE_BYTES} ? text : '';
  }} catch {{
    return '';
  }}
}}"""


# A finished reply's event ends a moment after its last update, and Gradio then sends that update again:
# an event that replaces the conversation in that moment (New conversation, reopen, load, delete) would
# be drawn over by it, so it waits (2 s at most). A reply's events all have the message box among their
# outputs, which Gradio marks while they run; while a reply streams nothing waits: the server says why.
SETTLED_JS = """async () => {
  const ending = () => document.querySelector('#message .generating')
    && !document.querySelector('#stop')?.checkVisibility();
  for (let i = 0; i < 100 && ending(); i++) await new Promise((resolve) => setTimeout(resolve, 20));
}"""


def sending_stored(inputs: int) -> str:
    """The js of an event whose first input is a BrowserState. Gradio calls it with the inputs' values and
    then the outputs'; with one input it takes the value itself (at the page's load), with more a list of
    the inputs, once a finished reply's event has ended (SETTLED_JS)."""
    if inputs == 1:
        return f"(stored) => ({STORED_JS})(stored)"
    read = f"[({STORED_JS})(stored), ...rest.slice(0, {inputs - 1})]"
    return f"async (stored, ...rest) => {{ await ({SETTLED_JS})(); return {read}; }}"


# Delete asks first when the open conversation holds messages; the answer goes to the event as its last input.
# While a reply streams it does not ask: the server says to stop the reply first.
DELETE_JS = f"""async (stored, system, busy) => {{
  await ({SETTLED_JS})();
  const raw = document.querySelector('#raw-conversation textarea')?.value;
  const streaming = !!document.querySelector('#stop')?.checkVisibility();
  const sure = !streaming && (!raw || raw === '[]' || window.confirm(
    'Delete this conversation from this browser? It cannot be undone: save it as a file first to keep it.'));
  return [({STORED_JS})(stored), system, busy, sure];
}}"""


# How to reach the page from code; the browser puts in the address it is on.
API_SNIPPET = """# The page's own chat, streamed (pip install gradio_client)
from gradio_client import Client

print(Client("PAGE_URL/").predict("How do I reverse a list in Python?", [], api_name="/chat"))

# The OpenAI-compatible API (pip install openai)
from openai import OpenAI

client = OpenAI(base_url="PAGE_URL/v1", api_key="none")
reply = client.chat.completions.create(
    model="MODEL", messages=[{"role": "user", "content": "How do I reverse a list in Python?"}]
)
print(reply.choices[0].message.content)
"""
# Load: the browser opens the file and sends its text, so no file of it is ever written on the server.
# A file over LOAD_BYTES is not read: its size comes instead, after TOO_LARGE, for the notice.
LOAD_BYTES = 1_000_000  # with the kept conversations the event also sends, under the request limit
TOO_LARGE = "\u0000too large: "
EMPTY_FILE = "\u0000empty"  # what a file of no bytes sends: its text, "", would read as no file chosen
LOAD_JS = f"""() => new Promise((resolve) => {{
  const input = Object.assign(document.createElement('input'), {{type: 'file', accept: '.json,application/json'}});
  input.onchange = async () => {{
    const file = input.files[0];
    if (!file) return resolve('');
    document.querySelector('#chatbot button[aria-label="Cancel"]')?.click();  // an open edit box closes
    if (!file.size) return resolve({json.dumps(EMPTY_FILE)});
    resolve(file.size > {LOAD_BYTES} ? {json.dumps(TOO_LARGE)} + file.size : await file.text());
  }};
  input.oncancel = () => resolve('');
  input.click();
}})"""
# The box is emptied in the browser the moment a message is sent, so that what is typed next stays;
# while a reply streams (Send is then hidden) nothing is taken. The message is the box as it was when
# Enter or Send was pressed (PAGE_HEAD notes it): keys typed before Gradio reads the box for the event
# belong to the next message.
TAKE_JS = """(message, busy) => {
  const box = document.querySelector('#message textarea'), pressed = window.pressedSend;
  window.pressedSend = null;
  const sent = pressed?.trim() && message.startsWith(pressed) ? pressed : message;
  if (document.querySelector('#send')?.offsetParent && sent.trim() && box) {
    box.value = box.value.startsWith(sent) ? box.value.slice(sent.length) : '';
    box.dispatchEvent(new Event('input', {bubbles: true}));
  }
  return [sent, busy];
}"""

# The chatbot's copy buttons and edit box would take the rendered text (HTML escaped as entities);
# they get the raw text instead, from the hidden #raw-conversation box. Both clipboard paths that
# Gradio uses are covered: navigator.clipboard.writeText, and execCommand('copy') off localhost.
PAGE_JS = """() => {
  // Room for the chat. Up to 768 px Gradio draws a sidebar over the whole page, so both close; up to 1,100 px
  // two sidebars leave the chat a strip, so the settings close. At load, and as a window narrows past either.
  const close = (selector) => document.querySelectorAll(selector).forEach((toggle) => toggle.click());
  const fit = () => {
    if (innerWidth <= 768) close('#history.open > .toggle-button, #settings.open > .toggle-button');
    else if (innerWidth <= 1100) close('#settings.open > .toggle-button');
  };
  fit();
  for (const width of [768, 1100]) {
    matchMedia(`(max-width: ${width}px)`).addEventListener('change', (event) => event.matches && fit());
  }
  const raw = () => JSON.parse(document.querySelector('#raw-conversation textarea')?.value || '[]');
  const indexOf = (button) => {
    const buttons = button.closest('.message-buttons') || button.closest('.message-row');
    const rows = [...document.querySelectorAll('#chatbot .message-row')];
    return rows.filter((row) => row === buttons || row.compareDocumentPosition(buttons) & 4).length - 1;
  };
  // Clear empties the open conversation for good (the list keeps no copy): it asks first, as Delete does.
  document.addEventListener('click', (event) => {
    if (!event.target.closest('#clear, #chatbot button[aria-label="Clear"]') || !raw().length) return;
    if (window.confirm(CLEAR_QUESTION)) return;
    event.stopImmediatePropagation();
    event.preventDefault();
  }, true);
  // The fenced code blocks of a message's raw text, each as written (an unclosed one runs to the end).
  const fenced = (text) => {
    const blocks = [];
    let open = null, lines = [];
    for (const line of text.split('\\n')) {
      const fence = line.match(/^ {0,3}(`{3,}|~{3,})(.*)$/);
      if (open === null) {
        if (fence && !(fence[1][0] === '`' && fence[2].includes('`'))) [open, lines] = [fence[1], []];
      } else if (fence && fence[1][0] === open[0] && fence[1].length >= open.length && !fence[2].trim()) {
        blocks.push(lines.join('\\n'));
        open = null;
      } else {
        lines.push(line);
      }
    }
    if (open !== null) blocks.push(lines.join('\\n'));
    return blocks;
  };
  const squeeze = (text) => text.replace(/[ \\t]+/g, ' ').trim();
  let next = null;
  document.addEventListener('click', (event) => {
    // A code block's copy button would take the rendered code, its tabs turned into spaces (a Makefile
    // would break): it gets the block as written, the one whose text it shows.
    const code = event.target.closest('#chatbot .copy_code_button');
    if (code) {
      const shown = squeeze(code.closest('.code_wrap')?.querySelector('pre')?.textContent ?? '');
      next = fenced(raw()[indexOf(code)]?.content ?? '').find((block) => squeeze(block) === shown) ?? null;
      return;
    }
    const button = event.target.closest('#chatbot button[aria-label]');
    if (!button) return;
    const label = button.getAttribute('aria-label');
    if (label === 'Copy conversation') {
      next = raw().map((m) => `${m.role}: ${m.content}`).join('\\n\\n');
    } else if (label === 'Copy message') {
      next = raw()[indexOf(button)]?.content ?? null;
    } else if (label === 'Edit') {
      // Gradio opens the box with the rendered text, possibly a few frames later: until then (or until
      // anything but this sets the box: typing, a paste, an extension), it is set back to the raw text.
      // Gradio may reuse the box of an earlier edit: each opening watches it anew.
      const index = indexOf(button), text = raw()[index]?.content, opening = String(Math.random());
      let typed = false, ours = false;
      const fill = (tries) => {
        const box = document.querySelectorAll('#chatbot .message-row')[index]?.querySelector('textarea');
        if (box && box.dataset.opening !== opening) {
          box.dataset.opening = opening;
          box.addEventListener('input', () => { typed ||= !ours; });
        }
        if (box && text !== undefined && !typed && box.value !== text) {
          box.value = text;
          ours = true;
          box.dispatchEvent(new Event('input', {bubbles: true}));
          ours = false;
        }
        if (tries) requestAnimationFrame(() => fill(tries - 1));
      };
      fill(60);
    }
  }, true);
  // An edit box left open would send its text into whatever conversation is shown when it is submitted:
  // whatever replaces the conversation closes it first (a loaded file: in LOAD_JS).
  const closeEdit = () => document.querySelector('#chatbot button[aria-label="Cancel"]')?.click();
  const replacing = '#clear, #new-conversation, #delete-conversation, #conversations label,'
    + ' #chatbot button[aria-label="Clear"]';
  document.addEventListener('click', (event) => event.target.closest(replacing) && closeEdit(), true);
  document.addEventListener('copy', (event) => {
    if (next === null) return;
    event.clipboardData.setData('text/plain', next);
    event.preventDefault();
    next = null;
  }, true);
  if (navigator.clipboard) {
    const write = navigator.clipboard.writeText.bind(navigator.clipboard);
    navigator.clipboard.writeText = (text) => {
      const exact = next ?? text;
      next = null;
      return write(exact);
    };
  }
}""".replace("CLEAR_QUESTION", json.dumps(
    "Clear this conversation? Its messages are deleted from this browser and cannot be brought back: save it "
    "as a file first to keep it, or start a New conversation instead."))  # fmt: skip

# In the page's head, so that it runs before the app's components load their kept values.
PAGE_HEAD = """<script>
(() => {
  // Every Enter or Send press notes the box as it is, just before its event's TAKE_JS runs and takes the
  // note. Here, in the page's head, from its first moment: Gradio runs PAGE_JS only once it has loaded.
  const pressed = (text) => { window.pressedSend = text; };
  document.addEventListener('keydown', (event) => {
    if (event.key === 'Enter' && !event.shiftKey && !event.isComposing && event.target.closest?.('#message')) {
      pressed(event.target.value);
    }
  }, true);
  document.addEventListener('pointerdown', (event) => {
    if (event.target.closest?.('#send')) pressed(document.querySelector('#message textarea')?.value ?? '');
  }, true);
  // Each tab holds the kept conversations as it loaded them, and a write replaces what another tab
  // wrote since. Once another tab writes, this one stops writing (the other's stay whole) and says so.
  let elsewhere = false;
  window.addEventListener('storage', (event) => {
    if (elsewhere || !event.key?.startsWith(STORAGE_PREFIX)) return;
    elsewhere = true;
    const notice = Object.assign(document.createElement('div'), {id: 'other-tab', role: 'alert', textContent:
      'The playground was changed in another tab. This tab no longer keeps its conversations in the '
      + 'browser: save this one as a file if you need it, then reload.'});
    document.body.prepend(notice);
  });
  // A tab that opens writes back the values it has just read (Gradio encrypts them anew): no change, but
  // other tabs would see a write. Until its first keystroke or click, a tab writes none of them.
  let used = false;
  const use = (event) => { used ||= event.isTrusted; };
  for (const type of ['pointerdown', 'keydown']) window.addEventListener(type, use, true);
  const setItem = Storage.prototype.setItem;
  Storage.prototype.setItem = function (key, value) {
    const ours = this === window.localStorage && String(key).startsWith(STORAGE_PREFIX);
    if (ours && (elsewhere || !used)) return;
    return setItem.call(this, key, value);
  };
})();
</script>""".replace("STORAGE_PREFIX", json.dumps(STORAGE_PREFIX))
PAGE_CSS = """
#other-tab { position: sticky; top: 0; z-index: 1000; padding: 0.6em 1em; font-weight: 600;
  background: var(--color-accent-soft); color: var(--body-text-color); border: 1px solid var(--color-accent); }
.reply-note { font-size: var(--text-sm); color: var(--body-text-color); opacity: 0.8; }
#model-info { font-size: var(--text-sm); }
/* The page is the window: every box from the page down to the chatbot may shrink (a flex item's min-height
   is its content by default), so the conversation scrolls inside its own box, not the page. */
.gradio-container { height: 100dvh; }
.gradio-container .main, .gradio-container .wrap, .gradio-container .contain, .contain > .column, #chatbot {
  min-height: 0 !important; }
#model-info, #context { flex-shrink: 0; }
#model-info p { margin: 0; }
"""

PRIVATE = {"api_visibility": "private"}  # the page's own events: not in the API that clients see
PARAM_NAMES = ("temperature", "top_p", "top_k", "max_new_tokens", "repetition_penalty", "seed")


@dataclass
class Shelf:
    """The conversations kept in the browser, and the list that reopens, renames and deletes them."""

    current: gr.BrowserState  # the open conversation (Kept.stored()), written after each change
    past: gr.BrowserState  # the others, most recent first, written only when the list changes
    opened: gr.State  # (id, title) of the open conversation
    labels: gr.State  # the past ones' (label, id), so that redrawing the list after a turn sends none of them
    listed: gr.Radio
    title: gr.Textbox
    rename: gr.Button
    new: gr.Button
    delete: gr.Button
    sure: gr.Checkbox  # hidden: the answer to Delete's question, set by the page


@dataclass
class Page:
    """The components the handlers read and write."""

    blocks: gr.Blocks
    info: gr.Markdown
    chatbot: gr.Chatbot
    raw: gr.Textbox  # hidden: the exact conversation, for the page's copy buttons and edit box
    context: gr.Markdown
    textbox: gr.Textbox
    send: gr.Button
    stop: gr.Button
    retry: gr.Button
    proceed: gr.Button  # Continue: shown under a reply cut at max new tokens
    undo: gr.Button
    clear: gr.Button
    model: gr.Dropdown
    system: gr.Textbox
    samplers: list[gr.components.Component]  # in PARAM_NAMES' order
    save: gr.Button
    save_markdown: gr.Button
    load: gr.Button
    file_text: gr.Textbox
    state: gr.State  # the raw conversation: what the model sees
    notes: gr.State  # message index -> how that reply went; shown, never sent to the model
    busy: gr.State  # a reply is being generated
    sent: gr.State  # the message taken from the box, on its way to `Chat.respond`
    refused: gr.State  # why the box's message was not taken: said by `submit`, a queued event that can warn
    shelf: Shelf

    @property
    def shown(self) -> list[gr.components.Component]:
        """What `Handlers.show` writes, with the context line: the outputs of every event that shows a conversation."""
        return [self.chatbot, self.state, self.notes, self.raw, self.context, self.proceed]


@dataclass
class Reply:
    """The newest reply of a session as it streams, for Stop to mark once its generator has ended."""

    conversation: list[Message]
    notes: dict[int, str]
    back: str | None = None  # the message sent or edited, for the box if Stop comes before anything streamed
    started: bool = False  # a piece of the reply has streamed
    done: asyncio.Event = field(default_factory=asyncio.Event)
    # Gradio asks a generator for its next update once it has sent the last one to the page: set then, so
    # that Stop's own update can come after it.
    delivered: asyncio.Event = field(default_factory=asyncio.Event)
    # Stop cancels the reply's event from the page, which it can only do once the page knows the event's
    # id: on a slow connection a Stop right after Send comes before that, and the reply ends at this flag.
    stopped: bool = False

    def __post_init__(self) -> None:
        self.delivered.set()  # nothing yielded yet


def waiting(conversation: list[Message]) -> bool:
    """The conversation ends with a question that has no reply (kept by a reload while it was answered)."""
    return bool(conversation) and conversation[-1]["role"] == "user"


def notes_before(notes: dict[int, str], end: int) -> dict[int, str]:
    return {i: note for i, note in notes.items() if i < end}


def edited(conversation: list[Message], edit: gr.EditData) -> list[Message] | None:
    """The conversation up to an edited question, with its new text; None if the edit is not of a question."""
    index = edit.index if isinstance(edit.index, int) else edit.index[0]
    if index >= len(conversation) or conversation[index]["role"] != "user":
        return None
    return [*conversation[:index], {"role": "user", "content": edit.value}]


def put_back(message: str, box: str) -> str:
    """A message going back into the message box, before whatever was typed there since."""
    return f"{message}\n\n{box}" if box.strip() else message


def session_of(request: gr.Request | None) -> str:
    return (request.session_hash if request else None) or ""


def client_of(request: gr.Request | None) -> str:
    return request.client.host if request and request.client else ""


def shelf_layout() -> Shelf:
    with gr.Sidebar(open=True, elem_id="history"):
        gr.Markdown("### StarChat Playground")
        new = gr.Button("New conversation", variant="primary", elem_id="new-conversation")
        listed = gr.Radio(
            [],
            label="Kept in this browser",
            info=f"The last {MAX_CONVERSATIONS}, in this browser only: never on the server. Pick one to reopen it.",
            elem_id="conversations",
        )
        with gr.Row(equal_height=True):
            title = gr.Textbox(
                show_label=False, placeholder="Title of this conversation", max_length=MAX_TITLE, scale=3,
                min_width=100, elem_id="title",
            )  # fmt: skip
            rename = gr.Button("Rename", size="sm", scale=1, min_width=60, elem_id="rename")
        delete = gr.Button("Delete this conversation", size="sm", variant="stop", elem_id="delete-conversation")
    current, past = (gr.BrowserState(None, storage_key=key, secret=STORAGE_SECRET) for key in STORAGE_KEYS)
    sure = gr.Checkbox(False, visible=False)
    return Shelf(current, past, gr.State(("", "")), gr.State([]), listed, title, rename, new, delete, sure)


def layout(chat: Chat, describe) -> Page:
    names = list(chat.backends)
    defaults = SamplingParams()

    def slider(name: str, label: str, step: float, info: str = "") -> gr.Slider:
        _, low, high = PARAM_RANGES[name]
        if name == "max_new_tokens":  # what the first model's context leaves a prompt
            high = chat.reply_limit(names[0])
        value = min(getattr(defaults, name), high)
        return gr.Slider(low, high, value=value, step=step, label=label, info=info or None, elem_id=name)

    # No usage reports to Gradio's servers: a playground may run offline or hold private conversations.
    # fill_height: the conversation takes the window's height and scrolls alone, the message box stays at
    # its foot; the conversations' list and the settings are sidebars (PAGE_JS closes them on narrow screens).
    with gr.Blocks(title="StarChat Playground", analytics_enabled=False, fill_height=True) as blocks:
        shelf = shelf_layout()
        with gr.Sidebar(open=True, position="right", elem_id="settings"):
            model = gr.Dropdown(names, value=names[0], label="Model", elem_id="model", visible=len(names) > 1)
            system = gr.Textbox(label="System prompt", lines=4, elem_id="system")
            with gr.Accordion("Sampling", open=True):
                samplers = [
                    slider("temperature", "Temperature", 0.05, "0 = greedy"),
                    slider("top_p", "Top-p", 0.01),
                    slider("top_k", "Top-k", 1, "0 = off"),
                    slider("max_new_tokens", "Max new tokens", 1),
                    slider("repetition_penalty", "Repetition penalty", 0.01),
                    gr.Number(value=-1, precision=0, label="Seed", info="-1 = random", elem_id="seed"),
                ]
            with gr.Accordion("Conversation file", open=False):
                save = gr.Button("Save as JSON", elem_id="save")
                save_markdown = gr.Button("Save as Markdown", elem_id="save-markdown")
                load = gr.Button("Load JSON", elem_id="load")
                file_text = gr.Textbox(visible=False)  # a conversation file's text, on its way in or out
            with gr.Accordion("Use from code: /chat and /v1", open=False, elem_id="use-from-code"):
                snippet = gr.Code(API_SNIPPET.replace("MODEL", names[0]), language="python", elem_id="api-snippet")
        info = gr.Markdown(describe(names[0]), elem_id="model-info")
        chatbot = gr.Chatbot(
            show_label=False,
            elem_id="chatbot",
            scale=1,
            height="100%",
            editable="user",
            buttons=["copy", "copy_all"],
            placeholder="Ask a coding question or pick an example. Edit a message to regenerate from there.",
            examples=[{"text": example} for example in EXAMPLES],
        )
        raw = gr.Textbox("[]", visible="hidden", elem_id="raw-conversation")
        first = chat.backend(names[0]).info.context_length
        reply = min(defaults.max_new_tokens, chat.reply_limit())
        context = gr.Markdown(describe_budget(first, reply), elem_id="context")  # before the first send
        with gr.Row(equal_height=True):
            # One line that grows: Enter sends, Shift+Enter adds a line (Gradio's rule for lines=1).
            textbox = gr.Textbox(
                show_label=False,
                placeholder="Ask a coding question… (Enter sends, Shift+Enter adds a line)",
                lines=1,
                max_lines=12,
                scale=6,
                min_width=120,
                elem_id="message",
            )
            send = gr.Button("Send", variant="primary", scale=1, min_width=70, elem_id="send", interactive=False)
            stop = gr.Button("Stop", variant="stop", scale=1, min_width=70, elem_id="stop", visible=False)
        with gr.Row(equal_height=True):
            small = {"size": "sm", "min_width": 60}  # a row of four on a phone, not four full-width rows
            retry = gr.Button("Retry", elem_id="retry", **small)
            proceed = gr.Button("Continue", elem_id="continue", visible=False, **small)
            undo = gr.Button("Undo", elem_id="undo", **small)
            clear = gr.Button("Clear", elem_id="clear", **small)
        blocks.load(
            None, None, snippet, js=f"() => {json.dumps(API_SNIPPET.replace('MODEL', names[0]))}"
            ".replaceAll('PAGE_URL/', new URL('.', location.href).href)"
        )  # fmt: skip
        return Page(
            blocks, info, chatbot, raw, context, textbox, send, stop, retry, proceed, undo, clear, model, system,
            samplers, save, save_markdown, load, file_text, gr.State([]), gr.State({}), gr.State(False),
            gr.State(""), gr.State(""), shelf,
        )  # fmt: skip


class Handlers:
    """What the events of the conversation do, each method one event: send, retry, edit, continue, stop,
    undo, clear, and picking an example or a model. They read and write the page's components."""

    def __init__(self, page: Page, chat: Chat, describe: Callable[[str], str]):
        self.p, self.chat, self.describe = page, chat, describe
        self.replies: dict[str, Reply] = {}  # session -> its newest reply, for Stop
        # A Stop can come before its reply has started (the page sends it the moment Stop shows): the
        # message taken for sending goes back into the box, and the reply, if it still comes, does not run.
        self.unsent: dict[str, str] = {}  # session -> the message taken for sending, until its reply starts
        self.halted: set[str] = set()  # sessions whose Stop came before their reply started
        p = page
        # Retry and Undo wait for the reply: Undo would take back a question whose answer is still coming.
        self.locked = {p.send: gr.update(visible=False), p.stop: gr.update(visible=True),
                       p.retry: gr.update(interactive=False), p.undo: gr.update(interactive=False),
                       p.proceed: gr.update(visible=False)}  # fmt: skip
        self.unlocked = {p.busy: False, p.send: gr.update(visible=True), p.stop: gr.update(visible=False),
                         p.retry: gr.update(interactive=True), p.undo: gr.update(interactive=True)}  # fmt: skip

    def show(self, conversation: list[Message], notes: dict[int, str]) -> dict:
        """The conversation, with Continue under a last reply whose note says it was cut at max new tokens
        (also once reopened, reloaded or loaded from a file)."""
        p = self.p
        last = len(conversation) - 1
        reply = last >= 0 and conversation[last]["role"] == "assistant"
        cut = reply and notes.get(last, "").endswith(ENDINGS["length"])
        return {p.chatbot: display_messages(conversation, notes), p.state: conversation, p.notes: notes,
                p.raw: raw_json(conversation), p.proceed: gr.update(visible=cut)}  # fmt: skip

    async def run(
        self,
        values: dict,
        history: list[Message],
        request: gr.Request | None,
        continuing: bool = False,
        restore: dict | None = None,
        back: str | None = None,
        **overrides,
    ) -> AsyncIterator:
        """Streams one reply (or, `continuing`, more of the last one). Before it streams, an error leaves
        the conversation as it was, with the `restore` outputs (the message back in its box), and Stop
        gives `back` (the message sent or edited) back to the box."""
        p, unlocked = self.p, self.unlocked
        key = session_of(request)
        self.unsent.pop(key, None)
        if key in self.halted:  # stopped before it started
            self.halted.discard(key)
            yield unlocked
            return
        kept = len(history) - continuing  # a continued reply gets a new note
        opening = history[-1]["content"] if continuing else ""  # the reply's text before this run
        before, notes = values[p.state], notes_before(values[p.notes], kept)
        try:
            raw = {name: values[c] for name, c in zip(PARAM_NAMES, p.samplers, strict=True)}
            params = self.chat.params(**{**raw, **overrides})
        except ParamError as exc:
            gr.Warning(str(exc))
            yield {**self.show(before, values[p.notes]), **unlocked, **(restore or {})}
            return
        last: Update | None = None
        ended = False
        live = self.replies[key] = Reply(before, values[p.notes], back)  # as it was, until the reply starts
        try:
            updates = self.chat.respond(
                history, values[p.system], params, values[p.model], client_of(request), continuing=continuing
            )
            async with contextlib.aclosing(updates):  # closed early, the generation ends with it
                async for update in updates:
                    if live.stopped:
                        break
                    last = update
                    if update.error and not update.finish:
                        gr.Warning(update.error)
                        yield {**self.show(before, values[p.notes]), p.context: update.context or gr.skip(),
                               **unlocked, **(restore or {})}  # fmt: skip
                        ended = True
                        return
                    if update.finish:
                        index = len(update.conversation) - 1
                        note = reply_note(update.finish, update.tokens, update.first_token_s, update.seconds)
                        notes = {**notes, index: note}
                    newest = update.conversation[-1] if update.conversation else {}
                    if update.finish or (newest.get("role") == "assistant" and newest["content"] != opening):
                        live.conversation, live.notes, live.started = update.conversation, notes, True
                    if not update.finish:
                        live.delivered.clear()
                        yield {**self.show(update.conversation, notes), p.context: update.context}
                        live.delivered.set()
            ended = True
        finally:
            live.done.set()  # also when Stop cancels this generator; then Stop takes the entry
            live.delivered.set()
            if ended and self.replies.get(key) is live:
                del self.replies[key]
        if live.stopped:  # Stop has given the page back; by now it may be streaming the next reply
            yield {}  # Gradio ends an event by sending its last update again: that must not be a stale one
            return
        if not (last and last.finish):
            yield unlocked
            return
        if last.error:
            gr.Warning(last.error)
        # The finished reply (its note) comes with the page given back, once the reply's generator has wound
        # down: a page that shows a reply as finished takes New conversation or the next message at once.
        # Gradio ends the event by sending this update again, right after it.
        yield {**self.show(last.conversation, notes), p.context: last.context, **unlocked}

    def lock(self, request: gr.Request) -> dict:
        """The page while a new reply is on its way: busy, Stop for Send. A Stop from before it is forgotten."""
        self.halted.discard(session_of(request))
        return {self.p.busy: True, **self.locked}

    def take(self, message: str, busy: bool, request: gr.Request) -> dict:
        """Takes the message out of the box for sending; while a reply streams the box is left alone."""
        p = self.p
        if busy or not message.strip():
            return {p.sent: "", p.refused: ""}
        try:
            self.chat.check_message(message)
        except DialogueError as exc:  # a warning here (not queued) would never reach the page
            return {p.sent: "", p.refused: str(exc), p.textbox: sendable(message)}
        self.unsent[session_of(request)] = message
        return {p.sent: message, p.refused: "", **self.lock(request)}

    async def submit(self, values: dict, request: gr.Request):
        p = self.p
        message = values[p.sent]
        if not message:  # nothing was taken: the box was empty or refused, or a reply is streaming
            if values[p.refused]:
                gr.Warning(values[p.refused])
            yield {p.textbox: gr.skip()}
            return
        # An error before the reply gives the message back, unless the person typed a new one.
        restore = {} if values[p.textbox] else {p.textbox: message}
        if waiting(values[p.state]):
            self.unsent.pop(session_of(request), None)
            gr.Warning("The last message has no reply yet: press Retry to have it answered, or Undo to edit it.")
            yield {**self.unlocked, **restore}
            return
        history = [*values[p.state], {"role": "user", "content": message}]
        async for out in self.run(values, history, request, restore=restore, back=message):
            yield out

    async def retry(self, values: dict, request: gr.Request):
        conversation = values[self.p.state]
        if not conversation:
            yield self.unlocked
            return
        history = conversation[:-1] if conversation[-1]["role"] == "assistant" else conversation
        yield self.lock(request)
        async for out in self.run(values, history, request, seed=-1):  # a new seed
            yield out

    async def edit(self, values: dict, edit: gr.EditData, request: gr.Request):
        """The edit box holds the message's raw text (the page fills it in), so it is taken as typed. An edit
        refused before the reply (too long, say) waits in the message box, not lost."""
        p = self.p
        conversation = values[p.state]
        if (history := edited(conversation, edit)) is None:
            yield {**self.show(conversation, values[p.notes]), **self.unlocked}
            return
        text = sendable(history[-1]["content"])
        restore = {p.textbox: put_back(text, values[p.textbox])}
        if not text.strip():  # as from the message box: an empty question is not sent
            gr.Warning("The message is empty: the edit was not sent.")
            yield {**self.show(conversation, values[p.notes]), **self.unlocked}
            return
        yield self.lock(request)
        async for out in self.run(values, history, request, restore=restore, back=text):
            yield out

    async def proceed(self, values: dict, request: gr.Request):
        """Continue: the reply cut at max new tokens goes on in the same bubble."""
        conversation = values[self.p.state]
        if not conversation or conversation[-1]["role"] != "assistant":
            yield self.unlocked
            return
        yield self.lock(request)
        async for out in self.run(values, conversation, request, continuing=True):
            yield out

    @staticmethod
    def pick(example: gr.SelectData) -> str:
        """An example from the empty chatbot goes to the box, to be read (and changed) before sending."""
        return example.value["text"]

    async def stopped(self, conversation: list[Message], notes: dict[int, str], box: str, request: gr.Request) -> dict:
        """Stop: the reply stays as far as it got, marked as stopped.

        The cancelled generator may still be writing: this waits for its end and takes its last reply.
        A reply that has not started yet will not run, and one with nothing streamed yet ends as if it had
        not: its message goes back into the box, before anything typed since.
        """
        key = session_of(request)
        if live := self.replies.pop(key, None):
            live.stopped = True  # ends the reply also where the page could not cancel its event
            # Started: its last piece is on its way, wait for it. Not started: a backend may take long to its
            # first word (the flag ends the reply at it); wait only until the page has the reply's last update
            # (the conversation with the message), so that this one, without it, comes after.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    live.done.wait() if live.started else live.delivered.wait(), 10 if live.started else 2
                )
            conversation, notes = live.conversation, live.notes
            message, streamed = (None, True) if live.started else (live.back, False)
        else:
            self.halted.add(key)
            message, streamed = self.unsent.pop(key, None), True  # the page's reply, as far as it got
        last = len(conversation) - 1
        if streamed and last >= 0 and conversation[last]["role"] == "assistant" and last not in notes:
            notes = {**notes, last: ENDINGS["cancelled"]}
        back = {} if message is None else {self.p.textbox: put_back(message, box)}
        return {**self.show(conversation, notes), **self.unlocked, **back}

    def forget(self, request: gr.Request) -> None:
        """A session that has left (its tab closed or reloaded): its reply ends, and it keeps nothing here.

        Gradio does not always cancel a reply whose page has gone (a reload on a slow connection left it
        generating to its end, for nobody, while later replies waited for the slot)."""
        key = session_of(request)
        if live := self.replies.pop(key, None):
            live.stopped = True
        if self.unsent.pop(key, None) is not None:
            self.halted.add(key)  # a message taken for a reply that has not started: the reply will not run
        else:
            self.halted.discard(key)

    def undo(self, conversation: list[Message], notes: dict[int, str], box: str, busy: bool) -> dict:
        """The last question goes back into the box, before anything typed there, with its reply taken away
        (an unanswered one alone). Not while a reply streams (the page disables the button meanwhile)."""
        if not conversation or busy:
            return gr.skip()
        cut = len(conversation) - (1 if waiting(conversation) else 2)
        if cut < 0:
            return gr.skip()
        shown = self.show(conversation[:cut], notes_before(notes, cut))
        return {**shown, self.p.textbox: put_back(conversation[cut]["content"], box)}

    def cleared(self, name: str, max_new_tokens: int, request: gr.Request) -> dict:
        """An empty conversation; a reply that was streaming is cancelled first, so it cannot write back. The
        context line says the budget, as before the first message (the buttons below it stay in place)."""
        self.replies.pop(session_of(request), None)
        *_, context = self.budget(name, max_new_tokens)
        return {**self.show([], {}), self.p.context: context, **self.unlocked}

    def budget(self, name: str, max_new_tokens: int) -> tuple[int, int, str]:
        """The reply limit `name` allows, the slider's value within it, and the context line for them."""
        limit = self.chat.reply_limit(name)
        # The slider's value as the page sent it: a forged call may send anything there.
        given = isinstance(max_new_tokens, int | float) and math.isfinite(max_new_tokens)
        reply = min(max(1, int(max_new_tokens)), limit) if given else limit
        return limit, reply, describe_budget(self.chat.backend(name).info.context_length, reply)

    def pick_model(self, name: str, max_new_tokens: int) -> dict:
        """Another model: its description, and a reply limit that fits its context."""
        p = self.p
        limit, reply, context = self.budget(name, max_new_tokens)
        return {p.info: self.describe(name), max_new_of(p): gr.update(maximum=limit, value=reply), p.context: context}


def max_new_of(page: Page) -> gr.components.Component:
    return page.samplers[PARAM_NAMES.index("max_new_tokens")]


def wire(page: Page, chat: Chat, describe) -> None:
    """Connects the page's events to their handlers; every change to the open conversation is then kept."""
    p, h = page, Handlers(page, chat, describe)
    turn = {p.state, p.notes, p.system, p.model, *p.samplers}  # a set: handlers get one dict of values
    p.model.change(h.pick_model, [p.model, max_new_of(p)], [p.info, max_new_of(p), p.context], queue=False,
                   **PRIVATE)  # fmt: skip
    shown = p.shown
    buttons = [p.busy, p.send, p.stop, p.retry, p.undo]
    took = [p.textbox, p.sent, p.refused, p.proceed, *buttons]
    keeping, keeping_sent, keeping_edited = wire_shelf(p, chat, h.show)
    generating = []
    for event in (p.textbox.submit, p.send.click):
        taking = event(h.take, [p.textbox, p.busy], took, queue=False, js=TAKE_JS, **PRIVATE)
        # "multiple": the page would drop a send made just after a reply ends, while the reply's own
        # event is still finishing ("once", the default, skips a trigger while its event is pending);
        # `take` already refuses a send while a reply streams.
        generating.append(
            taking.then(
                h.submit,
                {p.sent, p.refused, p.textbox, *turn},
                [*shown, *buttons, p.textbox],
                trigger_mode="multiple",
                **PRIVATE,
            )
        )
        taking.then(**keeping_sent)  # beside the reply: a reload while it streams keeps the message sent
    p.chatbot.edit(**keeping_edited)
    generating += [
        # The message box is among every reply's outputs (written only to give back a refused edit): it marks
        # the event as running.
        p.retry.click(h.retry, turn, [*shown, *buttons, p.textbox], **PRIVATE),
        p.chatbot.edit(h.edit, {*turn, p.textbox}, [*shown, *buttons, p.textbox], **PRIVATE),
        p.proceed.click(h.proceed, turn, [*shown, *buttons, p.textbox], **PRIVATE),
    ]
    stopping = p.stop.click(None, cancels=generating, **PRIVATE).then(
        h.stopped, [p.state, p.notes, p.textbox], [*shown, *buttons, p.textbox], **PRIVATE
    )
    p.blocks.unload(h.forget)
    # Send is for a message: disabled on an empty box.
    p.textbox.change(lambda text: gr.update(interactive=bool(text.strip())), p.textbox, p.send, queue=False,
                     show_progress="hidden", **PRIVATE)  # fmt: skip
    p.chatbot.example_select(h.pick, None, p.textbox, queue=False, **PRIVATE)
    changing = [
        *generating,
        stopping,
        p.undo.click(h.undo, [p.state, p.notes, p.textbox, p.busy], [*shown, p.textbox], queue=False, **PRIVATE),
    ]
    for clearing in (p.clear.click, p.chatbot.clear):  # our button and the chatbot's own trash icon
        changing.append(
            clearing(None, cancels=generating, **PRIVATE).then(
                h.cleared, [p.model, max_new_of(p)], [*shown, *buttons], **PRIVATE
            )
        )
    for change in changing:  # every change to the open conversation is kept in the browser
        change.then(**keeping)
    p.system.blur(**keeping)
    # Saved in the browser: no file on the server that another visitor could fetch.
    p.save.click(export_conversation, [p.state, p.system, p.notes], p.file_text, **PRIVATE).then(
        None, p.file_text, None, js=download_js("application/json", "json")
    )
    p.save_markdown.click(
        lambda conversation, system, opened: conversation_markdown(Kept(*opened, conversation, system).label(),
                                                                   conversation, system),
        [p.state, p.system, p.shelf.opened], p.file_text, **PRIVATE,
    ).then(None, p.file_text, None, js=download_js("text/markdown", "md"))  # fmt: skip


def wire_shelf(page: Page, chat: Chat, show) -> tuple[dict, dict, dict]:
    """The conversations kept in the browser: restored with the page, listed, reopened, renamed, deleted,
    and a loaded file opened as a new one. Returns the events that keep the open conversation: after each
    change, and with a message as it is sent or edited."""
    p, s, limit = page, page.shelf, chat.settings.max_conversation_chars
    shown = p.shown
    opening_outputs = [*shown, p.system, s.opened, s.title, s.current, s.past, s.labels, s.listed]

    def labeled(past: list[Kept]) -> list[tuple[str, str]]:
        return [(k.label(), k.id) for k in past]

    def listing(current: Kept, labels: list[tuple[str, str]]) -> dict:
        value = current.id if current.conversation else None
        return {s.labels: labels, s.listed: gr.update(choices=choices(current, labels), value=value)}

    def opening(current: Kept, past: list[Kept], dropped: int = 0) -> dict:
        """`current` is now the open conversation and `past` the list; both are stored."""
        if dropped:
            gr.Info(f"{dropped} older conversation{'s' * (dropped != 1)} left the list: this browser keeps the "
                    f"last {MAX_CONVERSATIONS}, {STORE_BYTES // 1_000_000} MB at most.")  # fmt: skip
        return {**show(current.conversation, current.notes), p.context: "", p.system: current.system,
                s.opened: (current.id, current.title), s.title: current.title, s.current: current.stored(),
                s.past: [k.stored() for k in past], **listing(current, labeled(past))}  # fmt: skip

    def busy_now(busy: bool) -> bool:
        """While a reply streams into the open conversation, it stays open."""
        if busy:
            gr.Warning("A reply is being written: stop it first.")
        return busy

    def keep(conversation: list[Message], notes: dict, system: str, opened: tuple[str, str], labels: list,
             warn: bool = True) -> dict:  # fmt: skip
        current = Kept(opened[0] or new_id(), opened[1], conversation, system, notes)
        if sent_size(current.stored()) > STORE_BYTES:
            if warn:
                gr.Warning("This conversation is too long to keep in this browser: save it as a file.")
            return {s.opened: (current.id, current.title)}
        return {s.current: current.stored(), s.opened: (current.id, current.title), **listing(current, labels)}

    def keep_sent(sent: str, conversation: list[Message], notes: dict, system: str, opened: tuple[str, str],
                  labels: list) -> dict:  # fmt: skip
        """The conversation with the message just sent, kept as its reply starts: a reload while the reply
        streams ends the reply, and the message comes back (Retry answers it). The finished turn is kept
        over it when the reply ends."""
        if not sent or waiting(conversation):  # refused: nothing is sent
            return gr.skip()
        # Too long to keep: the reply's own keeping says so, once.
        return keep([*conversation, {"role": "user", "content": sent}], notes, system, opened, labels, warn=False)

    def keep_edited(conversation: list[Message], notes: dict, system: str, opened: tuple[str, str], labels: list,
                    edit: gr.EditData) -> dict:  # fmt: skip
        """An edited question, kept as its reply starts (as `keep_sent` keeps a message sent)."""
        if (history := edited(conversation, edit)) is None:
            return gr.skip()
        try:
            chat.check_message(edit.value)
        except DialogueError:  # refused by the reply's own event, which says why
            return gr.skip()
        return keep(history, notes_before(notes, len(history) - 1), system, opened, labels, warn=False)

    def restore(stored: str | None) -> dict:
        """The conversation that was open when the page was last left (reloaded, or its theme switched)."""
        try:
            current = read_current(stored, limit)
        except DialogueError:
            gr.Warning("The conversation kept in this browser could not be read: a new one is open.")
            current = None
        current = current or Kept(new_id(), "", [], "")
        return {**show(current.conversation, current.notes), p.system: current.system,
                s.opened: (current.id, current.title),
                s.title: current.title}  # fmt: skip

    def restore_list(stored: str | None, conversation: list[Message], system: str, opened: tuple[str, str]) -> dict:
        past, bad = read_past(stored, limit)
        if bad:
            gr.Warning(f"{bad} conversation{'s' * (bad != 1)} kept in this browser could not be read and "
                       f"{'were' if bad != 1 else 'was'} left out.")  # fmt: skip
        past = [k for k in past if k.id != opened[0]]
        return listing(Kept(*opened, conversation, system), labeled(past))

    def reopen(stored: str | None, chosen: str, conversation: list, notes: dict, system: str, opened: tuple,
               busy: bool) -> dict:  # fmt: skip
        past, _ = read_past(stored, limit)
        leaving = Kept(*opened, conversation, system, notes)
        found = next((k for k in past if k.id == chosen), None)
        if busy_now(busy) or not found or found.id == leaving.id:
            return listing(leaving, labeled([k for k in past if k.id != leaving.id]))
        return opening(found, *shelve([k for k in past if k.id != chosen], leaving))

    def new(stored: str | None, conversation: list, notes: dict, system: str, opened: tuple, busy: bool) -> dict:
        """An empty conversation (the system prompt stays: it is more a setting than a message)."""
        if busy_now(busy):
            return gr.skip()
        leaving = Kept(*opened, conversation, system, notes)
        return opening(Kept(new_id(), "", [], system), *shelve(read_past(stored, limit)[0], leaving))

    def delete(stored: str | None, system: str, busy: bool, sure: bool) -> dict:
        if busy_now(busy) or sure is not True:
            return gr.skip()
        return opening(Kept(new_id(), "", [], system), read_past(stored, limit)[0])

    def rename(title: str, conversation: list, notes: dict, system: str, opened: tuple, labels: list) -> dict:
        try:
            title = check_title(title)
        except DialogueError as exc:
            gr.Warning(str(exc))
            return gr.skip()
        return {s.title: title, **keep(conversation, notes, system, (opened[0], title), labels)}

    def load(stored: str | None, text: str, conversation: list, notes: dict, system: str, opened: tuple,
             busy: bool) -> dict:  # fmt: skip
        """A conversation file, read by the browser (the server never opens a path a client names), opens as
        a new conversation; the one that was open goes to the list."""
        if not text:  # no file chosen
            return gr.skip()
        if text.startswith(TOO_LARGE):
            size = text.removeprefix(TOO_LARGE)  # the browser's number, or whatever a forged event sends
            size = f"{int(size):,}" if size.isascii() and size.isdigit() and len(size) < 19 else "too many"
            gr.Warning(f"That file has {size} bytes: conversation files of up to {LOAD_BYTES:,} bytes can be loaded.")
            return gr.skip()
        if text == EMPTY_FILE:
            gr.Warning("That file is empty: a conversation file holds the JSON that Save conversation writes.")
            return gr.skip()
        try:
            loaded, loaded_system, loaded_notes = import_conversation(text, limit)
        except DialogueError as exc:
            gr.Warning(f"Could not load that conversation: {exc}")
            return gr.skip()  # nothing replaced
        if busy_now(busy):
            return gr.skip()
        # Opened whole, to be read, copied and saved, even where this server would not take it further.
        asking = loaded if waiting(loaded) else [*loaded, {"role": "user", "content": "?"}]
        try:
            chat.check_conversation(asking, loaded_system)
        except DialogueError as exc:
            gr.Warning(f"Loaded, but this server cannot continue it: {exc}")
        past = read_past(stored, limit)[0]
        leaving = Kept(*opened, conversation, system, notes)
        return opening(Kept(new_id(), "", loaded, loaded_system, loaded_notes), *shelve(past, leaving))

    quick = {"show_progress": "hidden", **PRIVATE}  # queued: a warning reaches the page only from the queue
    leaving = [p.state, p.notes, p.system, s.opened, p.busy]
    p.blocks.load(restore, s.current, [*shown, p.system, s.opened, s.title], js=sending_stored(1), **quick).then(
        restore_list, [s.past, p.state, p.system, s.opened], [s.labels, s.listed], js=sending_stored(4), **quick
    )
    s.listed.input(reopen, [s.past, s.listed, *leaving], opening_outputs, js=sending_stored(7), **quick)
    s.new.click(new, [s.past, *leaving], opening_outputs, js=sending_stored(6), **quick)
    s.delete.click(delete, [s.past, p.system, p.busy, s.sure], opening_outputs, js=DELETE_JS, **quick)
    for renaming in (s.rename.click, s.title.submit):
        renaming(rename, [s.title, p.state, p.notes, p.system, s.opened, s.labels],
                 [s.title, s.current, s.opened, s.labels, s.listed], **quick)  # fmt: skip
    # The browser reads the file and sends its text: no file is uploaded, no event takes a path from a client.
    p.load.click(None, None, p.file_text, js=LOAD_JS, trigger_mode="multiple", **PRIVATE).then(
        load, [s.past, p.file_text, *leaving], opening_outputs, js=sending_stored(7), **PRIVATE
    )
    keeping, opened = [s.current, s.opened, s.labels, s.listed], [p.state, p.notes, p.system, s.opened, s.labels]
    # Not queued, those kept as a reply starts: written at once, before a short reply's own keeping comes.
    at_once = {"outputs": keeping, **quick, "queue": False}
    return (
        {"fn": keep, "inputs": opened, "outputs": keeping, **quick},
        {"fn": keep_sent, "inputs": [p.sent, *opened], **at_once},
        {"fn": keep_edited, "inputs": opened, **at_once},
    )


def build_ui(chat: Chat) -> gr.Blocks:
    def describe(name: str) -> str:
        info = chat.backend(name).info
        return info.describe() + (f"\n\n{DEMO_NOTICE}" if info.demo else "")

    page = layout(chat, describe)
    with page.blocks:
        wire(page, chat, describe)
        gr.api(chat_api(chat), api_name="chat")
    return page.blocks


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
            if not isinstance(history, list) or not isinstance(system_prompt, str):
                raise DialogueError("history must be a list of {role, content} and system_prompt a string")
        except (ParamError, DialogueError) as exc:
            raise gr.Error(str(exc)) from exc
        history = [*history, {"role": "user", "content": message}]
        async for update in chat.respond(history, system_prompt, params, model, client_of(request)):
            if update.error:
                raise gr.Error(update.error)
            yield update.conversation[-1]["content"]

    return chat_endpoint
