"""Chat tokens, exact label masks, the length rule and packing without cross-talk."""

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

from playground.template import CHAT_TEMPLATE, render
from training.format import (
    IGNORE,
    Collator,
    PackedCollator,
    add_chat_tokens,
    fit_dialogue,
    pack,
    pack_blocks,
    tokenize_dialogue,
)


def starcoder_sized_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE with StarCoderPlus' 49152-token vocabulary (<|endoftext|> first)."""
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {"<|endoftext|>": 0, **{c: i + 1 for i, c in enumerate(sorted(alphabet))}}
    vocab.update({f"tok{i}": i for i in range(len(vocab), 49152)})
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|endoftext|>", unk_token="<|endoftext|>")


def test_chat_tokens_get_the_cards_ids_on_a_49152_vocabulary():
    tokenizer = starcoder_sized_tokenizer()
    assert len(tokenizer) == 49152
    assert add_chat_tokens(tokenizer) == 4
    ids = tokenizer.convert_tokens_to_ids(["<|system|>", "<|user|>", "<|assistant|>", "<|end|>"])
    assert ids == [49152, 49153, 49154, 49155]
    assert tokenizer.chat_template == CHAT_TEMPLATE and tokenizer.pad_token == "<|endoftext|>"
    assert add_chat_tokens(tokenizer) == 0  # idempotent


DIALOGUE = [
    {"role": "system", "content": "sys"},
    {"role": "user", "content": "q1"},
    {"role": "assistant", "content": "a1"},
    {"role": "user", "content": "q2"},
    {"role": "assistant", "content": "a2"},
]


def trained_text(tokenizer, example) -> str:
    return tokenizer.decode(
        [t for t, label in zip(example["input_ids"], example["labels"], strict=True) if label != IGNORE]
    )


def test_loss_only_on_assistant_text_and_its_end(tokenizer):
    example = tokenize_dialogue(tokenizer, DIALOGUE)
    assert tokenizer.decode(example["input_ids"]) == render(DIALOGUE, add_generation_prompt=False) + "<|endoftext|>"
    # Exactly "\n{answer}<|end|>" for each assistant turn, nothing of system or user.
    assert trained_text(tokenizer, example) == "\na1<|end|>\na2<|end|>"
    labels = example["labels"]
    trained = [i for i, label in enumerate(labels) if label != IGNORE]
    assert all(labels[i] == example["input_ids"][i] for i in trained)


def test_loss_on_everything_when_asked(tokenizer):
    example = tokenize_dialogue(tokenizer, DIALOGUE, train_on="all")
    assert example["labels"] == example["input_ids"]
    with pytest.raises(ValueError, match="train_on"):
        tokenize_dialogue(tokenizer, DIALOGUE, train_on="users")


def test_packing_keeps_every_token_in_order():
    examples = [{"input_ids": list(range(n, n + k)), "labels": [-100] * k} for n, k in [(0, 7), (100, 3), (200, 12)]]
    blocks = list(pack(examples, block_size=5))
    assert [len(b["input_ids"]) for b in blocks] == [5, 5, 5, 5, 2]
    assert [t for b in blocks for t in b["input_ids"]] == [t for e in examples for t in e["input_ids"]]
    assert [t for b in blocks for t in b["labels"]] == [-100] * 22


def test_the_collator_pads_short_blocks_out_of_attention_and_loss():
    batch = Collator(pad_token_id=0)([{"input_ids": [5, 6, 7], "labels": [5, 6, 7]}, {"input_ids": [8], "labels": [8]}])
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["labels"].tolist() == [[5, 6, 7], [8, IGNORE, IGNORE]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]


def test_the_served_template_marks_exactly_the_trained_spans(tokenizer):
    """TRL's assistant-only loss reads the template's {% generation %} spans: they are our loss mask."""
    rendered = tokenizer.apply_chat_template(
        DIALOGUE, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    example = tokenize_dialogue(tokenizer, DIALOGUE)
    assert rendered["input_ids"] == example["input_ids"][:-1]  # the template adds no <|endoftext|>
    assert rendered["assistant_masks"] == [int(label != IGNORE) for label in example["labels"][:-1]]


@pytest.mark.parametrize("typed", ["<|end|>", "<|user|>", "<|system|>", "<|assistant|>", "<|endoftext|>"])
@pytest.mark.parametrize("role", ["system", "user", "assistant"])
def test_a_typed_control_string_is_tokenized_alike_by_training_and_the_template(tokenizer, role, typed):
    """vLLM's and TGI's chat APIs and TRL tokenize with the exported template: the same ids and mask as ours."""
    dialogue = [dict(m) for m in DIALOGUE]
    for m in dialogue:
        if m["role"] == role:
            m["content"] = f"{typed}{m['content']} {typed}\n{typed}"
    rendered = tokenizer.apply_chat_template(
        dialogue, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    example = tokenize_dialogue(tokenizer, dialogue)
    assert rendered["input_ids"] == example["input_ids"][:-1]
    assert rendered["assistant_masks"] == [int(label != IGNORE) for label in example["labels"][:-1]]
    typed_id, untyped = tokenizer.convert_tokens_to_ids(typed), tokenize_dialogue(tokenizer, DIALOGUE)["input_ids"]
    assert example["input_ids"].count(typed_id) == untyped.count(typed_id)  # typed, it is text: no control id


LONG = [
    {"role": "system", "content": "Answer briefly."},
    {"role": "user", "content": "What is a list?"},
    {"role": "assistant", "content": "An ordered, mutable sequence."},
    {"role": "user", "content": "Show every method."},
    {"role": "assistant", "content": " ".join(f"list.method_{i}()" for i in range(200))},
    {"role": "user", "content": "Thanks"},
    {"role": "assistant", "content": "You're welcome."},
]


def test_an_over_long_dialogue_is_cut_after_its_last_whole_turn_that_fits(tokenizer):
    whole = tokenize_dialogue(tokenizer, LONG)
    two_exchanges = tokenize_dialogue(tokenizer, LONG[:5])
    first_exchange = tokenize_dialogue(tokenizer, LONG[:3])
    assert fit_dialogue(tokenizer, LONG, len(whole["input_ids"])) == (whole, False)
    assert fit_dialogue(tokenizer, LONG, len(whole["input_ids"]) - 1) == (two_exchanges, True)
    # The long second answer does not fit: the dialogue ends after the first answer, as any dialogue ends.
    assert fit_dialogue(tokenizer, LONG, len(two_exchanges["input_ids"]) - 1) == (first_exchange, True)
    assert tokenizer.decode(first_exchange["input_ids"]).endswith("sequence.<|end|>\n<|endoftext|>")
    # Not even the first exchange fits: dropped.
    assert fit_dialogue(tokenizer, LONG, len(first_exchange["input_ids"]) - 1) == (None, True)


@pytest.mark.parametrize("flatten", [False, True], ids=["a-row-per-block", "one-row-for-flash-attention"])
def test_a_packed_dialogue_sees_only_itself(tokenizer, tiny_checkpoint, flatten):
    """Loss and logits of each dialogue inside packed blocks equal those of the dialogue alone."""
    model = AutoModelForCausalLM.from_pretrained(tiny_checkpoint, attn_implementation="sdpa").eval()
    model.config.use_cache = False  # as training loads it
    dialogues = [
        tokenize_dialogue(tokenizer, DIALOGUE),
        tokenize_dialogue(tokenizer, LONG[:3], train_on="all"),  # a label on its first token too
        tokenize_dialogue(tokenizer, [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]),
        tokenize_dialogue(tokenizer, [{"role": "user", "content": "Explain `sorted`."}, LONG[2]]),
    ]
    block_size = max(len(d["input_ids"]) for d in dialogues) + 10
    blocks = list(pack_blocks(dialogues, block_size))
    assert len(blocks) < len(dialogues) and all(len(b["input_ids"]) <= block_size for b in blocks)
    batch = PackedCollator(tokenizer.pad_token_id, flatten=flatten)(blocks)
    assert batch["input_ids"].shape[0] == (1 if flatten else len(blocks))
    with torch.no_grad():
        packed = model(**batch)
        total, counted = 0.0, 0
        for i, block in enumerate(blocks):
            row, offset = (0, sum(len(b["input_ids"]) for b in blocks[:i])) if flatten else (i, 0)
            start = 0
            for length in block["seq_lengths"]:
                ids, labels = block["input_ids"][start : start + length], block["labels"][start : start + length]
                alone = model(input_ids=torch.tensor([ids]), labels=torch.tensor([labels]))
                logits = packed.logits[row, offset + start : offset + start + length]
                torch.testing.assert_close(logits, alone.logits[0])
                n = sum(label != IGNORE for label in labels[1:])  # the first token is never predicted
                total, counted = total + alone.loss.item() * n, counted + n
                start += length
    assert counted == sum(sum(label != IGNORE for label in d["labels"][1:]) for d in dialogues)
    assert packed.loss.item() == pytest.approx(total / counted, rel=1e-5)
