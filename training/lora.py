"""LoRA adapters as the recipes set them, shared by training.train and bench.train.

Kept apart from training.train so that the GPU benchmark imports no data stack (the `datasets`
library is not on every GPU image).
"""

from __future__ import annotations

from collections.abc import Iterable

from peft import LoraConfig, PeftModel, get_peft_model


def add_adapters(
    model, *, r: int, alpha: int, dropout: float, targets: list[str], chat_token_ids: Iterable[int], bf16: bool
) -> PeftModel:
    """The model with LoRA adapters on `targets` and trainable embedding rows for the chat tokens only."""
    config = LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=targets,
        # The chat tokens are new: their embedding rows must learn too, and only theirs.
        trainable_token_indices=list(chat_token_ids) or None,
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(model, config)
    if bf16:
        adapters_take_bf16_inputs(model)
    return model


def adapters_take_bf16_inputs(model) -> None:
    """For training under bf16 autocast: PEFT casts each adapter's input to its fp32 weights, but autocast
    runs the adapter's matmuls in bf16 anyway, so the cast only adds copies and an fp32 dropout (its cost:
    docs/benchmarks.md)."""
    for module in model.modules():
        if hasattr(module, "cast_input_dtype_enabled"):
            module.cast_input_dtype_enabled = False
