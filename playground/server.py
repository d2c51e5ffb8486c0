"""One web server: the Gradio playground at `/` and the OpenAI-compatible API at `/v1`."""

from __future__ import annotations

import gradio as gr
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.middleware.cors import CORSMiddleware
from starlette.routing import Mount

from playground.api import add_openai_api
from playground.backends.loading import load_backends
from playground.chat import Chat
from playground.connections import protocol
from playground.guards import (
    BodyLimit,
    ClosedRoutes,
    ForwardedClient,
    LoginPageWithoutApi,
    LoginThrottle,
    NoOutsideImages,
    NoUploads,
)
from playground.settings import Settings
from playground.ui import build_ui
from training.demo import demo_checkpoint

QUEUE_BACKSTOP = 1024  # events waiting to start at one instant, each within the request size limit


def create_app(settings: Settings) -> tuple[FastAPI, Chat]:
    # The app, not the backends, knows the default model: the offline demo, built on first use.
    chat = Chat(load_backends(settings, default_model=lambda: demo_checkpoint(settings.cache_dir)), settings)
    # Chat.respond admits and queues every generation itself (one budget for the page and the APIs), and
    # refuses with its own message. Gradio's queue only holds events that arrived at the same instant, until
    # its loop starts them (no concurrency limit): its bound is a backstop, large enough that a burst of
    # page loads or of /chat calls reaches Chat instead of Gradio's "Queue is full".
    # api_open=False: a queued event (a reply) runs through the queue only, never straight through /run, which
    # Gradio leaves open off Spaces; the page runs only its unqueued events there.
    demo, page_assets = build_ui(chat)
    demo.queue(max_size=QUEUE_BACKSTOP, default_concurrency_limit=None, api_open=False)
    # Schema pages (ours and Gradio's app's) would list the API to anyone, login or not.
    app = FastAPI(title="StarChat Playground", docs_url=None, redoc_url=None, openapi_url=None)
    add_openai_api(app, chat)
    auth = tuple(settings.auth.split(":", 1)) if settings.auth else None
    app = gr.mount_gradio_app(
        app,
        demo,
        path="/",
        auth=auth,
        app_kwargs={"openapi_url": None},
        **page_assets,
    )
    # Gradio checks that a file named in an event's payload was uploaded to this server only once
    # `launch()` has run (processing_utils._check_allowed); mounted, it never runs, and any event
    # would copy any server path (/etc/passwd, /dev/zero) into its served cache. Turn the check on.
    demo.has_launched = True
    # Gradio answers an event's error with its message as UTF-8 JSON; a forged value with a lone surrogate,
    # echoed in "not in the list of choices", fails to encode: a 500, a traceback and a reset connection.
    gradio_app = next(route.app for route in app.routes if isinstance(route, Mount))
    gradio_app.add_exception_handler(UnicodeEncodeError, unencodable)
    app.add_middleware(LoginPageWithoutApi)
    public = frozenset(fn.api_name for fn in demo.fns.values() if fn.api_visibility == "public" and fn.api_name)
    app.add_middleware(ClosedRoutes, public=public)
    # Cross-site pages may not read this server with a visitor's login, unless named: Gradio reflects any
    # Origin with credentials on a Host that is not localhost, and defers to a CORSMiddleware of ours.
    origins = [o.strip() for o in settings.allowed_origins.split(",") if o.strip()]
    app.add_middleware(
        CORSMiddleware, allow_origins=origins, allow_credentials=True, allow_methods=["*"], allow_headers=["*"]
    )
    app.add_middleware(LoginThrottle)
    app.add_middleware(BodyLimit, max_bytes=settings.max_request_bytes)
    app.add_middleware(NoOutsideImages)
    app.add_middleware(NoUploads)
    app.add_middleware(ForwardedClient, trusted=settings.trusted_proxies)  # outermost: every guard sees the client
    return app, chat


async def unencodable(request: Request, exc: UnicodeEncodeError) -> JSONResponse:
    return JSONResponse({"error": "the request holds a lone surrogate (text that is not Unicode)"}, status_code=400)


def uvicorn_options(settings: Settings) -> dict:
    """What uvicorn.Config takes besides the app, host and port."""
    return {
        # asyncio takes up to `backlog` connections at once: uvicorn's 2,048 let a flood exhaust the open files
        # (docs/benchmarks.md); 128 keeps a burst small and leaves the rest waiting in the kernel.
        "backlog": 128,
        "proxy_headers": False,  # guards.ForwardedClient reads X-Forwarded-For (from trusted proxies only)
        "http": protocol(settings.max_connections_per_client, settings.trusted_proxies),
    }


def describe_api(settings: Settings) -> str:
    if settings.auth and not settings.api_key:
        return "OpenAI API at /v1 is off: the page has --auth; give --api-key KEY to turn it on"
    return "OpenAI API at /v1" + (" (bearer key)" if settings.api_key else "")
