"""The card's account of how a run was launched: the accelerate config file, read from the launcher."""

import subprocess
import sys
import time
from pathlib import Path

from training.launch import accelerate_config, named_config


def test_the_config_file_is_read_from_the_accelerate_launch_that_started_the_run():
    # A process whose command line reads as `accelerate launch --config_file ...` (python, sleeping).
    launcher = subprocess.Popen(
        ["accelerate", "-c", "import sys; sys.stdin.read()", "launch", "--config_file", "fsdp2.yaml", "-m", "x"],
        executable=sys.executable,
        stdin=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 10
        while b"launch" not in Path(f"/proc/{launcher.pid}/cmdline").read_bytes():  # until it has exec'd
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert accelerate_config(launcher.pid) == "fsdp2.yaml"
    finally:
        launcher.communicate(b"")
    assert accelerate_config() == ""  # pytest was not started by accelerate launch
    assert named_config(["accelerate", "launch", "--config_file=a.yaml", "-m", "x"]) == "a.yaml"
