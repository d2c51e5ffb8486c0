"""Runs generated programs, each in its own process: in an empty folder, with time, memory and file-size
limits, none of this process's environment, and (where Linux lends the means) in namespaces of its own:
no network, no host process to signal, nothing left running after its time, and no file outside its
folder to change (sandbox.sh). One limit it lacks: as root, the number of its processes (each has the
memory limit, and all end at the time limit).

Whether the sandbox holds is not assumed: `sandbox_problem` runs a program that tries to write outside
its folder and to reach the network, and the sandbox is used only if both fail.
"""

from __future__ import annotations

import contextlib
import functools
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

SCRIPT = Path(__file__).with_name("sandbox.sh")
MEMORY_BYTES = 2 * 1024**3  # address space: an interpreter and a test's data, not a runaway list
FILE_BYTES = 16 * 1024**2  # the largest file a program may write, in its own folder
FOLDER_BYTES = 64 * 1024**2  # its folder, a tmpfs in the sandbox
PROCESSES = 64  # at once, where it runs as a user that is not root
ENVIRONMENT = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}  # no token or secret of ours
OUTPUT_CHARS = 2_000  # of what a program printed, kept to say why it failed


@dataclass(frozen=True)
class Result:
    status: str  # "passed", "failed" or "timed out"
    detail: str = ""  # the end of what it printed, for a failure

    @property
    def passed(self) -> bool:
        return self.status == "passed"


def limits(seconds: float) -> None:
    """In the child, before it runs the program (its interpreter and what it starts inherit them)."""
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_BYTES, MEMORY_BYTES))
    resource.setrlimit(resource.RLIMIT_FSIZE, (FILE_BYTES, FILE_BYTES))
    cpu = int(seconds) + 1
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if os.geteuid() != 0:
        resource.setrlimit(resource.RLIMIT_NPROC, (PROCESSES, PROCESSES))


def command(folder: str, sandboxed: bool) -> list[str]:
    python = [sys.executable, "-I", "-"]  # the program on stdin; -I: no user site, not its folder on the path
    if not sandboxed:
        return python
    user = [] if os.geteuid() == 0 else ["--user", "--map-root-user"]
    # --kill-child: killed, unshare takes the namespace's first process, and with it every process in it.
    spaces = ["--pid", "--fork", "--kill-child", "--mount-proc", "--net", "--mount"]
    return ["unshare", *user, *spaces, "--", "sh", str(SCRIPT), folder, str(FOLDER_BYTES), *python]


def run_program(program: str, seconds: float, sandboxed: bool = True) -> Result:
    """Runs `program`; it passes if it exits 0 within `seconds`."""
    with tempfile.TemporaryDirectory(prefix="starchat-eval-") as folder:
        process = subprocess.Popen(
            command(folder, sandboxed),
            cwd=folder,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env={**ENVIRONMENT, "HOME": folder},
            start_new_session=True,  # its own process group: a timeout ends whatever it started too
            preexec_fn=functools.partial(limits, seconds),
        )
        try:
            output, _ = process.communicate(program.encode(errors="replace"), timeout=seconds)
        except subprocess.TimeoutExpired:
            end(process)
            return Result("timed out", f"still running after {seconds:g} s")
        finally:
            end(process)
    text = output.decode(errors="replace").strip()
    if process.returncode == 0:
        return Result("passed")
    return Result("failed", text[-OUTPUT_CHARS:] or f"exit status {process.returncode}")


def end(process: subprocess.Popen) -> None:
    """Kills the program's process group (in the sandbox: its namespace, with every process in it), and stops
    reading what it prints: unsandboxed, a child that left the group may hold the pipe open."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    for pipe in (process.stdin, process.stdout):
        if pipe:
            pipe.close()


@functools.cache
def sandbox_problem() -> str | None:
    """Why this machine cannot sandbox a program, or None where it can (checked by trying)."""
    if sys.platform != "linux":
        return "the sandbox needs Linux namespaces"
    missing = [tool for tool in ("unshare", "setpriv", "mount", "awk") if not shutil.which(tool)]
    if missing:
        return f"the sandbox needs {', '.join(missing)} (util-linux)"
    # Outside /tmp, which the sandbox replaces: the file must stay in sight, behind a read-only mount.
    home = Path.home() if os.access(Path.home(), os.W_OK) else Path.cwd()
    with tempfile.TemporaryDirectory(prefix=".starchat-sandbox-check-", dir=home) as outside:
        target = Path(outside) / "kept.txt"
        target.write_text("kept")
        probe = PROBE.format(target=str(target))
        result = run_program(probe, seconds=20)
        if not target.exists() or target.read_text() != "kept":
            return "a program in the sandbox changed a file outside its folder"
        if not result.passed:
            return f"the sandbox does not start here ({result.detail.splitlines()[-1] if result.detail else ''})"
    return None


# Passes only where writing outside its folder and reaching the network both fail, and its folder is usable.
PROBE = """
import os, socket
from pathlib import Path
Path("mine.txt").write_text("mine")
for attempt in (lambda: Path({target!r}).write_text("changed"), lambda: os.remove({target!r})):
    try:
        attempt()
    except OSError:
        pass
    else:
        raise SystemExit("wrote outside its folder")
try:
    socket.create_connection(("1.1.1.1", 53), timeout=2)
except OSError:
    pass
else:
    raise SystemExit("reached the network")
"""
