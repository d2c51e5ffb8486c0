"""`bash bench/gpu.sh --tiny`, run once for the session: it runs every bench on a tiny model, so the tests of
bench.generate and bench.train read their records from it rather than run them again."""

import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import ROOT


@dataclass(frozen=True)
class GpuRun:
    done: subprocess.CompletedProcess
    records: list[dict]

    def part(self, bench: str, first: str) -> list[dict]:
        """The records of the part that runs `bench`, from its record whose path is `first` to the next one."""
        rows = [r for r in self.records if r["bench"] == bench]
        starts = [i for i, r in enumerate(rows) if r.get("path") == first] + [len(rows)]
        return rows[starts[0] : starts[1]]


@pytest.fixture(scope="session")
def gpu_tiny(tmp_path_factory, inductor_cache: Path) -> GpuRun:
    # The run's Inductor cache (TORCHINDUCTOR_CACHE_DIR, which gpu.sh keeps when set): graphs compiled by an
    # earlier test are read from it.
    out = tmp_path_factory.mktemp("gpu-tiny")
    done = subprocess.run(
        ["bash", str(ROOT / "bench" / "gpu.sh"), "--tiny", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(inductor_cache)},
    )
    lines = (out / "gpu.jsonl").read_text().splitlines() if (out / "gpu.jsonl").exists() else []
    return GpuRun(done, [json.loads(line) for line in lines])
