"""Fine-tune a StarCoder-family model on dialogues into the checkpoint the playground serves.

    python -m training.train RECIPE.yaml [--key value ...]
    accelerate launch --config_file training/accelerate/CONFIG.yaml -m training.train RECIPE.yaml ...

A recipe is YAML holding ScriptArguments and transformers.TrainingArguments fields; flags after it
override them. `--output_dir DIR` becomes the served checkpoint; the Trainer's resumable state
lives in DIR/checkpoints. We use transformers' Trainer with our own tokenization (training.format)
because the loss masks must follow playground.template exactly.
"""

from __future__ import annotations

import contextlib
import enum
import json
import math
import platform
import shutil
import sys
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Literal

import datasets
import torch
import yaml
from safetensors import SafetensorError, safe_open
from tqdm.auto import tqdm
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GPTBigCodeConfig,
    HfArgumentParser,
    PrinterCallback,
    Trainer,
    TrainerCallback,
    TrainingArguments,
    set_seed,
)
from transformers.integrations import is_deepspeed_zero3_enabled
from transformers.trainer_utils import get_last_checkpoint
from transformers.utils import is_flash_attn_2_available, is_flash_attn_3_available

from playground.console import libraries_quiet
from playground.template import CONTROL_TOKENS
from training.checkpoint import (
    RUN_PARTS,
    base_config,
    check_output,
    check_writable,
    clear_served,
    model_card,
    save_checkpoint,
)
from training.data import DataError, DataReport, build_dataset
from training.format import Collator, PackedCollator, add_chat_tokens, fit_dialogue, pack, pack_blocks
from training.scratch import SCRATCH_POSITIONS, build_base

# What a model card shows of TrainingArguments whatever the recipe says (and whatever else was set).
CARD_ARGUMENTS = (
    "learning_rate",
    "lr_scheduler_type",
    "warmup_steps",
    "num_train_epochs",
    "max_steps",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "optim",
    "adam_beta1",
    "adam_beta2",
    "adam_epsilon",
    "weight_decay",
    "max_grad_norm",
    "bf16",
    "fp16",
    "activation_checkpointing",
    "seed",
)
NOT_ON_THE_CARD = {"output_dir", "hub_token"}  # the card lives in the output folder; a token is a secret
# Not the Trainer's to upload: its resumable state, the adapter (merged in), the scratch base.
NOT_PUSHED = ["checkpoints/*", "adapter/*", "scratch-base/*", ".incomplete/*"]


@dataclass
class ScriptArguments:
    model_name_or_path: str = field(default="", metadata={"help": "base model: Hub id, folder, or 'scratch'"})
    datasets: list[str] = field(default_factory=list, metadata={"help": "files, Hub ids or builtin:NAME"})
    train_on: Literal["assistant", "all"] = field(
        default="assistant", metadata={"help": "'assistant' (mask system/user) or 'all'"}
    )
    packing: bool = field(default=True, metadata={"help": "put several dialogues in each block_size block"})
    padding_free: bool = field(
        default=True,
        metadata={
            "help": "packed dialogues attend only to themselves (position ids restart per dialogue); "
            "false: StarChat's way, blocks cut from the concatenated dialogues under one causal mask"
        },
    )
    block_size: int = field(
        default=2048,
        metadata={"help": "tokens per block; a longer dialogue is cut after its last whole turn that fits"},
    )
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2", "flash_attention_3", "flex_attention"] = field(
        default="sdpa", metadata={"help": "all of these keep packed dialogues apart; flash needs its package"}
    )
    max_chars: int = field(default=32_000, metadata={"help": "drop dialogues longer than this"})
    uncensored: bool = field(default=True, metadata={"help": "drop dialogues with refusal phrases (the card)"})
    test_size: float = 0.05
    lora: bool = False
    load_in_4bit: bool = field(default=False, metadata={"help": "QLoRA: 4-bit NF4 base (bitsandbytes, made for CUDA)"})
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    lora_target_modules: list[str] = field(default_factory=lambda: ["c_attn", "c_proj", "c_fc"])
    resume: bool = field(default=False, metadata={"help": "continue from the last checkpoint in DIR/checkpoints"})
    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "start over in a DIR that holds a run, deleting its checkpoints"}
    )
    scratch_layers: int = 2
    scratch_embd: int = 192
    scratch_vocab: int = 2048
    evaluate: Literal["", "humaneval"] = field(
        default="", metadata={"help": "score the served checkpoint (training.evaluate), the result on its card"}
    )


class Interrupted(SystemExit):
    """Ctrl-C during the run; its message says where a resume would go on from."""


class StopOnNonFiniteLoss(TrainerCallback):
    def on_log(self, args, state, control, logs=None, **kwargs):
        loss = (logs or {}).get("loss")
        if loss is None or math.isfinite(loss):
            return
        said = (
            f"the training loss became {loss} at step {state.global_step}; the run stopped. Lower the learning "
            "rate or check the data, and start over with --overwrite_output_dir true"
        )
        last = get_last_checkpoint(args.output_dir) if Path(args.output_dir).is_dir() else None
        if last:  # its weights may have diverged before the loss overflowed: say what the log knew of them
            step = int(last.rsplit("-", 1)[-1])
            logged = [e["loss"] for e in state.log_history if "loss" in e and e["step"] <= step]
            when = f", when the logged loss was {logged[-1]:.4g}" if logged else ""
            said += f" (--resume true would continue from {Path(last).name}, saved at step {step}{when})"
        raise FloatingPointError(said)


class StepsBar(TrainerCallback):
    """One bar over the training steps and nothing else: no evaluation bar, no printed logs (the losses
    still reach the model card through the log history)."""

    def __init__(self) -> None:
        self.bar: tqdm | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self.bar = tqdm(total=state.max_steps, initial=state.global_step, desc="training", unit="step")

    def on_step_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.update(state.global_step - self.bar.n)

    def on_train_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.close()
            self.bar = None


# The arguments that shape the weights besides the LoRA flags (check_resume reads those from the adapter):
# a resume must bring the values the run started with. Its length may change.
SHAPING = (
    "model_name_or_path",
    "datasets",
    "train_on",
    "packing",
    "padding_free",
    "block_size",
    "max_chars",
    "uncensored",
    "test_size",
    "lora_dropout",
    "scratch_layers",
    "scratch_embd",
    "scratch_vocab",
    "learning_rate",
    "lr_scheduler_type",
    "warmup_steps",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "optim",
    "weight_decay",
    "adam_beta1",
    "adam_beta2",
    "adam_epsilon",
    "max_grad_norm",
    "seed",
)
RUN_RECORD = "run.json"  # in DIR/checkpoints: the SHAPING values the run started with (checkpoint.is_run reads it)
USAGE = "python -m training.train RECIPE.yaml [--key value ...]   (RECIPE.yaml --help lists the keys)"
# Names that LoRA cannot take here: the chat tokens' embedding rows are trained on their own, and the
# head shares its weights with the embedding.
NOT_LORA_TARGETS = {"wte", "wpe", "lm_head"}


def parse(argv: list[str]) -> tuple[ScriptArguments, TrainingArguments, dict]:
    """The recipe with the flags' overrides, and the effective arguments for the model card."""
    if argv and argv[0] in ("-h", "--help"):  # argparse prints every key and exits
        HfArgumentParser((ScriptArguments, TrainingArguments), usage=USAGE).parse_args(argv[:1])
    if not argv or argv[0].startswith("-"):
        raise SystemExit(f"usage: {USAGE}")
    recipe = read_recipe(argv[0])
    known = {f.name for kind in (ScriptArguments, TrainingArguments) for f in fields(kind)}
    if unknown := sorted(set(recipe) - known):
        raise SystemExit(f"{argv[0]}: unknown recipe key(s) {', '.join(unknown)}")
    lists = {f.name for f in fields(ScriptArguments) if str(f.type).startswith("list")}
    for name in lists & set(recipe):
        if isinstance(recipe[name], str):  # `datasets: my.jsonl` means a list of one, not of its characters
            recipe[name] = [recipe[name]]
    if again := repeated_flag(known, argv[1:]):
        raise SystemExit(f"--{again} is given twice: give each flag once (a flag overrides the recipe's value)")
    parser = HfArgumentParser((ScriptArguments, TrainingArguments), usage=USAGE)
    parser.set_defaults(**recipe)
    try:
        script, args, unused = parser.parse_args_into_dataclasses(argv[1:], return_remaining_strings=True)
    except ValueError as exc:  # TrainingArguments checks some values itself (warmup_steps, bf16 on a CPU)
        raise SystemExit(str(exc)) from None
    if unused:
        parser.error(f"unknown flag(s): {' '.join(unused)}")
    if not script.model_name_or_path or not script.datasets:
        raise SystemExit("the recipe must name model_name_or_path and datasets")
    if "output_dir" not in set(recipe) | given_flags(known, argv[1:]) or not args.output_dir.strip():
        raise SystemExit("name the folder of the served checkpoint: --output_dir DIR (or output_dir: in the recipe)")
    check_script(script, args)
    # Nan/inf losses must reach StopOnNonFiniteLoss, not be filtered out of the logged mean.
    args.logging_nan_inf_filter = False
    # PackedCollator needs each block's seq_lengths, a column the model's forward does not name.
    args.remove_unused_columns = False
    return script, args, effective_arguments(script, args, set(recipe) | given_flags(known, argv[1:]))


class RecipeLoader(yaml.SafeLoader):
    """YAML that refuses a key given twice: PyYAML would keep the last one without a word."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key, _ in node.value:
            name = self.construct_object(key, deep=deep)
            if name in seen:
                raise yaml.constructor.ConstructorError(None, None, f"the key {name} is given twice", key.start_mark)
            seen.add(name)
        return super().construct_mapping(node, deep=deep)


def read_recipe(path: str) -> dict:
    try:
        recipe = yaml.load(Path(path).read_text(), Loader=RecipeLoader) or {}
    except OSError as exc:
        raise SystemExit(f"{path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise SystemExit(f"{path}: not valid YAML ({' '.join(str(exc).split())})") from None
    if not isinstance(recipe, dict):
        raise SystemExit(f"{path}: a recipe maps keys to values (key: value lines)")
    return recipe


def given_flags(known: set[str], flags: list[str]) -> set[str]:
    """The fields the flags set, however they were spelled (`--a-b`, an unambiguous prefix, `--no_x`)."""
    unset = object()
    probe = HfArgumentParser((ScriptArguments, TrainingArguments))
    probe.set_defaults(**dict.fromkeys(known, unset))
    values = vars(probe.parse_known_args(flags)[0])
    return {name for name, value in values.items() if value is not unset}


def repeated_flag(known: set[str], flags: list[str]) -> str | None:
    """The first field that two flags set, however spelled (`--a-b`, `--no_a_b`, an unambiguous prefix):
    argparse would keep the last without a word."""
    seen = set()
    for flag in flags:
        if not flag.startswith("--"):
            continue
        name = flag[2:].split("=", 1)[0].replace("-", "_")
        if name not in known and name.startswith("no_") and name[3:] in known:
            name = name[3:]
        elif name not in known and len(matches := [k for k in known if k.startswith(name)]) == 1:
            name = matches[0]
        if name in seen:
            return name
        seen.add(name)
    return None


def check_script(script: ScriptArguments, args: TrainingArguments) -> None:
    """Flags that would fail only after the data and the model are loaded, or train nothing, are refused now."""
    if args.resume_from_checkpoint is not None:
        raise SystemExit("use --resume true: the run's checkpoints live in OUTPUT_DIR/checkpoints")
    if not (math.isfinite(args.learning_rate) and args.learning_rate > 0):
        raise SystemExit(f"--learning_rate must be a number above 0, not {args.learning_rate}")
    if not 0 <= script.test_size < 1:  # also refuses nan
        raise SystemExit(f"--test_size is the share of dialogues held out, from 0 to below 1, not {script.test_size}")
    if script.test_size == 0 and args.eval_strategy != "no":
        strategy = args.eval_strategy.value
        raise SystemExit(f"--test_size 0 leaves nothing to evaluate (eval_strategy {strategy}): add --eval_strategy no")
    for name in ("block_size", "max_chars"):
        if getattr(script, name) < 1:
            raise SystemExit(f"--{name} must be 1 or more, not {getattr(script, name)}")
    for name in ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps"):
        if getattr(args, name) < 1:
            raise SystemExit(f"--{name} must be 1 or more, not {getattr(args, name)}")
    if args.max_steps == 0 or (args.max_steps < 0 and not 0 < args.num_train_epochs < math.inf):  # nan too
        what = "--max_steps 0" if args.max_steps == 0 else f"--num_train_epochs {args.num_train_epochs}"
        raise SystemExit(
            f"{what} trains nothing or never ends: give --num_train_epochs above 0 or --max_steps 1 or more"
        )
    if args.max_steps < -1:  # transformers would read it as -1: train for --num_train_epochs
        raise SystemExit(f"--max_steps must be 1 or more, or -1 to train --num_train_epochs, not {args.max_steps}")
    if not math.isfinite(args.warmup_steps):
        raise SystemExit(
            f"--warmup_steps must be a number (steps, or below 1 a share of them), not {args.warmup_steps}"
        )
    if not 0 <= args.seed < 2**32:
        raise SystemExit(f"--seed must be from 0 to 2**32 - 1, not {args.seed}")
    if script.load_in_4bit and not script.lora:
        raise SystemExit("--load_in_4bit true trains adapters on a 4-bit base: add --lora true")
    flash = {"flash_attention_2": is_flash_attn_2_available, "flash_attention_3": is_flash_attn_3_available}
    if script.attn_implementation in flash and not flash[script.attn_implementation]():
        raise SystemExit(
            f"--attn_implementation {script.attn_implementation} needs a CUDA GPU and its flash-attn package; "
            "sdpa (the default) keeps packed dialogues apart too"
        )
    if not script.lora:
        return
    if script.lora_r < 1:
        raise SystemExit(f"--lora_r must be 1 or more, not {script.lora_r}")
    if not script.lora_alpha > 0:
        raise SystemExit(f"--lora_alpha must be more than 0 (at 0 the adapters learn nothing), not {script.lora_alpha}")
    if not 0 <= script.lora_dropout < 1:
        raise SystemExit(f"--lora_dropout must be at least 0 and less than 1, not {script.lora_dropout}")
    if taken := sorted(set(script.lora_target_modules) & NOT_LORA_TARGETS):
        raise SystemExit(
            f"--lora_target_modules {' '.join(taken)}: the embedding and the head it shares cannot take adapters "
            "here (the chat tokens' embedding rows are trained on their own); use c_attn, c_proj, c_fc"
        )


def effective_arguments(script: ScriptArguments, args: TrainingArguments, named: set[str]) -> dict:
    """Every ScriptArguments field, the TrainingArguments that decide the result and any other one set."""
    chosen = (set(CARD_ARGUMENTS) | (named & {f.name for f in fields(TrainingArguments)})) - NOT_ON_THE_CARD
    values = {name: getattr(args, name) for name in chosen}
    settings = asdict(script) | {k: v.value if isinstance(v, enum.Enum) else v for k, v in values.items()}
    settings["num_processes"] = args.world_size
    settings["total_train_batch_size"] = (
        args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size
    )
    return settings


def claim_output(output: Path, script: ScriptArguments, args: TrainingArguments) -> None:
    """Refuses a folder that holds a run unless told to resume or start over (then clears it)."""
    base = {} if script.model_name_or_path == "scratch" else {"the base model": script.model_name_or_path}
    check_output(output, "--output_dir", base)
    checkpoints = output / "checkpoints"
    held = sorted(p.name for p in checkpoints.glob("checkpoint-*")) if checkpoints.is_dir() else []
    finished = (output / "config.json").exists()
    if script.resume and finished and not (checkpoints.is_dir() and get_last_checkpoint(str(checkpoints))):
        raise SystemExit(
            f"{output} holds a finished model and no checkpoint to resume from: choose another --output_dir, "
            "or pass --overwrite_output_dir true instead of --resume to train it again"
        )
    if finished:
        held.append("a served checkpoint")
    if (output / "scratch-base").is_dir():  # built from the data of that run: a new run would reuse it
        held.append("a scratch base")
    if script.resume or not held:
        return
    if not script.overwrite_output_dir:
        raise SystemExit(
            f"{output} already holds a run ({', '.join(held)}): pass --resume true to continue it, "
            "or --overwrite_output_dir true to start over (its checkpoints are deleted)"
        )
    if args.local_process_index == 0:
        for part in RUN_PARTS:
            shutil.rmtree(output / part, ignore_errors=True)
        clear_served(output)  # until the new run is saved, no finished checkpoint


def shaping(settings: dict) -> dict:
    return json.loads(json.dumps({name: settings.get(name) for name in SHAPING}))  # as the record reads back


def flag_value(value) -> str:
    if isinstance(value, list):
        return " ".join(map(str, value))
    return str(value).lower() if isinstance(value, bool) else str(value)


def check_same_run(record: Path, settings: dict) -> None:
    """A resume must bring the arguments that shaped the weights so far (the run's record of them)."""
    if not record.is_file():  # a run started before runs kept this record
        return
    try:
        started = json.loads(record.read_text())
    except ValueError:
        raise SystemExit(f"{record} is not valid JSON: the run's record of its arguments is damaged") from None
    now = shaping(settings)
    if differ := [name for name in SHAPING if name in started and started[name] != now[name]]:
        was = " ".join(f"--{name} {flag_value(started[name])}" for name in differ)
        raise SystemExit(
            f"{record.parent.parent} was started with {was}: resume with the same values (a resume with others "
            "would not give the run it continues), or start over with --overwrite_output_dir true"
        )


def check_resume(checkpoint: str, script: ScriptArguments) -> None:
    """A run resumes with the flags that shaped its weights: LoRA or not, and the same adapters."""
    adapter = Path(checkpoint) / "adapter_config.json"
    if script.lora != adapter.is_file():
        how = "with" if adapter.is_file() else "without"
        raise SystemExit(f"{checkpoint} was trained {how} --lora true: resume it the same way")
    if not script.lora:
        return
    try:
        saved = json.loads(adapter.read_text())
    except ValueError:
        raise SystemExit(f"{adapter} is not valid JSON: the checkpoint is damaged") from None
    theirs = lora_flags(saved["r"], saved["lora_alpha"], saved["target_modules"])
    ours = lora_flags(script.lora_r, script.lora_alpha, script.lora_target_modules)
    if differ := [name for name in ours if ours[name] != theirs[name]]:
        flags = " ".join(f"--{name} {theirs[name]}" for name in differ)
        raise SystemExit(f"{checkpoint} was trained with {flags}: resume with the same values")


def check_readable(checkpoint: Path, args: TrainingArguments) -> None:
    """A checkpoint cut short (a full disk, a copy killed midway) or missing its optimizer is refused before
    the Trainer loads it, and so is one already past the steps asked for now (nothing would be trained)."""
    state = {}
    for path in (checkpoint / "trainer_state.json", *checkpoint.glob("*.safetensors")):
        try:
            if path.suffix == ".json":
                state = json.loads(path.read_text())
            else:
                with safe_open(path, "pt"):
                    pass
        except (OSError, ValueError, SafetensorError) as exc:
            raise SystemExit(
                f"{path} cannot be read ({exc}): the checkpoint is damaged; move {checkpoint} away to resume "
                "from the one before it"
            ) from None
    # optimizer.pt; FSDP's sharded optimizer_0/; DeepSpeed's global_stepN/ folder of shards.
    if not any(checkpoint.glob("optimizer*")) and not any(checkpoint.glob("global_step*")):
        raise SystemExit(
            f"{checkpoint} holds no optimizer state (optimizer.pt): resuming from it would not give the weights "
            f"of an uninterrupted run; move {checkpoint} away to resume from the one before it"
        )
    step, epoch, planned = state.get("global_step", 0), state.get("epoch") or 0, state.get("max_steps", 0)
    past = step >= args.max_steps if args.max_steps > 0 else epoch >= args.num_train_epochs
    if past and step < planned:  # a run that had finished training may still need its served checkpoint saved
        asked = f"--max_steps {args.max_steps}" if args.max_steps > 0 else f"--num_train_epochs {args.num_train_epochs}"
        raise SystemExit(
            f"{checkpoint} is at step {step} (epoch {epoch:.2f}), already past {asked}: nothing would be trained; "
            f"resume with the run's own length (it planned {planned} steps) or more"
        )


def lora_flags(r: int, alpha: int, targets: list[str]) -> dict[str, str]:
    return {"lora_r": str(r), "lora_alpha": str(alpha), "lora_target_modules": " ".join(sorted(targets))}


def check_lora_targets(script: ScriptArguments, config) -> None:
    """A target the model lacks is refused before the data and the weights are loaded (its shape on the
    meta device costs no memory)."""
    base = script.model_name_or_path
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    layers = {name.rsplit(".", 1)[-1] for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)}
    if missing := [name for name in script.lora_target_modules if name not in layers]:
        raise SystemExit(
            f"--lora_target_modules: the model ({base}) has no linear layer named {', '.join(missing)} "
            f"(it has {', '.join(sorted(layers - NOT_LORA_TARGETS))})"
        )


def check_positions(base: str, positions: int, block_size: int) -> None:
    if block_size > positions:
        raise SystemExit(
            f"--block_size {block_size} is longer than the model's {positions} positions "
            f"(max_position_embeddings of {base}): use --block_size {positions} or less"
        )


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
    # A full fine-tune keeps fp32 master weights and bf16 is the Trainer's autocast: in bf16 weights AdamW's
    # small updates round away (lr 2e-5: most of them). DeepSpeed and FSDP keep fp32 masters of their own.
    # LoRA's adapters are fp32 (PEFT upcasts them), so its frozen base may stay in bf16.
    dtype = torch.bfloat16 if script.lora and args.bf16 else torch.float32
    model = AutoModelForCausalLM.from_pretrained(
        base, dtype=dtype, quantization_config=quantization, attn_implementation=script.attn_implementation
    )
    if model.get_input_embeddings().weight.shape[0] != len(tokenizer):
        model.resize_token_embeddings(len(tokenizer))
    # Also what keeps packed dialogues apart: with a cache transformers ignores the packing in position ids.
    model.config.use_cache = False
    if not script.lora:
        return model
    from peft import prepare_model_for_kbit_training

    from training.lora import add_adapters

    if script.load_in_4bit:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=args.activation_checkpointing)
    return add_adapters(
        model,
        r=script.lora_r,
        alpha=script.lora_alpha,
        dropout=script.lora_dropout,
        targets=script.lora_target_modules,
        chat_token_ids=tokenizer.convert_tokens_to_ids(list(CONTROL_TOKENS)),
        bf16=args.bf16,
    )


def tokenized(split: datasets.Dataset, tokenizer, script: ScriptArguments, report: DataReport) -> datasets.Dataset:
    """Dialogues within block_size (fit_dialogue's rule, counted in the report), packed as the flags say."""
    examples = []
    for messages, place in zip(split["messages"], split["place"], strict=True):
        example, cut = fit_dialogue(tokenizer, messages, script.block_size, script.train_on)
        if example is None:
            report.drop(f"first exchange longer than block_size ({script.block_size} tokens)", place)
            report.kept -= 1
            continue
        report.cut += cut
        examples.append(example)
    if not script.packing or not examples:
        return datasets.Dataset.from_list(examples)
    if script.padding_free:
        return pack_blocks(examples, script.block_size)
    return datasets.Dataset.from_list(list(pack(examples, script.block_size)))


def hardware(args: TrainingArguments) -> str:
    if args.device.type == "cuda":
        return f"{args.world_size} x {torch.cuda.get_device_name(args.device)}"
    threads = torch.get_num_threads()
    return f"{args.world_size} process(es) on {args.device.type} ({platform.machine()}, {threads} threads each)"


def push(folder: Path, repo: str | None, token: str | None, private: bool | None) -> str:
    """Uploads the served checkpoint where transformers' Trainer would: `repo` (hub_model_id), else a repo
    named after the output folder in the token's namespace. Returns the commit's URL."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    repo_id = api.create_repo(repo or folder.absolute().name, private=private, exist_ok=True).repo_id
    commit = api.upload_folder(
        repo_id=repo_id, folder_path=folder, ignore_patterns=NOT_PUSHED, commit_message="Upload the served checkpoint"
    )
    return commit.commit_url


def main(argv: list[str] | None = None, *, quiet: bool = False) -> Path:
    """quiet: the console shows one bar over the training steps and errors, nothing else (the
    playground's demo build, whose caller says what is happening)."""
    with libraries_quiet() if quiet else contextlib.nullcontext():
        try:
            return run(sys.argv[1:] if argv is None else argv, quiet)
        except KeyboardInterrupt:  # before or after the training loop (run() names a checkpoint inside it)
            raise Interrupted("interrupted") from None


def run(argv: list[str], quiet: bool) -> Path:
    script, args, settings = parse(argv)
    if quiet:  # the Trainer's bar for this, not its printer of every logged dict
        args.disable_tqdm = True
    talk = args.process_index == 0 and not quiet
    output = Path(args.output_dir).expanduser()
    args.output_dir = str(output / "checkpoints")
    claim_output(output, script, args)
    resume_from = get_last_checkpoint(args.output_dir) if script.resume and Path(args.output_dir).is_dir() else None
    if resume_from is not None:
        check_resume(resume_from, script)
        check_readable(Path(resume_from), args)
        check_same_run(Path(args.output_dir) / RUN_RECORD, settings)
    scratch = script.model_name_or_path == "scratch"
    # A scratch base has GPTBigCode's layers and SCRATCH_POSITIONS positions, whatever its size.
    config = GPTBigCodeConfig(n_positions=SCRATCH_POSITIONS) if scratch else base_config(script.model_name_or_path)
    check_positions(script.model_name_or_path, config.max_position_embeddings, script.block_size)  # before it is built
    if script.lora and not is_deepspeed_zero3_enabled():  # ZeRO-3 would build even the meta model sharded
        check_lora_targets(script, config)
    # The Trainer would push DIR/checkpoints at every save; the served folder is pushed at the end instead.
    push_to_hub, args.push_to_hub = args.push_to_hub, False
    check_writable(output, "--output_dir")
    set_seed(args.seed)
    try:
        splits, report = build_dataset(
            script.datasets,
            max_chars=script.max_chars,
            uncensored=script.uncensored,
            test_size=script.test_size,
            seed=args.seed,
        )
    except DataError as exc:
        raise SystemExit(str(exc)) from None

    base = script.model_name_or_path
    if scratch:
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
    train_set = tokenized(splits["train"], tokenizer, script, report)
    eval_set = tokenized(splits["test"], tokenizer, script, report)
    if not len(train_set):
        raise SystemExit(f"no training dialogue fits block_size {script.block_size}: {report.summary()}")
    if not len(eval_set) and args.eval_strategy != "no":
        raise SystemExit(
            f"no dialogue is left to evaluate on ({report.summary()}): add --eval_strategy no, or more data"
        )
    if talk:
        print(f"data: {report.summary()}; {len(train_set)} train / {len(eval_set)} test examples", flush=True)
        if report.places:
            listing = Path(args.output_dir) / "dropped.txt"
            listing.parent.mkdir(parents=True, exist_ok=True)
            listing.write_text(report.listing(), encoding="utf-8")
            print(f"every dropped row's place: {listing}", flush=True)
        print(f"processes: {args.world_size} ({args.parallel_mode.value}) on {args.device.type}", flush=True)

    model = load_model(script, args, base, tokenizer)
    if script.packing and script.padding_free:
        # Flash attention finds the dialogues in the position ids of a single row only.
        collator = PackedCollator(tokenizer.pad_token_id, flatten=script.attn_implementation.startswith("flash"))
    else:
        collator = Collator(tokenizer.pad_token_id)
    trainer = Trainer(
        model=model,
        args=args,
        data_collator=collator,
        train_dataset=train_set,
        eval_dataset=eval_set if len(eval_set) else None,  # --test_size 0, --eval_strategy no
        processing_class=tokenizer,
        callbacks=[StopOnNonFiniteLoss()],
    )
    if quiet:
        trainer.remove_callback(PrinterCallback)
        trainer.add_callback(StepsBar())
    if script.resume and resume_from is None and talk:
        print(f"no checkpoint in {args.output_dir}: starting from the beginning", flush=True)
    if resume_from is None and trainer.is_world_process_zero():  # what a resume will have to bring
        Path(args.output_dir).mkdir(parents=True, exist_ok=True)
        (Path(args.output_dir) / RUN_RECORD).write_text(json.dumps(shaping(settings), indent=1))
    try:
        trainer.train(resume_from_checkpoint=resume_from)
    except FloatingPointError as exc:  # StopOnNonFiniteLoss: its message says what to do
        raise SystemExit(str(exc)) from None
    except KeyboardInterrupt:
        last = get_last_checkpoint(args.output_dir) if Path(args.output_dir).is_dir() else None
        kept = f"the last checkpoint is {last}" if last else "no checkpoint was saved yet"
        step = trainer.state.global_step
        raise Interrupted(f"interrupted at step {step}; {kept}: add --resume true to continue") from None

    card = model_card(
        output.absolute().name,
        script.model_name_or_path,
        settings,
        trainer.state.log_history,
        report.summary(),
        datasets=script.datasets,
        hardware=hardware(args),
    )
    served = torch.bfloat16 if args.bf16 else torch.float16 if args.fp16 else torch.float32
    if script.lora:
        from training.merge import merge

        state_dict = trainer.accelerator.get_state_dict(trainer.model)  # gathers shards (ZeRO-3, FSDP)
        if trainer.is_world_process_zero():
            # Only the chat tokens' rows of the resized embedding were trained (trainable_token_indices) and
            # the adapter holds them; PEFT's default would also save the whole embedding, and the tied head.
            adapter = trainer.accelerator.unwrap_model(trainer.model)
            adapter.save_pretrained(output / "adapter", state_dict=state_dict, save_embedding_layers=False)
            tokenizer.save_pretrained(output / "adapter", save_jinja_files=False)
            merge(base, output / "adapter", output, card, dtype=served)
    else:
        unwrapped = trainer.accelerator.unwrap_model(trainer.model)
        if unwrapped.dtype != served:  # config.json records the weights' dtype (DeepSpeed's are bf16 already)
            unwrapped.to(served)
        state_dict = trainer.accelerator.get_state_dict(trainer.model)  # gathers shards (ZeRO-3, FSDP)
        if trainer.is_world_process_zero():
            unwrapped.config.use_cache = True
            save_checkpoint(unwrapped, tokenizer, output, card, state_dict=state_dict)
    if trainer.is_world_process_zero():
        if not quiet:
            print(f"served checkpoint: {output}", flush=True)
        if script.evaluate:  # before the push: the card uploaded holds the score
            from training.evaluate import main as evaluate

            evaluate([script.evaluate, "--model", str(output), "--write-card", *(["--quiet"] if quiet else [])])
        if push_to_hub:
            url = push(output, args.hub_model_id, args.hub_token, args.hub_private_repo)
            print(f"pushed to {url}", flush=True)
    # Every rank waits for the save, then leaves the process group together: a rank that exits while
    # another still talks to it makes gloo abort (SIGABRT) at interpreter shutdown.
    trainer.accelerator.wait_for_everyone()
    trainer.accelerator.end_training()
    return output


if __name__ == "__main__":
    main()
