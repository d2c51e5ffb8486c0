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

    from playground.backends import BackendError
    from playground.server import UVICORN_OPTIONS, create_app, describe_api

    options = {"host": settings.host, "port": settings.port, "log_level": "warning", **UVICORN_OPTIONS}
    # Bound before the model loads: a port in use (or an address not here) is said at once, in one line.
    listening = uvicorn.Config(None, **options).bind_socket()
    try:
        app, chat = create_app(settings)
    except (OSError, ValueError, BackendError) as exc:  # a model, file or server that is not there or not right
        raise SystemExit(f"app.py: cannot start: {' '.join(str(exc).split())}") from None
    except KeyboardInterrupt:  # Ctrl-C while a model loads; once serving, uvicorn stops on it by itself
        raise SystemExit("app.py: interrupted while starting") from None
    models = ", ".join(chat.backends)
    print(
        f"StarChat Playground on http://{settings.host}:{settings.port} serving {models} ({describe_api(settings)})",
        flush=True,
    )
    uvicorn.Server(uvicorn.Config(app, **options)).run(sockets=[listening])


if __name__ == "__main__":
    main(sys.argv[1:])
