"""LoRA and QLoRA training steps on a StarCoderPlus-shaped model with random weights.

    python -m bench.train            # one GPU: the seed's way (plain PEFT, checkpointing everywhere) vs ours
    python -m bench.train --tiny     # a tiny model on the CPU, for the test suite

Ours is what training/ does with the QLoRA recipe's LoRA settings (r, alpha, dropout, targets, the
four chat-token rows trained): blocks packed without padding or cross-talk (training.format's
PackedCollator), the fastest attention this machine has, bf16, and activation checkpointing only on
as many layers as the memory needs. Each line is JSON: tokens/s, peak memory and 6N-MFU
(6 x parameters x tokens/s over the card's bf16 peak), naming the device.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import math
import random
import shutil
import tempfile
from pathlib import Path

import torch
import yaml
from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
from transformers import AutoModelForCausalLM, GPTBigCodeForCausalLM

from bench.common import (
    device_name,
    emit,
    model_config,
    peak_flops,
    peak_memory_gib,
    reset_peak_memory,
    timed,
    top_kernels,
)
from training.format import PackedCollator
from training.lora import add_adapters

RECIPE = Path(__file__).resolve().parent.parent / "training" / "recipes" / "starchat-qlora.yaml"
CHAT_TOKENS = 4  # the StarCoderPlus shape's vocabulary ends with the four chat tokens (49152-49155)
# Bytes kept per token, per unit of hidden size, per layer for the backward pass in bf16: ~34 for the
# block (Korthikanti et al.) and ~21 for LoRA's dropout copies of the inputs of c_attn, c_proj, c_fc, c_proj.
KEPT_BYTES = 34 + 21


def fastest_attention(device: torch.device) -> str:
    """flash-attn's varlen kernels where installed; else SDPA (flash without a mask, mem-efficient with one)."""
    if device.type == "cuda" and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return "sdpa"


def checkpointed_layers(tiny: bool, seq: int, batch: int, weight_bytes: float, free: float) -> int:
    """The fewest blocks that must recompute their activations for a step to fit in `free` bytes."""
    c = model_config(tiny)
    tokens = seq * batch
    kept = KEPT_BYTES * c.n_embd * tokens  # one block's saved activations
    logits = 10 * c.vocab_size * tokens  # bf16 logits, their fp32 copy for the loss and its gradient
    budget = 0.9 * free - weight_bytes - logits
    if budget >= c.n_layer * kept:
        return 0
    input_only = 2 * c.n_embd * tokens  # what a checkpointed block keeps
    return min(c.n_layer, math.ceil((c.n_layer * kept - budget) / (kept - input_only)))


def random_model(tiny: bool, device: torch.device, dtype: torch.dtype, attention: str) -> GPTBigCodeForCausalLM:
    config = model_config(tiny)
    config.use_cache = False  # also what lets transformers see the packing in the position ids
    with torch.device(device):
        return AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation=attention)


def parameter_count(tiny: bool) -> int:
    """The model's parameters (a 4-bit model's packed tensors would count half of theirs)."""
    with torch.device("meta"):
        return sum(p.numel() for p in GPTBigCodeForCausalLM(model_config(tiny)).parameters())


def quantized_model(tiny: bool, device: torch.device, attention: str) -> GPTBigCodeForCausalLM:
    """bitsandbytes quantizes at load time: random bf16 weights saved once (in memory where it fits), loaded 4-bit."""
    from transformers import BitsAndBytesConfig

    model = random_model(tiny, device, torch.bfloat16, attention)
    size = sum(p.numel() * p.element_size() for p in model.parameters())
    shm = Path("/dev/shm")
    where = str(shm) if shm.is_dir() and shutil.disk_usage(shm).free > 1.2 * size else None
    with tempfile.TemporaryDirectory(dir=where) as folder:
        model.save_pretrained(folder)
        del model
        torch.cuda.empty_cache()
        quantized = GPTBigCodeForCausalLM.from_pretrained(
            folder,
            quantization_config=BitsAndBytesConfig(
                load_in_4bit=True,
                bnb_4bit_quant_type="nf4",
                bnb_4bit_use_double_quant=True,
                bnb_4bit_compute_dtype=torch.bfloat16,
            ),
            attn_implementation=attention,
            device_map={"": device},
        )
    quantized.config.use_cache = False
    # As training loads a QLoRA base; checkpointing is measure()'s to choose.
    return prepare_model_for_kbit_training(quantized, use_gradient_checkpointing=False)


def recipe_adapters(model, vocab_size: int, bf16: bool):
    """The QLoRA recipe's adapters, as training/train.py adds them."""
    recipe = yaml.safe_load(RECIPE.read_text())
    return add_adapters(
        model,
        r=recipe["lora_r"],
        alpha=recipe["lora_alpha"],
        dropout=recipe["lora_dropout"],
        targets=recipe["lora_target_modules"],
        chat_token_ids=range(vocab_size - CHAT_TOKENS, vocab_size),
        bf16=bf16,
    )


def packed_batch(batch: int, seq: int, vocab: int, device: torch.device, flatten: bool) -> tuple[dict, list[list[int]]]:
    """Rows of whole dialogues of random lengths (as training packs them), every token trained."""
    rng = random.Random(0)
    low, high = seq // 16, seq // 2
    rows, lengths = [], []
    for _ in range(batch):
        sizes: list[int] = []
        while sum(sizes) < seq:
            sizes.append(min(rng.randint(low, high), seq - sum(sizes)))
        ids = torch.randint(1, vocab, (seq,)).tolist()
        rows.append({"input_ids": ids, "labels": ids, "seq_lengths": sizes})
        lengths.append(sizes)
    return {k: v.to(device) for k, v in PackedCollator(0, flatten)(rows).items()}, lengths


def isolation(model, inputs: dict, lengths: list[int]) -> float:
    """Largest logit difference between the first block's last dialogue packed and alone (0: no cross-talk)."""
    start, end = sum(lengths[:-1]), sum(lengths)
    model.eval()  # no dropout: the same dialogue must give the same logits
    with torch.no_grad():
        packed = model(input_ids=inputs["input_ids"][:1], position_ids=inputs["position_ids"][:1]).logits
        alone = model(input_ids=inputs["input_ids"][:1, start:end]).logits
    return float((packed[0, start:end].float() - alone[0].float()).abs().max())


def measure(name: str, args, device, *, quantize: bool, attention: str, checkpointed: int, ours: bool) -> dict:
    gc.collect()  # the previous path's model, before this one's is built
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    if quantize:
        model = quantized_model(args.tiny, device, attention)
    else:
        model = random_model(args.tiny, device, dtype, attention)
    parameters = parameter_count(args.tiny)
    vocab = model.config.vocab_size
    if checkpointed:
        # transformers 5.24 renamed gradient_checkpointing_enable; a GPU image may hold an older one.
        enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
        enable({"use_reentrant": False})
        model.enable_input_require_grads()
        for block in model.transformer.h[checkpointed:]:  # selective: the rest keep their activations
            block.gradient_checkpointing = False
    if ours:
        model = recipe_adapters(model, vocab, bf16=device.type == "cuda")  # trained under bf16 autocast
        inputs, lengths = packed_batch(args.batch, args.seq, vocab, device, flatten=attention.startswith("flash"))
    else:
        lora = LoraConfig(r=16, lora_alpha=32, target_modules=["c_attn", "c_proj", "c_fc"], task_type="CAUSAL_LM")
        model = get_peft_model(model, lora)
        ids = torch.randint(0, vocab, (args.batch, args.seq), device=device)
        inputs, lengths = {"input_ids": ids, "labels": ids}, []
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    # Ours runs as the Trainer runs a bf16 recipe: under bf16 autocast (the fp32 LoRA weights included).
    autocast = ours and device.type == "cuda"

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            loss = model(**inputs).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    reset_peak_memory(device)  # from here: the model as trained (QLoRA's bf16 original is gone) and its steps
    for _ in range(args.warmup):
        step()
    seconds = timed(device, lambda: [step() for _ in range(args.steps)])
    tokens_per_s = args.batch * args.seq * args.steps / seconds
    peak = peak_flops(device)
    record = {
        "bench": "train",
        "path": name,
        "device": device_name(device),
        "params": parameters,
        "batch": args.batch,
        "seq": args.seq,
        "dtype": str(dtype).removeprefix("torch."),
        "attention": attention,
        "packing": "padding-free" if ours else "none",
        "checkpointing": checkpointed > 0,
        "checkpointed_layers": checkpointed,
        "quantization": "nf4" if quantize else "none",
        "tokens_per_s": tokens_per_s,
        "mfu_6n": 6 * parameters * tokens_per_s / peak if peak else None,
        "peak_memory_gib": peak_memory_gib(device),
    }
    if ours:
        record["step_profile"] = top_kernels(device, step, count=10)  # where the rest of the peak goes
        record["dialogues_per_block"] = len(lengths[0])
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):  # as the steps ran
            record["isolation_max_abs_diff"] = isolation(model, inputs, lengths[0])
    return record


def at_least(low: int):
    """An argparse type: an int no smaller than `low` (a block holds dialogues of seq/16 to seq/2 tokens)."""

    def number(text: str) -> int:
        if int(text) < low:
            raise argparse.ArgumentTypeError(f"{text}: at least {low}")
        return int(text)

    return number


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="a tiny model on the CPU")
    parser.add_argument("--seq", type=at_least(32), default=None, help="sequence length (2048; 128 with --tiny)")
    parser.add_argument("--batch", type=at_least(1), default=1)
    parser.add_argument("--steps", type=at_least(1), default=None, help="timed steps (10; 3 with --tiny)")
    parser.add_argument("--warmup", type=at_least(0), default=2)
    parser.add_argument(
        "--checkpointing",
        choices=["auto", "on", "off"],
        default="auto",
        help="ours: 'auto' checkpoints only as many layers as the memory needs",
    )
    args = parser.parse_args(argv)
    args.seq = args.seq or (128 if args.tiny else 2048)
    args.steps = args.steps or (3 if args.tiny else 10)
    device = torch.device("cuda" if torch.cuda.is_available() and not args.tiny else "cpu")
    fast = fastest_attention(device)
    layers = model_config(args.tiny).n_layer
    free = torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else float("inf")

    def policy(weight_bytes: float) -> int:
        if args.checkpointing != "auto":
            return layers if args.checkpointing == "on" else 0
        return checkpointed_layers(args.tiny, args.seq, args.batch, weight_bytes, free)

    emit(
        measure(
            "seed: plain PEFT, checkpointing",
            args,
            device,
            quantize=False,
            attention="sdpa",
            checkpointed=layers,
            ours=False,
        )
    )
    c = model_config(args.tiny)
    n = 12 * c.n_embd**2 * c.n_layer + c.vocab_size * c.n_embd  # parameters, near enough for the estimate
    emit(measure("ours: LoRA", args, device, quantize=False, attention=fast, checkpointed=policy(2 * n), ours=True))
    if device.type != "cuda":
        reason = "bitsandbytes 4-bit needs a CUDA GPU"
    elif importlib.util.find_spec("bitsandbytes") is None:
        reason = "bitsandbytes is not installed"
    else:
        reason = ""
    if reason:
        emit({"bench": "train", "path": "ours: QLoRA", "device": device_name(device), "skipped": reason})
    else:
        emit(measure("ours: QLoRA", args, device, quantize=True, attention=fast, checkpointed=policy(n / 2), ours=True))


if __name__ == "__main__":
    main()
