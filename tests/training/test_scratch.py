"""training/scratch.py: the tiny model built from nothing (its tokenizer here; the runs in test_train.py)."""

import subprocess
import sys

import pytest

from tests.conftest import ROOT


@pytest.mark.slow  # trains a tokenizer on a megabyte: 6 s on 2 cores
def test_a_megabyte_without_a_space_does_not_stall_the_tokenizers_training():
    # The BPE trainer's time grows with the square of a word's length: 100,000 characters took 6 s, a
    # megabyte would take most of an hour (a hostile tester's row hung the scratch build).
    code = (
        "from training.scratch import train_tokenizer\n"
        "tokenizer = train_tokenizer(['def add(a, b):\\n    return a + b\\n' * 20, 'x' * 1_000_000], 300)\n"
        "print(tokenizer.decode(tokenizer('return a + b')['input_ids']))\n"
    )
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and run.stdout == "return a + b\n", run.stderr[-2000:]
