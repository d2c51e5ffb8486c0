"""The served checkpoint's files: a model card that tells what ran, the chat template where TGI reads it."""

import json
import shutil
from dataclasses import fields
from pathlib import Path

import yaml
from transformers import AutoModelForCausalLM, AutoTokenizer

from playground.template import CHAT_TEMPLATE
from training.checkpoint import model_card, save_checkpoint
from training.train import ScriptArguments, parse

RECIPES = Path(__file__).resolve().parents[2] / "training" / "recipes"
LOG = [
    {"loss": 1.75, "epoch": 0.5, "step": 10},
    {"eval_loss": 1.5, "epoch": 0.5, "step": 10},
    {"loss": 1.25, "epoch": 1.0, "step": 20},
    {"eval_loss": 1.125, "epoch": 1.0, "step": 20},
]


def section(card: str, title: str) -> str:
    return card.split(f"## {title}\n\n")[1].split("\n## ")[0]


def test_the_card_records_what_ran_not_the_recipe():
    flags = [
        "--learning_rate",
        "1e-4",
        "--max_steps",
        "30",
        "--lora",
        "true",
        "--hub_token",
        "hf_secret",
        "--use_cpu",
        "true",
    ]
    script, args, settings = parse([str(RECIPES / "starchat-beta.yaml"), "--output_dir", "/tmp/x", *flags])
    card = model_card(
        "starchat-x",
        script.model_name_or_path,
        settings,
        LOG,
        "9846 rows read, 9000 dialogues kept; dropped: 846 refusal/alignment phrase (uncensored filter)",
        datasets=script.datasets,
        hardware="8 x NVIDIA H100 80GB HBM3",
    )
    front = yaml.safe_load(card.split("---\n")[1])
    assert front["base_model"] == "bigcode/starcoderplus"
    assert front["datasets"] == ["timdettmers/openassistant-guanaco"]
    assert front["license"] == "bigcode-openrail-m" and front["pipeline_tag"] == "text-generation"
    assert "lora" in front["tags"]

    ran = yaml.safe_load(section(card, "Training arguments").split("```yaml\n")[1].split("```")[0])
    assert (ran["learning_rate"], ran["max_steps"], ran["lora"]) == (1e-4, 30, True)
    assert {f.name for f in fields(ScriptArguments)} <= set(ran)
    assert (ran["lr_scheduler_type"], ran["bf16"], ran["activation_checkpointing"]) == ("cosine", True, True)
    assert ran["total_train_batch_size"] == args.per_device_train_batch_size * args.gradient_accumulation_steps
    assert "hf_secret" not in card  # a token is never written down

    assert "846 refusal/alignment phrase" in section(card, "Data")
    assert "8 x NVIDIA H100 80GB HBM3" in section(card, "Hardware")
    assert "| 1.2500 | 1.00 | 20 | 1.1250 |" in section(card, "Training results")
    versions = section(card, "Framework versions")
    assert all(name in versions for name in ["Transformers", "PyTorch", "PEFT", "Accelerate", "Datasets", "TRL"])


def test_a_scratch_run_names_no_hub_base_and_shows_its_training_loss():
    script, _, settings = parse([str(RECIPES / "tiny.yaml"), "--output_dir", "out", "--eval_strategy", "no"])
    log = [{"loss": 2.5, "epoch": 0.5, "step": 5}, {"loss": 2.0, "epoch": 1.0, "step": 10}]
    card = model_card("tiny", script.model_name_or_path, settings, log, datasets=script.datasets, hardware="CPU")
    front = yaml.safe_load(card.split("---\n")[1])
    assert "base_model" not in front and "datasets" not in front  # neither is a Hub id
    assert "scratch" in section(card, "Base model")
    assert "| 2.0000 | 1.00 | 10 | - |" in section(card, "Training results")


def test_the_chat_template_is_in_tokenizer_config_json_where_tgi_reads_it(tiny_checkpoint):
    config = json.loads((tiny_checkpoint / "tokenizer_config.json").read_text())
    assert config["chat_template"] == CHAT_TEMPLATE
    assert AutoTokenizer.from_pretrained(tiny_checkpoint).chat_template == CHAT_TEMPLATE


def test_a_new_checkpoint_leaves_nothing_of_the_old_one_but_other_files(tiny_checkpoint, tmp_path):
    """Where shards replace one file (or the reverse), an old file left beside the new ones could be read."""
    out = tmp_path / "served"
    shutil.copytree(tiny_checkpoint, out)
    (out / "model.safetensors").rename(out / "model-00001-of-00002.safetensors")
    (out / "model.safetensors.index.json").write_text("{}")
    (out / "pytorch_model.bin").write_bytes(b"older weights")  # an older format's
    (out / "notes.txt").write_text("mine")
    model = AutoModelForCausalLM.from_pretrained(tiny_checkpoint)
    save_checkpoint(model, AutoTokenizer.from_pretrained(tiny_checkpoint), out, "card")
    assert sorted(p.name for p in out.iterdir()) == sorted([p.name for p in tiny_checkpoint.iterdir()] + ["notes.txt"])
    assert (out / "README.md").read_text() == "card"
