"""A tiny real causal LM and a tiny SFT dataset, built from scratch (no download), for tests and checks.

The model is randomly initialised, so its text is gibberish, but every code path it takes
(tokenizer, chat template, padding, generate, EOS handling, LoRA, 4-bit quantization) is the
real one, and it loads from a local directory like any Hub model does. The test suite's fixtures
and `scripts/gpu_check.py` (which runs where nothing can be downloaded) both build it here.
"""

from __future__ import annotations

from pathlib import Path

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def build_tiny_model(directory: Path, chat_template: str | None = CHATML_TEMPLATE) -> Path:
    """A 2-layer Llama with a 400-token BPE tokenizer trained on the package's own prompts, saved in `directory`."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from spri_sft.generate.prompts import PromptSet

    corpus = [pair["question"] + " " + pair["principles"] for pair in PromptSet().seed_pairs]
    corpus += PromptSet().constitution
    tokenizer_model = Tokenizer(models.BPE(unk_token="<|endoftext|>"))
    tokenizer_model.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer_model.decoder = decoders.ByteLevel()
    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=special, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tokenizer_model.train_from_iterator(corpus * 4, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer_model,
        unk_token="<|endoftext|>",
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
    )
    if chat_template:
        tokenizer.chat_template = chat_template
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        # Large enough that logits are not near-uniform, so a few LoRA steps can visibly lower the loss.
        initializer_range=0.3,
    )
    model = LlamaForCausalLM(config)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


SFT_PAIRS = [
    ("What is rain?", "Water falling from clouds."),
    ("Name a colour.", "Blue."),
    ("Is ice cold?", "Yes, it is."),
    ("Count to three.", "One, two, three."),
]


def build_sft_dataset(directory: Path, train_rows: int = 8, validation_rows: int = 4) -> Path:
    """A `spri-sft format`-shaped dataset (`messages`, train/validation) saved with `save_to_disk`."""
    from datasets import Dataset, DatasetDict

    def rows(n):
        return [
            {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
            for q, a in (SFT_PAIRS[i % len(SFT_PAIRS)] for i in range(n))
        ]

    splits = {"train": Dataset.from_list(rows(train_rows)), "validation": Dataset.from_list(rows(validation_rows))}
    DatasetDict(splits).save_to_disk(directory)
    return directory
