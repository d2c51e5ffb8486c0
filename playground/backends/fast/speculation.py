"""Prompt-lookup speculation: drafts from a conversation's own tokens, and the rule for which to keep.

Drafting (the host, each step): a row's newest 3 tokens, else 2, else 1, are looked up among its earlier
tokens (prompt and reply); the tokens that followed their most recent earlier occurrence are the draft.

Verifying (the device, in the step's graph): the model reads each row's last token and its draft in one
pass. At each position the next token is sampled as the plain step would sample it there: the same
processed distribution (the draft's earlier tokens count as seen for the repetition penalty) and the
same draw of the row's counter-based seed. A draft token is kept while it equals the token sampled
before it, and the first token sampled after the kept ones is the model's own. The exponential race
picks the draft token d with probability p(d) and otherwise a token drawn from p without d,
renormalised: the speculative-sampling rule for a deterministic draft. As the draws are the plain
step's, a reply is token for token the one the engine gives without drafts, for the same seed.
"""

from __future__ import annotations

import torch

# Verify steps are made for batches of up to this many rows; larger batches take the plain step. Beyond it
# a step already reads each weight for many rows at once, and checking (N+1) times as many tokens moves it
# from the weight read towards the GPU's compute, where rejected drafts cost what accepted ones earn; each
# verify bucket is also one more CUDA graph to capture at start-up.
DRAFT_ROWS = 8
LONGEST = 3  # the longest run of newest tokens looked up


class Lookup:
    """A conversation's tokens, with where each run of 1 to LONGEST tokens last ended before the newest token."""

    def __init__(self, prompt: list[int]):
        self.tokens: list[int] = []
        self.ends: dict[tuple[int, ...], int] = {}
        for token in prompt:
            self.add(token)

    def add(self, token: int) -> None:
        # The runs that end at the token before this one become earlier runs: the newest run is never its own match.
        end = len(self.tokens) - 1
        for n in range(1, min(LONGEST, end + 1) + 1):
            self.ends[tuple(self.tokens[end - n + 1 : end + 1])] = end
        self.tokens.append(token)

    def draft(self, limit: int) -> list[int]:
        """Up to `limit` tokens that followed the most recent earlier match of the longest run of newest tokens.
        A continuation that reaches the newest token goes on copying itself (a repeated pattern repeats)."""
        tokens = self.tokens
        for n in range(min(LONGEST, len(tokens)), 0, -1):
            end = self.ends.get(tuple(tokens[-n:]))
            if end is not None:
                break
        else:
            return []
        period, out = len(tokens) - 1 - end, []
        for i in range(max(limit, 0)):
            out.append(tokens[end + 1 + i] if i < period else out[i - period])
        return out


def seen_before(seen: torch.Tensor, drafts: torch.Tensor) -> torch.Tensor:
    """seen [batch, vocab] and drafts [batch, width - 1] -> [batch, width, vocab]: what position j's repetition
    penalty counts, the row's tokens so far and its draft's first j tokens."""
    batch, vocab = seen.shape
    marks = torch.zeros(batch, drafts.shape[1] + 1, vocab, dtype=torch.int32, device=seen.device)
    marks[:, 1:].scatter_(2, drafts[:, :, None], 1)
    return seen[:, None, :] | (marks.cumsum(1) > 0)


def accepted(targets: torch.Tensor, drafts: torch.Tensor, drafted: torch.Tensor) -> torch.Tensor:
    """How many draft tokens each row keeps: its first `drafted` tokens, while each equals the token sampled at
    the position before it. targets [batch, width], drafts [batch, width - 1], drafted [batch]."""
    offsets = torch.arange(drafts.shape[1], device=drafts.device)
    agree = (targets[:, :-1] == drafts) & (offsets < drafted[:, None])
    return agree.long().cumprod(1).sum(1)
