"""Sampling parameters: the StarChat card's defaults and the ranges every door accepts.

Its own module so that the serving side (backends, the page, the APIs) and training (which writes
the defaults into each checkpoint's generation_config.json) share them without importing each other.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields


class ParamError(ValueError):
    """A sampling parameter the server will not take: its name, the value given and what it must be."""

    def __init__(self, name: str, value: object, must: str):
        self.name, self.value, self.must = name, value, must
        super().__init__(self.named(name))

    def named(self, name: str) -> str:
        """The message with the parameter called as the caller calls it (the API's max_tokens)."""
        return f"{name} must be {self.must}, got {shown(self.value)}"


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


def shown(value: object) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, int) and abs(value) > 2**53:  # beyond every range, and too long to quote
        return f"a {value.bit_length()}-bit number"
    return number(value)


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
        if unknown := set(raw) - {f.name for f in fields(cls)}:  # no door passes names of its own choosing
            raise TypeError(f"unknown parameter(s): {', '.join(sorted(unknown))}")
        values = {}
        for name, value in raw.items():
            if value is None:
                continue
            kind, low, high = PARAM_RANGES[name]
            if name == "max_new_tokens" and max_new_tokens_limit is not None:
                high = min(high, max_new_tokens_limit)
            between = f"between {number(low)} and {number(high)}"
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ParamError(name, value, "a number")
            if isinstance(value, int) and abs(value) > 2**53:  # beyond every range, and beyond a float
                raise ParamError(name, value, between)
            if not math.isfinite(value):
                raise ParamError(name, value, "a finite number")
            if kind is int:
                if value != int(value):
                    raise ParamError(name, value, "a whole number")
                value = int(value)
            if not low <= value <= high:
                raise ParamError(name, value, between)
            if name == "temperature" and 0 < value < MIN_TEMPERATURE:  # dividing by it overflows the logits
                raise ParamError(name, value, f"0 (greedy) or at least {MIN_TEMPERATURE}")
            values[name] = kind(value)
        return cls(**values)
