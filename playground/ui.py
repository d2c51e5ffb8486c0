"""The Gradio Blocks playground: layout and event wiring; the turn itself is playground.chat."""

from __future__ import annotations

from collections.abc import AsyncIterator

import gradio as gr

from playground.backends import PARAM_RANGES, ParamError, SamplingParams
from playground.chat import Chat, export_conversation, import_conversation
from playground.display import display_messages, error_notice, from_display, to_display
from playground.template import DialogueError, Message

EXAMPLES = [
    "How can I write a Python function to generate the nth Fibonacci number?",
    "How do I get the current date using shell commands? Explain how it works.",
    "How do I reverse a list in Python?",
    "Write a Python function that checks whether a string is a palindrome.",
]

DEMO_NOTICE = (
    "This is the **offline demo model**: a tiny StarChat-format model trained on this machine, "
    "good for trying the playground, not for real answers. To chat with StarChat-β, run "
    "`python app.py --model HuggingFaceH4/starchat-beta` on a GPU (add `--quantize 4bit` for a 16 GB card)."
)

DOWNLOAD_JS = """(text) => {
  const link = document.createElement('a');
  link.href = URL.createObjectURL(new Blob([text], {type: 'application/json'}));
  link.download = 'conversation-' + new Date().toISOString().slice(0, 19).replaceAll(':', '') + '.json';
  link.click();
  setTimeout(() => URL.revokeObjectURL(link.href), 10000);
}"""
READ_UPLOAD_JS = "async (file) => file ? await (await fetch(file.url)).text() : ''"

PARAM_NAMES = ("temperature", "top_p", "top_k", "max_new_tokens", "repetition_penalty", "seed")


def show(conversation: list[Message], error: str | None = None) -> list[Message]:
    return display_messages(conversation) + ([error_notice(error)] if error else [])


def client_of(request: gr.Request | None) -> str:
    return request.client.host if request and request.client else ""


def build_ui(chat: Chat) -> gr.Blocks:
    names = list(chat.backends)
    defaults = SamplingParams()

    def describe(name: str) -> str:
        info = chat.backend(name).info
        return info.describe() + (f"\n\n{DEMO_NOTICE}" if info.demo else "")

    async def run(before, history, values, request, on_success, on_error, **overrides) -> AsyncIterator[tuple]:
        """Streams one reply; on an error before any reply text, the conversation is as it was."""
        try:
            raw = {name: values[component] for name, component in zip(PARAM_NAMES, samplers, strict=True)}
            params = chat.params(**{**raw, **overrides})
        except ParamError as exc:
            yield show(before, str(exc)), before, on_error, gr.skip()
            return
        updates = chat.respond(history, values[system], params, values[model], client_of(request))
        async for update in updates:
            if update.error and update.conversation[-1]["role"] == "user":
                yield show(before, update.error), before, on_error, update.context
            else:
                yield show(update.conversation, update.error), update.conversation, on_success, update.context

    async def submit(values: dict, request: gr.Request):
        message, conversation = values[textbox], values[state]
        try:
            chat.check_message(message)
        except DialogueError as exc:
            yield show(conversation, str(exc)), conversation, message, gr.skip()
            return
        history = [*conversation, {"role": "user", "content": message}]
        async for out in run(conversation, history, values, request, "", message):
            yield out

    async def retry(values: dict, request: gr.Request):
        conversation = values[state]
        if not conversation:
            yield show(conversation), conversation, gr.skip(), gr.skip()
            return
        history = conversation[:-1] if conversation[-1]["role"] == "assistant" else conversation
        async for out in run(conversation, history, values, request, gr.skip(), gr.skip(), seed=-1):  # a new seed
            yield out

    async def edit(values: dict, edit: gr.EditData, request: gr.Request):
        conversation = values[state]
        index = edit.index if isinstance(edit.index, int) else edit.index[0]
        if index >= len(conversation) or conversation[index]["role"] != "user":
            yield show(conversation), conversation, gr.skip(), gr.skip()
            return
        old = conversation[index]["content"]
        text = old if edit.value == to_display(old) else from_display(edit.value)
        history = [*conversation[:index], {"role": "user", "content": text}]
        async for out in run(conversation, history, values, request, gr.skip(), gr.skip()):
            yield out

    def undo(conversation):
        if len(conversation) < 2:
            return show(conversation), conversation, gr.skip(), gr.skip()
        rest = conversation[:-2]
        return show(rest), rest, conversation[-2]["content"], ""

    def load(text, conversation, system):
        """The file's text, read by the browser: the server never opens a path a client names."""
        try:
            loaded, loaded_system = import_conversation(text, chat.settings.max_conversation_chars)
        except DialogueError as exc:
            gr.Warning(f"Could not load that conversation: {exc}")
            return show(conversation), conversation, system
        return show(loaded), loaded, loaded_system

    async def chat_api(
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

    def slider(name: str, label: str, step: float, info: str = "") -> gr.Slider:
        _, low, high = PARAM_RANGES[name]
        if name == "max_new_tokens":
            high = min(high, chat.settings.max_new_tokens_limit)
        return gr.Slider(
            low, high, value=getattr(defaults, name), step=step, label=label, info=info or None, elem_id=name
        )

    with gr.Blocks(title="StarChat Playground") as demo:
        gr.Markdown("# StarChat Playground")
        info = gr.Markdown(describe(names[0]), elem_id="model-info")
        state = gr.State([])  # the raw conversation: what the model sees, apart from what is rendered
        with gr.Row():
            with gr.Column(scale=3):
                chatbot = gr.Chatbot(
                    label="Conversation",
                    elem_id="chatbot",
                    height=520,
                    editable="user",
                    buttons=["copy", "copy_all"],
                    placeholder="Ask a coding question. Edit one of your messages to regenerate from there.",
                )
                context = gr.Markdown(elem_id="context")
                with gr.Row():
                    textbox = gr.Textbox(
                        show_label=False, placeholder="Ask a coding question…", lines=2, scale=6, elem_id="message"
                    )
                    send = gr.Button("Send", variant="primary", scale=1, elem_id="send")
                with gr.Row():
                    stop = gr.Button("Stop", variant="stop", elem_id="stop")
                    retry_button = gr.Button("Retry", elem_id="retry")
                    undo_button = gr.Button("Undo", elem_id="undo")
                    clear = gr.Button("Clear", elem_id="clear")
                gr.Examples(EXAMPLES, inputs=textbox, label="Examples")
            with gr.Column(scale=1):
                model = gr.Dropdown(names, value=names[0], label="Model", elem_id="model", visible=len(names) > 1)
                system = gr.Textbox(label="System prompt", lines=4, elem_id="system")
                with gr.Accordion("Sampling", open=True):
                    temperature = slider("temperature", "Temperature", 0.05, "0 = greedy")
                    top_p = slider("top_p", "Top-p", 0.01)
                    top_k = slider("top_k", "Top-k", 1, "0 = off")
                    max_new_tokens = slider("max_new_tokens", "Max new tokens", 1)
                    repetition_penalty = slider("repetition_penalty", "Repetition penalty", 0.01)
                    seed = gr.Number(value=-1, precision=0, label="Seed", info="-1 = random", elem_id="seed")
                with gr.Accordion("Conversation file", open=False):
                    save_button = gr.Button("Save as JSON", elem_id="save")
                    upload = gr.UploadButton("Load JSON", file_types=[".json"], elem_id="load")
                    file_text = gr.Textbox(visible=False)  # a conversation file's text, on its way in or out

        samplers = [temperature, top_p, top_k, max_new_tokens, repetition_penalty, seed]  # PARAM_NAMES' order
        turn = {state, system, model, *samplers}  # a set: handlers get one dict of values
        model.change(describe, model, info, api_visibility="private", queue=False)
        outputs = [chatbot, state, textbox, context]
        gpu = {"api_visibility": "private"}  # Chat.respond admits and queues generations
        generating = [
            textbox.submit(submit, {textbox, *turn}, outputs, **gpu),
            send.click(submit, {textbox, *turn}, outputs, **gpu),
            retry_button.click(retry, turn, outputs, **gpu),
            chatbot.edit(edit, turn, outputs, **gpu),
        ]
        stop.click(None, cancels=generating, api_visibility="private")
        undo_button.click(undo, state, outputs, api_visibility="private", queue=False)
        for clearing in (clear.click, chatbot.clear):  # our button and the chatbot's own trash icon
            clearing(lambda: ([], [], ""), None, [chatbot, state, context], api_visibility="private", queue=False)
        # Saved in the browser: no file on the server that another visitor could fetch.
        save_button.click(export_conversation, [state, system], file_text, api_visibility="private").then(
            None, file_text, None, js=DOWNLOAD_JS
        )
        # The browser reads the uploaded file and sends its text: no event takes a path from a client.
        upload.upload(None, upload, file_text, js=READ_UPLOAD_JS).then(
            load, [file_text, state, system], [chatbot, state, system], api_visibility="private"
        )
        gr.api(chat_api, api_name="chat")
    return demo
