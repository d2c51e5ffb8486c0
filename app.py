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

    import uvicorn

    from playground.server import UVICORN_OPTIONS, create_app, describe_api

    app, chat = create_app(settings)
    models = ", ".join(chat.backends)
    print(
        f"StarChat Playground on http://{settings.host}:{settings.port} serving {models} ({describe_api(settings)})",
        flush=True,
    )
    uvicorn.run(app, host=settings.host, port=settings.port, log_level="warning", **UVICORN_OPTIONS)


if __name__ == "__main__":
    main(sys.argv[1:])
