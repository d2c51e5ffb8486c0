"""Writes the served checkpoint (docs/design.md's contract), so that a killed write never looks whole; checks
the folders a run or a merge reads before anything heavy is loaded.

Everything is written to `<dir>/.incomplete/`, then moved into `<dir>` with config.json last:
a folder without config.json is not a checkpoint to from_pretrained, and an older one's
config.json is removed before any new file lands.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Sequence
from contextlib import suppress
from importlib import metadata
from pathlib import Path

import yaml
from transformers import AutoConfig, GenerationConfig

from playground.sampling import SamplingParams
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


LIBRARIES = {
    "transformers": "Transformers",
    "torch": "PyTorch",
    "peft": "PEFT",
    "accelerate": "Accelerate",
    "datasets": "Datasets",
    "trl": "TRL",
    "tokenizers": "Tokenizers",
}
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")


def results_table(log_history: list[dict]) -> str:
    """The card's table: one row per evaluation with the training loss logged before it; without
    evaluations, one row per logged training loss."""
    rows = ["| Training Loss | Epoch | Step | Validation Loss |", "|:-------------:|:-----:|:----:|:---------------:|"]
    evaluated = any("eval_loss" in entry for entry in log_history)
    train_loss = None
    for entry in log_history:
        if "loss" in entry:
            train_loss = entry["loss"]
            if not evaluated:
                rows.append(f"| {train_loss:.4f} | {entry['epoch']:.2f} | {entry['step']} | - |")
        if "eval_loss" in entry:
            shown = f"{train_loss:.4f}" if train_loss is not None else "-"
            rows.append(f"| {shown} | {entry['epoch']:.2f} | {entry['step']} | {entry['eval_loss']:.4f} |")
    return "\n".join(rows)


def hub_ids(names: Sequence[str]) -> list[str]:
    """The names that are Hub repositories: not local paths, `scratch` or `builtin:` data."""
    return [n for n in names if n != "scratch" and _HUB_ID.fullmatch(n) and not Path(n).exists()]


def versions() -> str:
    found = []
    for package, name in LIBRARIES.items():
        try:
            found.append(f"- {name} {metadata.version(package)}")
        except metadata.PackageNotFoundError:
            continue
    return "\n".join(found)


def model_card(
    name: str,
    base: str,
    settings: dict,
    log_history: list[dict],
    data_summary: str = "",
    *,
    datasets: Sequence[str] = (),
    hardware: str = "",
    preference: dict | None = None,
    ran: dict | None = None,
) -> str:
    """The served checkpoint's README.md: what ran (`settings`: the effective arguments), on what data
    and hardware (`ran`: precision and distributed setup as they were), with which libraries, and the losses;
    for DPO (`preference`) beta, the reference and the rewards."""
    front: dict = {}
    if hub_ids([base]):
        front["base_model"] = base
    if hub_ids(datasets):
        front["datasets"] = hub_ids(datasets)
    front["license"] = "bigcode-openrail-m"
    front["tags"] = ["starchat-playground", "code", *(["lora"] if settings.get("lora") else [])]
    front["pipeline_tag"] = "text-generation"
    if base == "scratch":
        base_text = "None: trained from scratch, a GPTBigCode built by `training/scratch.py` (sizes below)."
    else:
        base_text = f"`{base}`" + (f" ([on the Hub](https://huggingface.co/{base}))" if "base_model" in front else "")
    dpo = f"## Preference training (DPO)\n\n```yaml\n{yaml.safe_dump(preference, sort_keys=False)}```\n\n"
    dpo = dpo if preference else ""
    setup = f"\n\n```yaml\n{yaml.safe_dump(ran, sort_keys=False)}```" if ran else ""
    data = "\n".join(f"- `{d}`" for d in datasets) + (f"\n\n{data_summary}" if data_summary else "")
    return (
        f"---\n{yaml.safe_dump(front, sort_keys=False)}---\n\n# {name}\n\n"
        f"A StarChat-format coding assistant fine-tuned with StarChat Playground's training package.\n"
        "Serve it with `python app.py --model <this folder>`.\n\n"
        "## Dialogue format\n\n```\n<|system|>\n{system}<|end|>\n<|user|>\n{query}<|end|>\n<|assistant|>\n```\n\n"
        "Generation stops at `<|end|>` (see `generation_config.json`).\n\n"
        f"## Base model\n\n{base_text}\n\n"
        f"## Data\n\n{data or 'not recorded'}\n\n"
        "## Training arguments\n\n```yaml\n# what ran: the recipe with the command line's overrides\n"
        f"{yaml.safe_dump(settings, sort_keys=True)}```\n\n{dpo}"
        f"## Hardware\n\n{hardware or 'not recorded'}{setup}\n\n"
        f"## Training results\n\n{results_table(log_history)}\n\n"
        f"## Framework versions\n\n{versions()}\n"
    )


def base_config(name: str):
    """The config of a base model (a local folder or a Hub id), or SystemExit saying why there is none."""
    if Path(name).expanduser().is_file():
        raise SystemExit(f"{name}: a file; name a model's folder or a Hub id")
    try:
        return AutoConfig.from_pretrained(name)
    except (OSError, ValueError) as exc:  # no such folder, not a model's folder, offline, no such id
        why = " ".join(str(exc).split())
        raise SystemExit(f"{name}: not a model's folder, and not a model the Hub gave ({why})") from None


def same_folder(a: str | Path, b: str | Path) -> bool:
    return Path(a).expanduser().resolve() == Path(b).expanduser().resolve()


# What a folder that holds a run or a served checkpoint has; a folder with none of them and other files is
# someone else's, which a run would write over (its README.md first).
RUN_PARTS = ("checkpoints", "adapter", "scratch-base")  # the folders a run keeps beside its served checkpoint
RUN_MARKS = ("config.json", *RUN_PARTS, ".incomplete")


def is_run(folder: Path) -> bool:
    """Whether `folder` holds a training run: its record or the scratch base it built (names only our runs use)."""
    parts = ("checkpoints/run.json", "scratch-base/config.json")
    return any((folder / part).is_file() for part in parts)


def check_output(output: Path, what: str, sources: dict[str, str], cleared: bool = True) -> None:
    """Refuses an output that is (or is under) a file, a folder of other files, or one that is a folder the
    result is made from (`sources`, e.g. {"the base model": path}) or, if a run may clear it, holds one."""
    if file := next((path for path in (output, *output.parents) if path.is_file()), None):
        raise SystemExit(f"{output}: {file} is a file; {what} is a folder")
    for label, source in sources.items():
        if same_folder(output, source):
            raise SystemExit(f"{output} is {label}'s folder, which the result would replace: choose another {what}")
        if cleared and Path(source).expanduser().resolve().is_relative_to(output.resolve()):
            raise SystemExit(f"{label} {source} is inside {output}, which a run may clear: choose another {what}")
    if run := next((folder for folder in output.absolute().parents if is_run(folder)), None):
        raise SystemExit(
            f"{output} is inside the training run {run}, whose files it would mix with: choose another {what}"
        )
    others = [] if not output.is_dir() or any((output / m).exists() for m in RUN_MARKS) else sorted(output.iterdir())
    if others:
        shown = ", ".join(path.name for path in others[:3]) + (", ..." if len(others) > 3 else "")
        raise SystemExit(
            f"{output.absolute()} holds other files ({shown}), which the served checkpoint would write over: "
            f"choose a new or empty folder for {what}"
        )


def check_writable(output: Path, what: str) -> None:
    """Says now, before any work, if `output` cannot be written; leaves no folder behind either way."""
    missing = [folder for folder in (output, *output.parents) if not folder.exists()]  # the deepest first
    try:
        output.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=output).close()
    except OSError as exc:
        raise SystemExit(f"{what} {output}: cannot write there ({exc.strerror or exc})") from None
    finally:
        for folder in missing:
            with suppress(OSError):
                folder.rmdir()


# A served checkpoint's files (what save_pretrained writes for a model, its tokenizer and generation config).
SERVED_FILES = (
    "config.json",
    "generation_config.json",
    "README.md",
    "model*.safetensors",
    "model.safetensors.index.json",
    "pytorch_model*.bin",
    "pytorch_model.bin.index.json",
    "tokenizer*",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
)


def clear_served(folder: Path) -> None:
    """Removes a served checkpoint's files from `folder`, config.json first (what is left never looks like a
    checkpoint); other files stay. A new checkpoint with other file names (shards where there was one file)
    would otherwise sit beside the old one's, and from_pretrained could read the old weights."""
    (folder / "config.json").unlink(missing_ok=True)
    for pattern in SERVED_FILES:
        for path in folder.glob(pattern):
            if path.is_file():
                path.unlink()


def save_checkpoint(model, tokenizer, output_dir: str | Path, card: str, state_dict: dict | None = None) -> Path:
    output = Path(output_dir)
    staging = output / ".incomplete"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    model.save_pretrained(staging, state_dict=state_dict)
    # The chat template goes into tokenizer_config.json, the only place TGI's chat API reads it.
    tokenizer.save_pretrained(staging, save_jinja_files=False)
    served_generation_config(tokenizer).save_pretrained(staging)
    (staging / "README.md").write_text(card, encoding="utf-8")
    clear_served(output)
    for path in sorted(staging.iterdir(), key=lambda p: p.name == "config.json"):
        os.replace(path, output / path.name)
    staging.rmdir()
    return output
