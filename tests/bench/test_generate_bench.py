"""`python -m bench.generate --tiny`: the seed's way, ours and the peer in one run, JSON lines naming the device.
Its records are those of `bash bench/gpu.sh --tiny` (the `gpu_tiny` fixture), which runs it with
`--streams 1,4 --peer-streams 1 --spec-streams 1,4 --spec-new 16`."""

import pytest
import torch

from bench.generate import check, random_model
from playground.backends.fast import FastEngine, decode_layer

pytestmark = pytest.mark.slow  # Runs the benchmark end to end (compiles on the CPU).


OURS = "ours: fast engine"


def named(records: list[dict], path: str) -> list[dict]:
    return [r for r in records if r["path"] == path]


def test_tiny_generate_bench_measures_three_ways_and_checks_the_engine(gpu_tiny):
    records = gpu_tiny.part("generate", "ours: start-up")
    start, checks, guards, peer = records[0], records[1:3], named(records, "ours: guards")[0], records[-1]
    runs = [r for r in records if r["path"].startswith("seed") or r["path"] in (OURS, OURS + ", one row untuned")]
    assert start["path"] == "ours: start-up" and start["warm_up_s"] > 0 and start["batch_buckets"] == [1, 2, 4]
    assert [c["prompt"] for c in checks] == [32, 200]
    assert [(r["path"].split(":")[0], r["streams"], r.get("prompt")) for r in runs] == [
        ("seed", 1, None),
        ("ours", 1, None),
        ("seed", 4, None),
        ("ours", 4, None),
        ("seed", 1, 200),
        ("ours", 1, 200),
        ("ours", 1, None),  # a 1-slot engine without the one-row tuning, for comparison
    ]
    assert runs[-1]["path"] == "ours: fast engine, one row untuned"
    [profile] = named(records, "ours: one decode step, profiled")
    assert profile["batch"] == 1 and profile["launches"] > 0 and profile["top"] and profile["wall_ms"] > 0
    for c in checks:
        assert c["passed"] and c["top1_agreement"] == 1.0 and c["max_abs_diff"] < 1e-3  # fp32: near-exact
    assert peer["path"].startswith("peer") and peer["streams"] == 1
    for r in [*runs, peer]:
        assert r["device"].startswith("CPU") and r["decode_tok_s"] > 0 and r["ttft_ms"] > 0
        assert r["weight_bandwidth_share"] > 0 and r["copy_bandwidth_gb_s"] > 0 and r["ttft_last_ms"] >= r["ttft_ms"]
    for r in (r for r in runs if r["path"].startswith("ours")):
        assert r["step_ms"] > 0 and r["graph_ms"] > 0 and r["prefill_ms"] > 0 and "loop_overhead_ms" in r
    assert guards["path"] == "ours: guards" and guards["compiled_graphs"] == guards["late_captures"] == 0
    check_speculation_rows(records)


def check_speculation_rows(records: list[dict]) -> None:
    """Each workload without drafts and with them, at 1 and 4 streams, and the verify step checked."""
    rows = [r for r in records if r["path"].startswith(OURS + ", ") and "untuned" not in r["path"]]
    workloads = [w + drafts for w in ("edit", "echo", "no match") for drafts in ("", ", speculate 4")]
    named_rows = [(r["path"].removeprefix(OURS + ", "), r["streams"]) for r in rows]
    assert named_rows == [(w, n) for n in (1, 4) for w in workloads]
    for r in rows:
        assert r["decode_tok_s"] > 0 and r["tokens_per_step"] >= 1 and 0 <= r["acceptance"] <= 1
        if "speculate" not in r["path"]:
            assert r["drafted"] == 0 and r["tokens_per_step"] == 1 and r["vs_plain"] == 1
    # The model's own reply in the prompt: kept, but for drafts that run past the 16 new tokens' end.
    for echo in named(records, OURS + ", echo, speculate 4"):
        assert echo["acceptance"] > 0.6 and echo["tokens_per_step"] > 2.5, echo
    [verified] = named(records, "check: teacher-forced, speculate 4")
    assert verified["passed"] and verified["accepted"] > 0 and verified["max_abs_diff"] < 1e-3
    [guards] = named(records, "ours: guards, speculate 4")
    assert guards["compiled_graphs"] == guards["late_captures"] == 0


def test_the_teacher_forced_check_tells_a_bug_from_rounding():
    torch.manual_seed(0)
    model = random_model(tiny=True, device=torch.device("cpu"))
    engine = FastEngine(model, stop_ids=[], slots=2, max_context=100)
    prompt = torch.randint(1, model.config.vocab_size, (40,)).tolist()
    good = check(model, engine, prompt, 16, "check", 0.99)
    assert good["passed"] and good["confident_positions"] > 8

    def off_by_one(block, x, keys, values, positions, visible):  # each new token overwrites the one before it
        return decode_layer(block, x, keys, values, (positions - 1).clamp(min=0), visible)

    engine.layer = off_by_one
    bad = check(model, engine, prompt, 16, "check", 0.99)
    assert not bad["passed"] and bad["max_abs_diff"] > 0.1
