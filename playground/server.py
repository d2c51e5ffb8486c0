"""One web server: the Gradio playground at `/` and the OpenAI-compatible API at `/v1`."""

from __future__ import annotations

import gradio as gr
from fastapi import FastAPI

from playground.api import openai_routes
from playground.backends import load_backends
from playground.chat import Chat
from playground.settings import Settings
from playground.ui import build_ui


def create_app(settings: Settings) -> tuple[FastAPI, Chat]:
    chat = Chat(load_backends(settings), settings)
    demo = build_ui(chat).queue(max_size=settings.queue_size, default_concurrency_limit=chat.concurrency)
    app = FastAPI(title="StarChat Playground")
    app.include_router(openai_routes(chat))
    auth = tuple(settings.auth.split(":", 1)) if settings.auth else None
    if auth and len(auth) != 2:
        raise ValueError("--auth takes USER:PASSWORD")
    return gr.mount_gradio_app(app, demo, path="/", auth=auth), chat
