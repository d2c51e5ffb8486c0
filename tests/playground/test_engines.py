"""Commands for vLLM and TGI: checked against a served checkpoint, and the playground pointed at them."""

import json
import shutil
import subprocess
import sys

import pytest

from playground.backends import ChatRequest, SamplingParams, collect
from playground.backends.loading import load_backend
from playground.engines import check_checkpoint, main, plan
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
        reply, _ = collect(
            backend.stream(ChatRequest([{"role": "user", "content": "hi"}], SamplingParams(max_new_tokens=16)))
        )
        assert reply == server.script.reply and isinstance(server.script.requests[-1]["body"]["prompt"], list)


def refused(capsys, *args: str) -> str:
    """What `python -m playground.engines ARGS` says as it refuses (exit code 2), in this process."""
    with pytest.raises(SystemExit) as exit:
        main(list(args))
    out, err = capsys.readouterr()
    assert exit.value.code == 2 and out == "" and err.count("\n") == 1, err
    return err


def test_what_cannot_be_served_is_one_line_naming_it(tiny_checkpoint, tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("not a model")
    broken = tmp_path / "broken"
    shutil.copytree(tiny_checkpoint, broken)
    (broken / "generation_config.json").write_text('{"eos_token_id": 0}')
    template = tmp_path / "bad template"
    shutil.copytree(tiny_checkpoint, template)
    config = json.loads((template / "tokenizer_config.json").read_text())
    (template / "tokenizer_config.json").write_text(json.dumps({**config, "chat_template": "{% if %}"}))
    for checkpoint, said in [
        (str(tmp_path), f"{tmp_path}: not a model's folder (no config.json there)"),
        (str(tmp_path / "notes.txt"), "notes.txt: not a model's folder"),
        ("", "name a served checkpoint: a folder or a Hub id"),
        (str(broken), f"{broken}: generation_config.json must stop at <|end|> and <|endoftext|>"),
        (str(template), f"{template}: "),  # Jinja's own error, on the same line
        (f"{tmp_path}/two\nlines", f"{tmp_path}/two lines: not a model's folder"),
    ]:
        assert said in refused(capsys, "vllm", checkpoint)
    # As a person runs it, offline: the Hub's own reason follows the name, on one line.
    run = subprocess.run(
        [sys.executable, "-m", "playground.engines", "vllm", "someone/not-cached-here"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"},
    )
    assert run.returncode == 2 and run.stdout == "" and run.stderr.count("\n") == 1, run.stderr
    assert run.stderr.startswith("engines.py: someone/not-cached-here: ")


@pytest.mark.parametrize(
    "flags, said",
    [
        (["--gpus", "-3"], "argument --gpus: must be from 1 to 1024, not -3"),
        (["--gpus", "0"], "argument --gpus: must be from 1 to 1024, not 0"),
        (["--gpus", "99999999999999999999"], "must be from 1 to 1024"),
        (["--port", "70000"], "argument --port: must be from 1 to 65535, not 70000"),
        (["--port", "0"], "argument --port: must be from 1 to 65535, not 0"),
        (["--port", "1e3"], "argument --port: '1e3' is not a whole number"),
    ],
)
def test_numbers_the_commands_could_not_take_are_refused(tiny_checkpoint, flags, said, capsys):
    with pytest.raises(SystemExit) as exit:
        main(["tgi", str(tiny_checkpoint), *flags])
    assert exit.value.code == 2 and said in capsys.readouterr().err.splitlines()[-1]


def test_the_commands_work_for_any_folder_a_shell_or_docker_can_name(tiny_checkpoint, tmp_path, monkeypatch):
    dashed = tmp_path / "-d"
    shutil.copytree(tiny_checkpoint, dashed)
    monkeypatch.chdir(tmp_path)
    commands = plan("vllm", "-d", 1, 8000)  # relative: written absolute, never read as an option
    assert commands.server[2] == str(dashed) and commands.playground[-1] == str(dashed)
    colon = tmp_path / "a:b"
    shutil.copytree(tiny_checkpoint, colon)
    with pytest.raises(ValueError, match="docker -v cannot mount a path with ':'"):
        plan("tgi", str(colon), 1, 8080)
    short = tmp_path / "short"
    shutil.copytree(tiny_checkpoint, short)
    config = json.loads((short / "config.json").read_text())
    (short / "config.json").write_text(json.dumps({**config, "n_positions": 100}))
    server = plan("tgi", str(short), 1, 8080).server
    assert server[server.index("--max-input-tokens") + 1] == "50"  # a reply keeps room in a short context


def test_run_without_the_engine_installed_says_so(tiny_checkpoint, capsys, monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")  # no vllm
    assert "cannot start vllm here (No such file or directory)" in refused(
        capsys, "vllm", str(tiny_checkpoint), "--run"
    )
