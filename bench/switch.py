"""How long New conversation takes to show, clicked as a reply streams or ends, with both cores busy.

    python -m bench.switch --tries 30 [--streaming | --ending] [--to new|list] [--model DIR] [--busy 2]

Starts the app (the demo model by default) on a free loopback port, keeps `--busy` processes spinning, and
in headless Chromium asks for a reply, clicks New conversation once the reply has 40 characters (or has
ended), and times the click to the empty chat. `--streaming` asks for long replies (temperature 2, no top-k or top-p
cut, 800 new tokens) so that the click comes while one streams; `--ending` asks for 24 new tokens, so that it
comes as one ends. `--to list` clicks the list's first other conversation instead: two conversations take turns.
Prints one JSON line: the device, the tries, the median and the slowest, how many never showed within
`--give-up` seconds, and how many the reply's own event then drew over with the old conversation.
"""

from __future__ import annotations

import argparse
import json
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
SHOWN = "JSON.parse(document.querySelector('#raw-conversation textarea').value)[0]?.content ?? ''"
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


def set_sliders(page, values: dict[str, float]) -> None:
    page.locator("#message textarea").wait_for()
    for slider, value in values.items():
        page.locator(f"#{slider} input[type=number]").fill(str(value))
        page.locator(f"#{slider} input[type=number]").press("Enter")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tries", type=int, default=30)
    parser.add_argument("--busy", type=int, default=2, help="processes that keep a core busy meanwhile")
    parser.add_argument("--give-up", type=float, default=20.0, help="seconds after which a switch counts as lost")
    length = parser.add_mutually_exclusive_group()
    length.add_argument("--streaming", action="store_true", help="click while a long reply streams")
    length.add_argument("--ending", action="store_true", help="click as a short reply ends")
    parser.add_argument("--to", choices=["new", "list"], default="new", help="New conversation, or the list's first")
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
        long = {"temperature": 2, "top_k": 0, "top_p": 1, "repetition_penalty": 1, "max_new_tokens": 800}
        sliders = long if args.streaming else {"max_new_tokens": 24} if args.ending else {}
        set_sliders(page, sliders)
        if args.to == "list":  # a second conversation to take turns with
            page.locator("#message textarea").fill("Write a long explanation of Python lists (one)")
            page.locator("#send").click()
            page.wait_for_function(SETTLED + " && document.querySelector('#chatbot [data-testid=bot]')")
            page.locator("#new-conversation").click()
            page.wait_for_function(f"({SHOWN}) === ''")
        seconds, lost, streaming, drawn_over = [], 0, 0, 0
        for attempt in range(args.tries):
            page.locator("#message textarea").fill(f"Write a long explanation of Python lists ({attempt})")
            page.locator("#send").click()
            page.wait_for_function(REPLY, timeout=300_000)
            streaming += page.locator("#stop").is_visible()
            other = page.locator("#conversations label:not(:has(input:checked))").first  # the open one is listed
            title = other.inner_text().strip() if args.to == "list" else ""  # its first message, the title
            start = time.monotonic()
            (other if args.to == "list" else page.locator("#new-conversation")).click()
            shows = f"({SHOWN}) === {json.dumps(title)}"
            try:
                page.wait_for_function(shows, timeout=args.give_up * 1000)
                seconds.append(time.monotonic() - start)
                page.wait_for_function(SETTLED, timeout=args.give_up * 1000)
                drawn_over += not page.evaluate(shows)
            except Exception:
                lost += 1
                page.reload()
                set_sliders(page, sliders)  # a reload sets them back
        emit(
            {
                "bench": "switch",
                "device": f"CPU, {os.cpu_count()} cores, {args.busy} kept busy",
                "tries": args.tries,
                "to": args.to,
                "reply": "streaming" if args.streaming else "ending" if args.ending else "short",
                "clicked_while_streaming": streaming,
                "median_s": round(statistics.median(seconds), 3) if seconds else None,
                "slowest_s": round(max(seconds), 3) if seconds else None,
                "lost": lost,
                "drawn_over": drawn_over,
            }
        )


if __name__ == "__main__":
    main()
