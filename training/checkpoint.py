"""Writes the served checkpoint (DESIGN.md's contract), so that a killed write never looks whole.

Everything is written to `<dir>/.incomplete/`, then moved into `<dir>` with config.json last:
a folder without config.json is not a checkpoint to from_pretrained, and an older one's
config.json is removed before any new file lands.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch
import transformers
import yaml
from transformers import GenerationConfig

from playground.backends import SamplingParams
from playground.template import EOS, control_ids, stop_ids


def served_generation_config(tokenizer) -> GenerationConfig:
    p, ids = SamplingParams(), control_ids(tokenizer)
    return GenerationConfig(
        do_sample=True,
        temperature=p.temperature,
        top_k=p.top_k,
        top_p=p.top_p,
        repetition_penalty=p.repetition_penalty,
        max_new_tokens=p.max_new_tokens,
        eos_token_id=stop_ids(tokenizer),
        pad_token_id=ids[EOS],
        bos_token_id=ids[EOS],
    )


def results_table(log_history: list[dict]) -> str:
    """The card's table: one row per evaluation, with the training loss logged just before it."""
    rows = ["| Training Loss | Epoch | Step | Validation Loss |", "|:-------------:|:-----:|:----:|:---------------:|"]
    train_loss = None
    for entry in log_history:
        if "loss" in entry:
            train_loss = entry["loss"]
        if "eval_loss" in entry:
            shown = f"{train_loss:.4f}" if train_loss is not None else "-"
            rows.append(f"| {shown} | {entry['epoch']:.2f} | {entry['step']} | {entry['eval_loss']:.4f} |")
    return "\n".join(rows)


def model_card(name: str, base: str, recipe: dict, log_history: list[dict], data_summary: str = "") -> str:
    front = {"base_model": base, "license": "bigcode-openrail-m", "tags": ["starchat-playground", "code"]}
    return (
        f"---\n{yaml.safe_dump(front, sort_keys=False)}---\n\n# {name}\n\n"
        f"A StarChat-format coding assistant fine-tuned from `{base}` with StarChat Playground's training package.\n"
        "Serve it with `python app.py --model <this folder>`.\n\n"
        "## Dialogue format\n\n```\n<|system|>\n{system}<|end|>\n<|user|>\n{query}<|end|>\n<|assistant|>\n```\n\n"
        "Generation stops at `<|end|>` (see `generation_config.json`).\n\n"
        + (f"## Data\n\n{data_summary}\n\n" if data_summary else "")
        + f"## Recipe\n\n```yaml\n{yaml.safe_dump(recipe, sort_keys=True)}```\n\n"
        f"## Training results\n\n{results_table(log_history)}\n\n"
        f"## Framework versions\n\n- Transformers {transformers.__version__}\n- PyTorch {torch.__version__}\n"
    )


def save_checkpoint(model, tokenizer, output_dir: str | Path, card: str, state_dict: dict | None = None) -> Path:
    output = Path(output_dir)
    staging = output / ".incomplete"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    model.save_pretrained(staging, state_dict=state_dict)
    tokenizer.save_pretrained(staging)
    served_generation_config(tokenizer).save_pretrained(staging)
    (staging / "README.md").write_text(card, encoding="utf-8")
    (output / "config.json").unlink(missing_ok=True)
    for path in sorted(staging.iterdir(), key=lambda p: p.name == "config.json"):
        os.replace(path, output / path.name)
    staging.rmdir()
    return output
