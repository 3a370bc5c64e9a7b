"""Shared fixtures: a tiny real causal LM with a real (trained) tokenizer and chat template.

The model and the SFT dataset are built by `support.tiny_model` (tests/support/: the test helpers, outside the
wheel; also used by scripts/gpu_check.py, which has no test suite around it); see there why a random model will do.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import support

# Re-exported: tests import these from conftest.
from support.tiny_model import CHATML_TEMPLATE, SFT_PAIRS, build_sft_dataset, build_tiny_model  # noqa: F401

# The child processes tests start (the fake vLLM: `python -m support.fake_vllm_server`) import the helpers too.
support.put_tests_on_pythonpath()

SHARED = Path(os.environ.get("SPRI_SFT_SHARED", Path(__file__).resolve().parents[2] / "shared"))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def family_dir(tmp_path_factory):
    """`family_dir(name, sliding_window=None)`: the tiny model of a family (support.families), built once."""
    from support.families import build_family

    built: dict[tuple[str, int | None], Path] = {}

    def build(name: str, sliding_window: int | None = None) -> Path:
        if (name, sliding_window) not in built:
            folder = tmp_path_factory.mktemp(f"{name}-{sliding_window or 'window'}")
            built[name, sliding_window] = build_family(name, folder, sliding_window)
        return built[name, sliding_window]

    return build


# SmolLM2-135M-Instruct's config.json, the shape of its KV cache and context included (the weights are not needed
# to size a server's KV cache).
SMOLLM2_135M_CONFIG = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 576,
    "intermediate_size": 1536,
    "num_hidden_layers": 30,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "head_dim": 64,
    "max_position_embeddings": 8192,
    "vocab_size": 49152,
    "torch_dtype": "bfloat16",
}


@pytest.fixture
def smollm2_config_dir(tmp_path) -> Path:
    """A model directory holding SmolLM2-135M-Instruct's config.json alone."""
    directory = tmp_path / "SmolLM2-135M-Instruct"
    directory.mkdir()
    (directory / "config.json").write_text(json.dumps(SMOLLM2_135M_CONFIG))
    return directory


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


# A few CPU steps of a TRL job on a tiny model, no evaluation, checkpoint, tracker or worker process (dpo, grpo).
CPU_STEP_FLAGS = (
    "--logging_steps", "1",
    "--eval_strategy", "no",
    "--save_strategy", "no",
    "--gradient_checkpointing", "false",
    "--use_cpu", "true",
    "--bf16", "false",
    "--report_to", "none",
    "--dataloader_num_workers", "0",
)  # fmt: skip


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


def train_and_check_only_lora_moved(trainer) -> None:
    """Train, then assert the trainable weights are exactly the LoRA ones, every one changed and no frozen one did."""
    import torch

    before = {name: p.detach().clone() for name, p in trainer.model.named_parameters()}
    trainable = {name for name, p in trainer.model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in name for name in trainable)

    trainer.train()

    for name, param in trainer.model.named_parameters():
        if name in trainable:
            assert not torch.equal(before[name], param), f"{name} did not change"
        else:
            assert torch.equal(before[name], param), f"frozen {name} changed"


# -- the viewer's tests (test_review_*.py) ----------------------------------------------------


@pytest.fixture(scope="session")
def made_run(tmp_path_factory) -> Path:
    """The viewer tests' run (review_records.make_run: spri and direct records as a pipeline dir), made once."""
    from review_records import make_run

    return make_run(tmp_path_factory.mktemp("review") / "run")


@pytest.fixture
def run(made_run, tmp_path) -> Path:
    """A copy of the viewer tests' run that a test may change."""
    import shutil

    return Path(shutil.copytree(made_run, tmp_path / "run"))
