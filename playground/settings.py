"""Command-line flags and their environment twins (STARCHAT_<NAME>), so a Space needs no code."""

from __future__ import annotations

import argparse
import ipaddress
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from urllib.parse import urlsplit


def option(
    default,
    help: str,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    secret: bool = False,
    check: Callable[[str], str | None] | None = None,
    **argparse_kwargs,
):
    """A setting: its default (whose type is the setting's), its help, its bounds (for text: the least length),
    whether errors may show its value, a text's own check (what is wrong with it, or None), argparse's other
    keywords."""
    metadata = {"help": help, "bounds": (minimum, maximum), "secret": secret, "check": check, **argparse_kwargs}
    return field(default=default, metadata=metadata)


def server_url(value: str) -> str | None:
    if not value:
        return None
    try:
        url = urlsplit(value)
        port = url.port
    except ValueError:  # an unclosed [ or a port out of range
        url, port = None, None
    host = url.hostname if url else ""
    if (
        url is None
        or url.scheme not in ("http", "https")
        or not host
        or not all(c.isalnum() or c in ".-_:" for c in host)  # a name or an address: no %00, no space
        or port == 0
        or any(c in value for c in "?#")
        or any(c.isspace() for c in value)
    ):
        return (
            "must be an http:// or https:// base URL: a host, if any a port from 1 to 65535, no space, ?query or #part"
        )
    return None


def proxy_addresses(value: str) -> str | None:
    if value.strip() == "*":
        return None
    for address in filter(None, (a.strip() for a in value.split(","))):
        try:
            ipaddress.ip_address(address)
        except ValueError:
            return f"takes '*' or IP addresses separated by commas; {address!r} is not an IP address"
    return None


def proxy_set(value: str) -> frozenset[str]:
    """--trusted-proxies' addresses, written as a server writes a peer's address (::0:1 is ::1); '*' is none."""
    return frozenset(str(ipaddress.ip_address(a.strip())) for a in value.split(",") if a.strip() not in ("", "*"))


def origins(value: str) -> str | None:
    for origin in filter(None, (o.strip() for o in value.split(","))):
        url = urlsplit(origin)
        if url.scheme not in ("http", "https") or not url.netloc or url.path or url.query or url.fragment:
            return f"takes origins separated by commas (https://host or https://host:port); {origin!r} is not one"
    return None


KINDS = {int: "a whole number", float: "a number", str: "text"}


@dataclass(frozen=True)
class Unreadable:
    """An environment twin's value that its setting's type cannot read, in its flag's place until the flags
    are read (a flag given on the command line replaces it)."""

    problem: str


class SettingError(ValueError):
    def __init__(self, name: str, problem: str):
        super().__init__(f"{name} {problem}")
        self.name, self.problem = name, problem


@dataclass(frozen=True)
class Settings:
    model: str = option("", "Hub id or local folder of a StarChat checkpoint (default: the offline demo model)")
    backend: str = option(
        "local", "local: transformers on this machine; endpoint: a running server", choices=("local", "endpoint")
    )
    endpoint_url: str = option(
        # Secret: a URL may carry credentials (http://user:password@host), so no message shows it.
        "",
        "the text-generation server's base URL, for --backend endpoint",
        check=server_url,
        secret=True,
    )
    endpoint_protocol: str = option(
        "tgi",
        "tgi: TGI's streaming API; openai: /v1/completions with token ids (vLLM, SGLang); "
        "openai-text: /v1/completions with text",
        choices=("tgi", "openai", "openai-text"),
    )
    endpoint_model: str = option("", "the model's name on an OpenAI-compatible server (default: the first listed)")
    endpoint_token: str = option(
        "", "bearer token for the server (default: the HF_TOKEN environment variable)", secret=True
    )
    endpoint_timeout: float = option(60.0, "seconds to wait for the server's next token", minimum=0.1, maximum=3600)
    quantize: str = option(
        "none",
        "int8 / int4: weight-only (torchao), served by the fast engine (int4 on a CUDA GPU only); "
        "8bit / 4bit: bitsandbytes under plain generate (CUDA only)",
        choices=("none", "int8", "int4", "8bit", "4bit"),
    )
    models_file: str = option("", "a YAML list of models (local folders, Hub ids, endpoints) to choose from")
    engine: str = option(
        "auto",
        "local decoding: fast (batched, static cache; CUDA graphs on a GPU), plain "
        "(transformers generate), auto (fast on a GPU where it can)",
        choices=("auto", "fast", "plain"),
    )
    batch_slots: int = option(8, "conversations the fast engine decodes together", minimum=1, maximum=1024)
    speculate: int = option(
        0,
        "tokens the fast engine drafts a step for each conversation from its own prompt and reply, all checked "
        "in one pass (prompt lookup; the same replies, more tokens a step where they repeat); 0: off",
        minimum=0,
        maximum=16,
    )
    host: str = option(
        # A Hugging Face Space (SPACE_ID is set there) must listen on every interface.
        "0.0.0.0" if os.environ.get("SPACE_ID") else "127.0.0.1",
        "address to listen on (0.0.0.0 inside a container; the default in a Space)",
        minimum=1,
    )
    port: int = option(7860, "port to listen on", minimum=1, maximum=65535)
    concurrency: int = option(
        0,
        "generations running at once, the page and the APIs together; 0: what the backend decodes together "
        "(the fast engine's slots, 1 for plain generate, 16 for an endpoint)",
        minimum=0,
    )
    queue_size: int = option(
        16,
        "requests waiting beyond those running, the page and the APIs together; more are told the server is busy",
        minimum=0,
    )
    max_new_tokens_limit: int = option(2048, "the largest max_new_tokens a request may ask for", minimum=1)
    max_message_chars: int = option(20000, "the longest message a person may send", minimum=1)
    max_history_messages: int = option(200, "the most earlier messages a conversation may carry", minimum=0)
    max_conversation_chars: int = option(100_000, "the most characters a whole conversation may carry", minimum=1)
    max_request_bytes: int = option(2_000_000, "the largest request body the server reads", minimum=100_000)
    rate_limit: int = option(0, "requests a client (IP address) may make per minute; 0 is no limit", minimum=0)
    auth: str = option("", "USER:PASSWORD that the web page asks for (none by default)", secret=True)
    api_key: str = option(
        "",
        "the bearer key the OpenAI-compatible API asks for (none by default; with --auth, /v1 is off without it)",
        secret=True,
    )
    trusted_proxies: str = option(
        # In a Space every request comes through the Hub's proxy, which sets X-Forwarded-For.
        "*" if os.environ.get("SPACE_ID") else "",
        "comma-separated addresses of reverse proxies whose X-Forwarded-For names the client "
        "(for the rate limit); '*' trusts any; none by default (the default in a Space: '*')",
        check=proxy_addresses,
    )
    allowed_origins: str = option(
        "",
        "comma-separated origins of other sites whose pages may call this server with a visitor's login "
        "(CORS with credentials); none by default: only the page itself",
        check=origins,
    )
    max_connections_per_client: int = option(
        128,
        "open connections one client address may hold (trusted proxies excepted); more are closed at once",
        minimum=1,
        maximum=1_000_000,
    )
    cache_dir: str = option(
        os.path.join(os.path.expanduser("~"), ".cache", "starchat-playground"),
        "where the demo checkpoint is built and kept",
        minimum=1,
    )

    def __post_init__(self) -> None:
        """Every value of its type, among its choices, within its bounds: flags, environment twins and the
        models file's entries alike (a SettingError names the first that is not)."""
        for f in fields(self):
            value, kind = getattr(self, f.name), type(f.default)
            low, high = f.metadata["bounds"]
            given = "" if f.metadata["secret"] else f", not {value!r}"
            if kind is float and type(value) is int:
                value = float(value)
            if type(value) is not kind or (kind is float and not math.isfinite(value)):
                raise SettingError(f.name, f"must be {KINDS[kind]}{given}")
            if (choices := f.metadata.get("choices")) and value not in choices:
                raise SettingError(f.name, f"must be one of {', '.join(choices)}{given}")
            if kind is str:
                if low is not None and len(value.strip()) < low:
                    raise SettingError(f.name, "must not be empty")
                if (check := f.metadata["check"]) and (problem := check(value)):
                    raise SettingError(f.name, problem)
                continue
            if (low is not None and value < low) or (high is not None and value > high):
                within = f"at least {low:g}" if high is None else f"from {low:g} to {high:g}"
                raise SettingError(f.name, f"must be {within}{given}")

    @classmethod
    def from_args(cls, argv: list[str] | None = None, env: dict[str, str] | None = None) -> Settings:
        parser = cls.parser(env)
        return cls.from_parsed(parser, parser.parse_args(argv))

    @classmethod
    def parser(
        cls,
        env: dict[str, str] | None = None,
        description: str = "StarChat Playground: chat with StarChat-style coding models.",
        usage: str = "python app.py [--FLAG VALUE ...]  (--help lists the flags)",  # an error is two lines
    ) -> argparse.ArgumentParser:
        """A parser of every setting's flag, its default from its environment twin; a command adds its own."""
        env = os.environ if env is None else env
        parser = argparse.ArgumentParser(description=description, usage=usage)
        for f in fields(cls):
            env_name, kind, default = f"STARCHAT_{f.name.upper()}", type(f.default), f.default
            if env_name in env:
                try:
                    default = kind(env[env_name])
                except ValueError:  # said once the flags are read: --help still answers
                    default = Unreadable(f"{env_name}={env[env_name]!r} is not {KINDS[kind]}")
            extra = {k: v for k, v in f.metadata.items() if k not in ("help", "bounds", "secret", "check")}
            hidden = f.metadata["secret"] or default in ("", None) or isinstance(default, Unreadable)
            shown = "" if hidden else f"; default {default}"
            parser.add_argument(
                f"--{f.name.replace('_', '-')}",
                type=kind,
                default=default,
                help=f"{f.metadata['help']} [env {env_name}{shown}]",
                **extra,
            )
        return parser

    @classmethod
    def from_parsed(cls, parser: argparse.ArgumentParser, args: argparse.Namespace) -> Settings:
        """The settings among `args` (a command's own flags aside), checked; an error is the parser's."""
        for f in fields(cls):
            if isinstance(value := getattr(args, f.name), Unreadable):  # its flag not given, its twin unread
                parser.error(value.problem)
        try:
            settings = cls(**{f.name: getattr(args, f.name) for f in fields(cls)})
        except SettingError as exc:  # named as a flag, with its environment twin
            parser.error(f"--{exc.name.replace('_', '-')} (or STARCHAT_{exc.name.upper()}) {exc.problem}")
        user, colon, password = settings.auth.partition(":")
        if settings.auth and not (user and colon and password):
            parser.error("--auth takes USER:PASSWORD, both not empty")
        return settings
