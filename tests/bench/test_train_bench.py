"""`python -m bench.train --tiny`: JSON lines naming the device, the seed's way and ours in one run."""

import pytest

from bench.train import checkpointed_layers
from tests.conftest import bench_records

pytestmark = pytest.mark.slow  # Runs the benchmark end to end.


def test_tiny_train_bench_prints_json_lines_for_both_ways():
    records = bench_records("bench.train", "--tiny", "--steps", "2")
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
