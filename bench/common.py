"""What every benchmark shares: the StarCoderPlus shape, the device's name and limits, JSON lines."""

from __future__ import annotations

import gc
import json
import platform
import resource
import sys
import time

import torch
from transformers import GPTBigCodeConfig

# bigcode/starcoderplus: 15.5B parameters, multi-query attention.
STARCODERPLUS = dict(vocab_size=49156, n_positions=8192, n_embd=6144, n_layer=40, n_head=48, multi_query=True)
TINY = dict(vocab_size=1024, n_positions=1024, n_embd=128, n_layer=2, n_head=4, multi_query=True)
# Dense bf16 peak of the cards we compare against (H100 SXM and H200 share it).
PEAK_FLOPS = {"H100": 989e12, "H200": 989e12}


def model_config(tiny: bool) -> GPTBigCodeConfig:
    return GPTBigCodeConfig(**(TINY if tiny else STARCODERPLUS))


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def peak_flops(device: torch.device) -> float | None:
    name = device_name(device)
    return next((flops for key, flops in PEAK_FLOPS.items() if key in name), None)


def reset_peak_memory(device: torch.device) -> None:
    """Starts a measurement with nothing on the device but what is still referenced."""
    gc.collect()  # torchao's quantized layers hold reference cycles: a dropped model stays until collected
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux: the process's peak


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(device: torch.device, fn) -> float:
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def log_bucket(batch: int, length: int, seconds: float, width: int = 1) -> None:
    """Each bucket's start-up to stderr (gpu.log): a part stopped by its time limit still shows how far it got."""
    print(f"warm-up: batch {batch}, context {length}, width {width}: {seconds:.1f} s", file=sys.stderr, flush=True)


def emit(record: dict) -> None:
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in record.items()}), flush=True)
    sys.stdout.flush()


def compare(reference: torch.Tensor, logits: torch.Tensor, margin: float) -> dict:
    """Logits against reference logits for the same inputs, position by position. Agreement counts only
    positions where the reference top-1 leads the second by more than `margin` standard deviations of
    that position's logits; a near-tie says nothing about a bug."""
    reference, logits = reference.float().cpu(), logits.float().cpu()
    top2 = reference.topk(2, dim=-1).values
    confident = top2[:, 0] - top2[:, 1] > margin * reference.std(-1)
    agree = (reference.argmax(-1) == logits.argmax(-1))[confident]
    return {
        "positions": len(reference),
        "confident_positions": int(confident.sum()),
        "max_abs_diff": float((reference - logits).abs().max()),
        "relative_error": float((reference - logits).norm() / reference.norm()),
        "top1_agreement": float(agree.float().mean()) if len(agree) else float("nan"),
        "margin": margin,
    }


def teacher_forced(model, prompt: list[int], tokens: list[int], logits: torch.Tensor, margin: float) -> dict:
    """The engine's logits at each generated position against one plain forward over the prompt and the
    engine's own tokens: the same inputs position by position, so rounding cannot snowball into a
    different continuation and every position is compared."""
    device = next(model.parameters()).device
    with torch.inference_mode():
        plain = model(torch.tensor([prompt + tokens[:-1]], device=device)).logits[0, len(prompt) - 1 :]
    return compare(plain, logits, margin)


def compile_counters() -> dict[str, int]:
    """Inductor's and Dynamo's counters that must not move once an engine is warm."""
    from torch._dynamo.utils import counters

    return {
        "compiled_graphs": int(counters["stats"]["unique_graphs"]),
        "cudagraph_skips": int(counters["inductor"]["cudagraph_skips"]),
    }


def top_kernels(device: torch.device, fn, count: int = 12) -> dict:
    """Where one call of `fn` spends its time: device busy time against wall time, and the kernels
    (or CPU ops, on the CPU) that take the most, as [name, ms, calls]. CUDA graphs' kernels are listed too."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    fn()
    with profile(activities=activities) as prof:
        wall = timed(device, fn)
    on_device = [e for e in prof.key_averages() if e.device_type.name == device.type.upper()]
    events = on_device if device.type == "cuda" else [e for e in prof.key_averages() if e.cpu_parent is None]
    total = (lambda e: e.self_device_time_total) if device.type == "cuda" else (lambda e: e.self_cpu_time_total)
    ranked = sorted(events, key=total, reverse=True)
    return {
        "wall_ms": wall * 1000,
        "busy_ms": sum(total(e) for e in events) / 1000,
        "kernels": len(events),
        "launches": sum(e.count for e in events),
        "top": [[e.key[:90], round(total(e) / 1000, 3), e.count] for e in ranked[:count]],
    }
