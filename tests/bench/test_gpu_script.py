"""`bash bench/gpu.sh --tiny`: the one GPU command, its every part run on a tiny model on the CPU."""

import pytest

pytestmark = pytest.mark.slow  # Runs bench/gpu.sh --tiny end to end.


def test_gpu_script_runs_every_part_and_writes_json_lines(gpu_tiny):
    assert gpu_tiny.done.returncode == 0, gpu_tiny.done.stderr[-3000:]
    records = gpu_tiny.records
    assert not [r for r in records if "failed" in r]
    paths = [(r["bench"], r.get("path")) for r in records]
    assert paths.count(("generate", "ours: start-up")) == 2  # the run, then a restart over Inductor's disk cache
    assert ("generate", "ours: guards") in paths and ("generate", "check: teacher-forced") in paths
    assert ("generate", "ours: fast engine, int8") in paths and ("generate", "ours: fast engine, int4") in paths
    for workload in ("edit", "echo", "no match"):  # speculation's rows, each beside the plain engine's
        assert paths.count(("generate", f"ours: fast engine, {workload}, speculate 4")) == 2  # 1 and 4 streams
        assert paths.count(("generate", f"ours: fast engine, {workload}")) == 2
    assert ("generate", "ours: guards, speculate 4") in paths
    assert ("generate", "ours: one decode step, profiled, int8") in paths  # where int8's step time goes
    assert any(bench == "train" for bench, _ in paths)
    humaneval = {r["path"]: r for r in records if r["bench"] == "humaneval"}  # evaluate's path, both ways
    assert humaneval["ours: fast engine"]["problems"] == 8 and humaneval["seed: generate, one problem at a time"]
    rows = [r for r in records if r["bench"] == "rows"]  # each way of the MLP products, timed
    assert {r["shape"] for r in rows} == {"c_fc", "c_proj"} and all(r.get("us", 0) > 0 for r in rows), rows
    assert {r["rows"] for r in rows} == {1, 8}  # one stream's step and a batched one
    assert all(r["device"].startswith("CPU") for r in records if "device" in r)
