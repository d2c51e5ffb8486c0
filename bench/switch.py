"""How long New conversation takes to show, clicked as a reply streams or ends, with both cores busy.

    python -m bench.switch --tries 30 [--streaming] [--model DIR] [--cache-dir DIR] [--busy 2]

Starts the app (the demo model by default) on a free loopback port, keeps `--busy` processes spinning, and
in headless Chromium asks for a reply, clicks New conversation once the reply has 40 characters (or has
ended), and times the click to the empty chat. `--streaming` asks for long replies (temperature 2, no top-k or top-p
cut, 800 new tokens) so that the click comes while one streams. Prints one JSON line: the device, the
tries, the median and the slowest, how many never showed within `--give-up` seconds, and how many the
reply's own event then drew over with the old conversation.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from contextlib import ExitStack
from pathlib import Path

from bench.common import emit

ROOT = Path(__file__).resolve().parent.parent
# Streaming (40 characters in), or ended if it ends sooner.
REPLY = (
    "(bot => bot?.innerText.length > 40 || bot?.querySelector('.reply-note'))"
    "(document.querySelector('#chatbot [data-testid=bot]'))"
)
EMPTY = "document.querySelector('#raw-conversation textarea').value === '[]'"
# The reply's event has ended: what it showed last is on screen (the old conversation, if it drew over).
SETTLED = "!document.querySelector('#stop')?.checkVisibility() && !document.querySelector('#message .generating')"


def start_app(flags: list[str], cache_dir: str) -> tuple[subprocess.Popen, str]:
    """`python app.py` on a free loopback port, once it answers (the demo model may be built first)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "app.py", *flags, "--cache-dir", cache_dir, "--port", str(port)]
    app = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/"
    for _ in range(600):
        try:
            urllib.request.urlopen(url, timeout=2)
            return app, url
        except OSError:
            if app.poll() is not None:
                raise SystemExit("the app did not start: run python app.py to see why") from None
            time.sleep(1)
    app.kill()
    raise SystemExit("the app did not answer in 10 minutes")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tries", type=int, default=30)
    parser.add_argument("--busy", type=int, default=2, help="processes that keep a core busy meanwhile")
    parser.add_argument("--give-up", type=float, default=20.0, help="seconds after which a switch counts as lost")
    parser.add_argument("--streaming", action="store_true", help="click while a long reply streams")
    parser.add_argument("--model", default="", help="a model folder (default: the demo model)")
    parser.add_argument("--cache-dir", default=str(Path.home() / ".cache" / "starchat-playground"))
    args = parser.parse_args(argv)
    from playwright.sync_api import sync_playwright

    flags = ["--model", args.model] if args.model else []
    with ExitStack() as stack:
        app, url = start_app(flags, args.cache_dir)
        stack.callback(app.kill)
        for _ in range(args.busy):
            spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
            stack.callback(spinner.kill)
        browser = stack.enter_context(sync_playwright()).chromium.launch(
            executable_path="/usr/bin/chromium", args=["--no-sandbox"]
        )
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(url)
        page.locator("#message textarea").wait_for()
        if args.streaming:
            for slider, value in {"temperature": 2, "top_k": 0, "top_p": 1, "repetition_penalty": 1}.items():
                page.locator(f"#{slider} input[type=number]").fill(str(value))
                page.locator(f"#{slider} input[type=number]").press("Enter")
            page.locator("#max_new_tokens input[type=number]").fill("800")
            page.locator("#max_new_tokens input[type=number]").press("Enter")
        seconds, lost, streaming, drawn_over = [], 0, 0, 0
        for attempt in range(args.tries):
            page.locator("#message textarea").fill(f"Write a long explanation of Python lists ({attempt})")
            page.locator("#send").click()
            page.wait_for_function(REPLY, timeout=300_000)
            streaming += page.locator("#stop").is_visible()
            start = time.monotonic()
            page.locator("#new-conversation").click()
            try:
                page.wait_for_function(EMPTY, timeout=args.give_up * 1000)
                seconds.append(time.monotonic() - start)
                page.wait_for_function(SETTLED, timeout=args.give_up * 1000)
                drawn_over += not page.evaluate(EMPTY)
            except Exception:
                lost += 1
                page.reload()
        emit(
            {
                "bench": "switch",
                "device": f"CPU, {os.cpu_count()} cores, {args.busy} kept busy",
                "tries": args.tries,
                "clicked_while_streaming": streaming,
                "median_s": round(statistics.median(seconds), 3) if seconds else None,
                "slowest_s": round(max(seconds), 3) if seconds else None,
                "lost": lost,
                "drawn_over": drawn_over,
            }
        )


if __name__ == "__main__":
    main()
