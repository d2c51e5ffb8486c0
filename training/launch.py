"""How a run ran, for its card: the mixed precision actually used, the processes, DeepSpeed or FSDP, and the
accelerate config file, read from the accelerator whatever set them (the recipe, `accelerate launch`'s
environment, a config file)."""

from __future__ import annotations

import os
from pathlib import Path


def how_it_ran(accelerator) -> dict:
    state = accelerator.state
    ran = {
        "mixed_precision": accelerator.mixed_precision,  # "no", "bf16" or "fp16": what autocast used
        "processes": accelerator.num_processes,
        "distributed": state.distributed_type.value,
    }
    if (deepspeed := getattr(state, "deepspeed_plugin", None)) is not None:  # set only when in use
        ran["deepspeed_zero_stage"] = deepspeed.zero_stage
    if (plugin := getattr(state, "fsdp_plugin", None)) is not None:
        ran["fsdp"] = {"version": plugin.fsdp_version, "reshard_after_forward": str(plugin.reshard_after_forward)}
    ran["accelerate_config"] = accelerate_config() or "none: not started by accelerate launch"
    return ran


def accelerate_config(pid: int | None = None) -> str:
    """The config file of the `accelerate launch` that started this process (its parent, or the parent of
    torchrun's agent), read from its command line; accelerate's default file when it named none."""
    pid = os.getppid() if pid is None else pid
    for _ in range(2):
        try:
            words = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:  # not Linux, or the launcher is gone
            return ""
        if "launch" in words and any(Path(word).name == "accelerate" for word in words[:2]):
            return named_config(words)
        pid = int(stat.rsplit(")", 1)[1].split()[1])
    return ""


def named_config(words: list[str]) -> str:
    for i, word in enumerate(words):
        if word == "--config_file" and i + 1 < len(words):
            return words[i + 1]
        if word.startswith("--config_file="):
            return word.split("=", 1)[1]
    from accelerate.commands.config import default_config_file

    return f"{default_config_file} (accelerate's default)" if Path(default_config_file).is_file() else "none"
