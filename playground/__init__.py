"""StarChat Playground: the chat UI, the APIs and the backends (training/ imports the template)."""

import logging

# transformers imports torchao whenever it is installed (for --quantize int8|int4); torchao then logs
# that its CUDA-only extensions do not load on this machine and torch that torchao registers enums the
# deprecated way. Nothing a user can act on: only their errors are shown.
for _name in ("torchao", "torch.utils._pytree"):
    logging.getLogger(_name).setLevel(logging.ERROR)
