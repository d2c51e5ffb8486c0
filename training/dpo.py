"""The preference stage (`stage: dpo`): TRL's DPOTrainer on pairs tokenized by our template.

The prompt is encoded as the server encodes it (playground.template, ending with `<|assistant|>`); each reply
is the assistant's text and its `<|end|>`, the very pieces SFT puts in the loss. The reference is the model
the run starts from: a frozen copy of the SFT checkpoint, or, with LoRA, the same model through a copy of the
adapter as it starts (zero: the adapter switched off), which TRL keeps.
"""

from __future__ import annotations

import datasets
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PrinterCallback
from trl import DPOConfig, DPOTrainer

from playground.template import END, control_ids, encode, encode_text
from training.arguments import ScriptArguments
from training.data import DataReport
from training.format import add_chat_tokens

# What TRL logs of the rewards (beta times the log-ratio to the reference) that the card keeps the last of.
REWARDS = ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies")


class PairsTrainer(DPOTrainer):
    """DPOTrainer on pairs already tokenized (`tokenized`): its own chat-template tokenization is skipped."""

    def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
        return dataset


def sft_tokenizer(base: str) -> PreTrainedTokenizerBase:
    """The base's tokenizer, which must hold the chat tokens already: DPO starts from an SFT checkpoint."""
    tokenizer = AutoTokenizer.from_pretrained(base)
    if add_chat_tokens(tokenizer):
        raise SystemExit(
            f"{base} has no chat tokens: DPO starts from a StarChat-format SFT checkpoint (train one with "
            "stage: sft first)"
        )
    return tokenizer


def tokenize_pair(tokenizer, row: dict, max_prompt_length: int, max_length: int | None) -> tuple[dict | None, bool]:
    """{"prompt_ids", "chosen_ids", "rejected_ids"}, and whether a reply was cut to fit max_length; None for a
    prompt longer than max_prompt_length."""
    prompt_ids = encode(tokenizer, row["prompt"], add_generation_prompt=True)
    if len(prompt_ids) > max_prompt_length:
        return None, False
    end = control_ids(tokenizer)[END]
    replies = [[*encode_text(tokenizer, "\n" + row[name]), end] for name in ("chosen", "rejected")]
    room = len(prompt_ids) + max(map(len, replies)) if max_length is None else max_length
    cut = [ids[: room - len(prompt_ids)] for ids in replies]
    return {"prompt_ids": prompt_ids, "chosen_ids": cut[0], "rejected_ids": cut[1]}, cut != replies


def tokenized(split: datasets.Dataset, tokenizer, script: ScriptArguments, args: DPOConfig, report: DataReport):
    examples = []
    for row in split:
        example, cut = tokenize_pair(tokenizer, row, script.max_prompt_length, args.max_length)
        if example is None:
            report.drop(f"prompt longer than max_prompt_length ({script.max_prompt_length} tokens)", row["place"])
            report.kept -= 1
            continue
        report.cut += cut
        examples.append(example)
    return datasets.Dataset.from_list(examples)


def dpo_trainer(
    script: ScriptArguments, args: DPOConfig, quiet: bool
) -> tuple[DPOTrainer, str, PreTrainedTokenizerBase, DataReport]:
    """The trainer, the base it starts from (the reference), its tokenizer and the data's report."""
    from training.train import StepsBar, StopOnNonFiniteLoss, load_model, read_data, say_data

    splits, report = read_data(script, args)
    base = script.model_name_or_path
    tokenizer = sft_tokenizer(base)
    train_set = tokenized(splits["train"], tokenizer, script, args, report)
    eval_set = tokenized(splits["test"], tokenizer, script, args, report)
    if not len(train_set):
        raise SystemExit(f"no pair's prompt fits max_prompt_length {script.max_prompt_length}: {report.summary()}")
    if not len(eval_set) and args.eval_strategy != "no":
        raise SystemExit(f"no pair is left to evaluate on ({report.summary()}): add --eval_strategy no, or more data")
    say_data(report, len(train_set), len(eval_set), args, args.process_index == 0 and not quiet)
    trainer = PairsTrainer(
        model=load_model(script, args, base, tokenizer),
        args=args,
        train_dataset=train_set,
        eval_dataset=eval_set if len(eval_set) else None,
        processing_class=tokenizer,
        callbacks=[StopOnNonFiniteLoss()],
    )
    if quiet:
        trainer.remove_callback(PrinterCallback)
        trainer.add_callback(StepsBar())
    return trainer, base, tokenizer, report


def drop_reference_adapter(trainer: DPOTrainer) -> None:
    """TRL's frozen copy of the starting adapter (LoRA's reference) is not part of the result."""
    model = trainer.accelerator.unwrap_model(trainer.model)
    if "ref" in getattr(model, "peft_config", {}):
        model.delete_adapter("ref")


def preference_summary(trainer: DPOTrainer, base: str) -> dict:
    """The card's DPO part: beta, the reference and the last logged rewards, margins and accuracies."""
    args = trainer.args
    lora = hasattr(trainer.accelerator.unwrap_model(trainer.model), "peft_config")
    summary = {
        "beta": args.beta,
        "loss_type": list(args.loss_type),
        "reference_model": f"{base} (the adapter switched off)" if lora else f"{base} (a frozen copy)",
    }
    logged = [entry for entry in trainer.state.log_history if "rewards/margins" in entry]
    if logged:
        summary |= {f"final_{name.replace('/', '_')}": round(logged[-1][name], 4) for name in REWARDS}
        summary["first_rewards_margins"] = round(logged[0]["rewards/margins"], 4)
    return summary
