"""Weight-only int8 / int4 through the fast engine, and bitsandbytes under plain generate, in one run.

    python -m bench.quantized            # one GPU: a StarCoderPlus-shaped model, random bf16 weights
    python -m bench.quantized --tiny     # a tiny model on the CPU (int8 only; int4 and bitsandbytes need CUDA)

The bf16 model is moved to the CPU and each quantized copy is made layer by layer onto the GPU, as
the app loads it (`quantize_weights`), so the peak memory shows what a card must hold. Each line:
tok/s at 1 and 32 streams, weights in memory, peak memory, time to first token, and the quantized
logits against bf16 logits for the same inputs (relative error, top-1 agreement where bf16 is clear);
then the one-row step's kernels and their times.
`--paths torchao` or `--paths bitsandbytes` runs one family, `--torchao int4,int8` picks torchao's lines
and their order.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import shutil
import tempfile
from pathlib import Path

import torch
from transformers import BitsAndBytesConfig, GPTBigCodeForCausalLM

from bench.common import compare, device_name, emit, log_bucket, peak_memory_gib, reset_peak_memory
from bench.generate import MARGIN, copy_bandwidth, our_way, random_model, record, seed_way, step_profile, weight_bytes
from playground.backends import BackendError
from playground.backends.fast import FastEngine
from playground.backends.local import quantization_config, quantize_weights


def logits_of(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return model(ids.to(next(model.parameters()).device)).logits[0].float().cpu()


def served(model, name: str, reference: torch.Tensor, ids, device, args, bandwidth: float) -> None:
    weights = weight_bytes(model) / 2**30
    quality = compare(reference, logits_of(model, ids), MARGIN)
    streams = [int(s) for s in args.streams.split(",")]
    context = args.prompt + args.new + 1
    engine = FastEngine(model, stop_ids=[], slots=max(streams), compile=True, max_context=context, on_bucket=log_bucket)
    for n in streams:
        prompts = torch.randint(1, model.config.vocab_size, (n, args.prompt), device=device)
        reset_peak_memory(device)
        run = our_way(engine, prompts, args.new)
        emit(
            record(
                f"ours: fast engine, {name}",
                n,
                run,
                model,
                device,
                bandwidth,
                weights_gib=weights,
                warm_up_s=engine.warm_up_s,
                **{f"vs_bf16_{k}": v for k, v in quality.items()},
            )
        )
        if n == 1:  # where the one-row step's time goes: each quantized matmul's kernel and its time
            length = next(b for b in engine.context_buckets if b > args.prompt + args.new // 2)
            profile = step_profile(engine, 1, length)
            emit({**profile, "path": f"{profile['path']}, {name}", "device": device_name(device)})
    engine.close()  # its thread holds the model: the next line's peak memory must not include it


def torchao_lines(model, reference: torch.Tensor, ids: torch.Tensor, device, args, bandwidth: float) -> None:
    """Each of `args.torchao` in turn, quantized layer by layer from the CPU copy of the bf16 model onto the device."""
    model.to("cpu")
    names = args.torchao.split(",")
    for i, name in enumerate(names):
        reset_peak_memory(device)
        try:
            # The last takes the bf16 model itself: one copy of 31 GB on the CPU is enough.
            quantized = quantize_weights(model if i == len(names) - 1 else copy.deepcopy(model), name, device)
        except BackendError as exc:
            emit(
                {
                    "bench": "generate",
                    "path": f"ours: fast engine, {name}",
                    "device": device_name(device),
                    "skipped": str(exc),
                }
            )
            continue
        emit(
            {
                "bench": "generate",
                "path": f"load: {name}, layer by layer onto the device",
                "device": device_name(device),
                "weights_gib": weight_bytes(quantized) / 2**30,
                "peak_memory_gib": peak_memory_gib(device),
            }
        )
        served(quantized, name, reference, ids, device, args, bandwidth)
        del quantized
        if device.type == "cuda":
            torch.cuda.empty_cache()


def bitsandbytes_lines(model, reference: torch.Tensor, ids: torch.Tensor, device, args, bandwidth: float) -> None:
    """8-bit and 4-bit under plain generate, for reference. bitsandbytes quantizes while loading a checkpoint:
    the bf16 model is saved once (to memory where it fits) and dropped from the device first. Plain generate
    is slow on these, so at most 64 new tokens: the rate per step is what counts."""
    shm = Path("/dev/shm")
    size = weight_bytes(model)
    where = str(shm) if shm.is_dir() and shutil.disk_usage(shm).free > 1.2 * size else None
    new = min(args.new, 64)
    with tempfile.TemporaryDirectory(dir=where) as folder:
        model.save_pretrained(folder)
        model.to("meta")
        torch.cuda.empty_cache()
        for name in ("8bit", "4bit"):
            reset_peak_memory(device)
            config: BitsAndBytesConfig = quantization_config(name)
            loaded = GPTBigCodeForCausalLM.from_pretrained(folder, quantization_config=config, device_map={"": device})
            weights = torch.cuda.memory_allocated(device) / 2**30
            quality = compare(reference, logits_of(loaded, ids), MARGIN)
            prompts = torch.randint(1, loaded.config.vocab_size, (1, args.prompt), device=device)
            run = seed_way(loaded, prompts, new)
            extra = {f"vs_bf16_{k}": v for k, v in quality.items()}
            emit(record(f"seed, {name}", 1, run, loaded, device, bandwidth, weights_gib=weights, new=new, **extra))
            del loaded
            torch.cuda.empty_cache()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="a tiny model on the CPU")
    parser.add_argument("--streams", default="1,32", help="comma-separated stream counts")
    parser.add_argument("--prompt", type=int, default=None, help="prompt tokens (512; 32 with --tiny)")
    parser.add_argument("--new", type=int, default=None, help="new tokens (256; 16 with --tiny)")
    parser.add_argument(
        "--paths", default="torchao,bitsandbytes", help="torchao (int8, int4), bitsandbytes (8bit, 4bit) or both"
    )
    parser.add_argument("--torchao", default="int8,int4", help="torchao's lines, in order: int8, int4 or both")
    args = parser.parse_args(argv)
    if set(args.torchao.split(",")) - {"int8", "int4"}:
        parser.error(f"--torchao takes int8 and int4, got {args.torchao!r}")
    args.prompt, args.new = args.prompt or (32 if args.tiny else 512), args.new or (16 if args.tiny else 256)
    paths = set(args.paths.split(","))
    device = torch.device("cuda" if torch.cuda.is_available() and not args.tiny else "cpu")
    bandwidth = copy_bandwidth(device)
    model = random_model(args.tiny, device)
    ids = torch.randint(1, model.config.vocab_size, (1, args.prompt + 64))
    reference = logits_of(model, ids)
    if "torchao" in paths:
        torchao_lines(model, reference, ids, device, args, bandwidth)
        del model
    if "bitsandbytes" not in paths:
        return
    if device.type != "cuda" or importlib.util.find_spec("bitsandbytes") is None:
        reason = "bitsandbytes needs a CUDA GPU" if device.type != "cuda" else "bitsandbytes is not installed"
        emit({"bench": "generate", "path": "seed, 8bit / 4bit", "device": device_name(device), "skipped": reason})
        return
    # The same seed makes the same weights: the reference logits hold for a new copy.
    same = random_model(args.tiny, device) if "torchao" in paths else model
    bitsandbytes_lines(same, reference, ids, device, args, bandwidth)


if __name__ == "__main__":
    main()
