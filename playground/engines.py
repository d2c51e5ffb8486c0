"""Commands that serve a checkpoint on vLLM or TGI, and the playground command that uses them.

    python -m playground.engines vllm CHECKPOINT [--gpus N] [--port 8000] [--run]
    python -m playground.engines tgi CHECKPOINT [--gpus N] [--port 8080]

It checks the checkpoint first (the chat template renders our format; generation_config.json
stops at <|end|>), since both engines take the template and the stop ids from it.
"""

from __future__ import annotations

import argparse
import os
import shlex
from dataclasses import dataclass
from pathlib import Path

from transformers import AutoConfig, AutoTokenizer, GenerationConfig

from playground.backends import context_length
from playground.backends.loading import check_model_path
from playground.template import render, stop_ids


@dataclass(frozen=True)
class Plan:
    server: list[str]
    playground: list[str]


def check_checkpoint(checkpoint: str) -> int:
    """Returns the context length; raises ValueError naming what is missing for an engine (OSError: what
    cannot be read)."""
    if not checkpoint.strip():
        raise ValueError("name a served checkpoint: a folder or a Hub id")
    check_model_path(checkpoint)
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    messages = [{"role": "system", "content": "s"}, {"role": "user", "content": "q"}]
    if tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) != render(messages):
        raise ValueError(f"{checkpoint}: its chat template does not render the StarChat format")
    eos = GenerationConfig.from_pretrained(checkpoint).eos_token_id
    if set(stop_ids(tokenizer)) - set(eos if isinstance(eos, list) else [eos]):
        raise ValueError(f"{checkpoint}: generation_config.json must stop at <|end|> and <|endoftext|>")
    return context_length(AutoConfig.from_pretrained(checkpoint))


def plan(engine: str, checkpoint: str, gpus: int, port: int) -> Plan:
    context = check_checkpoint(checkpoint)
    if Path(checkpoint).exists():  # absolute: never read as an option (a folder named -d), nor from another folder
        checkpoint = str(Path(checkpoint).absolute())
    if engine == "vllm":
        # openai: token ids, so people's text never becomes control tokens
        server, protocol = vllm_command(checkpoint, gpus, port, context), "openai"
    elif engine == "tgi":
        server, protocol = tgi_command(checkpoint, gpus, port, context), "tgi"
    else:
        raise ValueError(f"engine must be vllm or tgi, got {engine!r}")
    url = f"http://127.0.0.1:{port}"
    playground = ["python", "app.py", "--backend", "endpoint", "--endpoint-protocol", protocol]
    return Plan(server, [*playground, "--endpoint-url", url, "--model", checkpoint])


def vllm_command(checkpoint: str, gpus: int, port: int, context: int) -> list[str]:
    # vLLM reads the chat template and generation_config.json (the stop ids) from the folder itself.
    return [
        *("vllm", "serve", checkpoint, "--tensor-parallel-size", str(gpus), "--port", str(port)),
        *("--max-model-len", str(context), "--generation-config", "auto"),
    ]


def tgi_command(checkpoint: str, gpus: int, port: int, context: int) -> list[str]:
    folder = str(Path(checkpoint).resolve()) if Path(checkpoint).exists() else None
    if folder and ":" in folder:
        raise ValueError(f"{folder}: docker -v cannot mount a path with ':' in it; move or link the folder")
    volume = ["-v", f"{folder}:/model"] if folder else []
    return [
        *("docker", "run", "--gpus", "all", "--shm-size", "1g", "-p", f"{port}:80", *volume),
        *("ghcr.io/huggingface/text-generation-inference:latest", "--model-id", "/model" if folder else checkpoint),
        *("--num-shard", str(gpus), "--max-total-tokens", str(context)),
        *("--max-input-tokens", str(context - min(512, context // 2))),  # the rest is the reply's
    ]


def gpu_count() -> int:
    try:
        import torch

        return max(torch.cuda.device_count(), 1)
    except ImportError:
        return 1


def within(low: int, high: int):
    """An argparse type: a whole number from `low` to `high`."""

    def number(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be from {low} to {high}, not {value}")
        return value

    return number


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("engine", choices=["vllm", "tgi"])
    parser.add_argument("checkpoint", help="a served checkpoint folder or Hub id")
    parser.add_argument(
        "--gpus", type=within(1, 1024), default=None, help="tensor-parallel degree (default: every GPU here)"
    )
    parser.add_argument("--port", type=within(1, 65535), default=None, help="the engine's port (vllm 8000, tgi 8080)")
    parser.add_argument("--run", action="store_true", help="start the engine instead of printing the commands")
    args = parser.parse_args(argv)
    port = args.port or (8000 if args.engine == "vllm" else 8080)
    try:
        commands = plan(args.engine, args.checkpoint, args.gpus or gpu_count(), port)
    except Exception as exc:  # a checkpoint's files fail in each library's own way: JSON, Jinja, config classes
        named = str(exc).startswith(f"{args.checkpoint}:") or not args.checkpoint.strip()
        said = " ".join((str(exc) if named else f"{args.checkpoint}: {exc}").split())
        parser.exit(2, f"{parser.prog}: {said}\n")
    if args.run:
        try:
            os.execvp(commands.server[0], commands.server)
        except OSError as exc:
            parser.exit(
                2,
                f"{parser.prog}: cannot start {commands.server[0]} here ({exc.strerror}): run the command "
                "printed without --run where it is installed\n",
            )
    print(f"# 1. start {args.engine}\n{shlex.join(commands.server)}\n# 2. then\n{shlex.join(commands.playground)}")


if __name__ == "__main__":
    main()
