"""What a run checks before any work, beyond its arguments' own values (training.arguments): the output
folder, the checkpoint a resume goes on from, and the base model's positions and layers. Each refusal is
a SystemExit whose message says what to do; `preflight` makes them all, before the data and the model load.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from transformers import AutoModelForCausalLM, GPTBigCodeConfig, TrainingArguments
from transformers.integrations import is_deepspeed_zero3_enabled
from transformers.trainer_utils import get_last_checkpoint

from training.arguments import NOT_LORA_TARGETS, ScriptArguments
from training.checkpoint import RUN_PARTS, base_config, check_output, check_writable, clear_served
from training.scratch import SCRATCH_POSITIONS

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
    "stage",
    "dataset_mixer",
    "dataset_splits",
    "beta",
    "max_prompt_length",
)
RUN_RECORD = "run.json"  # in DIR/checkpoints: the SHAPING values the run started with (checkpoint.is_run reads it)


@dataclass(frozen=True)
class Plan:
    """Where the run writes and what it goes on from, once the checks have passed."""

    output: Path  # the served checkpoint's folder
    resume_from: str | None  # with --resume true, the last checkpoint in output/checkpoints

    @property
    def checkpoints(self) -> Path:
        """The Trainer's resumable state."""
        return self.output / "checkpoints"


def preflight(script: ScriptArguments, args: TrainingArguments, settings: dict) -> Plan:
    """Refuses a run that could not finish or would lose files, before the data and the model are loaded;
    claims the output folder (clearing it on --overwrite_output_dir)."""
    output = Path(args.output_dir).expanduser()
    # One process a machine claims and tries the folder: check_writable makes and removes it, and another
    # process listing it meanwhile found it gone (a two-process run failed so).
    main = args.local_process_index == 0
    if main:
        claim_output(output, script)
    checkpoints = output / "checkpoints"
    resume_from = get_last_checkpoint(str(checkpoints)) if script.resume and checkpoints.is_dir() else None
    if resume_from is not None:
        check_resume(resume_from, script)
        check_readable(Path(resume_from), args)
        check_same_run(checkpoints / RUN_RECORD, settings)
    # A scratch base has GPTBigCode's layers and SCRATCH_POSITIONS positions, whatever its size.
    scratch = script.model_name_or_path == "scratch"
    config = GPTBigCodeConfig(n_positions=SCRATCH_POSITIONS) if scratch else base_config(script.model_name_or_path)
    if script.stage == "dpo":  # prompt and reply within DPOConfig's max_length
        check_positions(script.model_name_or_path, config.max_position_embeddings, args.max_length or 0, "max_length")
    else:
        check_positions(script.model_name_or_path, config.max_position_embeddings, script.block_size)
    if script.lora and not is_deepspeed_zero3_enabled():  # ZeRO-3 would build even the meta model sharded
        check_lora_targets(script, config)
    if main:
        check_writable(output, "--output_dir")
    return Plan(output, resume_from)


def claim_output(output: Path, script: ScriptArguments) -> None:
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
    for part in RUN_PARTS:
        shutil.rmtree(output / part, ignore_errors=True)
    clear_served(output)  # until the new run is saved, no finished checkpoint


def shaping(settings: dict) -> dict:
    return json.loads(json.dumps({name: settings.get(name) for name in SHAPING}))  # as the record reads back


def flag_value(value) -> str:
    if isinstance(value, list):
        return " ".join(map(str, value))
    return str(value).lower() if isinstance(value, bool) else str(value)


def record_run(checkpoints: Path, settings: dict) -> None:
    """Writes what a resume will have to bring (check_same_run reads it back)."""
    checkpoints.mkdir(parents=True, exist_ok=True)
    (checkpoints / RUN_RECORD).write_text(json.dumps(shaping(settings), indent=1))


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


def check_positions(base: str, positions: int, block_size: int, name: str = "block_size") -> None:
    if block_size > positions:
        raise SystemExit(
            f"--{name} {block_size} is longer than the model's {positions} positions "
            f"(max_position_embeddings of {base}): use --{name} {positions} or less"
        )
