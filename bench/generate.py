"""Decoding a StarCoderPlus-shaped model with random weights: the seed's way, ours and a peer, in one run.

    python -m bench.generate            # one GPU: bf16 (seed's way, ours, transformers' static cache)
    python -m bench.generate --tiny     # a tiny model on the CPU, for the test suite

The seed's way is the card's `pipeline()`: `generate()` eager with a dynamic cache. Ours is the
playground's fast engine (static cache, continuous batching, a CUDA graph per bucket on a GPU),
sized for the most streams asked for. The peer is transformers' own static-cache `generate`, which
compiles itself on a GPU. For each stream count it prints time to first token (the first and the
last stream's), decode tok/s (all streams and per stream), peak memory, the weight bandwidth
achieved as a share of a device-to-device copy measured in the same run, and for ours the step's
time, the graph's time alone, the loop's overhead per step and the prefill time. A teacher-forced
check compares the engine's logits with a plain forward at two prompt lengths, and once more with
drafts verified. Speculation's rows (bench.speculation's workloads: edit, echo, no match) run each
workload through the same engine without drafts and with them, at each of `--spec-streams`: tok/s,
the share of drafted tokens kept, tokens per row per step. The engine is made with `--speculate` and
drafts only in those rows. Once the engine is warm, any compilation, skipped CUDA graph or late
capture during the timed runs fails the run.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time

import torch
from transformers import GPTBigCodeForCausalLM

from bench.common import (
    compile_counters,
    device_name,
    emit,
    log_bucket,
    model_config,
    peak_memory_gib,
    reset_peak_memory,
    synchronize,
    teacher_forced,
    timed,
    top_kernels,
)
from bench.speculation import longest_prompt, workloads
from playground.backends import ChatRequest, SamplingParams
from playground.backends.fast import FastEngine, Job

SAMPLING = {"do_sample": True, "temperature": 0.2, "top_k": 50, "top_p": 0.95}
MARGIN = 0.1  # plain top-1 must lead the second by this many standard deviations for a position to count


class Clock:
    """A streamer for generate() that only notes when tokens arrive (the prompt's put, then one per step)."""

    def __init__(self):
        self.times: list[float] = []

    def put(self, value: torch.Tensor) -> None:
        self.times.append(time.perf_counter())

    def end(self) -> None:
        pass


class TimedJob(Job):
    """A job that notes when each of its tokens reaches the host."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.times: list[float] = []
        self.tokens: list[int] = []
        self.finished = threading.Event()

    def put(self, token: int | None) -> None:
        if token is None:
            self.finished.set()
        else:
            self.times.append(time.perf_counter())
            self.tokens.append(token)


def copy_bandwidth(device: torch.device) -> float:
    """Bytes/s of a large device-to-device copy (read + write), the practical limit for decoding."""
    size = 2**30 if device.type == "cuda" else 2**27
    source = torch.empty(size, dtype=torch.uint8, device=device)
    target = torch.empty_like(source)
    target.copy_(source)
    seconds = min(timed(device, lambda: target.copy_(source)) for _ in range(5))
    return 2 * size / seconds


def random_model(tiny: bool, device: torch.device, scale: float | None = None) -> GPTBigCodeForCausalLM:
    """Random weights. The tiny fp32 model gets ten times the usual scale: at 0.02 its tied embedding decides
    every top-1 and a broken cache goes unseen by the teacher-forced check. The full bf16 model keeps 0.02:
    at 0.2 its 40 layers amplify bf16 rounding until two correct paths disagree (seen on an H100)."""
    torch.manual_seed(0)
    config = model_config(tiny)
    config.initializer_range = scale or (0.2 if tiny else 0.02)
    with torch.device(device):
        model = GPTBigCodeForCausalLM(config)
    return model.to(torch.bfloat16 if device.type == "cuda" else torch.float32).eval()


def weight_bytes(model) -> int:
    """Bytes of weights read per decode step (quantized tensors count their packed data and scales)."""
    return sum(t.numel() * t.element_size() for p in model.parameters() for t in flat_tensors(p))


def flat_tensors(tensor: torch.Tensor) -> list[torch.Tensor]:
    if hasattr(tensor, "__tensor_flatten__") and type(tensor) not in (torch.Tensor, torch.nn.Parameter):
        names, _ = tensor.__tensor_flatten__()
        return [t for name in names for t in flat_tensors(getattr(tensor, name))]
    return [tensor]


def seed_way(model, prompts: torch.Tensor, new: int, **options) -> dict:
    clock = Clock()
    start = time.perf_counter()
    with torch.inference_mode():
        model.generate(
            prompts,
            attention_mask=torch.ones_like(prompts),
            max_new_tokens=new,
            min_new_tokens=new,
            streamer=clock,
            pad_token_id=0,
            **SAMPLING,
            **options,
        )
    synchronize(prompts.device)
    steps = clock.times[1:]  # the first put is the prompt
    ttft = (steps[0] - start) * 1000
    return {"ttft_ms": ttft, "ttft_last_ms": ttft, "decode_s": steps[-1] - steps[0], "tokens": len(steps) - 1}


def peer_way(model, prompts: torch.Tensor, new: int) -> dict:
    """transformers' static cache: the first call compiles (on a GPU), the second is timed."""
    start = time.perf_counter()
    seed_way(model, prompts, new, cache_implementation="static")
    warm_up = time.perf_counter() - start
    return {**seed_way(model, prompts, new, cache_implementation="static"), "warm_up_s": warm_up}


def our_way(engine: FastEngine, prompts: torch.Tensor, new: int, sampling: dict | None = None) -> dict:
    sampling = sampling or {"temperature": 0.2, "top_k": 50, "top_p": 0.95, "repetition_penalty": 1.0}
    params = SamplingParams(max_new_tokens=new, **sampling)
    jobs = [TimedJob(ChatRequest([], params), row.tolist()) for row in prompts]
    engine.stats.__init__()
    start = time.perf_counter()
    for job in jobs:
        engine.submit(job)
    for job in jobs:
        job.finished.wait()
    first = min(job.times[0] for job in jobs)
    last = max(job.times[-1] for job in jobs)
    stats = engine.stats
    return {
        "ttft_ms": (jobs[0].times[0] - start) * 1000,
        "ttft_last_ms": (max(job.times[0] for job in jobs) - start) * 1000,
        "decode_s": last - first,
        "tokens": new - 1,
        "step_ms": stats.step_s / max(stats.steps, 1) * 1000,
        "prefill_ms": stats.prefill_s * 1000,
    }


def bare_step(engine: FastEngine, batch: int, length: int):
    """The decode step without the loop: its CUDA graph's replay on a GPU, the (compiled) step on the CPU.
    On an idle engine every row is parked and only the unread cache column is written."""
    if engine.graphs is not None:
        return engine.graphs[batch, length, 1].replay
    return lambda: engine.decode(batch, length)


def step_alone_ms(engine: FastEngine, batch: int, length: int) -> float:
    step = bare_step(engine, batch, length)
    with torch.inference_mode():
        step()
        return statistics.median(timed(engine.device, step) for _ in range(20)) * 1000


def one_row_untuned(model, prompts: torch.Tensor, new: int, bandwidth: float, context: int) -> dict:
    """One stream through a 1-slot engine whose layer is not tuned for a batch of one: what the tuning buys."""
    engine = FastEngine(
        model, stop_ids=[], slots=1, compile=True, max_context=context, tune_one_row=False, on_bucket=log_bucket
    )
    result = ours(
        engine, model, prompts, new, bandwidth, "ours: fast engine, one row untuned", warm_up_s=engine.warm_up_s
    )
    engine.close()
    return result


def step_profile(engine: FastEngine, batch: int, length: int) -> dict:
    with torch.inference_mode():
        profile = top_kernels(engine.device, bare_step(engine, batch, length))
    return {"bench": "generate", "path": "ours: one decode step, profiled", "batch": batch, "length": length, **profile}


def record(path: str, streams: int, run: dict, model, device, bandwidth: float, **extra) -> dict:
    steps_per_s = run["tokens"] / run["decode_s"]
    return {
        "bench": "generate",
        "path": path,
        "device": device_name(device),
        "streams": streams,
        "ttft_ms": run["ttft_ms"],
        "ttft_last_ms": run["ttft_last_ms"],
        "decode_tok_s": streams * steps_per_s,
        "per_stream_tok_s": steps_per_s,
        "weight_bandwidth_share": weight_bytes(model) * steps_per_s / bandwidth,
        "copy_bandwidth_gb_s": bandwidth / 1e9,
        "peak_memory_gib": peak_memory_gib(device),
        **{k: v for k, v in run.items() if k not in ("ttft_ms", "ttft_last_ms", "decode_s", "tokens")},
        **extra,
    }


def ours(engine: FastEngine, model, prompts: torch.Tensor, new: int, bandwidth: float, path: str, **extra) -> dict:
    device = prompts.device
    run = our_way(engine, prompts, new)
    batch = next(b for b in engine.batch_buckets if b >= len(prompts))
    length = next(b for b in engine.context_buckets if b > prompts.shape[1] + new // 2)
    run["graph_ms"] = step_alone_ms(engine, batch, length)
    run["loop_overhead_ms"] = run["step_ms"] - run["graph_ms"]
    return record(path, len(prompts), run, model, device, bandwidth, **extra)


def engine_logits(engine: FastEngine, prompt: list[int], new: int) -> tuple[list[int], torch.Tensor]:
    """The engine's tokens (sampled as the card samples) and the logits each was drawn from."""
    params = SamplingParams(max_new_tokens=new, temperature=0.2, top_k=50, top_p=0.95, repetition_penalty=1.2, seed=1)
    job = TimedJob(ChatRequest([], params), prompt, logits=[])
    engine.submit(job)
    job.finished.wait()
    return job.tokens, torch.stack(job.logits)


def check(model, engine: FastEngine, prompt: list[int], new: int, path: str, minimum: float) -> dict:
    tokens, logits = engine_logits(engine, prompt, new)
    result = teacher_forced(model, prompt, tokens, logits, MARGIN)
    device = next(model.parameters()).device
    passed = result["top1_agreement"] >= minimum
    return {
        "bench": "generate",
        "path": path,
        "device": device_name(device),
        "prompt": len(prompt),
        **result,
        "passed": passed,
    }


def speculation(model, speculate: int, streams: list[int], prompt_len: int, new: int, bandwidth: float) -> list[str]:
    """Speculation's engine (its start-up, a teacher-forced check of its verify step on an echo whose drafts
    are kept, its guards) and rows; what failed. On the CPU `model` is the tiny one at the full model's
    scale, 0.02: like the full model's, its greedy replies repeat themselves (at 0.2 they never do, and no
    draft would be kept). On a GPU the engine shares the bench's model."""
    device = next(model.parameters()).device
    context = longest_prompt(prompt_len, new) + new + 1
    engine = FastEngine(
        model, [], slots=max(streams), compile=True, max_context=context, on_bucket=log_bucket, speculate=speculate
    )
    start = {"bench": "generate", "path": f"ours: start-up, speculate {speculate}", "device": device_name(device)}
    emit({**start, "warm_up_s": engine.warm_up_s, "graphs": len(engine.graphs or {}), "buckets": engine.buckets()})
    echo = workloads(engine, 1, prompt_len, new)["echo"][0][0].tolist()
    engine.stats.__init__()
    verified = {**check(model, engine, echo, 32, f"check: teacher-forced, speculate {speculate}", 0.99)}
    emit({**verified, "drafted": engine.stats.drafted, "accepted": engine.stats.accepted})
    counters = compile_counters()
    for row in speculative_rows(engine, model, streams, prompt_len, new, bandwidth):
        emit(row)
    moved = {key: value - counters[key] for key, value in compile_counters().items()}
    emit({**start, "path": f"ours: guards, speculate {speculate}", **moved, "late_captures": engine.late_captures})
    engine.close()
    failures = [f"{key} moved by {value} with speculation" for key, value in moved.items() if value]
    failures += [f"{engine.late_captures} verify graphs captured after start-up"] if engine.late_captures else []
    return failures + ([] if verified["passed"] else [f"speculative top-1 agreement {verified['top1_agreement']}"])


def speculative_rows(engine: FastEngine, model, streams: list[int], prompt_len: int, new: int, bandwidth: float):
    """Each workload at each stream count, without drafts then with them (the engine's `speculate`)."""
    device, speculate = engine.device, engine.speculate
    for n in streams:
        for name, (prompts, sampling) in workloads(engine, n, prompt_len, new).items():
            plain = None
            for drafts in (0, speculate):
                engine.speculate = drafts
                run = our_way(engine, prompts, new, sampling)
                path = f"ours: fast engine, {name}" + (f", speculate {drafts}" if drafts else "")
                stats = engine.stats
                counts = {"drafted": stats.drafted, "accepted": stats.accepted, "row_steps": stats.row_steps}
                counts["acceptance"] = stats.accepted / stats.drafted if stats.drafted else 0.0
                counts["tokens_per_step"] = (stats.row_steps + stats.accepted) / stats.row_steps
                row = record(path, n, run, model, device, bandwidth, prompt=prompts.shape[1], **counts)
                plain = plain or row["decode_tok_s"]
                yield {**row, "vs_plain": row["decode_tok_s"] / plain}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="a tiny model on the CPU")
    parser.add_argument("--prompt", type=int, default=None, help="prompt tokens (512; 32 with --tiny)")
    parser.add_argument(
        "--long-prompt", type=int, default=None, help="the long prompt's tokens (2000; 200 with --tiny)"
    )
    parser.add_argument("--new", type=int, default=None, help="new tokens (256; 16 with --tiny)")
    parser.add_argument("--streams", default="1,8,32", help="comma-separated stream counts")
    parser.add_argument("--peer-streams", default="1,32", help="stream counts for the peer (each compiles anew)")
    parser.add_argument("--spec-streams", default="1,8", help="stream counts for speculation's rows")
    parser.add_argument("--speculate", type=int, default=4, help="draft tokens a row verifies per step")
    parser.add_argument("--spec-new", type=int, default=None, help="new tokens in speculation's rows (256; 64 tiny)")
    parser.add_argument("--start-up-only", action="store_true", help="start the engine, print its warm-up, stop")
    args = parser.parse_args(argv)
    prompt_len, new = args.prompt or (32 if args.tiny else 512), args.new or (16 if args.tiny else 256)
    long_len, long_new = args.long_prompt or (200 if args.tiny else 2000), 64 if not args.tiny else 8
    streams = [int(s) for s in args.streams.split(",")]
    peer_streams = [int(s) for s in args.peer_streams.split(",") if s]
    spec_streams = [int(s) for s in args.spec_streams.split(",") if s]
    device = torch.device("cuda" if torch.cuda.is_available() and not args.tiny else "cpu")
    bandwidth = copy_bandwidth(device)
    model = random_model(args.tiny, device)
    vocab = model.config.vocab_size
    # No stop ids: random weights would end replies at random; every stream decodes `new` tokens.
    context = max(prompt_len + new, long_len + long_new) + 1
    engine = FastEngine(model, stop_ids=[], slots=max(streams), compile=True, max_context=context, on_bucket=log_bucket)
    emit(
        {
            "bench": "generate",
            "path": "ours: start-up",
            "device": device_name(device),
            "weights_gib": weight_bytes(model) / 2**30,
            "warm_up_s": engine.warm_up_s,
            "graphs": len(engine.graphs or {}),
            "batch_buckets": engine.batch_buckets,
            "context_buckets": engine.context_buckets,
        }
    )
    if args.start_up_only:
        return
    counters, moved = compile_counters(), {}

    def timed_ours(*run_args, **run_kwargs) -> dict:
        before = compile_counters()
        result = ours(engine, model, *run_args, **run_kwargs)
        for key, value in compile_counters().items():
            moved[key] = moved.get(key, 0) + value - before[key]
        return result

    checks = [check(model, engine, torch.randint(1, vocab, (prompt_len,)).tolist(), 32, "check: teacher-forced", 0.99)]
    checks.append(
        check(model, engine, torch.randint(1, vocab, (long_len,)).tolist(), 32, "check: teacher-forced", 0.99)
    )
    for result in checks:
        emit(result)
    for n in streams:
        prompts = torch.randint(1, vocab, (n, prompt_len), device=device)
        reset_peak_memory(device)
        emit(record("seed: generate, eager, dynamic cache", n, seed_way(model, prompts, new), model, device, bandwidth))
        reset_peak_memory(device)
        emit(timed_ours(prompts, new, bandwidth, "ours: fast engine"))
        if n == 1:
            length = next(b for b in engine.context_buckets if b > prompt_len + new // 2)
            emit({"device": device_name(device), **step_profile(engine, 1, length)})
    prompts = torch.randint(1, vocab, (1, long_len), device=device)
    seed_long = seed_way(model, prompts, long_new)
    emit(record("seed: generate, eager, dynamic cache", 1, seed_long, model, device, bandwidth, prompt=long_len))
    emit(timed_ours(prompts, long_new, bandwidth, "ours: fast engine", prompt=long_len))
    late = engine.late_captures
    guards = {"bench": "generate", "path": "ours: guards", "device": device_name(device), **moved}
    emit({**guards, "late_captures": late, "at_warm_up": counters})
    failures = [f"{key} moved by {value}" for key, value in moved.items() if value]
    failures += [f"{late} graphs captured after start-up"] if late else []
    failures += [
        f"top-1 agreement {c['top1_agreement']:.3f} at prompt {c['prompt']}" for c in checks if not c["passed"]
    ]
    if spec_streams:
        model_for_drafts = random_model(True, device, scale=0.02) if args.tiny else model
        spec_new = args.spec_new or (64 if args.tiny else 256)
        failures += speculation(model_for_drafts, args.speculate, spec_streams, prompt_len, spec_new, bandwidth)
    if 1 in streams:  # after the guards: this engine's start-up compiles on purpose
        emit(one_row_untuned(model, torch.randint(1, vocab, (1, prompt_len), device=device), new, bandwidth, context))
    # The peer last: each stream count compiles anew, and its compilations are not ours to count.
    for n in peer_streams:
        prompts = torch.randint(1, vocab, (n, prompt_len), device=device)
        reset_peak_memory(device)
        path = "peer: transformers generate, static cache" + (", compiled" if device.type == "cuda" else "")
        emit(record(path, n, peer_way(model, prompts, new), model, device, bandwidth))
    if failures:
        sys.exit("bench.generate FAILED: " + "; ".join(failures))


if __name__ == "__main__":
    main()
