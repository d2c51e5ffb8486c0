"""The arguments of a training run: a recipe (YAML) of ScriptArguments and transformers.TrainingArguments
fields, the flags that override it, and the values refused on their own before any work.

training.preflight checks what the arguments meet (the output folder, a checkpoint, the base model).
"""

from __future__ import annotations

import enum
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Literal

import yaml
from transformers import HfArgumentParser, TrainingArguments
from transformers.utils import is_flash_attn_2_available, is_flash_attn_3_available

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
USAGE = "python -m training.train RECIPE.yaml [--key value ...]   (RECIPE.yaml --help lists the keys)"
# Names that LoRA cannot take here: the chat tokens' embedding rows are trained on their own, and the
# head shares its weights with the embedding.
NOT_LORA_TARGETS = {"wte", "wpe", "lm_head"}


# What a DPO card shows besides CARD_ARGUMENTS.
DPO_CARD_ARGUMENTS = ("beta", "loss_type", "max_length")


@dataclass
class ScriptArguments:
    stage: Literal["sft", "dpo"] = field(
        default="sft",
        metadata={"help": "sft: dialogues; dpo: preference pairs (the recipe may then hold trl.DPOConfig's keys)"},
    )
    model_name_or_path: str = field(default="", metadata={"help": "base model: Hub id, folder, or 'scratch'"})
    datasets: list[str] = field(default_factory=list, metadata={"help": "files, Hub ids or builtin:NAME"})
    dataset_mixer: dict[str, float] | None = field(
        default=None,
        metadata={
            "help": "instead of datasets: {source: weight}, a weight below 1 the share of its rows kept, "
            "1 or more how many times they are repeated (the alignment-handbook's mixer)"
        },
    )
    dataset_splits: list[str] = field(
        default_factory=lambda: ["train"], metadata={"help": "the splits read from each Hub dataset"}
    )
    dataset_columns: list[str] = field(
        default_factory=list, metadata={"help": "the only columns each row keeps (default: all)"}
    )
    max_prompt_length: int = field(
        default=512, metadata={"help": "dpo: pairs whose prompt is longer (tokens) are dropped"}
    )
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


def parse(argv: list[str]) -> tuple[ScriptArguments, TrainingArguments, dict]:
    """The recipe with the flags' overrides, and the effective arguments for the model card. For `stage: dpo`
    the training arguments are trl's DPOConfig (TrainingArguments and DPO's keys: beta, max_length, ...)."""
    if argv and argv[0] in ("-h", "--help"):  # argparse prints every key and exits
        HfArgumentParser((ScriptArguments, TrainingArguments), usage=USAGE).parse_args(argv[:1])
    if not argv or argv[0].startswith("-"):
        raise SystemExit(f"usage: {USAGE}")
    recipe = read_recipe(argv[0])
    kinds = (ScriptArguments, arguments_class(stage_of(recipe, argv[1:])))
    known = {f.name for kind in kinds for f in fields(kind)}
    if unknown := sorted(set(recipe) - known):
        raise SystemExit(f"{argv[0]}: unknown recipe key(s) {', '.join(unknown)}")
    lists = {f.name for f in fields(ScriptArguments) if str(f.type).startswith("list")}
    for name in lists & set(recipe):
        if isinstance(recipe[name], str):  # `datasets: my.jsonl` means a list of one, not of its characters
            recipe[name] = [recipe[name]]
    if again := repeated_flag(known, argv[1:]):
        raise SystemExit(f"--{again} is given twice: give each flag once (a flag overrides the recipe's value)")
    # DPOConfig also has padding_free (TRL ignores it for now): one flag sets both.
    parser = HfArgumentParser(kinds, usage=USAGE, conflict_handler="resolve")
    parser.set_defaults(**recipe)
    namespace, unused = parser.parse_known_args(argv[1:])
    values = vars(namespace)
    try:
        script, args = (kind(**{f.name: values[f.name] for f in fields(kind) if f.init}) for kind in kinds)
    except ValueError as exc:  # TrainingArguments checks some values itself (warmup_steps, bf16 on a CPU)
        raise SystemExit(str(exc)) from None
    if unused:
        parser.error(f"unknown flag(s): {' '.join(unused)}")
    if script.dataset_mixer and not script.datasets:
        script.datasets = list(script.dataset_mixer)
    if not script.model_name_or_path or not script.datasets:
        raise SystemExit("the recipe must name model_name_or_path and datasets (or dataset_mixer)")
    named = set(recipe) | given_flags(kinds, argv[1:])
    if "output_dir" not in named or not args.output_dir.strip():
        raise SystemExit("name the folder of the served checkpoint: --output_dir DIR (or output_dir: in the recipe)")
    check_script(script, args)
    # Nan/inf losses must reach StopOnNonFiniteLoss, not be filtered out of the logged mean.
    args.logging_nan_inf_filter = False
    # PackedCollator needs each block's seq_lengths, a column the model's forward does not name.
    args.remove_unused_columns = False
    return script, args, effective_arguments(script, args, named)


def stage_of(recipe: dict, flags: list[str]) -> str:
    """The recipe's `stage`, or the `--stage` flag's: it decides which arguments the rest may name."""
    stage = recipe.get("stage", "sft")
    for i, flag in enumerate(flags):
        if flag == "--stage" and i + 1 < len(flags):
            stage = flags[i + 1]
        elif flag.startswith("--stage="):
            stage = flag.split("=", 1)[1]
    return stage


def arguments_class(stage: str) -> type[TrainingArguments]:
    if stage != "dpo":  # an unknown stage is refused by the parser, naming the choices
        return TrainingArguments
    from trl import DPOConfig  # imported only for DPO: trl takes seconds to import

    return DPOConfig


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


def given_flags(kinds: tuple[type, ...], flags: list[str]) -> set[str]:
    """The fields the flags set, however they were spelled (`--a-b`, an unambiguous prefix, `--no_x`)."""
    unset = object()
    probe = HfArgumentParser(kinds, conflict_handler="resolve")
    probe.set_defaults(**dict.fromkeys({f.name for kind in kinds for f in fields(kind)}, unset))
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
    check_mixture(script)
    for name in ("block_size", "max_chars", "max_prompt_length"):
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
    if args.hub_revision and not args.push_to_hub:  # a branch only named on the card would say it was pushed
        raise SystemExit(f"--hub_revision {args.hub_revision} names the branch a push goes to: add --push_to_hub")
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


def check_mixture(script: ScriptArguments) -> None:
    """dataset_mixer's weights: numbers above 0 (below 1 a share of a source's rows, 1 or more a repeat)."""
    if script.dataset_mixer is not None and not isinstance(script.dataset_mixer, dict):
        raise SystemExit("dataset_mixer maps each source to its weight (source: weight lines)")
    for source, weight in (script.dataset_mixer or {}).items():
        if isinstance(weight, bool) or not isinstance(weight, int | float) or not 0 < weight < math.inf:
            raise SystemExit(f"dataset_mixer: the weight of {source} must be a number above 0, not {weight!r}")


def effective_arguments(script: ScriptArguments, args: TrainingArguments, named: set[str]) -> dict:
    """Every ScriptArguments field, the TrainingArguments that decide the result and any other one set."""
    shown = set(CARD_ARGUMENTS) | (set(DPO_CARD_ARGUMENTS) if script.stage == "dpo" else set())
    chosen = (shown | (named & {f.name for f in fields(type(args))})) - NOT_ON_THE_CARD
    values = {name: getattr(args, name) for name in chosen}
    settings = asdict(script) | {k: v.value if isinstance(v, enum.Enum) else v for k, v in values.items()}
    settings["num_processes"] = args.world_size
    settings["total_train_batch_size"] = (
        args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size
    )
    return settings
