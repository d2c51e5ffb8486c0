"""The models file (`--models-file`): several models in one playground, each entry the model flags it
changes from the command line's, under its display name."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import yaml

MODEL_KEYS = {
    "model",
    "backend",
    "quantize",
    "endpoint_url",
    "endpoint_protocol",
    "endpoint_model",
    "endpoint_token",
    "endpoint_timeout",
}


def read_models_file(path: str, settings) -> list[tuple[str, object]]:
    """(display name, the settings for that model) for each entry, in order; ValueError says what is wrong
    and where."""
    try:
        document = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ValueError(f"{path}: cannot be read as YAML ({' '.join(str(exc).split())})") from None
    entries = document.get("models") if isinstance(document, dict) else None
    if not entries or not isinstance(entries, list):
        raise ValueError(f"{path}: no list of entries under 'models:'")
    for i, entry in enumerate(entries):
        named = isinstance(entry, dict) and isinstance(entry.get("name"), str) and entry["name"].strip()
        if not named or set(entry) - MODEL_KEYS - {"name"}:
            raise ValueError(f"{path}: entry {i} needs a name (text) and only the keys {sorted(MODEL_KEYS)}")
    names = [entry["name"].strip() for entry in entries]
    if again := next((name for name in names if names.count(name) > 1), None):
        raise ValueError(f"{path}: two entries are named {again!r}")
    chosen = []
    for i, entry in enumerate(entries):
        try:
            chosen.append((names[i], dataclasses.replace(settings, **{k: v for k, v in entry.items() if k != "name"})))
        except ValueError as exc:
            raise ValueError(f"{path}: entry {i}: {exc}") from None
    return chosen
