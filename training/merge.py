"""LoRA adapter + its base -> a full served checkpoint (same format as a full fine-tune).

python -m training.merge --base BASE --adapter ADAPTER_DIR --output DIR [--dtype bfloat16]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from training.checkpoint import (
    RUN_PARTS,
    base_config,
    check_output,
    check_writable,
    model_card,
    same_folder,
    save_checkpoint,
)

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def merge(
    base: str, adapter: str | Path, output: str | Path, card: str | None = None, dtype: torch.dtype = torch.bfloat16
) -> Path:
    """Loads the base unquantized (a QLoRA run's 4-bit base too), so the merge is exact in `dtype`."""
    tokenizer = AutoTokenizer.from_pretrained(adapter)  # the adapter's run added the chat tokens
    model = AutoModelForCausalLM.from_pretrained(base, dtype=dtype)
    if model.get_input_embeddings().weight.shape[0] != len(tokenizer):
        model.resize_token_embeddings(len(tokenizer))
    merged = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    merged.config.use_cache = True
    card = card or model_card(Path(output).name, base, {"base": base, "adapter": str(adapter)}, [])
    return save_checkpoint(merged, tokenizer, output, card)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True, help="the base model the adapter was trained on")
    parser.add_argument("--adapter", required=True, help="folder with the LoRA adapter and its tokenizer")
    parser.add_argument("--output", required=True, help="where the served checkpoint goes")
    parser.add_argument("--dtype", default="bfloat16", choices=sorted(DTYPES))
    parser.add_argument("--overwrite", action="store_true", help="replace a model already in --output")
    args = parser.parse_args(argv)
    if not args.output.strip():  # Path("") is the current folder
        raise SystemExit("--output is empty: name the folder of the served checkpoint")
    output = Path(args.output).expanduser()
    check_output(output, "--output", {"the base model": args.base, "the adapter": args.adapter}, cleared=False)
    if any((output / part).is_dir() for part in RUN_PARTS):
        raise SystemExit(
            f"{output} is a training run's folder: its served checkpoint and model card are the run's own; "
            "choose another --output"
        )
    if (output / "config.json").exists() and not args.overwrite:
        raise SystemExit(f"{output} already holds a model: pass --overwrite to replace it, or choose another --output")
    config = Path(args.adapter) / "adapter_config.json"
    if not config.is_file():
        raise SystemExit(f"{args.adapter}: no LoRA adapter here (a training run keeps it in OUTPUT_DIR/adapter)")
    try:
        trained_on = json.loads(config.read_text()).get("base_model_name_or_path") or ""
    except (ValueError, AttributeError):
        raise SystemExit(f"{config} is not an adapter's config (a JSON object)") from None
    base_config(args.base)
    # An adapter that does not name its base (saved by hand) is taken at its word.
    same_base = not trained_on or trained_on == args.base or same_folder(trained_on, args.base)
    # A LoRA run's served folder has its adapter merged in: merging an adapter of that run (or a copy of
    # it) again would apply it twice. An adapter trained on that folder itself is another matter.
    if (Path(args.base) / "adapter" / "adapter_config.json").is_file() and not same_base:
        raise SystemExit(
            f"{args.base} is a LoRA run's served checkpoint, its adapter already merged in, and this adapter "
            f"was trained on {trained_on}: merge it into that base instead (--base {trained_on})"
        )
    if not same_base:
        print(f"note: the adapter was trained on {trained_on}, and is merged into {args.base}")
    check_writable(output, "--output")
    try:
        merged = merge(args.base, args.adapter, output, dtype=DTYPES[args.dtype])
    except RuntimeError as exc:  # PEFT's load_state_dict lists every layer whose shape differs
        if "size mismatch" not in str(exc):
            raise
        raise SystemExit(
            f"the adapter's layers do not have {args.base}'s sizes: merge it into the base it was trained on"
            + (f" ({trained_on})" if trained_on else "")
        ) from None
    print(f"served checkpoint: {merged}")


if __name__ == "__main__":
    main()
