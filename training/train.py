"""Fine-tune a StarCoder-family model on dialogues into the checkpoint the playground serves.

    python -m training.train RECIPE.yaml [--key value ...]
    accelerate launch --config_file training/accelerate/CONFIG.yaml -m training.train RECIPE.yaml ...

A recipe is YAML holding ScriptArguments and transformers.TrainingArguments fields; flags after it
override them. `--output_dir DIR` becomes the served checkpoint; the Trainer's resumable state
lives in DIR/checkpoints. We use transformers' Trainer with our own tokenization (training.format)
because the loss masks must follow playground.template exactly.
"""

from __future__ import annotations

import math
import sys
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import datasets
import torch
import yaml
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    HfArgumentParser,
    Trainer,
    TrainerCallback,
    TrainingArguments,
    set_seed,
)
from transformers.trainer_utils import get_last_checkpoint

from playground.template import CONTROL_TOKENS
from training.checkpoint import model_card, save_checkpoint
from training.data import build_dataset
from training.format import Collator, add_chat_tokens, pack, tokenize_dialogue
from training.scratch import build_base


@dataclass
class ScriptArguments:
    model_name_or_path: str = field(default="", metadata={"help": "base model: Hub id, folder, or 'scratch'"})
    datasets: list[str] = field(default_factory=list, metadata={"help": "files, Hub ids or builtin:NAME"})
    train_on: str = field(default="assistant", metadata={"help": "'assistant' (mask system/user) or 'all'"})
    packing: bool = field(default=True, metadata={"help": "concatenate dialogues into block_size blocks"})
    block_size: int = 2048
    max_chars: int = field(default=32_000, metadata={"help": "drop dialogues longer than this"})
    uncensored: bool = field(default=True, metadata={"help": "drop dialogues with refusal phrases (the card)"})
    test_size: float = 0.05
    lora: bool = False
    load_in_4bit: bool = field(default=False, metadata={"help": "QLoRA: 4-bit NF4 base (CUDA)"})
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    lora_target_modules: list[str] = field(default_factory=lambda: ["c_attn", "c_proj", "c_fc"])
    resume: bool = field(default=False, metadata={"help": "continue from the last checkpoint in DIR/checkpoints"})
    push_to_hub_repo: str = field(default="", metadata={"help": "upload the served checkpoint here at the end"})
    scratch_layers: int = 2
    scratch_embd: int = 192
    scratch_vocab: int = 2048


class StopOnNonFiniteLoss(TrainerCallback):
    def on_log(self, args, state, control, logs=None, **kwargs):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(loss):
            raise FloatingPointError(
                f"the training loss became {loss} at step {state.global_step}; the run stopped. "
                "Lower the learning rate or check the data; --resume continues from the last checkpoint."
            )


def parse(argv: list[str]) -> tuple[ScriptArguments, TrainingArguments, dict]:
    if not argv or argv[0].startswith("-"):
        raise SystemExit("usage: python -m training.train RECIPE.yaml [--key value ...]")
    recipe = yaml.safe_load(Path(argv[0]).read_text()) or {}
    rest = list(argv[1:])
    if "--push_to_hub" in rest:  # `--push_to_hub REPO` names the repo; TrainingArguments' flag is a bool
        i = rest.index("--push_to_hub")
        rest[i : i + 2] = ["--push_to_hub_repo", rest[i + 1]]
    known = {f.name for kind in (ScriptArguments, TrainingArguments) for f in fields(kind)}
    if unknown := sorted(set(recipe) - known):
        raise ValueError(f"{argv[0]}: unknown recipe key(s) {', '.join(unknown)}")
    parser = HfArgumentParser((ScriptArguments, TrainingArguments))
    parser.set_defaults(**recipe)
    script, args = parser.parse_args_into_dataclasses(rest)
    if not script.model_name_or_path or not script.datasets:
        raise SystemExit("the recipe must name model_name_or_path and datasets")
    # Nan/inf losses must reach StopOnNonFiniteLoss, not be filtered out of the logged mean.
    args.logging_nan_inf_filter = False
    return script, args, {**recipe, **{k: v for k, v in asdict(script).items() if k in recipe}}


def load_model(script: ScriptArguments, args: TrainingArguments, base: str, tokenizer):
    quantization = None
    if script.load_in_4bit:
        from transformers import BitsAndBytesConfig

        quantization = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16,
        )
    dtype = torch.bfloat16 if args.bf16 else torch.float32
    model = AutoModelForCausalLM.from_pretrained(base, dtype=dtype, quantization_config=quantization)
    if model.get_input_embeddings().weight.shape[0] != len(tokenizer):
        model.resize_token_embeddings(len(tokenizer))
    model.config.use_cache = False
    if not script.lora:
        return model
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if script.load_in_4bit:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=args.gradient_checkpointing)
    config = LoraConfig(
        r=script.lora_r,
        lora_alpha=script.lora_alpha,
        lora_dropout=script.lora_dropout,
        target_modules=script.lora_target_modules,
        # The chat tokens are new: their embedding rows must learn too, and only theirs.
        trainable_token_indices=tokenizer.convert_tokens_to_ids(list(CONTROL_TOKENS)),
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)


def tokenized(split: datasets.Dataset, tokenizer, script: ScriptArguments) -> datasets.Dataset:
    rows = split.map(
        lambda row: tokenize_dialogue(tokenizer, row["messages"], script.train_on), remove_columns=["messages"]
    )
    return datasets.Dataset.from_list(list(pack(rows, script.block_size))) if script.packing else rows


def main(argv: list[str] | None = None) -> Path:
    script, args, recipe = parse(sys.argv[1:] if argv is None else argv)
    output = Path(args.output_dir)
    args.output_dir = str(output / "checkpoints")
    set_seed(args.seed)
    splits, report = build_dataset(
        script.datasets,
        max_chars=script.max_chars,
        uncensored=script.uncensored,
        test_size=script.test_size,
        seed=args.seed,
    )
    if args.process_index == 0:
        print(f"data: {report.summary()}; {len(splits['train'])} train / {len(splits['test'])} test", flush=True)
        print(f"processes: {args.world_size} ({args.parallel_mode.value}) on {args.device.type}", flush=True)

    base = script.model_name_or_path
    if base == "scratch":
        base = str(output / "scratch-base")
        with args.main_process_first(desc="scratch base"):
            if not (Path(base) / "config.json").exists():
                build_base(
                    list(splits["train"]["messages"]),
                    base,
                    vocab_size=script.scratch_vocab,
                    n_layer=script.scratch_layers,
                    n_embd=script.scratch_embd,
                    seed=args.seed,
                )
    tokenizer = AutoTokenizer.from_pretrained(base)
    add_chat_tokens(tokenizer)
    model = load_model(script, args, base, tokenizer)
    train_set = tokenized(splits["train"], tokenizer, script)
    eval_set = tokenized(splits["test"], tokenizer, script)

    trainer = Trainer(
        model=model,
        args=args,
        data_collator=Collator(tokenizer.pad_token_id),
        train_dataset=train_set,
        eval_dataset=eval_set,
        processing_class=tokenizer,
        callbacks=[StopOnNonFiniteLoss()],
    )
    resume_from = get_last_checkpoint(args.output_dir) if script.resume and Path(args.output_dir).is_dir() else None
    if script.resume and resume_from is None:
        print(f"no checkpoint in {args.output_dir}: starting from the beginning", flush=True)
    trainer.train(resume_from_checkpoint=resume_from)

    name = output.name
    card = model_card(name, script.model_name_or_path, recipe, trainer.state.log_history, report.summary())
    if script.lora:
        from training.merge import merge

        trainer.save_model(str(output / "adapter"))
        if trainer.is_world_process_zero():
            tokenizer.save_pretrained(output / "adapter")
            merge(base, output / "adapter", output, card, dtype=torch.bfloat16 if args.bf16 else torch.float32)
    else:
        state_dict = trainer.accelerator.get_state_dict(trainer.model)  # gathers shards (ZeRO-3, FSDP)
        if trainer.is_world_process_zero():
            unwrapped = trainer.accelerator.unwrap_model(trainer.model)
            unwrapped.config.use_cache = True
            save_checkpoint(unwrapped, tokenizer, output, card, state_dict=state_dict)
    if trainer.is_world_process_zero():
        print(f"served checkpoint: {output}", flush=True)
        if script.push_to_hub_repo:
            from huggingface_hub import HfApi

            api = HfApi()
            api.create_repo(script.push_to_hub_repo, exist_ok=True)
            api.upload_folder(
                repo_id=script.push_to_hub_repo,
                folder_path=output,
                ignore_patterns=["checkpoints/*", "adapter/*", "scratch-base/*"],
            )
            print(f"pushed to https://huggingface.co/{script.push_to_hub_repo}", flush=True)
    # Every rank waits for the save, then leaves the process group together: a rank that exits while
    # another still talks to it makes gloo abort (SIGABRT) at interpreter shutdown.
    trainer.accelerator.wait_for_everyone()
    trainer.accelerator.end_training()
    return output


if __name__ == "__main__":
    main()
