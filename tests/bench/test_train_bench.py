"""`python -m bench.train --tiny`: JSON lines naming the device, the seed's way and ours in one run."""

import subprocess
import sys

import pytest

from bench.train import checkpointed_layers
from tests.conftest import ROOT

pytestmark = pytest.mark.slow  # Runs the benchmark end to end.


def test_tiny_train_bench_prints_json_lines_for_both_ways(gpu_tiny):
    records = gpu_tiny.part("train", "seed: plain PEFT, checkpointing")  # gpu.sh runs it --tiny --steps 2
    paths = [r["path"] for r in records]
    assert paths == ["seed: plain PEFT, checkpointing", "ours: LoRA", "ours: QLoRA"]
    assert all(r["device"].startswith("CPU") for r in records)
    seed, ours, qlora = records
    for record in (seed, ours):
        assert record["tokens_per_s"] > 0 and record["peak_memory_gib"] > 0 and record["seq"] == 128
    assert seed["checkpointed_layers"] == 2 and seed["packing"] == "none"
    # Ours: the training's packing, each dialogue isolated in its block, and no recomputation where memory allows.
    assert ours["packing"] == "padding-free" and ours["dialogues_per_block"] > 1
    assert ours["isolation_max_abs_diff"] < 1e-5
    assert not ours["checkpointing"] and ours["checkpointed_layers"] == 0
    assert "CUDA" in qlora["skipped"]


def test_only_as_many_layers_are_checkpointed_as_the_memory_needs():
    gib = 2**30
    weights = 31 * gib  # StarCoderPlus in bf16
    assert checkpointed_layers(False, 2048, 1, weights, free=79 * gib) == 0  # one H100, one 2048-token row
    some = checkpointed_layers(False, 2048, 4, weights, free=79 * gib)
    assert 0 < some < 40
    assert checkpointed_layers(False, 2048, 4, weights, free=139 * gib) < some  # an H200 holds more
    assert checkpointed_layers(False, 8192, 8, weights, free=79 * gib) == 40


def test_the_train_bench_runs_where_the_datasets_library_is_missing():
    # The H100 image has torch, transformers and peft but not `datasets`: importing it stopped a gpu.sh run.
    blocker = (
        "import sys\n"
        "class NoDatasets:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] == 'datasets':\n"
        "            raise ModuleNotFoundError(\"No module named 'datasets'\")\n"
        "sys.meta_path.insert(0, NoDatasets())\n"
        "import runpy\n"
        "sys.argv = ['bench.train', '--help']\n"
        "runpy.run_module('bench.train', run_name='__main__')\n"
    )
    out = subprocess.run([sys.executable, "-c", blocker], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "usage:" in out.stdout
