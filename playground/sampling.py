"""Sampling parameters: the StarChat card's defaults and the ranges every door accepts.

Its own module so that the serving side (backends, the page, the APIs) and training (which writes
the defaults into each checkpoint's generation_config.json) share them without importing each other.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields


class ParamError(ValueError):
    """A sampling parameter that the server will not take; the message says which and why."""


# name -> (type, low, high); the sliders use the same ranges, API callers meet them here.
PARAM_RANGES: dict[str, tuple[type, float, float]] = {
    "temperature": (float, 0.0, 2.0),
    "top_p": (float, 0.01, 1.0),
    "top_k": (int, 0, 1000),
    "max_new_tokens": (int, 1, 8192),
    "repetition_penalty": (float, 1.0, 2.0),
    "seed": (int, -1, 2**31 - 1),
}


MIN_TEMPERATURE = 0.01


def number(value: float) -> str:
    """A number as people write it: 2147483647, 0.95, 1e-300 (not 2.14748e+09)."""
    return str(int(value)) if float(value).is_integer() and abs(value) < 1e16 else repr(float(value))


@dataclass(frozen=True)
class SamplingParams:
    """The card's defaults. temperature 0 means greedy; top_k 0 means no top-k; seed -1 is random."""

    temperature: float = 0.2
    top_p: float = 0.95
    top_k: int = 50
    max_new_tokens: int = 512
    repetition_penalty: float = 1.2
    seed: int = -1

    @classmethod
    def parse(cls, max_new_tokens_limit: int | None = None, **raw: object) -> SamplingParams:
        """Checks values that may come from anyone (API callers bypass the sliders)."""
        unknown = set(raw) - {f.name for f in fields(cls)}
        if unknown:
            raise ParamError(f"unknown parameter(s): {', '.join(sorted(unknown))}")
        values = {}
        for name, value in raw.items():
            if value is None:
                continue
            kind, low, high = PARAM_RANGES[name]
            if name == "max_new_tokens" and max_new_tokens_limit is not None:
                high = min(high, max_new_tokens_limit)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ParamError(f"{name} must be a number, got {value!r}")
            if isinstance(value, int) and abs(value) > 2**53:  # beyond every range, and beyond a float
                raise ParamError(
                    f"{name} must be between {number(low)} and {number(high)}, got a {value.bit_length()}-bit number"
                )
            if not math.isfinite(value):
                raise ParamError(f"{name} must be a finite number, got {value!r}")
            if kind is int:
                if value != int(value):
                    raise ParamError(f"{name} must be a whole number, got {value!r}")
                value = int(value)
            if not low <= value <= high:
                raise ParamError(f"{name} must be between {number(low)} and {number(high)}, got {number(value)}")
            if name == "temperature" and 0 < value < MIN_TEMPERATURE:  # dividing by it overflows the logits
                raise ParamError(f"temperature must be 0 (greedy) or at least {MIN_TEMPERATURE}, got {number(value)}")
            values[name] = kind(value)
        return cls(**values)
