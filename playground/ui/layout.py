"""Where each component of the page sits: the conversations' list on the left, the settings on the right,
the conversation and the message box between them. `Page` names the components the handlers use."""

from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from playground.chat import Chat, describe_budget
from playground.history import MAX_CONVERSATIONS
from playground.sampling import PARAM_RANGES, SamplingParams
from playground.ui.browser import STORAGE_KEYS, STORAGE_SECRET, api_snippet, call

EXAMPLES = [
    "How can I write a Python function to generate the nth Fibonacci number?",
    "How do I get the current date using shell commands? Explain how it works.",
    "How do I reverse a list in Python?",
    "Write a Python function that checks whether a string is a palindrome.",
]
DEMO_NOTICE = (
    "The **offline demo model**: try the page, not its answers. StarChat-β: "
    "`python app.py --model HuggingFaceH4/starchat-beta`"
)
PARAM_NAMES = ("temperature", "top_p", "top_k", "max_new_tokens", "repetition_penalty", "seed")


@dataclass
class ConversationList:
    """The conversations kept in the browser, and the list that reopens, renames and deletes them."""

    current: gr.BrowserState  # the open conversation (StoredConversation.stored()), written after each change
    past: gr.BrowserState  # the others, most recent first, written only when the list changes
    opened: gr.State  # (id, title, updated) of the open conversation
    labels: gr.State  # the past ones' (label, id, updated): redrawing the list after a turn sends none of them
    listed: gr.Radio
    dates: gr.Textbox  # hidden: when each listed one last changed, for the page's Today / Earlier
    new: gr.Button
    act: gr.Button  # hidden: clicked by an item's own Rename or Delete (page.js), with what to do
    action: gr.Textbox  # hidden: that, as {"rename": id, "title": ...} or {"delete": id}
    relist: gr.Button  # hidden: clicked when another tab has written the list
    take_in: gr.Button  # hidden: clicked when another tab has written its open conversation, with it
    theirs: gr.Textbox  # hidden: that conversation, as stored


@dataclass
class Page:
    """The components the handlers read and write."""

    blocks: gr.Blocks
    info: gr.Markdown
    notice: gr.Markdown  # the demo model's: shown while it is picked
    chatbot: gr.Chatbot
    raw: gr.Textbox  # hidden: the exact conversation, for the page's copy buttons and edit box
    marks: gr.Textbox  # hidden: {message index: [shown, of]} for the page's "‹ 2/3 ›" (playground.versions)
    flip: gr.Button  # hidden: clicked by the page's ‹ and ›, with the version asked for
    flip_to: gr.Textbox  # hidden: that version, {"at": message index, "position": from 0}
    context: gr.Markdown
    textbox: gr.Textbox
    send: gr.Button
    stop: gr.Button
    continue_: gr.Button  # shown under a reply cut at max new tokens
    answer: gr.Button  # these two under a question that waits for its reply
    take_back: gr.Button
    model: gr.Dropdown
    system: gr.Textbox
    samplers: list[gr.components.Component]  # in PARAM_NAMES' order
    save: gr.Button
    save_markdown: gr.Button
    save_preferences: gr.Button  # the pairs that likes make among Retry's versions, from every kept conversation
    load: gr.Button
    file_text: gr.Textbox
    state: gr.State  # the raw conversation: what the model sees
    notes: gr.State  # message index -> how that reply went; shown, never sent to the model
    versions: gr.State  # what Retry and Edit replaced (playground.versions)
    busy: gr.State  # a reply is being generated
    drawing: gr.Checkbox  # hidden: page.js's word that it shows a reply streaming (Stop), for Replies.behind
    sent: gr.State  # the message taken from the box, on its way to `Chat.respond`
    refused: gr.State  # why the box's message was not taken: said by `submit`, a queued event that can warn
    conversations: ConversationList

    @property
    def shown(self) -> list[gr.components.Component]:
        """What `Turn.show` writes, with the context line: the outputs of every event that shows a conversation."""
        return [
            self.chatbot,
            self.state,
            self.notes,
            self.versions,
            self.marks,
            self.raw,
            self.context,
            self.continue_,
            self.answer,
            self.take_back,
        ]

    @property
    def replying(self) -> list[gr.components.Component]:
        """What a reply's event writes. The message box is among them (written to give a refused message
        back): it marks the event as running, which page.js's `settled` waits on."""
        return [*self.shown, self.busy, self.send, self.stop, self.textbox, self.conversations.current]

    @property
    def max_new_tokens(self) -> gr.components.Component:
        return self.samplers[PARAM_NAMES.index("max_new_tokens")]


def conversation_list() -> ConversationList:
    with gr.Sidebar(open=True, elem_id="history"):
        gr.Markdown("### StarChat Playground")
        new = gr.Button("New conversation", variant="primary", elem_id="new-conversation")
        # page.js groups it (Today / Earlier) and gives each item its Rename and Delete.
        listed = gr.Radio(
            [],
            label="Kept in this browser",
            info=f"The last {MAX_CONVERSATIONS}, in this browser only: never on the server.",
            elem_id="conversations",
        )
        dates = gr.Textbox("{}", visible="hidden", elem_id="conversation-dates")
        act = gr.Button(visible="hidden", elem_id="list-action")
        action = gr.Textbox(visible="hidden")
        relist = gr.Button(visible="hidden", elem_id="relist")
        take_in = gr.Button(visible="hidden", elem_id="take-in")
        theirs = gr.Textbox(visible="hidden")
    current, past = (gr.BrowserState(None, storage_key=key, secret=STORAGE_SECRET) for key in STORAGE_KEYS)
    return ConversationList(
        current, past, gr.State(("", "", 0.0)), gr.State([]), listed, dates, new, act, action, relist, take_in, theirs
    )


def settings(chat: Chat) -> tuple:
    """The right sidebar: model, system prompt, sampling, the conversation's file, and use from code."""
    names = list(chat.backends)
    defaults = SamplingParams()

    def slider(name: str, label: str, step: float, info: str = "") -> gr.Slider:
        _, low, high = PARAM_RANGES[name]
        if name == "max_new_tokens":  # what the first model's context leaves a prompt
            high = chat.reply_limit(names[0])
        value = min(getattr(defaults, name), high)
        return gr.Slider(low, high, value=value, step=step, label=label, info=info or None, elem_id=name)

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
            save_preferences = gr.Button("Save preferences", elem_id="save-preferences")
            load = gr.Button("Load JSON", elem_id="load")
            file_text = gr.Textbox(visible=False)  # a conversation file's text, on its way in or out
        with gr.Accordion("Use from code: /chat and /v1", open=False, elem_id="use-from-code"):
            snippet = gr.Code(api_snippet(names[0]), language="python", elem_id="api-snippet")
    return model, system, samplers, save, save_markdown, load, save_preferences, file_text, snippet


def conversation_view() -> gr.Chatbot:
    return gr.Chatbot(
        show_label=False,
        elem_id="chatbot",
        scale=1,
        height="100%",
        editable="user",
        buttons=["copy", "copy_all"],
        placeholder="Ask a coding question, or click an example to send it. Edit a message to answer it again.",
        examples=[{"text": example} for example in EXAMPLES],
    )


def composer() -> tuple[gr.Textbox, gr.Button, gr.Button, gr.Button, gr.Button, gr.Button]:
    """The message box with Send and Stop, and the buttons shown only where they apply."""
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
    # Retry, Undo, Edit, the copies and Clear are the chatbot's own, on the messages they apply to.
    with gr.Row():  # each shown only where it applies
        continue_ = gr.Button("Continue the reply", size="sm", elem_id="continue", visible=False)
        # A question kept without its reply (a reload while it was answered): the chatbot's Retry and
        # Undo go with a reply.
        answer = gr.Button("Answer it", size="sm", elem_id="answer", visible=False)
        take_back = gr.Button("Take it back", size="sm", elem_id="take-back", visible=False)
    return textbox, send, stop, continue_, answer, take_back


def layout(chat: Chat) -> Page:
    names = list(chat.backends)
    # No usage reports to Gradio's servers: a playground may run offline or hold private conversations.
    # fill_height: the conversation takes the window's height and scrolls alone, the message box stays at
    # its foot; the conversations' list and the settings are sidebars (page.js closes them on narrow screens).
    with gr.Blocks(title="StarChat Playground", analytics_enabled=False, fill_height=True) as blocks:
        conversations = conversation_list()
        model, system, samplers, save, save_markdown, load, save_preferences, file_text, snippet = settings(chat)
        blocks.load(None, None, snippet, js=call("apiSnippet"))  # with the address the browser is on
        info = gr.Markdown(chat.backend(names[0]).info.describe(), elem_id="model-info")
        # page.js gives it a close button; closed, it stays closed in this browser.
        notice = gr.Markdown(DEMO_NOTICE, elem_id="demo-notice", visible=chat.backend(names[0]).info.demo)
        chatbot = conversation_view()
        raw = gr.Textbox("[]", visible="hidden", elem_id="raw-conversation")
        marks = gr.Textbox("{}", visible="hidden", elem_id="versions")
        flip = gr.Button(visible="hidden", elem_id="flip")
        flip_to = gr.Textbox(visible="hidden")
        drawing = gr.Checkbox(False, visible="hidden")
        first = chat.backend(names[0]).info.context_length
        reply = min(SamplingParams().max_new_tokens, chat.reply_limit())
        context = gr.Markdown(describe_budget(first, reply), elem_id="context")  # before the first send
        textbox, send, stop, continue_, answer, take_back = composer()
        return Page(
            blocks=blocks,
            info=info,
            notice=notice,
            chatbot=chatbot,
            raw=raw,
            marks=marks,
            flip=flip,
            flip_to=flip_to,
            context=context,
            textbox=textbox,
            send=send,
            stop=stop,
            continue_=continue_,
            answer=answer,
            take_back=take_back,
            model=model,
            system=system,
            samplers=samplers,
            save=save,
            save_markdown=save_markdown,
            save_preferences=save_preferences,
            load=load,
            file_text=file_text,
            state=gr.State([]),
            notes=gr.State({}),
            versions=gr.State({}),
            busy=gr.State(False),
            drawing=drawing,
            sent=gr.State(""),
            refused=gr.State(""),
            conversations=conversations,
        )
