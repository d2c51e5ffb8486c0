"""LoRA and QLoRA training steps on a StarCoderPlus-shaped model with random weights.

    python -m bench.train            # one GPU: the seed's way (plain PEFT, checkpointing everywhere) vs ours
    python -m bench.train --tiny     # a tiny model on the CPU, for the test suite

Ours is the recipe's setting: sequences packed without padding, the fastest attention this
machine has, gradient checkpointing only when the activations would not fit. Each line is
JSON: tokens/s, peak memory and 6N-MFU (6 x parameters x tokens/s over the card's bf16 peak).
"""

from __future__ import annotations

import argparse

import torch
from peft import LoraConfig, get_peft_model
from transformers import BitsAndBytesConfig, GPTBigCodeForCausalLM

from bench.common import device_name, emit, model_config, peak_flops, peak_memory_gib, reset_peak_memory, timed


def fastest_attention(device: torch.device) -> str:
    if device.type == "cuda":
        try:
            import flash_attn  # noqa: F401

            return "flash_attention_2"
        except ImportError:
            pass
    return "sdpa"


def build(tiny: bool, device: torch.device, quantize: bool, attention: str, checkpointing: bool):
    config = model_config(tiny)
    config._attn_implementation = attention
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    if quantize:
        import tempfile

        # bitsandbytes quantizes at load time: save random bf16 weights once, load them in 4-bit.
        with tempfile.TemporaryDirectory() as folder, torch.device(device):
            GPTBigCodeForCausalLM(config).to(dtype).save_pretrained(folder)
            model = GPTBigCodeForCausalLM.from_pretrained(
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
    else:
        with torch.device(device):
            model = GPTBigCodeForCausalLM(config).to(dtype)
    parameters = sum(p.numel() for p in model.parameters())
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    lora = LoraConfig(r=16, lora_alpha=32, target_modules=["c_attn", "c_proj", "c_fc"], task_type="CAUSAL_LM")
    return get_peft_model(model, lora), parameters


def measure(name: str, args, device, *, quantize: bool, attention: str, checkpointing: bool) -> dict:
    reset_peak_memory(device)
    model, parameters = build(args.tiny, device, quantize, attention, checkpointing)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    vocab = model.config.vocab_size
    batch = torch.randint(0, vocab, (args.batch, args.seq), device=device)

    def step():
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

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
        "attention": attention,
        "checkpointing": checkpointing,
        "quantization": "nf4" if quantize else "none",
        "tokens_per_s": tokens_per_s,
        "mfu_6n": 6 * parameters * tokens_per_s / peak if peak else None,
        "peak_memory_gib": peak_memory_gib(device),
    }
    return record


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="a tiny model on the CPU")
    parser.add_argument("--seq", type=int, default=None, help="sequence length (2048; 128 with --tiny)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--steps", type=int, default=None, help="timed steps (10; 3 with --tiny)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument(
        "--checkpointing",
        choices=["auto", "on", "off"],
        default="auto",
        help="ours: 'auto' keeps activations unless the model is too big for the memory",
    )
    args = parser.parse_args(argv)
    args.seq = args.seq or (128 if args.tiny else 2048)
    args.steps = args.steps or (3 if args.tiny else 10)
    device = torch.device("cuda" if torch.cuda.is_available() and not args.tiny else "cpu")
    fast = fastest_attention(device)
    if args.checkpointing == "auto":
        # bf16 weights, plus ~34 bytes x hidden x seq per layer of saved activations (Korthikanti et al.).
        free = torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else float("inf")
        c = model_config(args.tiny)
        weights = 2 * (12 * c.n_embd**2 * c.n_layer + c.vocab_size * c.n_embd)
        activations = 34 * c.n_embd * args.seq * c.n_layer * args.batch
        ours_checkpointing = weights + activations > 0.9 * free
    else:
        ours_checkpointing = args.checkpointing == "on"
    emit(measure("seed: plain PEFT, checkpointing", args, device, quantize=False, attention="sdpa", checkpointing=True))
    emit(measure("ours: LoRA", args, device, quantize=False, attention=fast, checkpointing=ours_checkpointing))
    if device.type == "cuda":
        emit(measure("ours: QLoRA", args, device, quantize=True, attention=fast, checkpointing=True))
    else:
        emit(
            {
                "bench": "train",
                "path": "ours: QLoRA",
                "device": device_name(device),
                "skipped": "bitsandbytes 4-bit needs a CUDA GPU",
            }
        )


if __name__ == "__main__":
    main()
