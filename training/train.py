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
import math
import os
import platform
import sys
from pathlib import Path

import datasets
import torch
from tqdm.auto import tqdm
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedTokenizerBase,
    PrinterCallback,
    Trainer,
    TrainerCallback,
    TrainingArguments,
    set_seed,
)
from transformers.trainer_utils import get_last_checkpoint

from playground.console import libraries_quiet
from playground.template import CONTROL_TOKENS
from training.arguments import ScriptArguments, parse
from training.checkpoint import model_card, save_checkpoint
from training.data import DataError, DataReport, Mixture, build_dataset
from training.format import Collator, PackedCollator, add_chat_tokens, fit_dialogue, pack, pack_blocks
from training.launch import how_it_ran
from training.preflight import Plan, preflight, record_run
from training.scratch import build_base

# Not the Trainer's to upload: its resumable state, the adapter (merged in), the scratch base.
NOT_PUSHED = ["checkpoints/*", "adapter/*", "scratch-base/*", ".incomplete/*"]


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


def main(argv: list[str] | None = None, *, quiet: bool = False) -> Path:
    """quiet: the console shows one bar over the training steps and errors, nothing else (the
    playground's demo build, whose caller says what is happening)."""
    with libraries_quiet() if quiet else contextlib.nullcontext():
        try:
            return run(sys.argv[1:] if argv is None else argv, quiet)
        except KeyboardInterrupt:  # before or after the training loop (train_model names a checkpoint inside it)
            raise Interrupted("interrupted") from None


def run(argv: list[str], quiet: bool) -> Path:
    script, args, settings = parse(argv)
    if script.model_name_or_path == "demo":
        script.model_name_or_path = settings["model_name_or_path"] = str(demo_model())
    plan = preflight(script, args, settings)
    args.output_dir = str(plan.checkpoints)  # the Trainer's; the served checkpoint goes to plan.output
    # The Trainer would push DIR/checkpoints at every save; the served folder is pushed at the end instead.
    push_to_hub, args.push_to_hub = args.push_to_hub, False
    if quiet:  # the Trainer's bar for this, not its printer of every logged dict
        args.disable_tqdm = True
    talk = args.process_index == 0 and not quiet
    set_seed(args.seed)
    if script.stage == "dpo":
        from training.dpo import dpo_trainer, drop_reference_adapter

        trainer, base, tokenizer, report = dpo_trainer(script, args, quiet)
    else:
        trainer, base, tokenizer, report = sft_trainer(script, args, plan.output, quiet)
    train_model(trainer, plan, settings, script.resume and talk)
    if script.stage == "dpo":
        drop_reference_adapter(trainer)
    card = card_of(trainer, script, settings, report, plan.output)
    save_served(trainer, script, base, tokenizer, plan.output, card)
    publish(trainer, script, plan.output, push_to_hub, quiet)
    # Every rank waits for the save, then leaves the process group together: a rank that exits while
    # another still talks to it makes gloo abort (SIGABRT) at interpreter shutdown.
    trainer.accelerator.wait_for_everyone()
    trainer.accelerator.end_training()
    return plan.output


def sft_trainer(
    script: ScriptArguments, args: TrainingArguments, output: Path, quiet: bool
) -> tuple[Trainer, str, PreTrainedTokenizerBase, DataReport]:
    """The trainer, the base it starts from, its tokenizer and the data's report."""
    splits, report = read_data(script, args)
    base, tokenizer = load_base(script, args, output, splits)
    talk = args.process_index == 0 and not quiet
    train_set, eval_set = tokenize_splits(splits, tokenizer, script, args, report, talk)
    return build_trainer(script, args, base, tokenizer, train_set, eval_set, quiet), base, tokenizer, report


def demo_model() -> Path:
    """`model_name_or_path: demo`: the playground's offline demo checkpoint, built first if not cached."""
    from playground.settings import Settings
    from training.demo import demo_checkpoint

    return demo_checkpoint(os.environ.get("STARCHAT_CACHE_DIR") or Settings().cache_dir)


def read_data(script: ScriptArguments, args: TrainingArguments) -> tuple[datasets.DatasetDict, DataReport]:
    """The dialogues (SFT) or the preference pairs (DPO), split into train and test, and their report."""
    splits, columns = tuple(script.dataset_splits), tuple(script.dataset_columns)
    mixture = Mixture(script.dataset_mixer or {}, splits, columns, seed=args.seed)
    common = {"max_chars": script.max_chars, "test_size": script.test_size, "seed": args.seed, "mixture": mixture}
    try:
        if script.stage == "dpo":
            from training.preferences import build_preferences

            return build_preferences(script.datasets, **common)
        return build_dataset(script.datasets, uncensored=script.uncensored, **common)
    except DataError as exc:
        raise SystemExit(str(exc)) from None


def load_base(
    script: ScriptArguments, args: TrainingArguments, output: Path, splits: datasets.DatasetDict
) -> tuple[str, PreTrainedTokenizerBase]:
    """The base model's folder or Hub id (a scratch base is built from the training split first, once) and
    its tokenizer with the chat tokens."""
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
    return base, tokenizer


def tokenize_splits(
    splits: datasets.DatasetDict,
    tokenizer,
    script: ScriptArguments,
    args: TrainingArguments,
    report: DataReport,
    talk: bool,
) -> tuple[datasets.Dataset, datasets.Dataset]:
    """The training and test examples; refuses a run left with nothing to train on, or to evaluate on."""
    train_set = tokenized(splits["train"], tokenizer, script, report)
    eval_set = tokenized(splits["test"], tokenizer, script, report)
    if not len(train_set):
        raise SystemExit(f"no training dialogue fits block_size {script.block_size}: {report.summary()}")
    if not len(eval_set) and args.eval_strategy != "no":
        raise SystemExit(
            f"no dialogue is left to evaluate on ({report.summary()}): add --eval_strategy no, or more data"
        )
    say_data(report, len(train_set), len(eval_set), args, talk)
    return train_set, eval_set


def say_data(report: DataReport, train: int, test: int, args: TrainingArguments, talk: bool) -> None:
    """Prints the data's report and the processes; lists every dropped row's place in the run's folder."""
    if not talk:
        return
    print(f"data: {report.summary()}; {train} train / {test} test examples", flush=True)
    if report.places:
        listing = Path(args.output_dir) / "dropped.txt"
        listing.parent.mkdir(parents=True, exist_ok=True)
        listing.write_text(report.listing(), encoding="utf-8")
        print(f"every dropped row's place: {listing}", flush=True)
    print(f"processes: {args.world_size} ({args.parallel_mode.value}) on {args.device.type}", flush=True)


def build_trainer(
    script: ScriptArguments, args: TrainingArguments, base: str, tokenizer, train_set, eval_set, quiet: bool
) -> Trainer:
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
    return trainer


def train_model(trainer: Trainer, plan: Plan, settings: dict, say_fresh_start: bool) -> None:
    """Trains from the plan's checkpoint, or from the start after recording what a resume must bring
    (say_fresh_start: say so when --resume true found no checkpoint)."""
    if say_fresh_start and plan.resume_from is None:
        print(f"no checkpoint in {plan.checkpoints}: starting from the beginning", flush=True)
    if plan.resume_from is None and trainer.is_world_process_zero():
        record_run(plan.checkpoints, settings)
    try:
        trainer.train(resume_from_checkpoint=plan.resume_from)
    except FloatingPointError as exc:  # StopOnNonFiniteLoss: its message says what to do
        raise SystemExit(str(exc)) from None
    except KeyboardInterrupt:
        last = get_last_checkpoint(str(plan.checkpoints)) if plan.checkpoints.is_dir() else None
        kept = f"the last checkpoint is {last}" if last else "no checkpoint was saved yet"
        step = trainer.state.global_step
        raise Interrupted(f"interrupted at step {step}; {kept}: add --resume true to continue") from None


def card_of(trainer: Trainer, script: ScriptArguments, settings: dict, report: DataReport, output: Path) -> str:
    preference = None
    if script.stage == "dpo":
        from training.dpo import preference_summary

        preference = preference_summary(trainer, script.model_name_or_path)
    ran = how_it_ran(trainer.accelerator)
    # What autocast used, whatever set it (accelerate launch's environment may override the recipe's bf16: false).
    settings = settings | {"bf16": ran["mixed_precision"] == "bf16", "fp16": ran["mixed_precision"] == "fp16"}
    return model_card(
        output.absolute().name,
        script.model_name_or_path,
        settings,
        trainer.state.log_history,
        report.summary(),
        datasets=script.datasets,
        hardware=hardware(trainer.args),
        preference=preference,
        ran=ran,
    )


def save_served(trainer: Trainer, script: ScriptArguments, base: str, tokenizer, output: Path, card: str) -> None:
    """The served checkpoint in `output`: the adapter merged into its base, or the trained weights, in bf16
    or fp16 as the flags say (else fp32). Every process takes part (gathering shards); the main one writes."""
    precision = trainer.accelerator.mixed_precision  # what the run used, whatever set it
    served = torch.bfloat16 if precision == "bf16" else torch.float16 if precision == "fp16" else torch.float32
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


def publish(trainer: Trainer, script: ScriptArguments, output: Path, push_to_hub: bool, quiet: bool) -> None:
    """On the main process: names the served checkpoint, scores it if the recipe asks, and pushes it."""
    if not trainer.is_world_process_zero():
        return
    if not quiet:
        print(f"served checkpoint: {output}", flush=True)
    if script.evaluate:  # before the push: the card uploaded holds the score
        from training.evaluate import main as evaluate

        evaluate([script.evaluate, "--model", str(output), "--write-card", *(["--quiet"] if quiet else [])])
    if push_to_hub:
        args = trainer.args
        url = push(output, args.hub_model_id, args.hub_token, args.hub_private_repo, args.hub_revision)
        print(f"pushed to {url}", flush=True)


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
        # DPO starts from an SFT checkpoint whose chat-token rows are trained already (TRL's fused head would also
        # fail on PEFT's wrapper of them: it has no bias).
        chat_token_ids=[] if script.stage == "dpo" else tokenizer.convert_tokens_to_ids(list(CONTROL_TOKENS)),
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


def push(folder: Path, repo: str | None, token: str | None, private: bool | None, revision: str | None = None) -> str:
    """Uploads the served checkpoint where transformers' Trainer would: `repo` (hub_model_id), else a repo
    named after the output folder in the token's namespace; on branch `revision` (made if missing), else
    main. Returns the commit's URL."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    api = HfApi(token=token)
    repo_id = api.create_repo(repo or folder.absolute().name, private=private, exist_ok=True).repo_id
    if revision:
        try:
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        except HfHubHTTPError as exc:
            raise SystemExit(
                f"--hub_revision {revision}: the Hub refused the branch ({exc}); {folder} is saved"
            ) from None
    commit = api.upload_folder(
        repo_id=repo_id,
        folder_path=folder,
        ignore_patterns=NOT_PUSHED,
        commit_message="Upload the served checkpoint",
        revision=revision,
    )
    return commit.commit_url


if __name__ == "__main__":
    main()
