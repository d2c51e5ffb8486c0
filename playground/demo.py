"""The offline demo checkpoint: built on first run by the `tiny` training recipe, then kept in the cache."""

from __future__ import annotations

import fcntl
import hashlib
import shutil
from pathlib import Path

RECIPE = Path(__file__).resolve().parent.parent / "training" / "recipes" / "tiny.yaml"
SOURCES = [RECIPE, RECIPE.parent.parent / "scratch.py"]


def demo_checkpoint(cache_dir: str | Path) -> Path:
    """The demo folder for the current recipe and data; builds it (about two minutes on 2 cores) if missing."""
    version = hashlib.sha256(b"".join(p.read_bytes() for p in SOURCES)).hexdigest()[:12]
    path = Path(cache_dir) / f"demo-{version}"
    if (path / "config.json").exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.parent / "demo.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a second app started meanwhile waits for this build
        if not (path / "config.json").exists():
            from training.train import main as train

            print(f"Building the offline demo model in {path} (first run only, about two minutes)...", flush=True)
            # --resume: a build killed midway goes on from its last checkpoint (a used folder is refused otherwise).
            train([str(RECIPE), "--output_dir", str(path), "--disable_tqdm", "false", "--resume", "true"])
            shutil.rmtree(path / "checkpoints", ignore_errors=True)
    return path
