"""Shared fixtures: a tiny real causal LM with a real (trained) tokenizer and chat template.

The model is randomly initialised, so its text is gibberish, but every code path it takes
(tokenizer, chat template, padding, generate, EOS handling) is the real one, and it loads from
a local directory like any Hub model does.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

SHARED = Path(os.environ.get("SPRI_SFT_SHARED", Path(__file__).resolve().parents[2] / "shared"))


def build_tiny_model(directory: Path, chat_template: str | None = CHATML_TEMPLATE) -> Path:
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, decoders, trainers
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


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED.is_dir():
        pytest.skip(f"shared data folder not found at {SHARED} (set SPRI_SFT_SHARED)")
    return SHARED


@pytest.fixture(autouse=True)
def fresh_wandb_state():
    """W&B keeps process-wide settings (its directory, mode) from the first run; tests each set their own."""
    yield
    import sys

    wandb = sys.modules.get("wandb")
    if wandb is not None:
        if wandb.run is not None:
            wandb.finish()
        wandb.teardown()


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

    DatasetDict({"train": Dataset.from_list(rows(train_rows)), "validation": Dataset.from_list(rows(validation_rows))}).save_to_disk(directory)
    return directory


def tiny_lora_argv(model_dir: Path, dataset: Path, output_dir: Path, *overrides: str) -> list[str]:
    """`spri-sft train` flags for a few CPU LoRA steps on the tiny model; later flags override earlier ones."""
    return [
        "--model_name_or_path", str(model_dir),
        "--dataset_path", str(dataset),
        "--output_dir", str(output_dir),
        "--use_peft", "--lora_r", "8", "--lora_alpha", "16", "--lora_target_modules", "q_proj", "v_proj",
        "--assistant_only_loss", "true",
        "--per_device_train_batch_size", "4",
        "--max_steps", "3",
        "--logging_steps", "1",
        "--eval_strategy", "no",
        "--save_strategy", "no",
        "--use_cpu", "true",
        "--report_to", "none",
        "--dataloader_num_workers", "0",
        *overrides,
    ]  # fmt: skip
