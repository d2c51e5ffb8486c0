"""Chat tokens, exact label masks and packing."""

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from playground.template import CHAT_TEMPLATE, render
from training.format import IGNORE, Collator, add_chat_tokens, pack, tokenize_dialogue


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
