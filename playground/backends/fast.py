"""gpt-fast-style decoding for GPTBigCode (the StarCoder family), with continuous batching.

One static KV cache holds up to `slots` conversations. Requests join between decode steps, leave
when they stop, finish or are cancelled, and each has its own sampling parameters, seed and stream.

- Prefill: waiting prompts go through the model together, packed into one batch of at most
  `prefill_tokens` tokens per engine iteration while streams are decoding (a longer prompt is cut
  into chunks), with one decode step for the running streams between two chunks; four times as many
  when nothing is decoding. Attention is SDPA over the single K/V head
  (`enable_gqa`: flash on a GPU, no copies of K/V per head).
- Decode: one step decodes the rows [0, batch) where `batch` is the next power of two above the
  highest live row (live rows are kept at the front), attending to the first `length` cache
  positions (a context bucket). The step runs the model, then samples on the device (temperature,
  top-k, top-p, repetition penalty, a counter-based per-request seed): no Python loop over rows.
  Each transformer layer is one Inductor-compiled function shared by all layers (a batch of one
  has its own, with tuned matmul reductions); on a GPU the whole step is captured once per
  (batch, length) as a CUDA graph at start-up and replayed.
- The host reads the sampled ids once a step (one device-to-host copy) and hands them to each
  request's queue; detokenizing happens in the consumer's thread, not here.

Why our own loop rather than transformers' continuous batching: its `generate_batch` reached a few
hundred tok/s at 32 streams on one H200 where the memory bandwidth allows thousands, and its
static-cache `generate` serves one stream at a time (docs/benchmarks.md: the peers beside ours). This
file reads the model's own modules, so any GPTBigCode checkpoint (multi-query attention) works; anything
else uses plain generate.
"""

from __future__ import annotations

import queue
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch.nn.attention.bias import causal_lower_right

from playground.backends import BackendError, ChatRequest

CONTEXT_BUCKETS = (512, 1024, 2048, 4096, 8192)
IDLE_PREFILL = 4
MASK32 = 0xFFFFFFFF


def supports(model) -> bool:
    config = model.config
    single_device = len({p.device for p in model.parameters()}) == 1
    bitsandbytes = getattr(model, "is_quantized", False) or getattr(model, "quantization_method", None)
    return config.model_type == "gpt_bigcode" and config.multi_query and single_device and not bitsandbytes


@dataclass(eq=False)  # a job is itself: found in lists by identity
class Job:
    request: ChatRequest
    prompt: list[int]
    ids: queue.SimpleQueue = field(default_factory=queue.SimpleQueue)  # token ids as sampled, then None
    error: BaseException | None = None
    generated: int = 0
    prefilled: int = 0  # prompt tokens already in the cache
    logits: list[torch.Tensor] | None = None  # a list: each sampled position's logits are kept (checks)

    def put(self, token: int | None) -> None:
        self.ids.put(token)

    def __iter__(self):
        while (token := self.ids.get()) is not None:
            yield token

    @property
    def decoding(self) -> bool:
        return self.generated > 0

    @property
    def position(self) -> int:
        """Where the last sampled token goes in the cache."""
        return len(self.prompt) + self.generated - 1


@dataclass
class Stats:
    """Wall-clock seconds the engine thread spent, for the benchmark."""

    prefill_s: float = 0.0
    steps: int = 0
    step_s: float = 0.0


# -- sampling, on the device, every row at once ----------------------------------------------------


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


def linear(module: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """`module(x)`, with a plain weight's product written as a matmul: Inductor turns a one-row matmul
    into a reduction it tunes and fuses with the bias and activation (under coordinate-descent tuning),
    which reads the weights faster than cuBLAS's GEMV. Quantized weights keep their own kernels."""
    if type(module.weight) is not torch.nn.Parameter:
        return module(x)
    out = x @ module.weight.t()
    return out if module.bias is None else out + module.bias


def decode_layer(block, x, keys, values, positions, visible) -> torch.Tensor:
    """One GPTBigCode layer for one new token per row, over the layer's cache [slots, context, head_dim];
    `visible` [batch, length] says which cache positions each row sees. A plain function of its inputs,
    so one compiled version serves every layer and every engine with the same shapes and weight types."""
    batch, length = visible.shape
    attn = block.attn
    q, k, v = linear(attn.c_attn, block.ln_1(x)).split((attn.embed_dim, attn.head_dim, attn.head_dim), -1)
    rows = torch.arange(batch, device=x.device)
    keys[rows, positions] = k
    values[rows, positions] = v
    q = q.unflatten(-1, (attn.num_heads, attn.head_dim))
    scores = torch.einsum("bhd,bld->bhl", q, keys[:batch, :length]).float() * attn.scaling
    weights = scores.masked_fill(~visible[:, None, :], float("-inf")).softmax(-1).to(x.dtype)
    x = x + linear(attn.c_proj, torch.einsum("bhl,bld->bhd", weights, values[:batch, :length]).flatten(-2))
    return x + linear(block.mlp.c_proj, block.mlp.act(linear(block.mlp.c_fc, block.ln_2(x))))


def decode_row(block, x, keys, values, positions, visible) -> torch.Tensor:
    """`decode_layer` for a batch of one, compiled apart with coordinate-descent tuning (below): its own
    code object keeps its compiled versions apart from the batched ones."""
    return decode_layer(block, x, keys, values, positions, visible)


compiled_layer = torch.compile(decode_layer)
# gpt-fast's setting: tuning the one-row matmuls' reductions is what brings one stream near the bandwidth
# limit; it costs start-up time once (Inductor keeps the tuned configs in its disk cache). The descent
# starts from the fastest of Inductor's candidate configs (its one guess among them), not from the guess
# alone: from the guess, the int8 MLP up-projection stopped at 64 us a layer, from the fastest candidate
# at 55 (`python -m bench.rows`, H100).
ROW_OPTIONS = {"coordinate_descent_tuning": True, "max_autotune_pointwise": True}
compiled_row = torch.compile(decode_row, options=ROW_OPTIONS)


class FastEngine:
    def __init__(
        self,
        model,
        stop_ids: list[int],
        slots: int = 8,
        compile: bool | None = None,
        max_context: int | None = None,
        prefill_tokens: int = 4096,
        tune_one_row: bool = True,
        on_bucket: Callable[[int, int, float], None] | None = None,
    ):
        """`on_bucket(batch, context, seconds)` hears of each bucket as start-up makes it ready: a first start
        can compile for minutes, and the next bucket's wait is all a caller would otherwise see."""
        self.model, self.stop_ids, self.on_bucket = model, stop_ids, on_bucket
        config = model.config
        embeddings = model.get_input_embeddings().weight
        self.device, self.dtype = embeddings.device, embeddings.dtype
        self.blocks = model.transformer.h
        self.heads, self.head_dim = config.n_head, config.n_embd // config.n_head
        self.slots, self.prefill_tokens = slots, prefill_tokens
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
        on_gpu = self.device.type == "cuda"
        self.host_tokens = torch.zeros(slots, dtype=torch.long, pin_memory=on_gpu)
        self.jobs: list[Job | None] = [None] * slots
        self.order: list[Job] = []  # jobs still prefilling, first come first served
        self.waiting: queue.Queue[Job | None] = queue.Queue()  # None: close
        self.closing = False
        self.stats, self.warm_up_s = Stats(), 0.0
        compile = on_gpu if compile is None else compile
        self.layer = compiled_layer if compile else decode_layer
        self.row_layer = compiled_row if compile and tune_one_row else None
        # Each engine (its dtype, its weights' quantization) adds a few compiled versions of the shared layer.
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
        self.graphs: dict[tuple[int, int], torch.cuda.CUDAGraph] | None = {} if on_gpu and compile else None
        self.late_captures = 0  # graphs captured after start-up: the benchmark fails on any
        # CUDA graphs are captured per thread: warm up in the thread that will replay them.
        started: queue.Queue[BaseException | None] = queue.Queue()
        warm = compile or on_gpu
        self.thread = threading.Thread(target=self.loop, args=(warm, started), name="starchat-batch", daemon=True)
        self.thread.start()
        if failure := started.get():
            raise failure

    # -- the model, over our cache ---------------------------------------------------------------

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
        for block, keys, values in zip(self.blocks, self.keys, self.values, strict=True):
            x = layer(block, x, keys, values, positions, visible)
        self.logits[:batch] = self.head(x)
        self.choose(self.rows[:batch])
        self.positions[:batch] = torch.where(positions == self.park, self.park, positions + 1)

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

    # -- the scheduler ---------------------------------------------------------------------------

    def submit(self, job: Job) -> None:
        if self.closing:
            raise BackendError("The engine is closed.")
        self.waiting.put(job)

    def close(self) -> None:
        """Ends the engine's thread once the requests already in it are done, so that its cache, its graphs
        and the model they hold can be freed (a benchmark that builds one engine after another needs it)."""
        self.closing = True
        self.waiting.put(None)
        self.thread.join()

    def finish(self, row: int, reason: str, error: BaseException | None = None) -> None:
        job = self.jobs[row]
        self.jobs[row] = None
        if job in self.order:
            self.order.remove(job)
        self.positions[row] = self.park
        job.error = error
        job.request.outcome.tokens, job.request.outcome.finish = job.generated, reason
        job.put(None)

    def admit(self, block: bool) -> None:
        while None in self.jobs:
            try:
                job = self.waiting.get(block=block)
            except queue.Empty:
                return
            block = False
            if job is None:  # close(): what came before it is in
                return
            if job.request.cancel.is_set():
                job.request.outcome.finish = "cancelled"
                job.put(None)
                continue
            self.jobs[self.jobs.index(None)] = job
            self.order.append(job)

    def start(self, jobs: list[Job]) -> None:
        """Rows whose prompt is in the cache get their sampling values and first token."""
        rows = [self.jobs.index(job) for job in jobs]
        index = torch.tensor(rows, device=self.device)
        values = lambda name: torch.tensor([getattr(j.request.params, name) for j in jobs], device=self.device)  # noqa: E731
        self.temperature[index] = values("temperature").float()
        self.top_k[index], self.top_p[index] = values("top_k"), values("top_p").float()
        self.penalty[index] = values("repetition_penalty").float()
        seeds = [j.request.params.seed if j.request.params.seed >= 0 else secrets.randbelow(2**31) for j in jobs]
        self.seed[index] = torch.tensor(seeds, device=self.device)
        self.draw[index] = 0
        self.positions[index] = torch.tensor([len(j.prompt) for j in jobs], device=self.device)
        self.seen[index] = False
        owners = torch.tensor([row for row, j in zip(rows, jobs, strict=True) for _ in j.prompt], device=self.device)
        self.seen[owners, torch.tensor([t for j in jobs for t in j.prompt], device=self.device)] = True
        self.choose(index)
        for job in jobs:
            self.order.remove(job)
        self.deliver(rows, self.tokens[: max(rows) + 1])

    def deliver(self, rows: list[int], tokens: torch.Tensor) -> None:
        """The sampled ids (`tokens`: one per row from row 0) reach the host in one transfer, then each
        request's queue."""
        host = self.host_tokens[: len(tokens)]
        host.copy_(tokens, non_blocking=True)
        if self.device.type == "cuda":
            torch.cuda.current_stream(self.device).synchronize()
        sampled = host.tolist()
        for row in rows:
            job, token = self.jobs[row], sampled[row]
            job.generated += 1
            if job.logits is not None:
                job.logits.append(self.logits[row].to("cpu", copy=True))
            job.put(token)
            if token in self.stop_ids:
                self.finish(row, "stop")
            elif job.generated >= job.request.params.max_new_tokens or job.position + 1 >= self.max_len:
                self.finish(row, "length")

    def compact(self) -> None:
        """Moves decoding rows down into free rows, so a step's batch covers only live conversations."""
        while True:
            decoding = [row for row, job in enumerate(self.jobs) if job and job.decoding]
            free = [row for row, job in enumerate(self.jobs) if job is None]
            if not decoding or not free or free[0] > decoding[-1]:
                return
            source, target = decoding[-1], free[0]
            used = self.jobs[source].position
            for cache in (*self.keys, *self.values):
                cache[target, :used] = cache[source, :used]
            for tensor in self.state:
                tensor[target] = tensor[source]
            self.positions[source] = self.park
            self.jobs[target], self.jobs[source] = self.jobs[source], None

    def prefill_some(self) -> None:
        """One packed batch of waiting prompt tokens, first come first served: at most `prefill_tokens`
        while streams are decoding (chunks keep them moving), IDLE_PREFILL times that when none are (there
        is nobody to keep waiting, and people who arrive together get their first tokens together)."""
        decoding = any(job and job.decoding for job in self.jobs)
        budget, pieces = self.prefill_tokens * (1 if decoding else IDLE_PREFILL), []
        for job in self.order:
            if budget == 0:
                break
            take = min(len(job.prompt) - job.prefilled, budget)
            pieces.append((job, job.prefilled, job.prefilled + take))
            budget -= take
        if pieces:
            start = time.perf_counter()
            if done := self.prefill(pieces):
                self.start(done)
            self.stats.prefill_s += time.perf_counter() - start

    def step(self) -> None:
        for row, job in enumerate(self.jobs):
            if job and job.request.cancel.is_set():
                self.finish(row, "cancelled")
        self.compact()
        live = [row for row, job in enumerate(self.jobs) if job and job.decoding]
        if not live:
            return
        start = time.perf_counter()
        batch = next(b for b in self.batch_buckets if b > live[-1])
        length = next(b for b in self.context_buckets if b > max(self.jobs[row].position for row in live))
        self.run(batch, length)
        self.deliver(live, self.tokens[:batch])
        self.stats.steps += 1
        self.stats.step_s += time.perf_counter() - start

    def run(self, batch: int, length: int) -> None:
        if self.graphs is None:
            self.decode(batch, length)
            return
        if (batch, length) not in self.graphs:
            self.late_captures += 1
            self.capture(batch, length)
        self.graphs[batch, length].replay()

    def capture(self, batch: int, length: int) -> None:
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(2):  # compile and autotune outside the capture
                self.decode(batch, length)
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            self.decode(batch, length)
        self.graphs[batch, length] = graph

    @torch.inference_mode()
    def warm_up(self) -> None:
        """Compiles the layer and captures the step for every (batch, context) bucket now, not at someone's
        first message. Rows are all parked meanwhile, so only the unread cache column is written."""
        start = time.perf_counter()
        if self.graphs is not None:
            self.pool = torch.cuda.graph_pool_handle()
        for batch in self.batch_buckets:
            for length in self.context_buckets:
                began = time.perf_counter()
                if self.graphs is None:
                    self.decode(batch, length)
                else:
                    self.capture(batch, length)
                if self.on_bucket:
                    self.on_bucket(batch, length, time.perf_counter() - began)
        self.warm_prefill()
        self.warm_up_s = time.perf_counter() - start

    def warm_prefill(self) -> None:
        """A short prompt through both prefill paths (a whole prompt, then a chunk after cached tokens), so the
        kernels they use are loaded now: on a GPU each kernel's first call loads its code, and the first
        person's message would wait for all of them. Row 0's cache is written before any request reads it."""
        job = Job(ChatRequest([]), [0] * 16)
        self.jobs[0] = job
        self.prefill([(job, 0, 8)])
        self.prefill([(job, 8, 16)])
        self.jobs[0] = None

    def loop(self, warm_up: bool, started: queue.Queue) -> None:
        try:
            if warm_up:
                self.warm_up()
        except Exception as exc:
            started.put(exc)
            return
        started.put(None)
        while not (self.closing and self.waiting.empty() and not any(self.jobs)):
            try:
                self.admit(block=not any(self.jobs))
                with torch.inference_mode():
                    self.prefill_some()
                    self.step()
            except Exception as exc:  # every job in flight gets the error; the engine goes on serving
                if isinstance(exc, torch.cuda.OutOfMemoryError):
                    torch.cuda.empty_cache()
                    exc = BackendError("The GPU ran out of memory; its memory was freed. Try a shorter conversation.")
                for row, job in enumerate(self.jobs):
                    if job:
                        self.finish(row, "error", exc)

    def busy(self) -> int:
        return sum(job is not None for job in self.jobs) + self.waiting.qsize()
