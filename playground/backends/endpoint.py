"""A running text-generation server: TGI's streaming API, or an OpenAI-compatible `/v1/completions`.

Our template renders the prompt (a raw completion), so the StarChat format stays exact whatever
the server. The server tokenizes what we send, so people's text must not reach it as control
tokens: the `openai` protocol sends token ids (vLLM, SGLang), `tgi` and `openai-text` send text in
which control-token strings from people are made inert (`template.inert`).
"""

from __future__ import annotations

import json
import os
import threading
import time
from base64 import b64encode
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit, urlunsplit

import httpx
import openai
from transformers import AutoConfig, AutoTokenizer

from playground.backends import (
    BackendError,
    BackendInfo,
    ChatRequest,
    Outcome,
    Refused,
    SamplingParams,
    context_length,
)
from playground.template import (
    END,
    EOS,
    Message,
    Prompt,
    control_ids,
    fit_to_context,
    inert_messages,
    render_prompt,
    split_system,
)

PROTOCOLS = ("tgi", "openai", "openai-text")
TOKEN_CHARS = 256  # a generous bound on one token's text (the demo tokenizer's longest is 22 characters)


@dataclass
class EndpointBackend:
    url: str
    protocol: str
    tokenizer: object
    info: BackendInfo
    token: str | None = None
    timeout: float = 60.0
    served_model: str = ""
    where: str = field(init=False)  # the URL in what people read: no credentials

    def __post_init__(self) -> None:
        self.where = public(self.url)

    @classmethod
    def connect(
        cls,
        model: str,
        url: str,
        protocol: str = "tgi",
        token: str | None = None,
        timeout: float = 60.0,
        served_model: str = "",
    ) -> EndpointBackend:
        """`model` names the checkpoint the server serves: its tokenizer and context length are read here."""
        if protocol not in PROTOCOLS:
            raise ValueError(f"the endpoint protocol must be one of {', '.join(PROTOCOLS)}, got {protocol!r}")
        if not url:
            raise ValueError("--backend endpoint needs --endpoint-url")
        if not model:
            raise ValueError("--backend endpoint needs --model: the checkpoint the server serves (for its tokenizer)")
        tokenizer = AutoTokenizer.from_pretrained(model, trust_remote_code=False)
        control_ids(tokenizer)
        config = AutoConfig.from_pretrained(model, trust_remote_code=False)
        # The server batches requests itself; this many may stream from it at once.
        info = BackendInfo(
            model, f"{protocol} server {public(url)}", "server-side", context_length(config), parallel=16
        )
        backend = cls(
            url.rstrip("/"), protocol, tokenizer, info, token or os.environ.get("HF_TOKEN"), timeout, served_model
        )
        if protocol != "tgi" and not served_model:
            try:
                backend.served_model = backend.openai().models.list().data[0].id
            except Exception as exc:
                raise backend.failure(exc) from exc
        return backend

    def prepare(self, messages: list[Message], max_new_tokens: int) -> Prompt:
        return fit_to_context(self.tokenizer, messages, max_new_tokens, self.info.context_length)

    def openai(self) -> openai.OpenAI:
        key = self.token or "none"
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=key, timeout=self.timeout, max_retries=0)

    def stream(self, request: ChatRequest) -> Iterator[str | Outcome]:
        prompt = self.prepare(request.messages, request.params.max_new_tokens)
        system, turns = split_system(request.messages)
        kept = [{"role": "system", "content": system}, *turns[2 * prompt.dropped_turns :]]
        p, outcome, cancel = request.params, Outcome(), request.cancel
        if self.protocol == "tgi":
            pieces = self.tgi(render_prompt(inert_messages(kept)), p, outcome, cancel)
        elif self.protocol == "openai":
            pieces = self.completions(prompt.input_ids, p, outcome, cancel)
        else:
            pieces = self.completions(render_prompt(inert_messages(kept)), p, outcome, cancel)
        limited = False
        try:
            # A server that ignores the limit is held to it: each event is a token (special or empty ones
            # too), and no token is longer than TOKEN_CHARS.
            chars = p.max_new_tokens * TOKEN_CHARS
            with closing(pieces):
                for given, piece in enumerate(pieces, 1):
                    if cancel.is_set():
                        break
                    if piece:
                        yield piece[:chars]
                    chars -= len(piece)
                    if limited := given >= p.max_new_tokens or chars <= 0:
                        break
        except Exception as exc:  # the client libraries' errors, as one a person can act on
            if not cancel.is_set():  # else the watchdog closed the connection: nobody is waiting
                failure = self.failure(exc)
                raise failure from None if failure is exc else exc
        if limited:
            outcome.finish = outcome.finish or "length"
        elif cancel.is_set():
            outcome.finish = "cancelled"  # the connection is closed: the server stops generating
        yield outcome

    def failure(self, exc: Exception) -> BackendError:
        failure = describe_failure(self.where, exc)
        failure.args = tuple(self.redacted(str(arg)) for arg in failure.args)
        return failure

    def redacted(self, text: str) -> str:
        """A server's or a client library's error text may quote the request's headers or URL: the token and
        the URL's credentials never reach people."""
        text = text.replace(self.url, self.where)
        secrets = {self.token: "[the token]"}
        parts = urlsplit(self.url)
        if parts.username is not None:  # sent as HTTP basic auth, which an echo shows decoded or in base64
            user, password = unquote(parts.username), unquote(parts.password or "")
            basic = [b64encode(f"{user}:{password}".encode()).decode(), f"{user}:{password}"]
            # A URL with no password carries a token as its user name: then the name is the secret.
            secret = [password, parts.password] if parts.password else [user, parts.username]
            secrets |= dict.fromkeys([*basic, *secret], "[the credentials]")
        for secret, name in secrets.items():
            text = text.replace(secret, name) if secret else text
        return text

    def tgi(self, prompt: str, p: SamplingParams, outcome: Outcome, cancel: threading.Event) -> Iterator[str]:
        """TGI's `/generate_stream`. httpx rather than huggingface_hub's InferenceClient: that client
        refuses every URL, this server's included, when HF_HUB_OFFLINE=1, as air-gapped sites run."""
        sampling = {"do_sample": True, "temperature": p.temperature, "top_p": p.top_p, "top_k": p.top_k or None}
        parameters = {
            "details": True,
            "max_new_tokens": p.max_new_tokens,
            "repetition_penalty": p.repetition_penalty,
            "seed": p.seed if p.seed >= 0 else None,
            "stop": [END],
            **(sampling if p.temperature > 0 else {"do_sample": False}),
        }
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        body = {"inputs": prompt, "parameters": {k: v for k, v in parameters.items() if v is not None}, "stream": True}
        finished = False
        with (
            httpx.Client(timeout=self.timeout) as client,
            watched(client.close, cancel, self.timeout, self.where) as fed,  # from before the headers
            client.stream("POST", f"{self.url}/generate_stream", json=body, headers=headers) as response,
        ):
            if response.status_code in (429, 503):  # TGI's answer when its queue is full
                raise busy(self.where, response.headers.get("Retry-After"))
            if response.is_error:
                response.read()
                said = self.redacted(response.text)[:300]
                raise BackendError(
                    f"The model server at {self.where} answered an error ({response.status_code}): {said}"
                )
            if not response.headers.get("content-type", "").startswith("text/event-stream"):
                kind = response.headers.get("content-type") or "no content type"
                raise BackendError(f"{self.where} answered with {kind}, not TGI's event stream: is it a TGI server?")
            for line in response.iter_lines():
                if not line.startswith("data:"):
                    continue
                event = json.loads(line.removeprefix("data:"))
                if isinstance(event, dict) and "error" in event:
                    raise BackendError(f"The model server at {self.where} failed: {event['error']}")
                if not isinstance(event, dict) or not isinstance(event.get("token"), dict):
                    raise BackendError(
                        f"The model server at {self.where} sent an event that is not TGI's: {line[:200]}"
                    )
                fed()
                outcome.tokens += 1
                finished = event.get("generated_text") is not None  # only the last event carries it
                if finished and isinstance(details := event.get("details"), dict):
                    outcome.tokens = counted(details.get("generated_tokens"), outcome.tokens, p.max_new_tokens)
                    outcome.finish = "length" if details.get("finish_reason") == "length" else "stop"
                yield "" if event["token"].get("special") else str(event["token"].get("text") or "")
        if not finished:
            raise cut_off(self.where)
        outcome.finish = outcome.finish or "stop"

    def completions(
        self, prompt: str | list[int], p: SamplingParams, outcome: Outcome, cancel: threading.Event
    ) -> Iterator[str]:
        client = self.openai()
        with watched(client.close, cancel, self.timeout, self.where) as fed:  # from before the headers
            stream = client.completions.create(
                model=self.served_model,
                prompt=prompt,
                stream=True,
                max_tokens=p.max_new_tokens,
                temperature=p.temperature,
                top_p=p.top_p,
                seed=p.seed if p.seed >= 0 else None,
                stop=[END, EOS],
                stream_options={"include_usage": True},
                extra_body={"top_k": p.top_k or -1, "repetition_penalty": p.repetition_penalty},
            )
            finished = False
            with closing(stream):
                for chunk in stream:
                    fed()
                    if chunk.usage:  # the exact count, where the server sends it
                        outcome.tokens = counted(chunk.usage.completion_tokens, outcome.tokens, p.max_new_tokens)
                    if chunk.choices:
                        outcome.tokens += not chunk.usage
                        finished = chunk.choices[0].finish_reason is not None
                        if finished:
                            outcome.finish = "length" if chunk.choices[0].finish_reason == "length" else "stop"
                        yield chunk.choices[0].text or ""
        if not finished:
            raise cut_off(self.where)


def counted(reported: object, relayed: int, limit: int) -> int:
    """The reply's length in tokens: the server's count where it is a whole number within the limit we asked
    for, else the events we relayed (one a token), bounded by that limit: a server's claim passes no further."""
    if type(reported) is int and 0 <= reported <= limit:
        return reported
    return min(relayed, limit)


@contextmanager
def watched(close: Callable[[], object], cancel: threading.Event, timeout: float, url: str) -> Iterator[Callable]:
    """Closes a reply's connection when its request is cancelled or no token has come for `timeout` seconds;
    yields the function to call at each token. httpx's timeouts count each read, so a server that sends
    keep-alive comments or drips bytes never trips them, and a stream waiting for its next line never
    sees a cancel: either would hold a slot of the playground for as long as the server likes."""
    last, done, stalled = [time.monotonic()], threading.Event(), threading.Event()

    def watch() -> None:
        while not done.wait(0.1):
            if cancel.is_set() or time.monotonic() - last[0] > timeout:
                if not cancel.is_set():
                    stalled.set()
                close()
                return

    threading.Thread(target=watch, name="starchat-endpoint-watch", daemon=True).start()
    failure = None
    try:
        yield lambda: last.__setitem__(0, time.monotonic())
    except Exception as exc:  # closed under it, the stream fails in its own way: the stall is the reason
        failure = exc
    finally:
        done.set()
    if stalled.is_set():
        raise BackendError(f"The model server at {url} sent no token for {timeout:g} s; try again.") from failure
    if failure is not None:
        raise failure


def public(url: str) -> str:
    """`url` without its user and password."""
    parts = urlsplit(url)
    host = f"[{parts.hostname}]" if ":" in (parts.hostname or "") else parts.hostname or ""
    return urlunsplit(parts._replace(netloc=host + (f":{parts.port}" if parts.port else "")))


def busy(url: str, retry_after: str | None) -> Refused:
    wait = min(int(retry_after), 600) if retry_after and retry_after.isdigit() else 5
    return Refused(f"The model server at {url} is busy: try again in {wait} s.", max(wait, 1))


def cut_off(url: str) -> BackendError:
    return BackendError(f"The model server at {url} closed the connection in the middle of the reply.")


def describe_failure(url: str, exc: Exception) -> BackendError:
    """Classifies by the names along the exception chain: huggingface_hub, openai and httpx each
    raise their own classes (huggingface_hub through its httpx fork) for the same few failures."""
    if isinstance(exc, BackendError):
        return exc
    chain, status, seen = [], None, exc
    while seen is not None and len(chain) < 8:
        chain.append(type(seen).__name__)
        status = status or getattr(getattr(seen, "response", None), "status_code", None)
        seen = seen.__cause__ or seen.__context__
    if status in (429, 503):
        response = getattr(exc, "response", None)
        return busy(url, response.headers.get("Retry-After") if response is not None else None)
    if any("Timeout" in name for name in chain):
        return BackendError(f"The model server at {url} did not answer in time. Try again, or ask for fewer tokens.")
    if "ConnectError" in chain:
        return BackendError(f"The model server at {url} is not reachable: is it running?")
    if {"RemoteProtocolError", "ReadError", "APIConnectionError"} & set(chain):
        return cut_off(url)
    return BackendError(f"The model server at {url} answered an error{f' ({status})' if status else ''}: {exc}")
