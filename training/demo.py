"""The offline demo checkpoint: built on first run by the `tiny` training recipe, then kept in the cache."""

from __future__ import annotations

import fcntl
import hashlib
import shutil
from pathlib import Path

RECIPE = Path(__file__).resolve().parent / "recipes" / "tiny.yaml"
SOURCES = [RECIPE, RECIPE.parent.parent / "scratch.py"]
BUILD_SECONDS = 65  # measured on 2 CPU cores (docs/benchmarks.md)


def demo_folder(cache_dir: str | Path) -> Path:
    """Where the demo of the current recipe and data is kept, built or not."""
    version = hashlib.sha256(b"".join(p.read_bytes() for p in SOURCES)).hexdigest()[:12]
    return Path(cache_dir) / f"demo-{version}"


def demo_checkpoint(cache_dir: str | Path) -> Path:
    """The demo folder for the current recipe and data; builds it (about BUILD_SECONDS on 2 cores) if missing."""
    path = demo_folder(cache_dir)
    if (path / "config.json").exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.parent / "demo.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a second app started meanwhile waits for this build
        if not (path / "config.json").exists():
            from training.train import Interrupted
            from training.train import main as train

            print(
                "No --model given and no demo model cached yet: building a small offline demo model once "
                f"(the tiny training recipe, about {BUILD_SECONDS} s on 2 CPU cores), kept in {path}",
                flush=True,
            )
            # --resume: a build killed midway goes on from its last checkpoint (a used folder is refused otherwise).
            # quiet: the line above says what happens; the training's bar is all that follows it.
            try:
                train([str(RECIPE), "--output_dir", str(path), "--resume", "true"], quiet=True)
            except Interrupted:
                raise SystemExit("interrupted while building the demo model; the next start goes on from it") from None
            shutil.rmtree(path / "checkpoints", ignore_errors=True)
    return path
