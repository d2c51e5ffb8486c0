"""`python -m bench.train --tiny`: JSON lines naming the device, the seed's way and ours in one run."""

from tests.conftest import bench_records


def test_tiny_train_bench_prints_json_lines_for_both_ways():
    records = bench_records("bench.train", "--tiny", "--steps", "2")
    paths = [r["path"] for r in records]
    assert paths == ["seed: plain PEFT, checkpointing", "ours: LoRA", "ours: QLoRA"]
    assert all(r["device"].startswith("CPU") for r in records)
    for record in records[:2]:
        assert record["tokens_per_s"] > 0 and record["peak_memory_gib"] > 0 and record["seq"] == 128
    assert records[0]["checkpointing"] and not records[1]["checkpointing"]
    assert "CUDA" in records[2]["skipped"]
