"""StarChat Playground: `python app.py --help` lists the flags; each has a STARCHAT_* environment twin."""

from __future__ import annotations

import os
import socket
import sys
import tempfile
from pathlib import Path

from playground.settings import Settings


def listen(host: str, port: int) -> socket.socket:
    """The server's socket, bound as uvicorn binds it but before the model loads, so that a port in use or an
    address not here is one line of ours at once (uvicorn's own bind logs and exits with its own words)."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except (OSError, UnicodeError) as exc:  # in use, not this machine's, a name that does not resolve
        sock.close()
        raise SystemExit(f"app.py: cannot listen on {host}:{port}: {getattr(exc, 'strerror', None) or exc}") from None
    sock.set_inheritable(True)
    return sock


def page_url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"  # an IPv6 address in brackets


def check_cache(folder: Path) -> None:
    """The cache folder takes files (the demo model, Gradio's): said now, naming the flag, not at first use."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=folder).close()
    except OSError as exc:
        why = "a file, not a folder" if folder.is_file() else f"cannot write there ({exc.strerror or exc})"
        raise SystemExit(f"app.py: cannot start: --cache-dir {folder}: {why}") from None


def main(argv: list[str] | None = None) -> None:
    settings = Settings.from_args(argv)
    check_cache(Path(settings.cache_dir))
    # Gradio's uploads and downloads stay inside the app's cache folder.
    os.environ.setdefault("GRADIO_TEMP_DIR", str(Path(settings.cache_dir, "gradio")))

    import uvicorn

    from playground.backends import BackendError
    from playground.connections import raise_open_files_limit
    from playground.server import create_app, describe_api, uvicorn_options

    raise_open_files_limit()
    listening = listen(settings.host, settings.port)
    try:
        app, chat = create_app(settings)
    except (OSError, ValueError, BackendError) as exc:  # a model, file or server that is not there or not right
        listening.close()
        raise SystemExit(f"app.py: cannot start: {' '.join(str(exc).split())}") from None
    except KeyboardInterrupt:  # Ctrl-C while a model loads; once serving, uvicorn stops on it by itself
        listening.close()
        raise SystemExit("app.py: interrupted while starting") from None
    models = ", ".join(chat.backends)
    where = page_url(settings.host, settings.port)
    print(f"StarChat Playground on {where} serving {models} ({describe_api(settings)})", flush=True)
    options = {"host": settings.host, "port": settings.port, "log_level": "warning", **uvicorn_options(settings)}
    uvicorn.Server(uvicorn.Config(app, **options)).run(sockets=[listening])


if __name__ == "__main__":
    main(sys.argv[1:])
