"""bench/common.py: what every benchmark shares."""

import weakref

import torch

from bench.common import reset_peak_memory
from bench.generate import random_model
from playground.backends.local import quantize_weights


def test_a_quantized_model_dropped_before_a_measurement_is_gone_when_it_starts():
    # torchao's layers hold reference cycles: without a collection the int8 model of one line stayed on
    # the GPU under the next line's load (the int4 load's peak read 23.6 GiB on an H100, int8 included).
    model = quantize_weights(random_model(tiny=True, device=torch.device("cpu")), "int8", torch.device("cpu"))
    layer = weakref.ref(model.transformer.h[0].mlp.c_fc)
    del model
    reset_peak_memory(torch.device("cpu"))
    assert layer() is None
