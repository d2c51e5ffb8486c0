"""The page's side in the browser: static/page.js and page.css, the values they get from the server (once,
as JSON), and the js of each event, which calls one function of page.js."""

from __future__ import annotations

import json
from pathlib import Path

from playground.history import MAX_TITLE, STORE_BYTES

STATIC = Path(__file__).with_name("static")
# The app's own localStorage keys, so that another Gradio app on the same address keeps its values.
STORAGE_PREFIX = "starchat-playground/"
STORAGE_KEYS = (STORAGE_PREFIX + "open-conversation", STORAGE_PREFIX + "past-conversations")
# BrowserState encrypts what it stores with a secret that the page's config hands to every browser, so
# it hides nothing; a fixed one keeps the conversations readable after the server restarts (a Space
# that wakes up), where Gradio's default, a random one per process, would lose them all.
STORAGE_SECRET = "starchat-playground"
# A conversation file the browser reads for Load; with the kept conversations the event also sends, it
# stays under the request limit.
LOAD_BYTES = 1_000_000

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


def api_snippet(model: str) -> str:
    return API_SNIPPET.replace("MODEL", model)


def config(model: str) -> dict:
    """What page.js reads from the server."""
    return {
        "storagePrefix": STORAGE_PREFIX,
        "storageKeys": STORAGE_KEYS,
        "storageSecret": STORAGE_SECRET,
        "storeBytes": STORE_BYTES,
        "loadBytes": LOAD_BYTES,
        "maxTitle": MAX_TITLE,
        "apiSnippet": api_snippet(model),
        "clearQuestion": "Clear this conversation? Its messages are deleted from this browser and cannot be "
        "brought back: save it as a file first to keep it, or start a New conversation instead.",
        "deleteQuestion": "Delete this conversation from this browser? It cannot be undone: save it as a file "
        "first to keep it.",
        "otherTab": "This conversation was changed in another tab. This tab no longer keeps its conversations "
        "in the browser: save this one as a file if you need it, then reload.",
    }


def assets(model: str) -> dict:
    """What `gr.mount_gradio_app` takes for the page: page.js in the head, so that it runs before the app's
    components load their kept values, with its config before it; Gradio calls `start` once loaded."""
    values = json.dumps(config(model)).replace("</", "<\\/")  # nothing in it can close the script element
    script = (STATIC / "page.js").read_text()
    return {
        "head": f'<script type="application/json" id="starchat-config">{values}</script>\n<script>{script}</script>',
        "js": "() => window.starchat.start()",
        "css_paths": [STATIC / "page.css"],
    }


def call(name: str, *args: object) -> str:
    """The js of an event: page.js's `name`, given `args` and then the event's values."""
    given = "".join(f"{json.dumps(arg)}, " for arg in args)
    return f"(...values) => window.starchat.{name}({given}...values)"


def opened_file(sent: str) -> tuple[str | None, str]:
    """What page.js's `openFile` sent for Load: the file's text, or None and why it is not loaded ("" if no
    file was chosen). A forged event may send anything."""
    if not sent:
        return None, ""
    try:
        message = json.loads(sent)
    except ValueError:
        message = None
    if isinstance(message, dict) and isinstance(message.get("text"), str):
        return message["text"], ""
    error = message.get("error") if isinstance(message, dict) else None
    if error == "empty":
        return None, "That file is empty: a conversation file holds the JSON that Save conversation writes."
    size = message.get("bytes") if isinstance(message, dict) else None
    if error == "too_large" and type(size) is int and LOAD_BYTES < size < 10**15:
        return None, f"That file has {size:,} bytes: conversation files of up to {LOAD_BYTES:,} bytes can be loaded."
    return None, "The browser sent no file that could be read."
