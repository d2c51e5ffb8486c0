"""Sampling on the device, every row at once, each with its own values and seed."""

from __future__ import annotations

import torch

MASK32 = 0xFFFFFFFF


def mix32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash (Wellons' lowbias32 family); multipliers under 2**31 keep int64 from overflowing."""
    x = x ^ (x >> 16)
    x = (x * 0x21F0AAAD) & MASK32
    x = x ^ (x >> 15)
    x = (x * 0x735A2D97) & MASK32
    return x ^ (x >> 15)


def uniform(seed: torch.Tensor, draw: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Numbers in (0, 1), a pure function of (seed, draw, token id): a request's draws do not depend on
    its neighbours in the batch, nor on a generator's state, so the whole step can be a CUDA graph."""
    key = mix32(mix32(seed & MASK32) ^ draw)
    bits = mix32(key[:, None] ^ ids)
    return ((bits >> 8).float() + 0.5) / 2**24


def sample(
    logits: torch.Tensor,
    seen: torch.Tensor,
    temperature: torch.Tensor,
    top_k: torch.Tensor,
    top_p: torch.Tensor,
    penalty: torch.Tensor,
    seed: torch.Tensor,
    draw: torch.Tensor,
) -> torch.Tensor:
    """The next token of each row, as transformers' logits processors would pick it: repetition penalty,
    then temperature (0: greedy), top-k (0: off), top-p. One row per request, each with its own values."""
    logits = torch.where(seen, torch.where(logits > 0, logits / penalty[:, None], logits * penalty[:, None]), logits)
    greedy = logits.argmax(-1)
    logits = logits / torch.where(temperature > 0, temperature, 1.0)[:, None]
    ranked, order = logits.sort(-1, descending=True)
    vocab = logits.shape[-1]
    k = torch.where(top_k > 0, top_k, vocab).clamp(max=vocab)
    cutoff = ranked.gather(-1, (k - 1)[:, None])
    probs = ranked.softmax(-1)
    outside_p = probs.cumsum(-1) - probs > top_p[:, None]
    probs = ranked.masked_fill(outside_p | (ranked < cutoff), float("-inf")).softmax(-1)
    # The exponential race: argmax of p / Exp(1) draws from p; the noise belongs to the token id, not its rank.
    noise = -uniform(seed, draw, order).log()
    sampled = order.gather(-1, (probs / noise).argmax(-1, keepdim=True))[:, 0]
    return torch.where(temperature > 0, sampled, greedy)
