"""Which commit of a Hub model a training run read, recorded so that a rerun can pin it (`model_revision`).

Tested for real and offline: a folder laid out as huggingface_hub's cache (HF_HUB_CACHE: models--org--name/refs/main
holding a commit, snapshots/<commit>/ the saved tiny model) with HF_HUB_OFFLINE=1, and `spri-sft train` run on the
Hub id `org/name` in a child process, as a user runs it (huggingface_hub reads both variables when it is imported).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import build_sft_dataset, tiny_lora_argv

FIRST = "0123456789abcdef0123456789abcdef01234567"
SECOND = "fedcba9876543210fedcba9876543210fedcba98"


@pytest.fixture
def hub_cache(tiny_model_dir, tmp_path) -> Path:
    """A Hub cache holding org/name at FIRST, which `main` points to."""
    cache = tmp_path / "hub"
    repo = cache / "models--org--name"
    shutil.copytree(tiny_model_dir, repo / "snapshots" / FIRST)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(FIRST)
    return cache


def train(hub_cache: Path, dataset: Path, output_dir: Path, *flags: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_CACHE": str(hub_cache), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    argv = tiny_lora_argv(Path("org/name"), dataset, output_dir, "--max_steps", "1", *flags)
    done = subprocess.run(
        [sys.executable, "-m", "spri_sft.cli", "train", *argv], capture_output=True, text=True, env=env, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def test_the_commit_main_points_to_is_recorded_and_a_pinned_rerun_loads_it_after_main_moved(hub_cache, tmp_path):
    from huggingface_hub import ModelCard

    dataset = build_sft_dataset(tmp_path / "data")
    train(hub_cache, dataset, tmp_path / "run")

    revisions = json.loads((tmp_path / "run/effective_config.json").read_text())["revisions"]
    resolved = {"name_or_path": "org/name", "revision": "main", "commit": FIRST}
    assert revisions == {"model": resolved, "tokenizer": resolved}
    card = ModelCard.load(tmp_path / "run/README.md")
    assert card.data.base_model_revision == FIRST
    assert (
        f"Base model: `org/name`, commit `{FIRST}`, revision `main`; tokenizer: the same. "
        f"A rerun loads these files with `model_revision: {FIRST}`." in card.text
    )

    # The repository moves on: main now points to a commit whose files cannot load. The pinned rerun reads FIRST.
    repo = hub_cache / "models--org--name"
    (repo / "snapshots" / SECOND).mkdir()
    (repo / "snapshots" / SECOND / "config.json").write_text("not json")
    (repo / "refs" / "main").write_text(SECOND)
    train(hub_cache, dataset, tmp_path / "rerun", "--model_revision", FIRST)

    rerun = json.loads((tmp_path / "rerun/effective_config.json").read_text())
    assert rerun["revisions"]["model"] == {"name_or_path": "org/name", "revision": FIRST, "commit": FIRST}
    assert rerun["ModelConfig"]["model_revision"] == FIRST
    assert (
        f"Base model: `org/name`, commit `{FIRST}`; tokenizer: the same."
        in ModelCard.load(tmp_path / "rerun/README.md").text
    )


def test_a_snapshot_folder_of_the_hub_cache_is_recorded_with_its_commit(hub_cache):
    """What `resolve_model` returns for the embedded default when the Hub answers: a path inside the cache."""
    from spri_sft.train.job import resolve_revision

    snapshot = hub_cache / "models--org--name" / "snapshots" / FIRST
    assert resolve_revision(str(snapshot), "main") == {
        "name_or_path": str(snapshot), "revision": None, "commit": FIRST, "local_directory": str(snapshot.resolve()),
    }  # fmt: skip


def test_an_adapter_is_scored_on_the_commit_its_training_recorded_after_main_moved(hub_cache, tmp_path, shared_dir):
    dataset = build_sft_dataset(tmp_path / "data")
    train(hub_cache, dataset, tmp_path / "run")
    repo = hub_cache / "models--org--name"
    (repo / "snapshots" / SECOND).mkdir()
    (repo / "snapshots" / SECOND / "config.json").write_text("not json")
    (repo / "refs" / "main").write_text(SECOND)

    env = {**os.environ, "HF_HUB_CACHE": str(hub_cache), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    argv = ["evaluate", "--model", "org/name", "--adapter", str(tmp_path / "run"), "--limit", "2", "--output_dir",
            str(tmp_path / "eval"), "--truthfulqa_file", str(shared_dir / "data/truthfulqa/data/v0/mc_task.json")]  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-m", "spri_sft.cli", *argv], capture_output=True, text=True, env=env, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((tmp_path / "eval/results.json").read_text())["model_revision"] == FIRST


def test_a_qlora_adapter_is_scored_on_the_4bit_base_at_its_recorded_commit(family_dir, tmp_path, shared_dir):
    """The quantized load keeps the revision: model and tokenizer both at the commit training recorded."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig
    from trl import ModelConfig

    from spri_sft.train.job import write_effective_config

    pytest.importorskip("bitsandbytes")
    cache = tmp_path / "hub"
    repo = cache / "models--org--qbase"
    shutil.copytree(family_dir("gemma-2"), repo / "snapshots" / FIRST)  # hidden size 64: bitsandbytes quantizes it
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(SECOND)  # main already moved to files that cannot load
    (repo / "snapshots" / SECOND).mkdir()
    (repo / "snapshots" / SECOND / "config.json").write_text("not json")

    quantization = BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32
    )
    base = AutoModelForCausalLM.from_pretrained(
        repo / "snapshots" / FIRST, quantization_config=quantization, dtype=torch.float32, device_map={"": "cpu"}
    )
    adapter = tmp_path / "adapter"
    get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)).save_pretrained(
        adapter
    )
    trained = ModelConfig(model_name_or_path="org/qbase", dtype="float32", use_peft=True, load_in_4bit=True)
    resolved = {"name_or_path": "org/qbase", "revision": "main", "commit": FIRST}
    write_effective_config(str(adapter), trained, revisions={"model": resolved, "tokenizer": resolved})

    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    argv = ["evaluate", "--model", "org/qbase", "--adapter", str(adapter), "--limit", "2", "--output_dir",
            str(tmp_path / "eval"), "--truthfulqa_file", str(shared_dir / "data/truthfulqa/data/v0/mc_task.json")]  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-m", "spri_sft.cli", *argv], capture_output=True, text=True, env=env, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((tmp_path / "eval/results.json").read_text())
    assert results["model_revision"] == FIRST and results["quantization"]["load_in_4bit"] is True
