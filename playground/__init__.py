"""StarChat Playground: the chat UI, the APIs and the backends (training/ imports the template)."""

import logging

# transformers imports torchao whenever it is installed (for --quantize int8|int4); torchao then logs
# that its CUDA-only extensions do not load on this machine and torch that torchao registers enums the
# deprecated way. Nothing a user can act on: only their errors are shown.
# transformers' Trainer imports peft, which imports bitsandbytes whenever it is installed; on a CPU with
# AVX512-BF16, bitsandbytes then looks for the `kernels` package to fetch a CPU 4-bit matmul from the
# Hub and warns ("Failed to load CPU gemm_4bit_forward from kernels-community") when it is missing.
# Nothing here runs 4-bit on the CPU (--quantize 4bit and QLoRA are CUDA only): nothing to act on.
for _name in ("torchao", "torch.utils._pytree", "bitsandbytes.backends.cpu.ops"):
    logging.getLogger(_name).setLevel(logging.ERROR)
