"""The model's forward pass over our static KV cache (gpt-fast's `model.py` role): the decode step, a
packed prefill, and the per-row state the step reads and writes on the device."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch.nn.attention.bias import causal_lower_right

from playground.backends.fast.sampling import sample
from playground.backends.fast.speculation import DRAFT_ROWS, accepted, seen_before

if TYPE_CHECKING:
    from playground.backends.fast.scheduler import Job

CONTEXT_BUCKETS = (512, 1024, 2048, 4096, 8192)


def linear(module: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """`module(x)`, with a plain weight's product written as a matmul: Inductor turns a one-row matmul
    into a reduction it tunes and fuses with the bias and activation (under coordinate-descent tuning),
    which reads the weights faster than cuBLAS's GEMV. Quantized weights keep their own kernels."""
    if type(module.weight) is not torch.nn.Parameter:
        return module(x)
    out = x @ module.weight.t()
    return out if module.bias is None else out + module.bias


def decode_layer(block, x, keys, values, positions, visible) -> torch.Tensor:
    """One GPTBigCode layer for new tokens over the layer's cache [slots, context, head_dim]: one per row
    (x [batch, embed], positions [batch]) or several (x [batch, width, embed], positions [batch, width],
    a verify step's); `visible` [*positions.shape, length] says which cache positions each token sees.
    A plain function of its inputs, so one compiled version serves every layer and every engine with the
    same shapes and weight types."""
    batch, length = visible.shape[0], visible.shape[-1]
    attn = block.attn
    q, k, v = linear(attn.c_attn, block.ln_1(x)).split((attn.embed_dim, attn.head_dim, attn.head_dim), -1)
    rows = torch.arange(batch, device=x.device)
    rows = rows if positions.dim() == 1 else rows[:, None]
    keys[rows, positions] = k
    values[rows, positions] = v
    q = q.unflatten(-1, (attn.num_heads, attn.head_dim))
    scores = torch.einsum("b...hd,bld->b...hl", q, keys[:batch, :length]).float() * attn.scaling
    weights = scores.masked_fill(~visible.unsqueeze(visible.dim() - 1), float("-inf")).softmax(-1).to(x.dtype)
    attended = torch.einsum("b...hl,bld->b...hd", weights, values[:batch, :length])
    x = x + linear(attn.c_proj, attended.flatten(-2))
    return x + linear(block.mlp.c_proj, block.mlp.act(linear(block.mlp.c_fc, block.ln_2(x))))


def decode_row(block, x, keys, values, positions, visible) -> torch.Tensor:
    """`decode_layer` for a batch of one, compiled apart with coordinate-descent tuning (below): its own
    code object keeps its compiled versions apart from the batched ones."""
    return decode_layer(block, x, keys, values, positions, visible)


compiled_layer = torch.compile(decode_layer)
# gpt-fast's setting: tuning the one-row reductions brings one stream near the bandwidth limit, once per
# start-up (Inductor caches it); the descent starts from Inductor's fastest candidate (docs/benchmarks.md).
ROW_OPTIONS = {"coordinate_descent_tuning": True, "max_autotune_pointwise": True}
compiled_row = torch.compile(decode_row, options=ROW_OPTIONS)


class CacheModel:
    """A GPTBigCode model over a static cache of `slots` rows; row i serves `jobs[i]`. With `speculate`, the
    verify step reads up to that many drafted tokens a row after its last one (`width` positions)."""

    def __init__(
        self, model, slots: int, max_context: int | None, compile: bool, tune_one_row: bool, speculate: int = 0
    ):
        self.model = model
        config = model.config
        embeddings = model.get_input_embeddings().weight
        self.device, self.dtype = embeddings.device, embeddings.dtype
        self.blocks = model.transformer.h
        self.heads, self.head_dim = config.n_head, config.n_embd // config.n_head
        self.slots = slots
        self.max_len = min(max_context or config.n_positions, config.n_positions)
        self.park = self.max_len  # the cache column that rows without a conversation write to; never read
        self.batch_buckets = [b for b in (2**i for i in range(12)) if b < slots] + [slots]
        self.context_buckets = [b for b in CONTEXT_BUCKETS if b < self.max_len] + [self.max_len]
        shape = (slots, self.max_len + 1, self.head_dim)
        # One tensor per layer: the compiled layer sees the same shapes and offsets for all of them.
        self.keys = [torch.zeros(shape, dtype=self.dtype, device=self.device) for _ in self.blocks]
        self.values = [torch.zeros(shape, dtype=self.dtype, device=self.device) for _ in self.blocks]
        # Per-row state, read and written by the decode step on the device.
        zeros = lambda dtype: torch.zeros(slots, dtype=dtype, device=self.device)  # noqa: E731
        self.tokens, self.positions = zeros(torch.long), zeros(torch.long).fill_(self.park)
        self.temperature, self.top_p, self.penalty = zeros(torch.float32), zeros(torch.float32), zeros(torch.float32)
        self.top_k, self.seed, self.draw = zeros(torch.long), zeros(torch.long), zeros(torch.long)
        self.logits = torch.zeros(slots, config.vocab_size, dtype=torch.float32, device=self.device)
        self.seen = torch.zeros(slots, config.vocab_size, dtype=torch.bool, device=self.device)
        self.rows = torch.arange(slots, device=self.device)
        self.state = [self.tokens, self.positions, self.temperature, self.top_p, self.penalty, self.top_k]
        self.state += [self.seed, self.draw, self.logits, self.seen]
        self.speculate, self.width = speculate, speculate + 1
        self.verify_buckets = [b for b in self.batch_buckets if b <= DRAFT_ROWS] if speculate else []
        wide = min(slots, DRAFT_ROWS) if speculate else 0
        # A verify step's input (column 0: how many of the row's drafts are real), its logits and its runs.
        self.proposal = torch.zeros(wide, self.width, dtype=torch.long, device=self.device)
        self.wide_logits = torch.zeros(wide, self.width, config.vocab_size, dtype=torch.float32, device=self.device)
        self.runs = torch.zeros(wide, self.width, dtype=torch.long, device=self.device)
        self.offsets = torch.arange(self.width, device=self.device)
        self.host_runs = torch.zeros(slots * self.width, dtype=torch.long, pin_memory=self.device.type == "cuda")
        self.jobs: list[Job | None] = [None] * slots
        self.layer = compiled_layer if compile else decode_layer
        self.row_layer = compiled_row if compile and tune_one_row else None
        # Each engine (its dtype, its weights' quantization) adds a few compiled versions of the shared layer.
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)

    def mlp(self, block, x: torch.Tensor) -> torch.Tensor:
        return block.mlp.c_proj(block.mlp.act(block.mlp.c_fc(block.ln_2(x))))

    def qkv(self, block, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        q, k, v = block.attn.c_attn(block.ln_1(x)).split((self.heads * self.head_dim, self.head_dim, self.head_dim), -1)
        return q.unflatten(-1, (self.heads, self.head_dim)), k, v

    def head(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.lm_head(self.model.transformer.ln_f(x)).float()

    def embed(self, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return self.model.transformer.wte(tokens) + self.model.transformer.wpe(positions)

    def decode(self, batch: int, length: int) -> None:
        """The step: rows [0, batch) take their last sampled token through the model and sample the next.
        Everything it reads and writes lives in the engine's tensors, so it can be replayed as a graph."""
        positions = self.positions[:batch]
        x = self.embed(self.tokens[:batch], positions.clamp(max=self.model.config.n_positions - 1))
        visible = torch.arange(length, device=self.device)[None, :] <= positions[:, None]
        layer = self.row_layer if batch == 1 and self.row_layer is not None else self.layer
        self.logits[:batch] = self.through(layer, x, positions, visible)
        self.choose(self.rows[:batch])
        self.positions[:batch] = torch.where(positions == self.park, self.park, positions + 1)

    def through(self, layer, x: torch.Tensor, positions: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
        """The new tokens `x` through every layer and the head: their logits."""
        for block, keys, values in zip(self.blocks, self.keys, self.values, strict=True):
            x = layer(block, x, keys, values, positions, visible)
        return self.head(x)

    def advance(self, batch: int, length: int, width: int) -> None:
        """The step of a bucket: the plain one, or (width > 1) the one that verifies drafts."""
        (self.decode if width == 1 else self.verify)(batch, length)

    def verify(self, batch: int, length: int) -> None:
        """The step with drafts: rows [0, batch) take their last token and their draft (`proposal`) through the
        model at once, keep the draft tokens it samples too and the token it samples after them (`runs`: each
        row's tokens, then -1). Positions past a row's draft write to the parked column, which no step reads;
        a rejected draft's cache entries lie past the row's position, where the next steps write before reading."""
        drafted, drafts, start = self.proposal[:batch, 0], self.proposal[:batch, 1:], self.positions[:batch]
        inside = (self.offsets <= drafted[:, None]) & (start != self.park)[:, None]
        positions = torch.where(inside, start[:, None] + self.offsets, self.park)
        x = self.embed(
            torch.cat([self.tokens[:batch, None], drafts], 1), positions.clamp(max=self.model.config.n_positions - 1)
        )
        visible = torch.arange(length, device=self.device) <= positions[..., None]
        self.wide_logits[:batch] = self.through(self.layer, x, positions, visible)
        seen = seen_before(self.seen[:batch], drafts)
        each = lambda values: values[:batch, None].expand(batch, self.width).flatten()  # noqa: E731
        targets = sample(
            self.wide_logits[:batch].flatten(0, 1),
            seen.flatten(0, 1),
            *map(each, (self.temperature, self.top_k, self.top_p, self.penalty, self.seed)),
            (self.draw[:batch, None] + self.offsets).flatten(),  # position j's draw, as the plain j-th step's
        ).view(batch, self.width)
        kept = accepted(targets, drafts, drafted)
        self.runs[:batch] = torch.where(self.offsets <= kept[:, None], targets, -1)
        self.tokens[:batch] = targets.gather(1, kept[:, None])[:, 0]
        rows = self.rows[:batch]
        self.seen[:batch] = seen[rows, kept]
        self.seen[rows, self.tokens[:batch]] = torch.ones_like(rows, dtype=torch.bool)
        self.draw[:batch] += kept + 1
        self.positions[:batch] = torch.where(start == self.park, self.park, start + kept + 1)

    def choose(self, rows: torch.Tensor) -> None:
        """Samples the next token of `rows` from their logits and notes it for the repetition penalty."""
        token = sample(
            self.logits[rows],
            self.seen[rows],
            self.temperature[rows],
            self.top_k[rows],
            self.top_p[rows],
            self.penalty[rows],
            self.seed[rows],
            self.draw[rows],
        )
        self.tokens[rows] = token
        self.seen[rows, token] = torch.ones_like(token, dtype=torch.bool)  # a CPU `True` cannot enter a graph
        self.draw[rows] += 1

    def attend(self, block, layer: int, q, k, v, rows: list[int], start: int) -> torch.Tensor:
        """Causal attention for prompt pieces of the same span [start, start + n) in `rows`; q [N * n, H, D]."""
        n = q.shape[0] // len(rows)
        q = q.view(len(rows), n, self.heads, self.head_dim).transpose(1, 2)
        if start == 0:  # the whole context is this piece: its own keys, plain causal
            k, v, mask = k.view(len(rows), 1, n, -1), v.view(len(rows), 1, n, -1), None
        else:  # earlier chunks are in the cache: queries at the end of a longer context
            index = torch.tensor(rows, device=self.device)
            k = self.keys[layer][index, : start + n][:, None]
            v = self.values[layer][index, : start + n][:, None]
            mask = causal_lower_right(n, start + n)
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=mask is None, scale=block.attn.scaling, enable_gqa=True
        )
        return out.transpose(1, 2).flatten(0, 1)

    def prefill(self, pieces: list[tuple[Job, int, int]]) -> list[Job]:
        """Runs prompt pieces (job, start, end) into their rows' caches as one packed batch; returns the jobs
        whose prompt is now complete, with their last position's logits in `self.logits`."""
        rows = [self.jobs.index(job) for job, _, _ in pieces]
        ids = torch.tensor([t for job, a, b in pieces for t in job.prompt[a:b]], device=self.device)
        positions = torch.cat([torch.arange(a, b, device=self.device) for _, a, b in pieces])
        owners = torch.cat(
            [torch.full((b - a,), row, device=self.device) for row, (_, a, b) in zip(rows, pieces, strict=True)]
        )
        # Consecutive pieces with the same span share one attention call.
        groups: list[tuple[int, int, list[int]]] = []  # (start, end, rows)
        for row, (_, a, b) in zip(rows, pieces, strict=True):
            if groups and groups[-1][:2] == (a, b):
                groups[-1][2].append(row)
            else:
                groups.append((a, b, [row]))
        x = self.embed(ids, positions)
        for layer, block in enumerate(self.blocks):
            q, k, v = self.qkv(block, x)
            self.keys[layer][owners, positions] = k
            self.values[layer][owners, positions] = v
            out, offset = [], 0
            for a, b, group in groups:
                span = (b - a) * len(group)
                part = slice(offset, offset + span)
                out.append(self.attend(block, layer, q[part], k[part], v[part], group, a))
                offset += span
            attended = out[0] if len(out) == 1 else torch.cat(out)  # one group: no copy of the whole batch
            x = x + block.attn.c_proj(attended.flatten(-2))
            x = x + self.mlp(block, x)
        ends = torch.tensor([b - a for _, a, b in pieces]).cumsum(0)  # each piece's end in the packed batch
        done = [i for i, (job, _, b) in enumerate(pieces) if b == len(job.prompt)]
        for job, _, b in pieces:
            job.prefilled = b
        if done:
            self.logits[[rows[i] for i in done]] = self.head(x[ends[done] - 1])
        return [pieces[i][0] for i in done]
