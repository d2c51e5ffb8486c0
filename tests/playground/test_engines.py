"""Commands for vLLM and TGI: checked against a served checkpoint, and the playground pointed at them."""

import shutil
import subprocess
import sys

import pytest

from playground.backends import ChatRequest, SamplingParams, load_backend
from playground.engines import check_checkpoint, plan
from playground.settings import Settings
from tests.conftest import ROOT
from tests.fakes import FakeServer


def test_vllm_serves_the_folder_with_tensor_parallel_and_the_playground_sends_token_ids(tiny_checkpoint):
    commands = plan("vllm", str(tiny_checkpoint), gpus=8, port=8000)
    assert commands.server[:3] == ["vllm", "serve", str(tiny_checkpoint)]
    assert "--tensor-parallel-size" in commands.server and "8" in commands.server
    assert commands.server[commands.server.index("--max-model-len") + 1] == "256"
    assert commands.playground == [
        "python",
        "app.py",
        "--backend",
        "endpoint",
        "--endpoint-protocol",
        "openai",
        "--endpoint-url",
        "http://127.0.0.1:8000",
        "--model",
        str(tiny_checkpoint),
    ]


def test_tgi_mounts_the_folder_and_shards_it(tiny_checkpoint):
    commands = plan("tgi", str(tiny_checkpoint), gpus=4, port=8080)
    assert f"{tiny_checkpoint.resolve()}:/model" in commands.server and "--num-shard" in commands.server
    assert "tgi" in commands.playground and "http://127.0.0.1:8080" in commands.playground


def test_a_checkpoint_that_would_not_stop_at_end_is_refused(tiny_checkpoint, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_checkpoint, broken)
    (broken / "generation_config.json").write_text('{"eos_token_id": 0}')
    with pytest.raises(ValueError, match="must stop at <\\|end\\|>"):
        check_checkpoint(str(broken))


def test_the_printed_playground_command_works_against_a_server_of_that_protocol(tiny_checkpoint, tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "playground.engines", "vllm", str(tiny_checkpoint), "--gpus", "2"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "vllm serve" in out and "--tensor-parallel-size 2" in out
    playground = plan("vllm", str(tiny_checkpoint), 2, 8000).playground
    flags = playground[2:]  # after `python app.py`
    with FakeServer() as server:  # stands in for vLLM's OpenAI-compatible server
        flags[flags.index("--endpoint-url") + 1] = server.url
        backend = load_backend(Settings.from_args(flags, env={}))
        reply = "".join(
            backend.stream(ChatRequest([{"role": "user", "content": "hi"}], SamplingParams(max_new_tokens=16)))
        )
        assert reply == server.script.reply and isinstance(server.script.requests[-1]["body"]["prompt"], list)
