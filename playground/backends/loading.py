"""Which backend serves a model: the flags' one, or each entry of a models file."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from playground.backends import Backend, BackendError

# What people see for the model served when no --model is given (the app's default_model): in the model
# list, in /v1/models (an id clients pass back) and on the console, never its cache folder's name.
DEMO_NAME = "StarChat demo (tiny, trained here)"


def check_model_path(model: str) -> None:
    """A model named by a path, or a folder that is here, must be a model's folder (a Hub id is checked as it
    loads)."""
    folder = Path(model).expanduser()
    if not model or not (model.startswith(("/", ".", "~")) or folder.is_dir()) or (folder / "config.json").is_file():
        return
    if (folder / "adapter_config.json").is_file():
        raise ValueError(
            f"{model}: a LoRA adapter, not a model: merge it into its base first "
            f"(python -m training.merge --base BASE --adapter {model} --output DIR), then serve DIR"
        )
    if (folder / "checkpoints").is_dir():
        raise ValueError(
            f"{model}: a training run that has not written its served checkpoint yet (stopped early?): "
            f"continue it with python -m training.train RECIPE.yaml --output_dir {model} --resume true"
        )
    raise ValueError(f"{model}: not a model's folder (no config.json there)")


def load_backend(settings, default_model: Callable[[], str | Path] | None = None) -> Backend:
    """The backend `settings` ask for; with no --model, the folder `default_model` gives (the app's demo)."""
    from playground.backends.local import LocalBackend

    check_model_path(settings.model)
    if settings.backend == "endpoint":
        from playground.backends.endpoint import EndpointBackend

        if settings.speculate:  # said, as the local backend says whether it drafts
            print(
                f"--speculate {settings.speculate} is not used with --backend endpoint: the server decodes "
                "(vLLM, SGLang and TGI have n-gram speculation of their own)",
                flush=True,
            )
        return EndpointBackend.connect(
            settings.model,
            settings.endpoint_url,
            settings.endpoint_protocol,
            settings.endpoint_token or None,
            settings.endpoint_timeout,
            settings.endpoint_model,
        )
    if not settings.model and default_model is None:
        raise ValueError("no model given: pass --model ID_OR_PATH")
    model = settings.model or str(default_model())
    return LocalBackend.from_pretrained(
        model,
        settings.quantize,
        demo=not settings.model,
        engine=settings.engine,
        slots=settings.batch_slots,
        speculate=settings.speculate,
        name="" if settings.model else DEMO_NAME,
    )


def load_backends(settings, default_model: Callable[[], str | Path] | None = None) -> dict[str, Backend]:
    """Display name -> backend: the models file's entries in order, or the one model of the flags."""
    if not settings.models_file:
        backend = load_backend(settings, default_model)
        return {backend.info.model: backend}
    from playground.models_file import read_models_file

    backends = {}
    for i, (name, chosen) in enumerate(read_models_file(settings.models_file, settings)):
        try:
            backends[name] = load_backend(chosen, default_model)
        except (OSError, ValueError, BackendError) as exc:  # which of several models failed, and why
            raise ValueError(f"{settings.models_file}: entry {i} ({name}): {exc}") from None
    return backends
