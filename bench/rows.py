"""The decode step's MLP products, each way of computing them, as achieved weight bandwidth.

    python -m bench.rows            # one GPU: StarCoderPlus's MLP shapes, 40 layers' distinct weights
    python -m bench.rows --tiny     # tiny shapes on the CPU: checks that every way runs

Each way runs over 40 layers' distinct weights in one CUDA graph, as in the engine's step: one
tensor's repeated product would be served partly from L2 and read faster than the engine ever does.
One row is one stream's step (the engine's tuned reductions); `--batch` rows is a batched step, where
int8 weights meet a matmul: as the engine compiles it, Inductor converts each weight to a bf16 copy for
cuBLAS; with its Triton matmul templates (max-autotune) it can fuse that conversion into the matmul.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

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
BATCHED = FRESH  # the engine's batched layer: Inductor's defaults
TEMPLATES = {"max_autotune_gemm": True, **FRESH}  # cuBLAS or Triton templates, whichever is faster


@dataclass
class Way:
    name: str
    form: Callable[..., torch.Tensor]
    options: dict | None  # None: eager
    weights: str  # "bf16" or "int8"
    batched: bool = False


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


def layer_weights(n_out: int, n_in: int, layers: int, device: torch.device, dtype: torch.dtype) -> dict:
    """(weight, bias) and (int8 weight, scale, bias) per layer; int8 rounds per output row, as torchao."""
    torch.manual_seed(0)
    bf16, int8 = [], []
    for _ in range(layers):
        weight = torch.randn(n_out, n_in, device=device, dtype=dtype) * 0.02
        bias = torch.randn(n_out, device=device, dtype=dtype) * 0.02
        scale = weight.float().abs().amax(1) / 127
        rounded = (weight.float() / scale[:, None]).round().clamp(-127, 127).to(torch.int8)
        bf16.append((weight, bias))
        int8.append((rounded, scale.to(dtype), bias))
    return {"bf16": bf16, "int8": int8}


def ways(wider: bool) -> list[Way]:
    """The open questions first: a part's time limit may stop the list."""
    found = [
        Way("int8 torchao form, the engine's options (descent from the fastest candidate)", int8_form, ENGINE, "int8"),
        Way("bf16, the engine's options (descent from the fastest candidate)", bf16_form, ENGINE, "bf16"),
        Way("int8 torchao form, the engine's batched layer (convert, then cuBLAS)", int8_form, BATCHED, "int8", True),
        Way("int8 torchao form, max-autotune (a template may fuse the convert)", int8_form, TEMPLATES, "int8", True),
        Way("bf16 cuBLAS, eager", bf16_form, None, "bf16", True),
        Way("int8 torchao form, descent from Inductor's one guess", int8_form, GUESS, "int8"),
        Way("bf16, descent from Inductor's one guess", bf16_form, GUESS, "bf16"),
        Way("bf16 cuBLAS, eager", bf16_form, None, "bf16"),
        Way("int8 fp32 sum, the engine's options", int8_fp32_sum, ENGINE, "int8"),
        Way("int8 _weight_int8pack_mm, eager", int8_pack_mm, None, "int8"),
    ]
    if wider:
        found += [
            Way("int8 torchao form, wider descent", int8_form, WIDER, "int8"),
            Way("bf16, wider descent", bf16_form, WIDER, "bf16"),
        ]
    return found


def measure(device: torch.device, form, options: dict | None, inputs: list[tuple], want: torch.Tensor) -> dict:
    torch._dynamo.reset()
    fn = form if options is None else torch.compile(form, options=options)
    start = time.perf_counter()
    with torch.inference_mode():
        out = fn(*inputs[0]).float()
        synchronize(device)
        compile_s = time.perf_counter() - start
        us = per_call_us(device, fn, inputs)
    nbytes = sum(t.numel() * t.element_size() for t in inputs[0][1:])  # the weights' bytes: all but x
    error = float((out - want).norm() / want.norm())
    return {"us": us, "tb_s": nbytes / us / 1e6, "rel_err_vs_bf16": error, "compile_s": compile_s}


def one_shape(shape: str, n_out: int, n_in: int, args, device: torch.device, deadline: float) -> None:
    """Every way for one shape, until `deadline`; its 40 layers' weights are freed when it returns."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    layers = 2 if args.tiny else LAYERS
    weights = layer_weights(n_out, n_in, layers, device, dtype)
    act = with_gelu if shape == "c_fc" else (lambda form: form)
    xs = {rows: torch.randn(rows, n_in, device=device, dtype=dtype) for rows in (1, args.batch)}
    with torch.inference_mode():
        want = {rows: act(bf16_form)(x, *weights["bf16"][0]).float() for rows, x in xs.items()}
    for way in ways(args.wider):
        rows = args.batch if way.batched else 1
        record = {"bench": "rows", "device": device_name(device), "shape": shape, "layers": layers, "rows": rows}
        record["way"] = way.name
        if time.perf_counter() > deadline:
            emit({**record, "skipped": "time limit"})
            continue
        inputs = [(xs[rows], *layer) for layer in weights[way.weights]]
        try:
            emit({**record, **measure(device, act(way.form), way.options, inputs, want[rows])})
        except Exception as exc:  # one way failing must not hide the others
            emit({**record, "failed": repr(exc)[:300]})


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--limit", type=float, default=170, help="seconds; ways not started by then are skipped")
    parser.add_argument("--wider", action="store_true", help="add a wider coordinate descent (minutes a kernel)")
    parser.add_argument("--batch", type=int, default=8, help="rows of the batched ways (the app's default slots)")
    args = parser.parse_args(argv)
    began = time.perf_counter()
    device = torch.device("cuda" if torch.cuda.is_available() and not args.tiny else "cpu")
    shapes = TINY_SHAPES if args.tiny else SHAPES
    for done, (shape, (n_out, n_in)) in enumerate(shapes.items(), 1):  # each shape gets its share of the limit
        one_shape(shape, n_out, n_in, args, device, began + args.limit * done / len(shapes))
        if device.type == "cuda":
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
