"""StarChat Playground: `python app.py --help` lists the flags; each has a STARCHAT_* environment twin."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from playground.settings import Settings


def main(argv: list[str] | None = None) -> None:
    settings = Settings.from_args(argv)
    # Gradio's uploads and downloads stay inside the app's cache folder.
    os.environ.setdefault("GRADIO_TEMP_DIR", str(Path(settings.cache_dir, "gradio")))

    from playground.backends import load_backend
    from playground.chat import Chat
    from playground.ui import build_ui

    backend = load_backend(settings)
    demo = build_ui(Chat(backend, settings))
    demo.queue(max_size=settings.queue_size, default_concurrency_limit=settings.concurrency)
    demo.launch(server_name=settings.host, server_port=settings.port)


if __name__ == "__main__":
    main(sys.argv[1:])
