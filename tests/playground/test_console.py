"""What the libraries print and fetch on their own: nothing a person did not ask for."""

import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT
from tests.fakes import FakeHub

pytestmark = pytest.mark.slow  # each test imports the Trainer in a new process (~7 s)

# Imports the training package as `python -m training.train` and the demo's build do, recording whether
# bitsandbytes' import looked for its CPU kernel (it does on CPUs with AVX512-BF16 only).
IMPORT_TRAINING = """
import kernels
looked = []
lookup = kernels.get_kernel
kernels.get_kernel = lambda repo, *a, **k: (looked.append(repo), lookup(repo, *a, **k))[1]
import training
from transformers import Trainer
print(looked)
"""


def import_training(**env: str) -> subprocess.CompletedProcess:
    env = {**os.environ, **env}
    return subprocess.run([sys.executable, "-c", IMPORT_TRAINING], cwd=ROOT, env=env, capture_output=True, text=True)


def test_importing_the_trainer_offline_prints_nothing():
    run = import_training(HF_HUB_OFFLINE="1")
    assert run.returncode == 0 and run.stderr == "", run.stderr


def test_importing_the_trainer_online_asks_the_hub_nothing(tmp_path):
    with FakeHub() as hub:
        run = import_training(HF_HUB_OFFLINE="0", HF_ENDPOINT=hub.url, HF_HUB_CACHE=str(tmp_path))
    assert run.returncode == 0 and run.stderr == "", run.stderr
    if run.stdout.strip() == "[]":
        pytest.skip("this CPU has no AVX512-BF16: bitsandbytes looks for no CPU kernel here")
    assert hub.requests == []  # before: its organisation overview, on every training run
