"""The scheduler: requests join the cache's rows between decode steps and leave when they stop, finish or
are cancelled; prompts are prefilled in packed chunks while other rows decode; with `speculate`, each step
first drafts tokens for its rows from their own conversations.

The engine thread owns the cache; each request gets its sampled token ids through its own queue.
"""

from __future__ import annotations

import queue
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from playground.backends import BackendError, ChatRequest
from playground.backends.fast.graphs import Graphs
from playground.backends.fast.speculation import Lookup

IDLE_PREFILL = 4


@dataclass(eq=False)  # a job is itself: found in lists by identity
class Job:
    request: ChatRequest
    prompt: list[int]
    ids: queue.SimpleQueue = field(default_factory=queue.SimpleQueue)  # token ids as sampled, then None
    error: BaseException | None = None
    finish: str = ""  # why it left the engine, as Outcome.finish says
    generated: int = 0
    prefilled: int = 0  # prompt tokens already in the cache
    logits: list[torch.Tensor] | None = None  # a list: each sampled position's logits are kept (checks)
    lookup: Lookup | None = None  # its prompt and reply, where drafts are found (with speculation)

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
    """Wall-clock seconds the engine thread spent and what its steps did, for the benchmark."""

    prefill_s: float = 0.0
    steps: int = 0
    step_s: float = 0.0
    row_steps: int = 0  # a step's live rows, summed: each gets one token from a step, plus its kept drafts
    drafted: int = 0  # draft tokens the steps verified
    accepted: int = 0  # of those, the ones kept


class FastEngine(Graphs):
    def __init__(
        self,
        model,
        stop_ids: list[int],
        slots: int = 8,
        compile: bool | None = None,
        max_context: int | None = None,
        prefill_tokens: int = 4096,
        tune_one_row: bool = True,
        on_bucket: Callable[[int, int, float, int], None] | None = None,
        speculate: int = 0,
    ):
        """`on_bucket(batch, context, seconds, width)` hears of each bucket as start-up makes it ready: a first
        start can compile for minutes, and the next bucket's wait is all a caller would otherwise see.
        `speculate`: draft tokens a row may verify in one step (0: none); lowered later (a benchmark's plain
        rows), it takes effect at the next step, and requests that started without drafts keep none."""
        on_gpu = model.get_input_embeddings().weight.device.type == "cuda"
        compile = on_gpu if compile is None else compile
        super().__init__(model, slots, max_context, compile, tune_one_row, on_bucket, speculate)
        self.stop_ids, self.prefill_tokens = stop_ids, prefill_tokens
        self.order: list[Job] = []  # jobs still prefilling, first come first served
        self.waiting: queue.Queue[Job | None] = queue.Queue()  # None: close
        self.closing = False
        self.stats, self.warm_up_s = Stats(), 0.0
        # CUDA graphs are captured per thread: warm up in the thread that will replay them.
        started: queue.Queue[BaseException | None] = queue.Queue()
        warm = compile or on_gpu
        self.thread = threading.Thread(target=self.loop, args=(warm, started), name="starchat-batch", daemon=True)
        self.thread.start()
        if failure := started.get():
            raise failure

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
        job.error, job.finish = error, reason
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
                job.finish = "cancelled"
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
            job.lookup = Lookup(job.prompt) if self.speculate else None
        last = max(rows) + 1
        self.deliver(rows, self.tokens[:last, None], self.logits[:last, None])

    def deliver(self, rows: list[int], runs: torch.Tensor, logits: torch.Tensor) -> None:
        """The sampled ids (`runs` [batch, width] from row 0: each row's tokens, then -1; `logits` each
        token's) reach the host in one transfer, then each request's queue, up to a stop token or the limit."""
        host = self.host_runs[: runs.numel()].view_as(runs)
        host.copy_(runs, non_blocking=True)
        if self.device.type == "cuda":
            torch.cuda.current_stream(self.device).synchronize()
        sampled = host.tolist()
        for row in rows:
            job, run = self.jobs[row], [token for token in sampled[row] if token >= 0]
            self.stats.accepted += len(run) - 1
            for i, token in enumerate(run):
                job.generated += 1
                if job.lookup:
                    job.lookup.add(token)
                if job.logits is not None:
                    job.logits.append(logits[row, i].to("cpu", copy=True))
                job.put(token)
                if token in self.stop_ids:
                    self.finish(row, "stop")
                elif job.generated >= job.request.params.max_new_tokens or job.position + 1 >= self.max_len:
                    self.finish(row, "length")
                if self.jobs[row] is not job:
                    break

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
        drafted = self.propose(live, batch)
        reach = max(self.jobs[row].position + n for row, n in zip(live, drafted, strict=True))
        length = next(b for b in self.context_buckets if b > reach)
        # Counted before the step's tokens go out: a caller who waits for the last one then reads them all.
        self.stats.steps += 1
        self.stats.row_steps += len(live)
        self.stats.drafted += sum(drafted)
        if any(drafted):
            self.run(batch, length, self.width)
            self.deliver(live, self.runs[:batch], self.wide_logits[:batch])
        else:
            self.run(batch, length)
            self.deliver(live, self.tokens[:batch, None], self.logits[:batch, None])
        self.stats.step_s += time.perf_counter() - start

    def propose(self, live: list[int], batch: int) -> list[int]:
        """Drafts each live row's next tokens into `proposal` (one copy to the device) and returns their
        lengths: none where the batch is past the verify buckets, nor past a reply's token limit or the cache."""
        if not self.speculate or batch not in self.verify_buckets:
            return [0] * len(live)
        table = [[0] * self.width for _ in range(batch)]
        for row in live:
            job = self.jobs[row]
            room = min(job.request.params.max_new_tokens - job.generated, self.max_len - 1 - job.position) - 1
            draft = job.lookup.draft(min(self.speculate, room)) if job.lookup else []
            table[row][: len(draft) + 1] = [len(draft), *draft]
        if any(table[row][0] for row in live):
            self.proposal[:batch] = torch.tensor(table, device=self.device)
        return [table[row][0] for row in live]

    @torch.inference_mode()
    def warm_up(self) -> None:
        """Readies every step's bucket and both prefill paths now, not at someone's first message."""
        start = time.perf_counter()
        self.warm_buckets()
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
