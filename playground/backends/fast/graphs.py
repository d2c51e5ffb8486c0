"""The steps as CUDA graphs: one captured per (batch, context, width) bucket at start-up, then replayed."""

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
        on_bucket: Callable[[int, int, float, int], None] | None,
        speculate: int = 0,
    ):
        super().__init__(model, slots, max_context, compile, tune_one_row, speculate)
        self.on_bucket = on_bucket
        on_gpu = self.device.type == "cuda"
        self.graphs: dict[tuple[int, int, int], torch.cuda.CUDAGraph] | None = {} if on_gpu and compile else None
        self.late_captures = 0  # graphs captured after start-up: the benchmark fails on any

    def buckets(self) -> list[tuple[int, int, int]]:
        """(batch, context, width) of every step: the plain step's buckets, then the verify step's."""
        plain = [(batch, length, 1) for batch in self.batch_buckets for length in self.context_buckets]
        return plain + [(batch, length, self.width) for batch in self.verify_buckets for length in self.context_buckets]

    def run(self, batch: int, length: int, width: int = 1) -> None:
        if self.graphs is None:
            self.advance(batch, length, width)
            return
        if (batch, length, width) not in self.graphs:
            self.late_captures += 1
            self.capture(batch, length, width)
        self.graphs[batch, length, width].replay()

    def capture(self, batch: int, length: int, width: int) -> None:
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(2):  # compile and autotune outside the capture
                self.advance(batch, length, width)
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            self.advance(batch, length, width)
        self.graphs[batch, length, width] = graph

    def warm_buckets(self) -> None:
        """Compiles the layer and captures the step for every bucket. Rows are all parked meanwhile (and draft
        nothing), so only the unread cache column is written."""
        if self.graphs is not None:
            self.pool = torch.cuda.graph_pool_handle()
        for batch, length, width in self.buckets():
            began = time.perf_counter()
            if self.graphs is None:
                self.advance(batch, length, width)
            else:
                self.capture(batch, length, width)
            if self.on_bucket:
                self.on_bucket(batch, length, time.perf_counter() - began, width)
