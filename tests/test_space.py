"""Hosting as a Hugging Face Space: front matter, configuration by environment alone, no stray files."""

import os
import subprocess
import sys
import time

import httpx
import pytest
import yaml
from gradio_client import Client

from tests.conftest import ROOT, free_port, stop_app


def front_matter() -> dict:
    text = (ROOT / "README.md").read_text()
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


def test_readme_front_matter_describes_the_space():
    meta = front_matter()
    assert meta["sdk"] == "gradio" and meta["app_file"] == "app.py"
    assert meta["sdk_version"].startswith("6.") and meta["suggested_hardware"]
    assert "HuggingFaceH4/starchat-beta" in meta["models"] and meta["license"] == "bigcode-openrail-m"


def files_under(folder) -> set:
    return {p for p in folder.rglob("*")}


@pytest.mark.slow  # starts app.py
def test_the_app_starts_from_environment_variables_alone_and_writes_only_its_cache(tiny_checkpoint, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    port = free_port()
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(home),
        "SPACE_ID": "someone/starchat-playground",
        "STARCHAT_MODEL": str(tiny_checkpoint),
        "STARCHAT_PORT": str(port),
        "STARCHAT_CACHE_DIR": str(home / "cache"),
        "GRADIO_ANALYTICS_ENABLED": "False",
        "HF_HUB_OFFLINE": "1",
    }
    repo_before = subprocess.run(
        ["git", "status", "--porcelain", "--ignored"], cwd=ROOT, capture_output=True, text=True
    ).stdout
    proc = subprocess.Popen(
        [sys.executable, "app.py"], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        url = f"http://127.0.0.1:{port}/"
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, proc.stdout.read()
            try:
                if httpx.get(url, timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                assert time.monotonic() < deadline
                time.sleep(0.3)
        reply = Client(url, verbose=False).predict(message="hi", history=[], max_new_tokens=8, api_name="/chat")
        assert isinstance(reply, str)
    finally:
        stop_app(proc)
    assert "0.0.0.0" in proc.stdout.read()  # a Space listens on every interface
    stray = {p for p in files_under(home) if not p.is_relative_to(home / "cache")}
    assert not stray, stray
    repo_after = subprocess.run(
        ["git", "status", "--porcelain", "--ignored"], cwd=ROOT, capture_output=True, text=True
    ).stdout
    new = set(repo_after.splitlines()) - set(repo_before.splitlines())
    assert not {line for line in new if "__pycache__" not in line}, new


@pytest.mark.slow  # imports the backend in two new processes
def test_zerogpu_marks_the_generation_when_the_spaces_package_is_there(tmp_path):
    (tmp_path / "spaces.py").write_text("def GPU(fn):\n    fn.on_zero_gpu = True\n    return fn\n")
    code = "from playground.backends.local import LocalBackend; print(LocalBackend.stream.on_zero_gpu)"
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}:{ROOT}"}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)
    assert out.stdout.strip() == "True", out.stderr[-2000:]
    plain = subprocess.run(
        [
            sys.executable,
            "-c",
            "from playground.backends.local import LocalBackend as B;print(hasattr(B.stream, 'on_zero_gpu'))",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert plain.stdout.strip() == "False"
