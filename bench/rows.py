"""The decode step's one-row MLP products, each way of computing them, as achieved weight bandwidth.

    python -m bench.rows            # one GPU: StarCoderPlus's MLP shapes, 40 layers' distinct weights
    python -m bench.rows --tiny     # tiny shapes on the CPU: checks that every way runs

Each way runs over 40 layers' distinct weights in one CUDA graph, as in the engine's step: one
tensor's repeated product would be served partly from L2 and read faster than the engine ever does.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from bench.common import device_name, emit, synchronize, timed
from playground.backends.fast import ROW_OPTIONS

LAYERS = 40
SHAPES = {"c_fc": (24576, 6144), "c_proj": (6144, 24576)}  # (out, in); c_fc is followed by GELU
TINY_SHAPES = {"c_fc": (512, 128), "c_proj": (128, 512)}
# No tuned config from the disk cache: each way tunes afresh.
FRESH = {"autotune_local_cache": False}
ENGINE = {**ROW_OPTIONS, **FRESH}
GUESS = {"coordinate_descent_tuning": True, **FRESH}
# Finds faster int8 configs, but tunes for about 2 minutes a kernel: too slow for an engine's start-up.
WIDER = {**ENGINE, "coordinate_descent_check_all_directions": True, "coordinate_descent_search_radius": 2}
Way = tuple[str, Callable[..., torch.Tensor], dict | None, list[tuple]]  # name, form, compile options, inputs


def bf16_form(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return x @ w.t() + b


def int8_form(x: torch.Tensor, q: torch.Tensor, s: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """What torchao's Int8Tensor does for a weight-only linear with per-row scales (its aten.linear
    implementation, torchao 0.18), as Inductor then sees it."""
    return (x @ q.t().to(x.dtype)) * s + b


def int8_fp32_sum(x: torch.Tensor, q: torch.Tensor, s: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return ((x.float()[:, None, :] * q.float()).sum(-1) * s.float()).to(x.dtype) + b


def int8_pack_mm(x: torch.Tensor, q: torch.Tensor, s: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch._weight_int8pack_mm(x, q, s) + b


def with_gelu(form: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    return lambda *args: F.gelu(form(*args), approximate="tanh")


def per_call_us(device: torch.device, fn: Callable[..., torch.Tensor], layers: list[tuple]) -> float:
    """Median of 7 runs of `fn` once per layer, per call; on a GPU each run is one CUDA graph's replay."""

    def every_layer() -> None:
        for args in layers:
            fn(*args)

    run = every_layer
    if device.type == "cuda":
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):  # compiled and tuned outside the capture
            every_layer()
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            every_layer()
        run = graph.replay
    run()
    return statistics.median(timed(device, run) for _ in range(7)) * 1e6 / len(layers)


def layer_inputs(n_out: int, n_in: int, layers: int, device: torch.device, dtype: torch.dtype):
    """(x, weight, bias) and (x, int8 weight, scale, bias) per layer; int8 rounds per output row, as torchao."""
    torch.manual_seed(0)
    x = torch.randn(1, n_in, device=device, dtype=dtype)
    bf16, int8 = [], []
    for _ in range(layers):
        weight = torch.randn(n_out, n_in, device=device, dtype=dtype) * 0.02
        bias = torch.randn(n_out, device=device, dtype=dtype) * 0.02
        scale = weight.float().abs().amax(1) / 127
        rounded = (weight.float() / scale[:, None]).round().clamp(-127, 127).to(torch.int8)
        bf16.append((x, weight, bias))
        int8.append((x, rounded, scale.to(dtype), bias))
    return bf16, int8


def ways_for(bf16: list[tuple], int8: list[tuple], wider: bool) -> list[Way]:
    ways = [
        ("int8 torchao form, the engine's options (descent from the fastest candidate)", int8_form, ENGINE, int8),
        ("bf16, the engine's options (descent from the fastest candidate)", bf16_form, ENGINE, bf16),
        ("int8 torchao form, descent from Inductor's one guess", int8_form, GUESS, int8),
        ("bf16, descent from Inductor's one guess", bf16_form, GUESS, bf16),
        ("bf16 cuBLAS, eager", bf16_form, None, bf16),
        ("int8 fp32 sum, the engine's options", int8_fp32_sum, ENGINE, int8),
        ("int8 _weight_int8pack_mm, eager", int8_pack_mm, None, int8),
    ]
    if wider:
        ways += [
            ("int8 torchao form, wider descent", int8_form, WIDER, int8),
            ("bf16, wider descent", bf16_form, WIDER, bf16),
        ]
    return ways


def measure(device: torch.device, form, options: dict | None, inputs: list[tuple], want: torch.Tensor) -> dict:
    torch._dynamo.reset()
    fn = form if options is None else torch.compile(form, options=options)
    start = time.perf_counter()
    with torch.inference_mode():
        out = fn(*inputs[0]).float()
        synchronize(device)
        compile_s = time.perf_counter() - start
        us = per_call_us(device, fn, inputs)
    nbytes = sum(t.numel() * t.element_size() for t in inputs[0][1:])  # what the product reads: all but x
    error = float((out - want).norm() / want.norm())
    return {"us": us, "tb_s": nbytes / us / 1e6, "rel_err_vs_bf16": error, "compile_s": compile_s}


def one_shape(shape: str, n_out: int, n_in: int, args, device: torch.device, began: float) -> None:
    """Every way for one shape; its 40 layers' weights are freed when it returns."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    layers = 2 if args.tiny else LAYERS
    bf16, int8 = layer_inputs(n_out, n_in, layers, device, dtype)
    act = with_gelu if shape == "c_fc" else (lambda form: form)
    with torch.inference_mode():
        want = act(bf16_form)(*bf16[0]).float()
    for way, form, options, inputs in ways_for(bf16, int8, args.wider):
        record = {"bench": "rows", "device": device_name(device), "shape": shape, "layers": layers, "way": way}
        if time.perf_counter() - began > args.limit:
            emit({**record, "skipped": "time limit"})
            continue
        try:
            emit({**record, **measure(device, act(form), options, inputs, want)})
        except Exception as exc:  # one way failing must not hide the others
            emit({**record, "failed": repr(exc)[:300]})


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--limit", type=float, default=170, help="seconds; ways not started by then are skipped")
    parser.add_argument("--wider", action="store_true", help="add a wider coordinate descent (minutes a kernel)")
    args = parser.parse_args(argv)
    began = time.perf_counter()
    device = torch.device("cuda" if torch.cuda.is_available() and not args.tiny else "cpu")
    for shape, (n_out, n_in) in (TINY_SHAPES if args.tiny else SHAPES).items():
        one_shape(shape, n_out, n_in, args, device, began)
        if device.type == "cuda":
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
