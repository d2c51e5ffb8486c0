"""Real training runs on the CPU: the tiny recipe end to end, resume after a kill, LoRA + merge, 2 processes."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig

from playground.backends import ChatRequest, SamplingParams, collect
from playground.backends.local import LocalBackend
from playground.template import render
from tests.conftest import ROOT, free_port
from tests.fakes import FakeHub
from training.scratch import build_base, python_doc_dialogues
from training.train import main, parse, push

pytestmark = pytest.mark.slow  # Real training runs: minutes on 2 cores.

TINY = "training/recipes/tiny.yaml"
# A smaller scratch model and no evaluation: these runs check mechanics, not quality.
SMALL = [
    "--scratch_layers",
    "1",
    "--scratch_embd",
    "64",
    "--scratch_vocab",
    "512",
    "--eval_strategy",
    "no",
    "--logging_steps",
    "1",
    "--disable_tqdm",
    "true",
]


def train(*args: str, launcher: tuple[str, ...] = (sys.executable, "-m"), env: dict | None = None):
    """`python -m training.train TINY ARGS` as its own process: for what a process shows (a launcher, the
    environment, a kill). Elsewhere tests call `main` itself, which spares each run ~7 s of imports."""
    return subprocess.run(
        [*launcher, "training.train", TINY, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=400,
        env={**os.environ, **(env or {})},
    )


def test_the_tiny_recipe_writes_the_served_checkpoint_contract(demo_model):
    files = {p.name for p in demo_model.iterdir()}
    assert {"model.safetensors", "config.json", "generation_config.json", "README.md", "tokenizer.json"} <= files
    tokenizer = AutoTokenizer.from_pretrained(demo_model)
    messages = [{"role": "system", "content": ""}, {"role": "user", "content": "hi"}]
    assert tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == render(messages)
    generation = GenerationConfig.from_pretrained(demo_model)
    assert generation.eos_token_id == tokenizer.convert_tokens_to_ids(["<|end|>", "<|endoftext|>"])
    assert (generation.do_sample, generation.temperature, generation.top_k, generation.top_p) == (True, 0.2, 50, 0.95)
    assert (generation.repetition_penalty, generation.max_new_tokens) == (1.2, 512)


def test_the_tiny_run_learns_eval_loss_falls_and_the_card_has_the_table(demo_model):
    card = (demo_model / "README.md").read_text()
    assert "| Training Loss | Epoch | Step | Validation Loss |" in card and "model_name_or_path: scratch" in card
    table = card.split("| Training Loss | Epoch | Step | Validation Loss |")[1].split("\n\n")[0]
    eval_losses = [float(line.split("|")[4]) for line in table.strip().splitlines()[1:]]
    epochs = yaml.safe_load((ROOT / TINY).read_text())["num_train_epochs"]
    assert len(eval_losses) == epochs and min(eval_losses) < eval_losses[0] - 0.5


def test_the_playground_serves_the_trained_folder_and_stops_at_end(demo_model):
    backend = LocalBackend.from_pretrained(str(demo_model))
    question = "How do I reverse a list in Python?"
    reply, _ = collect(
        backend.stream(
            ChatRequest([{"role": "user", "content": question}], SamplingParams(temperature=0, max_new_tokens=300))
        )
    )
    ids = backend.prepare([{"role": "user", "content": question}], 300).input_ids
    out = backend.model.generate(torch.tensor([ids]), max_new_tokens=300, do_sample=False, repetition_penalty=1.2)
    assert out[0, -1].item() == backend.tokenizer.convert_tokens_to_ids("<|end|>")  # it ended its turn
    assert out.shape[1] - len(ids) < 300 and "reverse" in reply


def wait_for(path: Path, proc: subprocess.Popen, seconds: float = 300) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists():
        assert proc.poll() is None, proc.stdout.read()
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.02)


def test_a_killed_run_resumes_to_the_same_weights(tmp_path):
    steps = ["--max_steps", "12", "--save_strategy", "steps", "--save_steps", "6", *SMALL]
    main([TINY, "--output_dir", str(tmp_path / "straight"), *steps])

    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, "-m", "training.train", TINY, "--output_dir", str(killed), *steps],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    wait_for(killed / "checkpoints" / "checkpoint-6" / "trainer_state.json", proc)  # the checkpoint's last file
    time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "config.json").exists()  # nothing that looks like a finished checkpoint

    main([TINY, "--output_dir", str(killed), *steps, "--resume", "true"])
    state = json.loads((killed / "checkpoints" / "checkpoint-12" / "trainer_state.json").read_text())
    assert state["global_step"] == 12 and [e["step"] for e in state["log_history"] if "loss" in e] == list(range(1, 13))
    a, b = load_file(tmp_path / "straight" / "model.safetensors"), load_file(killed / "model.safetensors")
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=1e-5, rtol=1e-4)


def test_a_non_finite_loss_stops_with_a_clear_message(tmp_path):
    steps = ["--max_steps", "30", "--learning_rate", "1e12", "--max_grad_norm", "0", "--save_strategy", "no"]
    with pytest.raises(SystemExit, match=r"(?s)the training loss became.*--overwrite_output_dir true"):
        main([TINY, "--output_dir", str(tmp_path / "nan"), *steps, *SMALL])
    assert not (tmp_path / "nan" / "config.json").exists()


def card_arguments(folder: Path) -> dict:
    card = (folder / "README.md").read_text()
    return yaml.safe_load(card.split("## Training arguments\n\n```yaml\n")[1].split("```")[0])


@dataclass(frozen=True)
class LoraRun:
    base: Path
    out: Path
    ids: torch.Tensor  # a prompt, encoded
    expected: torch.Tensor  # the adapter model's logits for it


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory) -> LoraRun:
    """A LoRA run on a base without chat tokens (like StarCoderPlus): training adds them, resizes the
    embedding and merges the adapter into the served checkpoint."""
    from peft import PeftModel

    tmp_path = tmp_path_factory.mktemp("lora")
    base = build_base(
        python_doc_dialogues(limit=200), tmp_path / "base", vocab_size=512, n_layer=1, n_embd=64, chat_tokens=False
    )
    out = tmp_path / "lora"
    lora = ["--lora", "true", "--lora_r", "4", "--learning_rate", "1e-2", "--max_steps", "6", "--save_strategy", "no"]
    main([TINY, "--output_dir", str(out), "--model_name_or_path", str(base), *lora, *SMALL])
    tokenizer = AutoTokenizer.from_pretrained(out)
    base_model = AutoModelForCausalLM.from_pretrained(base).eval()
    base_model.resize_token_embeddings(len(tokenizer))
    ids = torch.tensor([tokenizer(render([{"role": "user", "content": "What does `len` do?"}]))["input_ids"]])
    with torch.no_grad():
        untrained = base_model(ids).logits
        expected = PeftModel.from_pretrained(base_model, str(out / "adapter")).eval()(ids).logits
    assert not torch.allclose(expected, untrained, atol=1e-3)  # the adapter changed the model
    return LoraRun(base, out, ids, expected)


def test_lora_run_merges_into_a_checkpoint_with_the_adapter_models_logits(lora_run):
    base, out = lora_run.base, lora_run.out
    assert len(AutoTokenizer.from_pretrained(out)) == AutoConfig.from_pretrained(base).vocab_size + 4
    # The card tells what ran: the flags, not the recipe's values.
    ran = card_arguments(out)
    assert (ran["lora"], ran["lora_r"], ran["learning_rate"], ran["max_steps"]) == (True, 4, 1e-2, 6)
    # The adapter holds the four chat-token rows, not the whole resized embedding (twice, when tied).
    adapter = load_file(out / "adapter" / "adapter_model.safetensors")
    embedding_rows = {name: t.shape[0] for name, t in adapter.items() if "lora_" not in name}
    assert embedding_rows and set(embedding_rows.values()) == {4}, embedding_rows
    with torch.no_grad():
        got = AutoModelForCausalLM.from_pretrained(out).eval()(lora_run.ids).logits
    torch.testing.assert_close(got, lora_run.expected, atol=1e-4, rtol=1e-4)  # fp32 merge: equal up to rounding


def test_the_merge_command_gives_the_same_checkpoint(lora_run, tmp_path):
    command = ["--base", str(lora_run.base), "--adapter", str(lora_run.out / "adapter")]
    again = subprocess.run(
        [sys.executable, "-m", "training.merge", *command, "--output", str(tmp_path / "merged"), "--dtype", "float32"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=200,
    )
    assert again.returncode == 0, again.stderr[-3000:]
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    torch.testing.assert_close(merged(lora_run.ids).logits, lora_run.expected, atol=1e-4, rtol=1e-4)


def test_a_merge_that_would_apply_an_adapter_twice_or_overwrite_it_is_refused(lora_run, tmp_path):
    from training.merge import main as merge

    base, out = lora_run.base, lora_run.out
    # The served folder already holds the adapter: merging into it again would apply the adapter twice.
    for base_folder, adapter_folder, said in [
        *[
            (
                out,
                adapter,
                f"{out} is a LoRA run's served checkpoint, its adapter already merged in, and this adapter "
                f"was trained on {base}: merge it into that base instead (--base {base})",
            )
            for adapter in (out / "adapter", shutil.copytree(out / "adapter", tmp_path / "copy"))
        ],
        (
            base,
            tmp_path / "nope",
            f"{tmp_path / 'nope'}: no LoRA adapter here (a training run keeps it in OUTPUT_DIR/adapter)",
        ),
    ]:
        with pytest.raises(SystemExit, match=f"^{re.escape(said)}$"):
            merge(["--base", str(base_folder), "--adapter", str(adapter_folder), "--output", str(tmp_path / "refused")])
        assert not (tmp_path / "refused").exists()

    kept = files_of(out / "adapter")
    other = build_base(python_doc_dialogues(limit=50), tmp_path / "other", vocab_size=512, n_layer=1, n_embd=32)
    for base_folder, output, said in [
        (base, out / "adapter", f"{out / 'adapter'} is the adapter's folder, which the result would replace"),
        (other, tmp_path / "refused", f"the adapter's layers do not have {other}'s sizes: merge it into the base"),
    ]:
        with pytest.raises(SystemExit, match=said):
            merge(["--base", str(base_folder), "--adapter", str(out / "adapter"), "--output", str(output)])
    assert files_of(out / "adapter") == kept and not (tmp_path / "refused").exists()


@pytest.mark.skipif(os.cpu_count() < 2, reason="needs two cores for two processes")
def test_two_process_accelerate_launch_trains_and_writes_a_loadable_checkpoint(tmp_path):
    config = "training/accelerate/cpu-ddp.yaml"
    out = tmp_path / "ddp"
    run = train(
        "--output_dir",
        str(out),
        "--max_steps",
        "4",
        "--save_strategy",
        "no",
        *SMALL,
        # A port of our own (a static rendezvous cannot negotiate port 0) and one thread per process on 2 cores.
        launcher=("accelerate", "launch", "--config_file", config, "--main_process_port", str(free_port()), "-m"),
        env={"OMP_NUM_THREADS": "1"},
    )
    # A rank's own error comes first; the launcher's account of it fills the tail.
    assert run.returncode == 0, run.stderr[:4000] + "\n...\n" + run.stderr[-1500:]
    assert "processes: 2 (distributed) on cpu" in run.stdout
    card = (out / "README.md").read_text()
    ran = yaml.safe_load(card.split("## Hardware\n\n")[1].split("```yaml\n")[1].split("```")[0])
    assert ran == {"mixed_precision": "no", "processes": 2, "distributed": "MULTI_CPU", "accelerate_config": config}
    trained = AutoModelForCausalLM.from_pretrained(out)
    scratch = AutoModelForCausalLM.from_pretrained(out / "scratch-base")
    changed = [
        name
        for name, weight in scratch.state_dict().items()
        if weight.shape == trained.state_dict()[name].shape and not torch.equal(weight, trained.state_dict()[name])
    ]
    assert len(changed) > len(scratch.state_dict()) // 2  # the four steps trained the weights
    backend = LocalBackend.from_pretrained(str(out))
    # A 4-step model may well answer with its stop token at once: it must load and run, not talk.
    reply, _ = collect(
        backend.stream(
            ChatRequest([{"role": "user", "content": "hi"}], SamplingParams(temperature=0, max_new_tokens=8))
        )
    )
    assert isinstance(reply, str)


def test_push_to_hub_uploads_the_served_checkpoint_only(tmp_path):
    with FakeHub() as hub:
        run = train(
            "--output_dir",
            str(tmp_path / "pushed"),
            "--max_steps",
            "2",
            "--save_strategy",
            "steps",
            "--save_steps",
            "1",
            "--hub_model_id",
            "someone/tiny-starchat",
            *SMALL,
            "--push_to_hub",  # bare, as transformers' flag
            env={"HF_ENDPOINT": hub.url, "HF_TOKEN": "hf_test"},
        )
        assert run.returncode == 0, run.stderr[-3000:]
    assert "/someone/tiny-starchat/commit/" in run.stdout  # the commit URL the Hub answered
    [paths] = hub.commits
    assert {"README.md", "config.json", "generation_config.json", "model.safetensors", "tokenizer.json"} <= set(paths)
    assert not [p for p in paths if p.startswith(("checkpoints/", "scratch-base/", "adapter/"))]


def test_without_a_hub_model_id_the_repo_is_named_after_the_output_folder_and_a_revision_is_its_branch(
    tmp_path, monkeypatch
):
    from huggingface_hub import constants

    folder = tmp_path / "my-starchat"
    folder.mkdir()
    (folder / "README.md").write_text("card")
    with FakeHub() as hub:
        monkeypatch.setattr(constants, "ENDPOINT", hub.url)
        url = push(folder, repo=None, token="hf_test", private=False)
        push(folder, repo="someone/x", token="hf_test", private=False, revision="dev")  # made if missing
    assert "/my-starchat/commit/" in url and hub.commits == [["README.md"]] * 2
    assert hub.branches == ["dev"] and hub.revisions == ["main", "dev"]
    with pytest.raises(SystemExit, match="--hub_revision dev names the branch a push goes to: add --push_to_hub"):
        main([TINY, "--output_dir", str(tmp_path / "out"), "--hub_revision", "dev", *SMALL])


def changed_share(before: dict, after: dict) -> float:
    """The share of the blocks' weights that changed (every step reaches them, unlike unused embedding rows)."""
    names = [k for k in before if k.startswith("transformer.h.")]
    changed = sum((before[k] != after[k].to(before[k].dtype)).sum().item() for k in names)
    return changed / sum(before[k].numel() for k in names)


def test_a_bf16_full_fine_tune_keeps_fp32_master_weights(tmp_path):
    """Pure bf16 weights under AdamW lose small updates: at lr 2e-5 most of them rounded away."""
    out = tmp_path / "bf16"
    steps = ["--bf16", "true", "--learning_rate", "2e-5", "--max_steps", "3", "--save_strategy", "steps"]
    main([TINY, "--output_dir", str(out), *steps, "--save_steps", "3", *SMALL])
    before = load_file(out / "scratch-base" / "model.safetensors")
    trained = load_file(out / "checkpoints" / "checkpoint-3" / "model.safetensors")
    assert {t.dtype for t in trained.values()} == {torch.float32}
    assert changed_share(before, trained) > 0.9
    served = load_file(out / "model.safetensors")
    assert {t.dtype for t in served.values()} == {torch.bfloat16}  # served in bf16, as the recipe asks


@pytest.mark.slow  # a training run
def test_a_recipe_that_names_evaluate_scores_the_served_checkpoint(tmp_path, monkeypatch):
    """`evaluate: humaneval` runs training.evaluate on the served folder, onto its card (tested there)."""
    out, scored = tmp_path / "out", []
    monkeypatch.setattr("training.evaluate.main", lambda argv: scored.append((argv, (out / "config.json").is_file())))
    main(
        [TINY, "--output_dir", str(out), "--max_steps", "1", "--save_strategy", "no", "--evaluate", "humaneval", *SMALL]
    )
    assert scored == [(["humaneval", "--model", str(out), "--write-card"], True)]


def test_a_used_output_folder_is_refused_unless_resumed_or_overwritten(tmp_path):
    out = tmp_path / "run"
    main([TINY, "--output_dir", str(out), "--max_steps", "2", "--save_strategy", "steps", "--save_steps", "1", *SMALL])
    kept = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    with pytest.raises(SystemExit, match=r"--resume true.*--overwrite_output_dir true"):
        main([TINY, "--output_dir", str(out), "--max_steps", "2", *SMALL])
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == kept  # nothing lost

    # Starting over, watched in TensorBoard: the old run's files go, the served checkpoint's too (a shard
    # it left would sit beside the new weights), and the folder's other files stay.
    (out / "model-00001-of-00002.safetensors").write_bytes(b"old weights")
    (out / "notes.txt").write_text("mine")
    over = ["--overwrite_output_dir", "true", "--report_to", "tensorboard"]
    main([TINY, "--output_dir", str(out), "--max_steps", "3", "--save_strategy", "no", *over, *SMALL])
    assert not (out / "checkpoints" / "checkpoint-1").exists()
    assert not (out / "model-00001-of-00002.safetensors").exists() and (out / "notes.txt").read_text() == "mine"
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    [events] = (out / "checkpoints" / "runs").glob("*/events.out.tfevents.*")
    logged = EventAccumulator(str(events)).Reload()
    assert [e.step for e in logged.Scalars("train/loss")] == [1, 2, 3]


def test_a_block_size_beyond_the_models_positions_is_refused_before_training(tmp_path):
    out = tmp_path / "long"
    with pytest.raises(SystemExit, match=r"block_size 2048.*1024 positions"):
        main([TINY, "--output_dir", str(out), "--block_size", "2048", *SMALL])
    assert not out.exists()  # refused before the data: no scratch base to block the next run


def test_without_packing_an_over_long_dialogue_is_cut_and_counted(tmp_path, capsys):
    long = [
        [
            {"role": "user", "content": f"What is a list? ({n})"},
            {"role": "assistant", "content": "An ordered, mutable sequence."},
            {"role": "user", "content": "Show every method."},
            {"role": "assistant", "content": " ".join(f"list.method_{i}()" for i in range(600))},
        ]
        for n in range(5)
    ]
    rows = [{"messages": m} for m in python_doc_dialogues(limit=40) + long]
    data = tmp_path / "data.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows))
    out = tmp_path / "unpacked"
    unpacked = ["--datasets", str(data), "--packing", "false", "--max_steps", "3", "--save_strategy", "no"]
    main([TINY, "--output_dir", str(out), *unpacked, *SMALL])
    cut = "5 cut after their last whole turn that fits block_size"
    assert cut in capsys.readouterr().out and cut in (out / "README.md").read_text()


def test_an_interrupted_demo_build_is_resumed_not_refused(tmp_path, monkeypatch):
    """The playground builds its demo through training.train; a build killed midway left checkpoints."""
    import training.train
    from training.demo import demo_checkpoint
    from training.preflight import claim_output
    from training.train import parse

    found = []

    def claim_then_finish(argv, quiet=False):  # the real argument parsing and folder check, without training
        script, args, _ = parse(argv)
        output = Path(args.output_dir)
        claim_output(output, script)
        found.append(sorted(p.name for p in (output / "checkpoints").glob("*")))
        output.mkdir(parents=True, exist_ok=True)
        (output / "config.json").write_text("{}")

    monkeypatch.setattr(training.train, "main", claim_then_finish)
    demo = demo_checkpoint(tmp_path)
    (demo / "config.json").unlink()  # a second build, killed after its first epoch's checkpoint
    (demo / "checkpoints" / "checkpoint-6").mkdir(parents=True)
    assert demo_checkpoint(tmp_path) == demo
    assert found == [[], ["checkpoint-6"]]  # resumed from, not refused nor deleted


def test_under_bf16_autocast_lora_adapters_take_their_inputs_in_bf16():
    from peft import LoraConfig, get_peft_model
    from transformers import GPTBigCodeConfig, GPTBigCodeForCausalLM

    from training.lora import adapters_take_bf16_inputs

    config = GPTBigCodeConfig(vocab_size=64, n_positions=32, n_embd=32, n_layer=1, n_head=2)
    base = GPTBigCodeForCausalLM(config).to(torch.bfloat16)
    model = get_peft_model(base, LoraConfig(r=4, lora_dropout=0.1, target_modules=["c_attn", "c_fc"]))
    dropout = model.base_model.model.transformer.h[0].attn.c_attn.lora_dropout["default"]
    seen: list[torch.dtype] = []
    dropout.register_forward_hook(lambda module, inputs, out: seen.append(inputs[0].dtype))
    ids = torch.randint(0, 64, (2, 16))

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            model(input_ids=ids, labels=ids).loss.backward()

    step()
    adapters_take_bf16_inputs(model)
    step()
    assert seen == [torch.float32, torch.bfloat16]  # PEFT's own cast to the fp32 adapters, then none
    lora_a = model.base_model.model.transformer.h[0].attn.c_attn.lora_A["default"].weight
    assert lora_a.dtype == torch.float32 and lora_a.grad is not None and lora_a.grad.isfinite().all()


def test_the_card_names_each_flag_set_however_it_was_spelled():
    _, args, ran = parse([TINY, "--output_dir", "out", "--label-smoothing-factor", "0.1", "--neftune_noise", "5"])
    assert (args.label_smoothing_factor, args.neftune_noise_alpha) == (0.1, 5.0)
    assert (ran["label_smoothing_factor"], ran["neftune_noise_alpha"]) == (0.1, 5.0)


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--lora", "true", "--lora_r", "0"], "--lora_r must be 1 or more"),
        (["--lora", "true", "--lora_alpha", "0"], "--lora_alpha must be more than 0"),
        (["--lora", "true", "--lora_dropout", "1.0"], "--lora_dropout must be at least 0 and less than 1"),
        (["--lora", "true", "--lora_dropout", "-0.1"], "--lora_dropout must be at least 0 and less than 1"),
        (["--lora", "true", "--lora_target_modules", "c_attn", "lm_head"], "cannot take adapters here"),
        (["--load_in_4bit", "true"], "add --lora true"),
        (["--resume_from_checkpoint", "out/checkpoints/checkpoint-6"], "use --resume true"),
        (["--learning_rate", "nan"], "--learning_rate must be a number above 0, not nan"),
        (["--learning_rate=-1e-4"], "--learning_rate must be a number above 0, not -0.0001"),
        (["--test_size", "1.5"], "--test_size is the share of dialogues held out, from 0 to below 1, not 1.5"),
        (["--test_size", "nan"], "--test_size is the share"),
        (["--test_size", "0"], r"--test_size 0 leaves nothing to evaluate \(eval_strategy epoch\): add --eval_s"),
        (["--block_size", "0"], "--block_size must be 1 or more, not 0"),
        (["--num_train_epochs", "0"], "--num_train_epochs 0.0 trains nothing"),
        (["--num_train_epochs", "nan"], "--num_train_epochs nan trains nothing"),
        (["--num_train_epochs", "inf"], "--num_train_epochs inf trains nothing or never ends"),
        (["--max_steps=-5"], "--max_steps must be 1 or more, or -1 to train --num_train_epochs, not -5"),
        (["--warmup_steps", "nan"], "--warmup_steps must be a number"),
        (["--max_steps", "0"], "--max_steps 0 trains nothing"),
        (["--per_device_train_batch_size", "0"], "--per_device_train_batch_size must be 1 or more, not 0"),
        (["--gradient_accumulation_steps", "0"], "--gradient_accumulation_steps must be 1 or more, not 0"),
        (["--seed=-1"], r"--seed must be from 0 to 2\*\*32 - 1, not -1"),
        (["--warmup_steps=-1"], "warmup_steps"),  # transformers' own check, as one line
        (["--attn_implementation", "flash_attention_2"], "needs a CUDA GPU and its flash-attn package"),
        (["--seed", "1", "--seed", "2"], "--seed is given twice: give each flag once"),
        (["--learning-rate", "1e-4", "--learning_rate=2e-4"], "--learning_rate is given twice"),  # however spelled
        (["--output_dir", "other"], "--output_dir is given twice"),
    ],
)
def test_flags_that_would_fail_late_or_train_nothing_are_refused_before_any_work(flags, message):
    with pytest.raises(SystemExit, match=message):
        parse([TINY, "--output_dir", "out", *flags])


def test_a_malformed_flag_value_gets_two_lines_not_every_flag(capsys):
    with pytest.raises(SystemExit):
        parse([TINY, "--output_dir", "out", "--lora_alpha", "nan"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 2 and "invalid int value: 'nan'" in lines[-1], lines


def test_a_lora_target_the_model_lacks_is_refused_naming_the_layers_it_has(tmp_path):
    run = train("--output_dir", str(tmp_path), "--lora", "true", "--lora_target_modules", "c_attn", "c_atn", *SMALL)
    assert run.returncode == 1 and "Traceback" not in run.stderr
    said = "the model (scratch) has no linear layer named c_atn (it has c_attn, c_fc, c_proj)"
    assert run.stderr.strip().splitlines()[-1] == f"--lora_target_modules: {said}"
    assert list(tmp_path.iterdir()) == []  # refused before the data: no scratch base to block the next run


def test_a_run_resumes_only_with_the_flags_that_shaped_its_weights(tmp_path):
    checkpoint = tmp_path / "checkpoints" / "checkpoint-6"
    checkpoint.mkdir(parents=True)
    adapter = {"r": 8, "lora_alpha": 32, "target_modules": ["c_fc", "c_attn"]}
    (checkpoint / "adapter_config.json").write_text(json.dumps(adapter))
    targets = ["--lora_target_modules", "c_attn", "c_fc"]
    for flags, said in [
        (["--lora", "true", "--lora_r", "4", *targets], "was trained with --lora_r 8: resume with the same values"),
        (["--lora", "true", "--lora_r", "8"], "was trained with --lora_target_modules c_attn c_fc: resume"),
        ([], "was trained with --lora true: resume it the same way"),
    ]:
        with pytest.raises(SystemExit, match=re.escape(f"{checkpoint} {said}")):
            main([TINY, "--output_dir", str(tmp_path), "--resume", "true", *flags, *SMALL])


def test_a_scratch_base_left_by_a_failed_run_is_not_reused_unasked(tmp_path):
    (tmp_path / "scratch-base").mkdir()  # built from that run's data, before it failed
    with pytest.raises(SystemExit, match=re.escape("already holds a run (a scratch base)")):
        main([TINY, "--output_dir", str(tmp_path), *SMALL])


def test_help_lists_every_key_without_a_recipe(capsys):
    with pytest.raises(SystemExit) as exit:
        main(["--help"])
    said = capsys.readouterr().out
    assert exit.value.code == 0 and "--lora_target_modules" in said and "--learning_rate" in said


def files_of(folder: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_a_run_never_replaces_the_model_it_starts_from_nor_resumes_a_finished_one(demo_model, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(demo_model, model)
    kept = files_of(model)
    for flags, message in [
        (["--model_name_or_path", str(model), "--overwrite_output_dir", "true"], "is the base model's folder"),
        (["--resume", "true"], "holds a finished model and no checkpoint to resume from"),
    ]:
        with pytest.raises(SystemExit, match=message):
            main([TINY, "--output_dir", str(model), *flags, *SMALL])
    for output in (model / "config.json", model / "config.json" / "run"):
        with pytest.raises(SystemExit, match=r"config\.json is a file; --output_dir is a folder"):
            main([TINY, "--output_dir", str(output), *SMALL])
    (model / "checkpoints" / "checkpoint-240.damaged").mkdir(parents=True)  # set aside: not a checkpoint
    with pytest.raises(SystemExit, match="holds a finished model and no checkpoint to resume from"):
        main([TINY, "--output_dir", str(model), "--resume", "true", *SMALL])
    (model / "checkpoints" / "checkpoint-240.damaged").rmdir()
    (model / "checkpoints").rmdir()
    with pytest.raises(SystemExit, match=f"the base model {model} is inside {tmp_path}, which a run may clear"):
        main([TINY, "--model_name_or_path", str(model), "--output_dir", str(tmp_path), "--overwrite_output_dir", "1"])
    with pytest.raises(SystemExit, match="nosuch: not a model's folder, and not a model the Hub gave"):
        main([TINY, "--model_name_or_path", str(tmp_path / "nosuch"), "--output_dir", str(tmp_path / "out"), *SMALL])
    with pytest.raises(SystemExit, match=f"is inside the training run {model}, whose files it would mix with"):
        main([TINY, "--output_dir", str(model / "scratch-base" / "again"), *SMALL])
    assert files_of(model) == kept and not (tmp_path / "out").exists()


def test_a_damaged_checkpoint_is_named_before_a_resume_loads_it(tmp_path):
    checkpoint = tmp_path / "checkpoints" / "checkpoint-3"
    checkpoint.mkdir(parents=True)
    (checkpoint / "trainer_state.json").write_text(json.dumps({"global_step": 3}))
    (checkpoint / "model.safetensors").write_bytes(b"\x10\x00")  # cut short by a full disk
    with pytest.raises(SystemExit, match=r"model.safetensors cannot be read .*move .*checkpoint-3 away"):
        main([TINY, "--output_dir", str(tmp_path), "--resume", "true", *SMALL])


def checkpoint_at(folder: Path, step: int, epoch: float, planned: int, optimizer: bool = True) -> Path:
    """A checkpoint as far as a resume's checks read it: its trainer state and its optimizer's file."""
    checkpoint = folder / "checkpoints" / f"checkpoint-{step}"
    checkpoint.mkdir(parents=True)
    (checkpoint / "trainer_state.json").write_text(
        json.dumps({"global_step": step, "epoch": epoch, "max_steps": planned})
    )
    if optimizer:
        (checkpoint / "optimizer.pt").write_bytes(b"")
    return checkpoint


def test_a_resume_that_could_not_continue_the_run_is_refused_before_any_work(tmp_path):
    cases = [
        ({"optimizer": False}, [], r"holds no optimizer state \(optimizer.pt\)"),
        ({}, ["--num_train_epochs", "2"], r"is at step 6 \(epoch 3.00\), already past --num_train_epochs 2.0"),
        ({}, ["--max_steps", "5"], "already past --max_steps 5: nothing would be trained"),
        ({"record": {"learning_rate": 0.5, "seed": 42}}, [], r"was started with --learning_rate 0.5: resume with"),
    ]
    for n, (made, flags, said) in enumerate(cases):
        folder = tmp_path / str(n)
        checkpoint_at(folder, step=6, epoch=3.0, planned=12, optimizer=made.get("optimizer", True))
        if "record" in made:
            (folder / "checkpoints" / "run.json").write_text(json.dumps(made["record"]))
        with pytest.raises(SystemExit, match=said):
            main([TINY, "--output_dir", str(folder), "--resume", "true", *flags, *SMALL])
        assert not (folder / "scratch-base").exists()  # refused before the data and the model


def test_a_folder_of_other_files_is_never_written_over(tmp_path, monkeypatch):
    mine = tmp_path / "project"
    mine.mkdir()
    (mine / "README.md").write_text("mine")
    monkeypatch.chdir(mine)
    for output in (str(mine), "."):
        with pytest.raises(SystemExit, match=r"project holds other files \(README.md\), which the served checkpoint"):
            main([str(ROOT / TINY), "--output_dir", output, "--overwrite_output_dir", "true", *SMALL])
    assert [p.name for p in mine.iterdir()] == ["README.md"] and (mine / "README.md").read_text() == "mine"
    with pytest.raises(SystemExit, match=r"--output_dir /proc/starchat-run: cannot write there"):
        main([str(ROOT / TINY), "--output_dir", "/proc/starchat-run", *SMALL])


def test_a_test_split_left_empty_is_refused_while_evaluating(demo_model, tmp_path):
    """Repeats are never held out while a copy trains: with one distinct dialogue nothing is left to evaluate."""
    same = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    data = tmp_path / "data.jsonl"
    data.write_text("\n".join(json.dumps(same) for _ in range(7)))
    args = ["--model_name_or_path", str(demo_model), "--datasets", str(data), "--test_size", "0.2"]
    with pytest.raises(SystemExit, match=r"no dialogue is left to evaluate on .*: add --eval_strategy no"):
        main([TINY, "--output_dir", str(tmp_path / "out"), *args, "--eval_strategy", "steps", "--eval_steps", "1"])


def test_ctrl_c_names_the_checkpoint_a_resume_goes_on_from(demo_model, tmp_path, monkeypatch):
    from transformers import Trainer

    def interrupted(self, resume_from_checkpoint=None):
        self.state.global_step = 3
        raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "train", interrupted)
    out = tmp_path / "out"
    checkpoint_at(out, step=2, epoch=0.5, planned=8)
    args = ["--model_name_or_path", str(demo_model), "--eval_strategy", "no"]
    said = f"interrupted at step 3; the last checkpoint is {out / 'checkpoints' / 'checkpoint-2'}: add --resume true"
    with pytest.raises(SystemExit, match=re.escape(said)):
        main([TINY, "--output_dir", str(out), *args, "--resume", "true"])


def test_merge_refuses_to_write_over_its_base_or_another_model(demo_model, tmp_path, monkeypatch):
    from training.merge import main as merge

    monkeypatch.setenv("HOME", str(tmp_path))

    model, adapter = tmp_path / "model", tmp_path / "adapter"
    shutil.copytree(demo_model, model, ignore=shutil.ignore_patterns("scratch-base"))  # a model, not a run
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{not json")
    kept = files_of(model)
    for args, message in [
        (["--base", str(model), "--output", ""], "--output is empty: name the folder"),  # not the current folder
        (["--base", str(model), "--output", str(model)], "is the base model's folder, which the result would replace"),
        (["--base", "x/y", "--output", str(model)], "already holds a model: pass --overwrite"),
        (["--base", "x/y", "--output", "~/model"], "already holds a model: pass --overwrite"),  # quoted ~
        (["--base", str(model), "--output", str(model / "config.json")], "is a file; --output is a folder"),
        (["--base", str(model), "--output", str(tmp_path / "out")], "adapter_config.json is not an adapter's config"),
    ]:
        with pytest.raises(SystemExit, match=message):
            merge([*args, "--adapter", str(adapter)])
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(model)}))
    with pytest.raises(SystemExit, match="nosuch: not a model's folder"):
        merge(["--base", str(tmp_path / "nosuch"), "--adapter", str(adapter), "--output", str(tmp_path / "out")])
    assert files_of(model) == kept and not (tmp_path / "out").exists()
    run = tmp_path / "run"
    shutil.copytree(demo_model, run)  # a run's folder (the demo build's scratch base is in it): the card is the run's
    kept = files_of(run)
    for output, message in [
        (run, "is a training run's folder: its served checkpoint and model card are the run's own"),
        (run / "scratch-base", "is inside the training run"),
        (run / "checkpoints" / "checkpoint-240", "is inside the training run"),
    ]:
        with pytest.raises(SystemExit, match=message):
            merge(["--base", str(model), "--adapter", str(adapter), "--output", str(output), "--overwrite"])
    assert files_of(run) == kept
    with pytest.raises(SystemExit, match="--output /proc/starchat-merge: cannot write there"):
        merge(["--base", str(model), "--adapter", str(adapter), "--output", "/proc/starchat-merge"])
