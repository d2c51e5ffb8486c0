"""gpt-fast-style decoding for GPTBigCode (the StarCoder family), with continuous batching.

One static KV cache holds up to `slots` conversations. Requests join between decode steps (their
prompt is prefilled into a free slot), leave when they stop, finish or are cancelled, and each
has its own sampling parameters, seed and stream. The decode step has fixed shapes, so on a GPU
it is compiled once per context bucket with CUDA graphs (`mode="reduce-overhead"`) and warmed
up at start-up; a step then costs one read of the weights plus the live part of the cache.

Why our own loop rather than transformers' continuous batching: on one H200 its `generate_batch`
gave 333 tok/s at 32 streams (ANCHORS.md) where the memory bandwidth allows thousands, and its
static-cache `generate` serves one stream at a time. This file reads the model's own modules,
so any GPTBigCode checkpoint (multi-query attention) works; anything else uses plain generate.
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from playground.backends import BackendError, ChatRequest

BUCKETS = (512, 1024, 2048, 4096, 8192)


def supports(model) -> bool:
    config = model.config
    single_device = len({p.device for p in model.parameters()}) == 1
    quantized = getattr(model, "is_quantized", False) or getattr(model, "quantization_method", None)
    return config.model_type == "gpt_bigcode" and config.multi_query and single_device and not quantized


@dataclass
class Job:
    request: ChatRequest
    prompt: list[int]
    streamer: object  # TextIteratorStreamer-like: put(token ids), end()
    error: BaseException | None = None
    generated: int = 0
    generator: torch.Generator | None = None


class FastEngine:
    def __init__(
        self,
        model,
        stop_ids: list[int],
        slots: int = 8,
        compile: bool | None = None,
        max_context: int | None = None,
    ):
        self.model, self.stop_ids = model, stop_ids
        config = model.config
        self.device = model.get_input_embeddings().weight.device
        self.dtype = model.get_input_embeddings().weight.dtype
        self.blocks = model.transformer.h
        self.heads, self.head_dim = config.n_head, config.n_embd // config.n_head
        self.slots = slots
        self.max_len = min(max_context or config.n_positions, config.n_positions)
        self.buckets = [b for b in BUCKETS if b < self.max_len] + [self.max_len]
        shape = (len(self.blocks), slots, self.max_len, self.head_dim)
        self.keys = torch.zeros(shape, dtype=self.dtype, device=self.device)
        self.values = torch.zeros(shape, dtype=self.dtype, device=self.device)
        self.positions = torch.zeros(slots, dtype=torch.long, device=self.device)  # where each slot writes next
        self.logits = torch.zeros(slots, config.vocab_size, dtype=torch.float32, device=self.device)
        self.seen = torch.zeros(slots, config.vocab_size, dtype=torch.bool, device=self.device)
        self.jobs: list[Job | None] = [None] * slots
        self.waiting: queue.Queue[Job] = queue.Queue()
        compile = self.device.type == "cuda" if compile is None else compile
        self.decode_step = (
            torch.compile(self.decode, mode="reduce-overhead", fullgraph=True) if compile else self.decode
        )
        # CUDA graphs are captured per thread: warm up in the thread that will replay them.
        started: queue.Queue[BaseException | None] = queue.Queue()
        self.thread = threading.Thread(target=self.loop, args=(compile, started), name="starchat-batch", daemon=True)
        self.thread.start()
        if failure := started.get():
            raise failure

    # -- the model, over our cache ---------------------------------------------------------------

    def mlp(self, block, x: torch.Tensor) -> torch.Tensor:
        return block.mlp.c_proj(block.mlp.act(block.mlp.c_fc(block.ln_2(x))))

    def qkv(self, block, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        q, k, v = block.attn.c_attn(block.ln_1(x)).split((self.heads * self.head_dim, self.head_dim, self.head_dim), -1)
        return q.unflatten(-1, (self.heads, self.head_dim)), k, v

    @torch.inference_mode()
    def prefill(self, slot: int, ids: list[int]) -> torch.Tensor:
        """Runs a prompt into `slot`'s cache; returns the logits for its next token."""
        tokens = torch.tensor(ids, device=self.device)
        x = self.model.transformer.wte(tokens) + self.model.transformer.wpe(torch.arange(len(ids), device=self.device))
        for layer, block in enumerate(self.blocks):
            q, k, v = self.qkv(block, x)
            self.keys[layer, slot, : len(ids)] = k
            self.values[layer, slot, : len(ids)] = v
            heads = q.transpose(0, 1)  # [H, T, D]
            out = F.scaled_dot_product_attention(
                heads,
                k.expand(self.heads, -1, -1),
                v.expand(self.heads, -1, -1),
                is_causal=True,
                scale=block.attn.scaling,
            )
            x = x + block.attn.c_proj(out.transpose(0, 1).flatten(-2))
            x = x + self.mlp(block, x)
        return self.model.lm_head(self.model.transformer.ln_f(x[-1])).float()

    def decode(self, tokens: torch.Tensor, positions: torch.Tensor, length: int) -> torch.Tensor:
        """One token for every slot at once; attention reads the first `length` cache positions."""
        slots = torch.arange(self.slots, device=self.device)
        x = self.model.transformer.wte(tokens) + self.model.transformer.wpe(positions)
        visible = torch.arange(length, device=self.device)[None, :] <= positions[:, None]  # [S, L]
        for layer, block in enumerate(self.blocks):
            q, k, v = self.qkv(block, x)
            self.keys[layer, slots, positions] = k
            self.values[layer, slots, positions] = v
            keys, values = self.keys[layer, :, :length], self.values[layer, :, :length]
            scores = torch.einsum("shd,sld->shl", q, keys).float() * block.attn.scaling
            weights = scores.masked_fill(~visible[:, None, :], float("-inf")).softmax(-1).to(self.dtype)
            x = x + block.attn.c_proj(torch.einsum("shl,sld->shd", weights, values).flatten(-2))
            x = x + self.mlp(block, x)
        return self.model.lm_head(self.model.transformer.ln_f(x)).float()

    @torch.inference_mode()
    def warm_up(self) -> None:
        """Compiles and captures the decode step for every bucket now, not at someone's first message."""
        tokens = torch.zeros(self.slots, dtype=torch.long, device=self.device)
        for length in self.buckets:
            for _ in range(3):  # compile, record the graph, replay
                self.decode_step(tokens, self.positions, length)
        self.keys.zero_()
        self.values.zero_()

    # -- sampling, per slot ----------------------------------------------------------------------

    def sample(self, rows: list[int]) -> list[int]:
        index = torch.tensor(rows, device=self.device)
        logits = self.logits[index]
        params = [self.jobs[r].request.params for r in rows]
        column = lambda values: torch.tensor(values, device=self.device, dtype=torch.float32)[:, None]  # noqa: E731
        penalty = column([p.repetition_penalty for p in params])
        seen = self.seen[index]
        logits = torch.where(seen, torch.where(logits > 0, logits / penalty, logits * penalty), logits)
        greedy = logits.argmax(-1)
        if all(p.temperature == 0 for p in params):
            return greedy.tolist()
        logits = logits / column([p.temperature or 1.0 for p in params])
        ranked, order = logits.sort(-1, descending=True)
        k = torch.tensor([p.top_k or logits.shape[-1] for p in params], device=self.device)
        cutoff = ranked.gather(-1, (k.clamp(max=logits.shape[-1]) - 1)[:, None])
        probs = ranked.softmax(-1)
        outside_p = probs.cumsum(-1) - probs > column([p.top_p for p in params])
        ranked = ranked.masked_fill(outside_p | (ranked < cutoff), float("-inf"))
        probs = torch.zeros_like(logits).scatter(-1, order, ranked.softmax(-1))
        # The exponential race (argmax of p / Exp(1)) samples from p; each slot draws with its own seed.
        noise = torch.stack([torch.empty_like(probs[0]).exponential_(generator=self.jobs[r].generator) for r in rows])
        sampled = (probs / noise).argmax(-1)
        use_greedy = torch.tensor([p.temperature == 0 for p in params], device=self.device)
        return torch.where(use_greedy, greedy, sampled).tolist()

    # -- the scheduler ---------------------------------------------------------------------------

    def submit(self, job: Job) -> None:
        self.waiting.put(job)

    def finish(self, slot: int, reason: str, error: BaseException | None = None) -> None:
        job = self.jobs[slot]
        self.jobs[slot] = None
        job.error = error
        job.request.outcome.tokens, job.request.outcome.finish = job.generated, reason
        job.streamer.end()

    def admit(self, block: bool) -> None:
        while None in self.jobs:
            try:
                job = self.waiting.get(block=block)
            except queue.Empty:
                return
            block = False
            if job.request.cancel.is_set():
                job.request.outcome.finish = "cancelled"
                job.streamer.end()
                continue
            slot = self.jobs.index(None)
            self.jobs[slot] = job
            seed = job.request.params.seed
            job.generator = torch.Generator(self.device)
            job.generator.manual_seed(seed if seed >= 0 else int(torch.randint(2**31, ())))
            self.seen[slot] = False
            self.seen[slot, job.prompt] = True
            self.logits[slot] = self.prefill(slot, job.prompt)
            self.positions[slot] = len(job.prompt)

    def step(self) -> None:
        for slot, job in enumerate(self.jobs):
            if job and job.request.cancel.is_set():
                self.finish(slot, "cancelled")
        rows = [slot for slot, job in enumerate(self.jobs) if job]
        if not rows:
            return
        sampled = self.sample(rows)
        positions = self.positions.tolist()  # one device sync a step, not one a slot
        tokens = [0] * self.slots
        for slot, token in zip(rows, sampled, strict=True):
            job = self.jobs[slot]
            job.generated += 1
            job.streamer.put(torch.tensor([token]))
            tokens[slot] = token
            if token in self.stop_ids:
                self.finish(slot, "stop")
            elif job.generated >= job.request.params.max_new_tokens or positions[slot] + 1 >= self.max_len:
                self.finish(slot, "length")
        self.seen[torch.tensor(rows, device=self.device), torch.tensor(sampled, device=self.device)] = True
        live = [slot for slot in rows if self.jobs[slot]]
        if live:
            length = next(b for b in self.buckets if b > max(positions[slot] for slot in live))
            logits = self.decode_step(torch.tensor(tokens, device=self.device), self.positions, length)
            with torch.inference_mode():
                self.logits[live] = logits[live]
                self.positions[live] += 1

    def loop(self, warm_up: bool, started: queue.Queue) -> None:
        try:
            if warm_up:
                self.warm_up()
        except Exception as exc:
            started.put(exc)
            return
        started.put(None)
        while True:
            try:
                self.admit(block=not any(self.jobs))
                with torch.inference_mode():
                    self.step()
            except Exception as exc:  # every job in flight gets the error; the engine goes on serving
                if isinstance(exc, torch.cuda.OutOfMemoryError):
                    torch.cuda.empty_cache()
                    exc = BackendError("The GPU ran out of memory; its memory was freed. Try a shorter conversation.")
                for slot, job in enumerate(self.jobs):
                    if job:
                        self.finish(slot, "error", exc)

    def busy(self) -> int:
        return sum(job is not None for job in self.jobs) + self.waiting.qsize()
