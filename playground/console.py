"""What the libraries print while the app speaks for itself (the demo's build and load): errors only."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator


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
