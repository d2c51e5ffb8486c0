"""What the libraries print, and fetch, while the app speaks for itself: errors only, and nothing from the Hub
that nobody asked for."""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import sys
import warnings
from collections.abc import Iterator

# Loggers that speak of a library's own internals on import, which nobody can act on:
QUIET_LOGGERS = (
    "torchao",  # its CUDA-only extensions do not load on a CPU
    "torch.utils._pytree",  # torchao registers its enums the deprecated way
    "bitsandbytes.backends.cpu.ops",  # its CPU 4-bit kernel is not at hand (we run 4-bit on CUDA only)
    "kernels",  # "skipping publisher trust check ... offline": the kernel lookup that bitsandbytes_offline keeps local
)


def quiet_library_loggers() -> None:
    """QUIET_LOGGERS at errors only; called once, before anything imports those libraries."""
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)


def import_bitsandbytes_offline() -> None:
    """Import bitsandbytes (if installed) with the Hub switched off. On a CPU with AVX512-BF16 its import asks
    the Hub for a CPU 4-bit kernel (kernels-community/quantization-bitsandbytes): a publisher check and a
    download on every training run and 8bit / 4bit load, for a matmul this project never runs. Offline, the
    `kernels` package looks in its local cache only, finds nothing, and bitsandbytes goes on without it."""
    if "bitsandbytes" in sys.modules or importlib.util.find_spec("bitsandbytes") is None:
        return
    from huggingface_hub import constants  # read by `kernels` at each call, so switching it here takes effect

    online, constants.HF_HUB_OFFLINE = constants.HF_HUB_OFFLINE, True
    try:
        import bitsandbytes  # noqa: F401
    finally:
        constants.HF_HUB_OFFLINE = online


@contextlib.contextmanager
def libraries_quiet() -> Iterator[None]:
    """Within: no progress bars of transformers, datasets or huggingface_hub, their loggers at errors only,
    and no Python warnings; every setting is restored after. An error still shows: it is raised, or logged
    at the error level. The caller prints what the person needs to know (and its own bar, if any)."""
    import datasets
    from huggingface_hub import utils as hub
    from transformers.utils import logging as transformers_logging

    before = (
        transformers_logging.get_verbosity(),
        transformers_logging.is_progress_bar_enabled(),
        datasets.logging.get_verbosity(),
        datasets.are_progress_bars_disabled(),
        hub.are_progress_bars_disabled(),
    )
    # The warnings filter is scoped here: a library's warning during this block is about our own fixed
    # recipe, nothing the person can act on; the restore below may warn too (an environment variable that
    # pins the bars off) and is inside it.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        transformers_logging.set_verbosity_error()
        transformers_logging.disable_progress_bar()  # also huggingface_hub's
        datasets.logging.set_verbosity_error()
        datasets.disable_progress_bars()
        try:
            yield
        finally:
            verbosity, transformers_bars, datasets_verbosity, datasets_bars_off, hub_bars_off = before
            transformers_logging.set_verbosity(verbosity)
            if transformers_bars:
                transformers_logging.enable_progress_bar()
            datasets.logging.set_verbosity(datasets_verbosity)
            if not datasets_bars_off:
                datasets.enable_progress_bars()
            if hub_bars_off:  # transformers' enable_progress_bar turned them on with its own
                hub.disable_progress_bars()
