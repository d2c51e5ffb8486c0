"""The decode step as CUDA graphs: one captured per (batch, context) bucket at start-up, then replayed."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from playground.backends.fast.model import CacheModel


class Graphs(CacheModel):
    """Runs the step of a bucket: its graph's replay on a GPU when compiled, the step itself otherwise."""

    def __init__(
        self,
        model,
        slots: int,
        max_context: int | None,
        compile: bool,
        tune_one_row: bool,
        on_bucket: Callable[[int, int, float], None] | None,
    ):
        super().__init__(model, slots, max_context, compile, tune_one_row)
        self.on_bucket = on_bucket
        on_gpu = self.device.type == "cuda"
        self.graphs: dict[tuple[int, int], torch.cuda.CUDAGraph] | None = {} if on_gpu and compile else None
        self.late_captures = 0  # graphs captured after start-up: the benchmark fails on any

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

    def warm_buckets(self) -> None:
        """Compiles the layer and captures the step for every (batch, context) bucket. Rows are all parked
        meanwhile, so only the unread cache column is written."""
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
