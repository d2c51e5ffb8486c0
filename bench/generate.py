"""Decoding a StarCoderPlus-shaped model with random weights: the seed's way against ours, in one run.

    python -m bench.generate            # one GPU: bf16, then 8-bit and 4-bit (plain generate)
    python -m bench.generate --tiny     # a tiny model on the CPU, for the test suite

The seed's way is the card's `pipeline()`: `generate()` eager with a dynamic cache. Ours is the
playground's fast engine (static cache, continuous batching, CUDA graphs on a GPU). For 1, 8 and
32 streams it prints time to first token, decode tok/s (all streams and per stream), peak memory,
and the weight bandwidth achieved as a share of a device-to-device copy measured in the same run.
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time

import torch
from transformers import BitsAndBytesConfig, GPTBigCodeForCausalLM

from bench.common import device_name, emit, model_config, peak_memory_gib, reset_peak_memory, synchronize, timed
from playground.backends import ChatRequest, SamplingParams
from playground.backends.fast import FastEngine, Job

SAMPLING = {"do_sample": True, "temperature": 0.2, "top_k": 50, "top_p": 0.95}


class Clock:
    """A streamer that only notes when tokens arrive (the prompt's put, then one per step)."""

    def __init__(self):
        self.times: list[float] = []
        self.tokens: list[int] = []
        self.finished = threading.Event()

    def put(self, value: torch.Tensor) -> None:
        self.times.append(time.perf_counter())
        self.tokens += value.flatten().tolist()

    def end(self) -> None:
        self.finished.set()


def copy_bandwidth(device: torch.device) -> float:
    """Bytes/s of a large device-to-device copy (read + write), the practical limit for decoding."""
    size = 2**30 if device.type == "cuda" else 2**27
    source = torch.empty(size, dtype=torch.uint8, device=device)
    target = torch.empty_like(source)
    target.copy_(source)
    seconds = min(timed(device, lambda: target.copy_(source)) for _ in range(5))
    return 2 * size / seconds


def random_model(tiny: bool, device: torch.device) -> GPTBigCodeForCausalLM:
    torch.manual_seed(0)
    with torch.device(device):
        model = GPTBigCodeForCausalLM(model_config(tiny))
    return model.to(torch.bfloat16 if device.type == "cuda" else torch.float32).eval()


def weight_bytes(model) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def seed_way(model, prompts: torch.Tensor, new: int) -> dict:
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
        )
    synchronize(prompts.device)
    steps = clock.times[1:]  # the first put is the prompt
    return {"ttft_ms": (steps[0] - start) * 1000, "decode_s": steps[-1] - steps[0], "tokens": len(steps) - 1}


def our_way(engine: FastEngine, prompts: torch.Tensor, new: int) -> dict:
    params = SamplingParams(max_new_tokens=new, temperature=0.2, top_k=50, top_p=0.95, repetition_penalty=1.0)
    jobs = [Job(ChatRequest([], params), row.tolist(), Clock()) for row in prompts]
    start = time.perf_counter()
    for job in jobs:
        engine.submit(job)
    for job in jobs:
        job.streamer.finished.wait()
    first = min(job.streamer.times[0] for job in jobs)
    last = max(job.streamer.times[-1] for job in jobs)
    return {"ttft_ms": (jobs[0].streamer.times[0] - start) * 1000, "decode_s": last - first, "tokens": new - 1}


def record(path: str, streams: int, run: dict, model, device, bandwidth: float, **extra) -> dict:
    steps_per_s = run["tokens"] / run["decode_s"]
    return {
        "bench": "generate",
        "path": path,
        "device": device_name(device),
        "streams": streams,
        "ttft_ms": run["ttft_ms"],
        "decode_tok_s": streams * steps_per_s,
        "per_stream_tok_s": steps_per_s,
        "weight_bandwidth_share": weight_bytes(model) * steps_per_s / bandwidth,
        "copy_bandwidth_gb_s": bandwidth / 1e9,
        "peak_memory_gib": peak_memory_gib(device),
        **extra,
    }


def greedy_match(model, engine: FastEngine, prompt: torch.Tensor, new: int) -> bool:
    """The fast path and plain generate pick the same tokens when both decode greedily."""
    with torch.inference_mode():
        plain = model.generate(
            prompt[None],
            attention_mask=torch.ones_like(prompt[None]),
            max_new_tokens=new,
            min_new_tokens=new,
            do_sample=False,
            pad_token_id=0,
        )[0, len(prompt) :].tolist()
    job = Job(
        ChatRequest([], SamplingParams(max_new_tokens=new, temperature=0, repetition_penalty=1.0)),
        prompt.tolist(),
        Clock(),
    )
    engine.submit(job)
    job.streamer.finished.wait()
    return job.streamer.tokens == plain


def quantized(tiny: bool, device: torch.device, prompt_len: int, new: int, bandwidth: float) -> None:
    if device.type != "cuda":
        emit(
            {
                "bench": "generate",
                "path": "8bit / 4bit",
                "device": device_name(device),
                "skipped": "bitsandbytes needs a CUDA GPU",
            }
        )
        return
    with tempfile.TemporaryDirectory() as folder:
        random_model(tiny, device).save_pretrained(folder)
        torch.cuda.empty_cache()
        for name, config in [
            ("8bit", BitsAndBytesConfig(load_in_8bit=True)),
            (
                "4bit",
                BitsAndBytesConfig(
                    load_in_4bit=True,
                    bnb_4bit_quant_type="nf4",
                    bnb_4bit_use_double_quant=True,
                    bnb_4bit_compute_dtype=torch.bfloat16,
                ),
            ),
        ]:
            reset_peak_memory(device)
            model = GPTBigCodeForCausalLM.from_pretrained(folder, quantization_config=config, device_map={"": device})
            memory = torch.cuda.memory_allocated(device) / 2**30
            prompts = torch.randint(1, model.config.vocab_size, (1, prompt_len), device=device)
            emit(
                record(f"seed, {name}", 1, seed_way(model, prompts, new), model, device, bandwidth, weights_gib=memory)
            )
            del model
            torch.cuda.empty_cache()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="a tiny model on the CPU")
    parser.add_argument("--prompt", type=int, default=None, help="prompt tokens (512; 32 with --tiny)")
    parser.add_argument("--new", type=int, default=None, help="new tokens (256; 16 with --tiny)")
    parser.add_argument("--streams", default="1,8,32", help="comma-separated stream counts")
    parser.add_argument("--no-quantized", action="store_true", help="skip the 8-bit / 4-bit runs")
    args = parser.parse_args(argv)
    prompt_len, new = args.prompt or (32 if args.tiny else 512), args.new or (16 if args.tiny else 256)
    streams = [int(s) for s in args.streams.split(",")]
    device = torch.device("cuda" if torch.cuda.is_available() and not args.tiny else "cpu")
    bandwidth = copy_bandwidth(device)
    model = random_model(args.tiny, device)
    vocab = model.config.vocab_size
    # No stop ids: random weights would end replies at random; every stream decodes `new` tokens.
    engine = FastEngine(model, stop_ids=[], slots=max(streams), max_context=prompt_len + new + 1)
    emit(
        {
            "bench": "generate",
            "path": "checks",
            "device": device_name(device),
            "weights_gib": weight_bytes(model) / 2**30,
            "greedy_match": greedy_match(
                model, engine, torch.randint(1, vocab, (prompt_len,), device=device), min(new, 32)
            ),
        }
    )
    for n in streams:
        prompts = torch.randint(1, vocab, (n, prompt_len), device=device)
        reset_peak_memory(device)
        emit(record("seed: generate, eager, dynamic cache", n, seed_way(model, prompts, new), model, device, bandwidth))
        reset_peak_memory(device)
        emit(record("ours: fast engine", n, our_way(engine, prompts, new), model, device, bandwidth))
    del engine, model
    if not args.no_quantized:
        quantized(args.tiny, device, prompt_len, new, bandwidth)


if __name__ == "__main__":
    main()
