"""The KV cache a managed vLLM server gets on the CPU: what its requests can fill, within a share of the RAM.

SmolLM2-135M-Instruct keeps 30 layers × 3 KV heads × 64 dims × 2 (K and V) × 2 bytes (bfloat16) = 23,040 bytes
of KV per token; the tests size its cache from that config.json, as a server start does.
"""

from __future__ import annotations

import json

from spri_sft.serve.kv_cache import GIB, KVShape, read_model_config, size_kv_cache

SMOLLM2_BYTES_PER_TOKEN = 30 * 3 * 64 * 2 * 2
RAM = 24 * GIB


def smollm2(smollm2_config_dir) -> dict:
    return read_model_config(str(smollm2_config_dir))


def test_bytes_per_token_are_layers_times_kv_heads_times_head_dim_times_k_and_v_times_dtype(smollm2_config_dir):
    shape = KVShape.from_config(smollm2(smollm2_config_dir))

    assert shape.bytes_per_token(2) == SMOLLM2_BYTES_PER_TOKEN == 23_040


def test_head_dim_and_kv_heads_default_to_hidden_size_over_heads_and_the_attention_heads():
    shape = KVShape.from_config({"num_hidden_layers": 2, "num_attention_heads": 4, "hidden_size": 32})

    assert (shape.kv_heads, shape.head_dim) == (4, 8)


def test_the_cache_holds_max_model_len_for_every_request_in_flight_rounded_up_to_whole_gib(smollm2_config_dir):
    size = size_kv_cache(smollm2(smollm2_config_dir), sequences=64, max_model_len=2048, ram_bytes=RAM)

    # 2048 × 64 × 23,040 bytes = 2.81 GiB
    assert size.needed_bytes == 2048 * 64 * SMOLLM2_BYTES_PER_TOKEN
    assert (size.gib, size.limited_by) == (3, "need")


def test_without_max_model_len_a_sequence_is_the_models_own_context(smollm2_config_dir):
    size = size_kv_cache(smollm2(smollm2_config_dir), sequences=8, ram_bytes=RAM)

    # 8192 × 8 × 23,040 bytes = 1.41 GiB
    assert (size.tokens, size.gib) == (8192, 2)


def test_a_float32_server_needs_twice_the_bytes(smollm2_config_dir):
    size = size_kv_cache(smollm2(smollm2_config_dir), sequences=64, max_model_len=2048, dtype="float32", ram_bytes=RAM)

    assert (size.value_bytes, size.gib) == (4, 6)


def test_a_quarter_of_the_ram_bounds_the_cache(smollm2_config_dir):
    size = size_kv_cache(smollm2(smollm2_config_dir), sequences=64, max_model_len=8192, ram_bytes=16 * GIB)

    # the requests could fill 11.25 GiB
    assert (size.gib, size.limited_by) == (4, "ram")


def test_servers_started_together_share_the_quarter(smollm2_config_dir):
    size = size_kv_cache(smollm2(smollm2_config_dir), sequences=64, max_model_len=8192, ram_bytes=16 * GIB, processes=2)

    assert size.gib == 2


def test_the_cache_never_holds_less_than_one_full_length_sequence(smollm2_config_dir):
    # One 131,072-token sequence is 2.81 GiB, more than a quarter of 4 GiB: vLLM would refuse to start with less.
    size = size_kv_cache(smollm2(smollm2_config_dir), sequences=64, max_model_len=131_072, ram_bytes=4 * GIB)

    assert (size.gib, size.limited_by) == (3, "floor")


def test_a_model_without_layers_and_heads_in_its_config_gets_the_ram_share(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "mystery"}))

    size = size_kv_cache(read_model_config(str(tmp_path)), sequences=64, ram_bytes=16 * GIB)

    assert (size.gib, size.limited_by, size.shape) == (4, "ram", None)


def test_the_line_says_why_the_need_was_not_counted(tmp_path, smollm2_config_dir):
    without_context = {k: v for k, v in smollm2(smollm2_config_dir).items() if k != "max_position_embeddings"}
    reasons = {
        "no config": size_kv_cache(None, sequences=4, ram_bytes=RAM),
        "no shape": size_kv_cache({"model_type": "mystery"}, sequences=4, ram_bytes=RAM),
        "no context": size_kv_cache(without_context, sequences=4, ram_bytes=RAM),
    }
    lines = {name: size.describe() for name, size in reasons.items()}

    assert "config.json is not found locally" in lines["no config"]
    assert "gives no layers and KV heads" in lines["no shape"]
    assert "gives a context length" in lines["no context"]
    assert all(size.gib == 6 and size.limited_by == "ram" for size in reasons.values())


def test_a_model_whose_config_cannot_be_found_reads_as_none(tmp_path):
    assert read_model_config(str(tmp_path / "not-here")) is None


def test_the_line_says_the_size_the_arithmetic_the_bound_and_the_setting_that_changes_it(smollm2_config_dir):
    line = size_kv_cache(smollm2(smollm2_config_dir), sequences=64, max_model_len=2048, ram_bytes=RAM).describe()

    assert line.startswith("KV cache 3 GiB = 2048 tokens × 64 sequences (requests in flight) × 22.5 KiB per token ")
    assert "(30 layers × 3 KV heads × 64 dims × 2 (K, V) × 2 bytes, dtype auto) = 2.81 GiB" in line
    assert "at most 1/4 of 24 GiB RAM" in line
    assert line.endswith("(set the server's env VLLM_CPU_KVCACHE_SPACE in GiB to change)")
