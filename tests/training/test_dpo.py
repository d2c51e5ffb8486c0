"""DPO runs on the CPU: `stage: dpo` recipes through `python -m training.train`, into a served checkpoint."""

from pathlib import Path
from unittest.mock import ANY

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM, AutoTokenizer

from playground.backends import ChatRequest, SamplingParams, collect
from playground.backends.local import LocalBackend
from playground.preferences import as_jsonl, pairs
from playground.template import encode
from tests.playground.test_preferences import retried
from training.dpo import tokenize_pair
from training.format import tokenize_dialogue
from training.preferences import builtin_pairs
from training.train import main

TINY_DPO = "training/recipes/tiny-dpo.yaml"
# The same eight pairs at every step (one batch), a learning rate that moves a tiny untrained model at once.
FEW_STEPS = [
    "--max_length",
    "256",
    "--max_prompt_length",
    "128",
    "--max_steps",
    "6",
    "--learning_rate",
    "1e-3",
    "--warmup_steps",
    "0",
    "--lr_scheduler_type",
    "constant",
    "--eval_strategy",
    "no",
    "--test_size",
    "0",
]


def saved_preferences(folder: Path, count: int = 8) -> Path:
    """The built-in pairs as the page's "Save preferences" writes them: each a question whose reply was
    retried, the chosen version liked."""
    found = []
    for pair in builtin_pairs(count):
        conversation, versions = retried(pair["prompt"], *pair["rejected"], {**pair["chosen"][0], "rating": "like"})
        found += pairs(conversation, "", versions)
    assert found == builtin_pairs(count)
    path = folder / "preferences.jsonl"
    path.write_text(as_jsonl(found))
    return path


def dpo_run(checkpoint: Path, out: Path, *flags: str) -> Path:
    """FEW_STEPS of tiny-dpo from `checkpoint` on eight saved pairs; the served folder."""
    data = saved_preferences(out.parent)
    main(
        [
            TINY_DPO,
            "--model_name_or_path",
            str(checkpoint),
            "--datasets",
            str(data),
            "--output_dir",
            str(out),
            *FEW_STEPS,
            *flags,
        ]
    )
    return out


def card_section(folder: Path, title: str) -> dict:
    card = (folder / "README.md").read_text()
    return yaml.safe_load(card.split(f"## {title}\n\n```yaml\n")[1].split("```")[0])


def logged_losses(folder: Path) -> list[float]:
    table = (folder / "README.md").read_text().split("| Training Loss |")[1].split("\n\n")[0]
    return [float(line.split("|")[1]) for line in table.strip().splitlines()[2:]]


def test_a_reply_is_the_text_and_end_that_sft_trains_on(tokenizer):
    """The completion DPO scores is exactly what SFT puts in the loss after the same prompt."""
    prompt = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "type <|end|> here"}]
    row = {"prompt": prompt, "chosen": "a <|user|> b", "rejected": "no"}
    pair, cut = tokenize_pair(tokenizer, row, max_prompt_length=200, max_length=None)
    sft = tokenize_dialogue(tokenizer, [*prompt, {"role": "assistant", "content": row["chosen"]}])
    trained = [i for i, label in zip(sft["input_ids"], sft["labels"], strict=True) if label != -100]
    assert not cut and pair["prompt_ids"] == encode(tokenizer, prompt) and pair["chosen_ids"] == trained
    short, cut = tokenize_pair(tokenizer, row, max_prompt_length=200, max_length=len(pair["prompt_ids"]) + 2)
    assert cut and len(short["chosen_ids"]) == 2
    assert tokenize_pair(tokenizer, row, max_prompt_length=3, max_length=None) == (None, False)


def test_dpo_loss_falls_and_the_margin_rises_and_the_app_serves_the_result(tiny_checkpoint, tmp_path):
    out = dpo_run(tiny_checkpoint, tmp_path / "dpo")
    losses = logged_losses(out)
    assert len(losses) == 6 and losses[-1] < losses[0] - 0.1
    dpo = card_section(out, "Preference training (DPO)")
    assert dpo["final_rewards_margins"] > dpo["first_rewards_margins"] + 0.2 and dpo["final_rewards_accuracies"] == 1
    assert dpo["beta"] == 0.1 and dpo["reference_model"] == f"{tiny_checkpoint} (a frozen copy)"
    backend = LocalBackend.from_pretrained(str(out))
    request = ChatRequest([{"role": "user", "content": "What does len do?"}], SamplingParams(max_new_tokens=8))
    reply, _ = collect(backend.stream(request))
    assert isinstance(reply, str)


def test_the_card_records_the_precision_that_ran_whatever_set_it(tiny_checkpoint, tmp_path, monkeypatch):
    """`accelerate launch` sets ACCELERATE_MIXED_PRECISION from its config: it wins over the recipe's bf16: false."""
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    out = dpo_run(tiny_checkpoint, tmp_path / "bf16", "--bf16", "false")
    card = (out / "README.md").read_text()
    ran = yaml.safe_load(card.split("## Hardware\n\n")[1].split("```yaml\n")[1].split("```")[0])
    assert ran == {"mixed_precision": "bf16", "processes": 1, "distributed": "NO", "accelerate_config": ANY}
    assert card_section(out, "Training arguments")["bf16"] is True
    assert AutoModelForCausalLM.from_pretrained(out).dtype == torch.bfloat16  # served as it trained
    dpo = card_section(out, "Preference training (DPO)")
    assert set(dpo) == {"beta", "loss_type", "reference_model", "first_rewards_margins"} | {
        f"final_rewards_{name}" for name in ("chosen", "rejected", "margins", "accuracies")
    }


def test_a_lora_dpo_run_merges_into_the_served_checkpoint(tiny_checkpoint, tmp_path):
    from peft import PeftModel

    out = dpo_run(tiny_checkpoint, tmp_path / "lora", "--lora", "true", "--lora_r", "4")
    assert card_section(out, "Preference training (DPO)")["reference_model"].endswith("(the adapter switched off)")
    assert not (out / "adapter" / "ref").exists()  # TRL's frozen reference adapter is not the result
    tokenizer = AutoTokenizer.from_pretrained(out)
    ids = torch.tensor([encode(tokenizer, [{"role": "user", "content": "What does `len` do?"}])])
    base = AutoModelForCausalLM.from_pretrained(tiny_checkpoint).eval()
    with torch.no_grad():
        untrained = base(ids).logits
        expected = PeftModel.from_pretrained(base, str(out / "adapter")).eval()(ids).logits
        got = AutoModelForCausalLM.from_pretrained(out).eval()(ids).logits
    assert not torch.allclose(expected, untrained, atol=1e-4)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_tiny_dpo_starts_from_the_demo_checkpoint_and_its_result_answers(demo_model, tmp_path):
    out = tmp_path / "tiny-dpo"
    main(
        [
            TINY_DPO,
            "--model_name_or_path",
            str(demo_model),
            "--output_dir",
            str(out),
            "--max_steps",
            "4",
            "--eval_strategy",
            "no",
        ]
    )
    backend = LocalBackend.from_pretrained(str(out))
    request = ChatRequest(
        [{"role": "user", "content": "How do I reverse a list in Python?"}],
        SamplingParams(temperature=0, max_new_tokens=200),
    )
    reply, _ = collect(backend.stream(request))
    assert "reverse" in reply


def test_dpo_refuses_a_base_without_the_chat_tokens(tmp_path):
    from training.scratch import build_base, python_doc_dialogues

    base = build_base(
        python_doc_dialogues(limit=20), tmp_path / "base", vocab_size=300, n_layer=1, n_embd=16, chat_tokens=False
    )
    data = saved_preferences(tmp_path)
    with pytest.raises(SystemExit, match="has no chat tokens: DPO starts from a StarChat-format SFT checkpoint"):
        main(
            [
                TINY_DPO,
                "--model_name_or_path",
                str(base),
                "--datasets",
                str(data),
                "--output_dir",
                str(tmp_path / "o"),
                *FEW_STEPS,
            ]
        )
