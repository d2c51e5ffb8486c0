"""Weight-only int8 / int4 (torchao) served by the fast engine; the flag, and the hint when bf16 does not fit."""

import pytest
import torch

from bench.common import compare
from playground.backends import BackendError, ChatRequest, SamplingParams
from playground.backends.fast import Job
from playground.backends.local import LocalBackend, fit_hint, quantize_weights
from playground.settings import Settings


def test_int8_through_the_fast_engine_agrees_with_fp32(tiny_checkpoint):
    full = LocalBackend.from_pretrained(str(tiny_checkpoint), engine="plain")
    int8 = LocalBackend.from_pretrained(str(tiny_checkpoint), quantize="int8", engine="fast", slots=2)
    weights = [block.attn.c_attn.weight for block in int8.model.transformer.h]
    assert all(w.dtype == torch.float32 and type(w).__name__ == "Int8Tensor" for w in weights)
    assert int8.info.quantization == "int8" and int8.engine is not None
    # Greedy: a sampled reply of the untrained model may end after a token or two, leaving nothing to compare.
    request = ChatRequest(
        [{"role": "user", "content": "How do I sort a list?"}], SamplingParams(max_new_tokens=24, temperature=0)
    )
    prompt = int8.prepare(request.messages, 24).input_ids
    job = Job(request, prompt, logits=[])
    int8.engine.submit(job)
    tokens = list(job)
    with torch.inference_mode():
        reference = full.model(torch.tensor([prompt + tokens[:-1]])).logits[0, len(prompt) - 1 :]
    quality = compare(reference, torch.stack(job.logits), margin=0.1)
    assert quality["top1_agreement"] >= 0.95 and quality["confident_positions"] >= 12
    assert 0 < quality["relative_error"] < 0.05  # quantized: close, not equal


def test_quantizing_leaves_the_compiler_settings_of_the_process_as_they_were(tiny_checkpoint):
    """torchao's configs turn on exhaustive tuning for every later compilation in the process by default:
    start-up would then tune every (batch, context) bucket of every engine, bf16 ones included."""
    model = LocalBackend.from_pretrained(str(tiny_checkpoint), engine="plain").model
    before = torch._inductor.config.save_config_portable()
    quantize_weights(model, "int8", torch.device("cpu"))
    after = torch._inductor.config.save_config_portable()
    assert {key: after[key] for key in after if after[key] != before.get(key)} == {}


def test_int4_needs_a_gpu_and_says_so(tiny_checkpoint):
    model = LocalBackend.from_pretrained(str(tiny_checkpoint), engine="plain").model
    with pytest.raises(BackendError, match=r"int4 needs a CUDA GPU.*--quantize int8"):
        quantize_weights(model, "int4", torch.device("cpu"))


def test_the_flag_takes_both_families():
    for choice in ("none", "int8", "int4", "8bit", "4bit"):
        assert Settings.from_args(["--quantize", choice], env={}).quantize == choice
    assert Settings.from_args([], env={"STARCHAT_QUANTIZE": "int4"}).quantize == "int4"


def test_a_model_too_big_for_the_card_gets_a_hint():
    gb = 10**9
    assert fit_hint(31 * gb, 24 * gb) == "31 GB of weights, 24 GB card: try --quantize int8 (or int4)"
    assert fit_hint(31 * gb, 16 * gb) == "31 GB of weights, 16 GB card: try --quantize int4"
    assert fit_hint(31 * gb, 80 * gb) is None
    assert "too big even in int4" in fit_hint(31 * gb, 6 * gb)
