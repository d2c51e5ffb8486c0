"""The recipes say what the card says, and the accelerate configs fit them."""

import re
import warnings
from pathlib import Path

import pytest
import yaml

from training.train import parse

RECIPES = Path(__file__).resolve().parents[2] / "training" / "recipes"
CONFIGS = RECIPES.parent / "accelerate"


def test_starchat_beta_recipe_is_the_cards_hyperparameters():
    script, args, _ = parse([str(RECIPES / "starchat-beta.yaml"), "--output_dir", "/tmp/unused", "--use_cpu", "true"])
    assert script.model_name_or_path == "bigcode/starcoderplus" and not script.lora and script.uncensored
    assert (args.learning_rate, args.lr_scheduler_type.value, args.warmup_steps) == (2e-5, "cosine", 0.03)
    assert (args.num_train_epochs, args.seed, args.bf16, args.gradient_checkpointing) == (6, 42, True, True)
    assert (args.adam_beta1, args.adam_beta2, args.adam_epsilon) == (0.9, 0.999, 1e-8)
    processes = yaml.safe_load((CONFIGS / "deepspeed-zero3.yaml").read_text())["num_processes"]
    assert args.per_device_train_batch_size * args.gradient_accumulation_steps * processes == 256


def test_starchat_dpo_recipe_is_the_handbooks_starchat2_dpo_values():
    script, args, _ = parse([str(RECIPES / "starchat-dpo.yaml"), "--output_dir", "/tmp/unused", "--use_cpu", "true"])
    assert script.stage == "dpo" and type(args).__name__ == "DPOConfig"
    mixer = {"HuggingFaceH4/ultrafeedback_binarized": 1.0, "HuggingFaceH4/orca_dpo_pairs": 1.0}
    assert script.dataset_mixer == mixer and script.datasets == list(mixer)
    assert (script.dataset_splits, script.dataset_columns) == (["train_prefs", "test_prefs"], ["chosen", "rejected"])
    assert (args.beta, args.learning_rate, args.num_train_epochs, args.warmup_steps) == (0.05, 5e-7, 2, 0.1)
    assert (args.max_length, script.max_prompt_length, args.loss_type) == (1024, 512, ["sigmoid"])
    processes = yaml.safe_load((CONFIGS / "deepspeed-zero3.yaml").read_text())["num_processes"]
    assert args.per_device_train_batch_size * args.gradient_accumulation_steps * processes == 128


def test_deepspeed_configs_leave_the_schedule_to_the_recipe():
    for name in ["deepspeed-zero3.yaml", "deepspeed-zero3-multinode.yaml"]:
        config = yaml.safe_load((CONFIGS / name).read_text())
        assert config["deepspeed_config"]["zero_stage"] == 3
        assert "scheduler" not in str(config).lower()  # the original's silent override is not possible here


def test_fsdp2_configs_shard_gptbigcode_blocks():
    for name in ["fsdp2.yaml", "fsdp2-multinode.yaml"]:
        fsdp = yaml.safe_load((CONFIGS / name).read_text())["fsdp_config"]
        assert fsdp["fsdp_version"] == 2 and fsdp["fsdp_transformer_layer_cls_to_wrap"] == "GPTBigCodeBlock"


def test_qlora_recipe_is_one_gpu_4bit_lora_on_attention_and_mlp():
    script, _, _ = parse([str(RECIPES / "starchat-qlora.yaml"), "--output_dir", "/tmp/unused", "--use_cpu", "true"])
    assert script.lora and script.load_in_4bit
    assert set(script.lora_target_modules) == {"c_attn", "c_proj", "c_fc"}


def test_overrides_win_and_typos_are_refused(tmp_path):
    script, args, recipe = parse(
        [str(RECIPES / "tiny.yaml"), "--output_dir", "out", "--learning_rate", "0.5", "--packing", "false"]
    )
    assert args.learning_rate == 0.5 and script.packing is False and recipe["packing"] is False
    bad = tmp_path / "bad.yaml"
    bad.write_text("model_name_or_path: x\ndatasets: [y]\nlearnign_rate: 1\n")
    with pytest.raises(SystemExit, match=f"^{bad}: unknown recipe key\\(s\\) learnign_rate$"):
        parse([str(bad)])


def test_the_stage_is_named_so_a_dpo_key_in_an_sft_recipe_is_refused_not_ignored(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model_name_or_path: x\ndatasets: [y]\nbeta: 0.1\n")
    with pytest.raises(SystemExit, match=f"^{recipe}: unknown recipe key\\(s\\) beta$"):
        parse([str(recipe), "--output_dir", "out"])
    script, args, card = parse([str(recipe), "--output_dir", "out", "--stage", "dpo", "--use_cpu", "true"])
    assert script.stage == card["stage"] == "dpo" and args.beta == card["beta"] == 0.1
    for weight in (0, -1, "half", float("nan")):
        recipe.write_text(f"model_name_or_path: x\ndataset_mixer: {{y: {weight}}}\n")
        with pytest.raises(SystemExit, match="dataset_mixer: the weight of y must be a number above 0"):
            parse([str(recipe), "--output_dir", "out"])


def test_no_recipe_key_is_deprecated():
    for recipe in sorted(RECIPES.glob("*.yaml")):
        keys = yaml.safe_load(recipe.read_text())
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            parse([str(recipe), "--output_dir", "/tmp/unused", "--use_cpu", "true"])
        deprecated = [
            str(w.message) for w in caught if "deprecated" in str(w.message) and any(k in str(w.message) for k in keys)
        ]
        assert not deprecated, f"{recipe.name}: {deprecated}"


def test_every_file_a_config_or_recipe_names_exists():
    root = RECIPES.parents[1]
    for path in [*CONFIGS.glob("*.yaml"), *RECIPES.glob("*.yaml")]:
        for named in re.findall(r"(?<![\w./-])[a-z][\w./-]*\.yaml", path.read_text()):  # not RECIPE.yaml
            candidates = [root / named, path.parent / named, CONFIGS / named, RECIPES / named]
            assert any(c.exists() for c in candidates), f"{path.name} names {named}, which does not exist"


def test_push_to_hub_and_hub_model_id_are_transformers_flags():
    tiny = str(RECIPES / "tiny.yaml")
    _, args, _ = parse([tiny, "--output_dir", "out", "--push_to_hub", "true", "--hub_model_id", "me/x"])
    assert args.push_to_hub and args.hub_model_id == "me/x"
    _, args, _ = parse(
        [tiny, "--output_dir", "out", "--hub_model_id", "me/x", "--push_to_hub"]
    )  # bare, as the last flag
    assert args.push_to_hub and args.hub_model_id == "me/x"
    _, args, _ = parse([tiny, "--output_dir", "out"])
    assert not args.push_to_hub and args.hub_model_id is None
    with pytest.raises(SystemExit):  # argparse: "--push_to_hub: Truthy value expected: got me/x ..."
        parse([tiny, "--output_dir", "out", "--push_to_hub", "me/x"])


@pytest.mark.parametrize(
    "text, said",
    [
        (None, "No such file or directory"),
        ("a: [1\n", "not valid YAML"),
        ("- a\n", "a recipe maps keys to values"),
        ("a: 1\nb: 2\na: 3\n", r"not valid YAML \(the key a is given twice"),  # PyYAML would keep a: 3
    ],
)
def test_a_recipe_that_cannot_be_read_is_one_line(tmp_path, text, said):
    recipe = tmp_path / "recipe.yaml"
    if text is not None:
        recipe.write_text(text)
    with pytest.raises(SystemExit, match=f"^{recipe}: {said}"):
        parse([str(recipe)])


def test_a_list_key_given_one_value_is_a_list_of_one_not_of_its_characters(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("model_name_or_path: scratch\ndatasets: my.jsonl\nlora_target_modules: c_attn\n")
    script, _, _ = parse([str(recipe), "--output_dir", "out"])
    assert script.datasets == ["my.jsonl"] and script.lora_target_modules == ["c_attn"]


@pytest.mark.parametrize("flags", [[], ["--output_dir", ""], ["--output_dir", "  "]])
def test_a_run_names_its_output_folder(flags):  # transformers' default would be ./trainer_output, unsaid
    with pytest.raises(SystemExit, match=r"^name the folder of the served checkpoint: --output_dir DIR"):
        parse([str(RECIPES / "tiny.yaml"), *flags])


def test_a_misspelt_flag_is_named_in_two_lines(capsys):
    with pytest.raises(SystemExit):
        parse([str(RECIPES / "tiny.yaml"), "--lora_rr", "4"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 2 and lines[-1].endswith("error: unknown flag(s): --lora_rr 4"), lines
