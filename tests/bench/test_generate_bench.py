"""`python -m bench.generate --tiny`: the seed's way and ours in one run, JSON lines naming the device."""

from tests.conftest import bench_records


def test_tiny_generate_bench_measures_both_ways_and_checks_greedy_agreement():
    records = bench_records("bench.generate", "--tiny", "--streams", "1,4")
    assert records[0]["path"] == "checks" and records[0]["greedy_match"] is True
    runs = [r for r in records if "streams" in r]
    assert [(r["path"].split(":")[0], r["streams"]) for r in runs] == [
        ("seed", 1),
        ("ours", 1),
        ("seed", 4),
        ("ours", 4),
    ]
    for r in runs:
        assert r["device"].startswith("CPU") and r["decode_tok_s"] > 0 and r["ttft_ms"] > 0
        assert r["weight_bandwidth_share"] > 0 and r["copy_bandwidth_gb_s"] > 0
    assert "CUDA" in records[-1]["skipped"]
