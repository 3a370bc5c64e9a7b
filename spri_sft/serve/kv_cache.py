"""How much RAM a managed vLLM server on the CPU may give its KV cache.

vLLM's CPU build, left to itself, sizes its KV cache to ``gpu_memory_utilization`` (0.9) of the
machine's RAM less what the worker already holds: measured on a 23.5 GiB machine serving
SmolLM2-135M, "Auto set (20.28/23.54) GiB for KV cache", the worker at 21.4 GB RSS, 250 MB left for
everything else. A generation needs far less: each request in flight holds at most ``max_model_len``
tokens, each token ``layers × KV heads × head_dim × 2 (K and V) × bytes per value``. So unless the
user sized it (`KV_CACHE_VAR`, `KV_CACHE_FLAGS`), spri-sft gives the server what its requests can fill, bounded
by `RAM_SHARE` of the machine's RAM, and says so in one line (wrapped here):

    KV cache 3 GiB = 2048 tokens × 64 sequences (requests in flight) × 22.5 KiB per token (30 layers ×
    3 KV heads × 64 dims × 2 (K, V) × 2 bytes, dtype auto) = 2.81 GiB, rounded up to whole GiB; at most
    1/4 of 23.54 GiB RAM (set the server's env VLLM_CPU_KVCACHE_SPACE in GiB to change)

The size reaches vLLM as ``VLLM_CPU_KVCACHE_SPACE`` (whole GiB, read by the CPU build alone: a GPU
build ignores it and keeps sizing its cache by ``gpu_memory_utilization``, which is the right rule
on a GPU, whose memory nothing else on the machine needs).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

GIB = 1024**3
KV_CACHE_VAR = "VLLM_CPU_KVCACHE_SPACE"  # GiB, whole numbers (vllm.envs parses it with int())
# Every way a user sizes vLLM's CPU KV cache: the env var, vLLM's own flag for it, and the fraction of
# RAM its CPU build reserves (it reads gpu_memory_utilization as that fraction on the CPU).
KV_CACHE_FLAGS = ("--kv-cache-memory-bytes", "--gpu-memory-utilization")
# A quarter of the RAM for the KV caches of all the servers started together: the servers' weights and
# runtime come on top (about 1 GiB for SmolLM2-135M, 16 GB for an 8B model in bfloat16), and the
# generate process, `format` and whatever else runs on the machine keep the other three quarters.
# vLLM's own CPU default leaves a tenth.
RAM_SHARE = 0.25
RAM_SHARE_TEXT = "1/4"
# vLLM's OpenAI server admits this many sequences at once on the CPU (vllm.engine.arg_utils: 128 per
# worker), when nobody says how many requests a server will get.
VLLM_CPU_MAX_NUM_SEQS = 128
# Bytes per KV value of a vLLM --dtype / --kv-cache-dtype; vLLM's "auto" on a CPU runs float32
# checkpoints in bfloat16 (vllm.config.model._resolve_auto_dtype: a CPU supports bfloat16 first)
# and keeps a 16-bit checkpoint's dtype, so "auto" is 2 bytes.
DTYPE_BYTES = {
    "auto": 2,
    "bfloat16": 2,
    "float16": 2,
    "half": 2,
    "float32": 4,
    "float": 4,
    "fp8": 1,
    "fp8_e4m3": 1,
    "fp8_e5m2": 1,
}


@dataclass(frozen=True)
class KVShape:
    """What one token's keys and values take, read from a model's config.json (full attention assumed on
    every layer: for sliding-window or latent-attention models this is an upper bound)."""

    layers: int
    kv_heads: int
    head_dim: int
    max_position_embeddings: int | None

    @classmethod
    def from_config(cls, config: dict) -> KVShape | None:
        """The shape in a transformers config.json (a multimodal model's `text_config` when it has one);
        None when the config does not give layers and heads."""
        config = config.get("text_config") or config
        layers = config.get("num_hidden_layers")
        heads = config.get("num_attention_heads")
        if not isinstance(layers, int) or not isinstance(heads, int) or heads < 1:
            return None
        kv_heads = config.get("num_key_value_heads") or heads
        head_dim = config.get("head_dim") or (config.get("hidden_size") or 0) // heads
        if head_dim < 1:
            return None
        return cls(layers, kv_heads, head_dim, config.get("max_position_embeddings"))

    def bytes_per_token(self, value_bytes: int) -> int:
        return self.layers * self.kv_heads * self.head_dim * 2 * value_bytes


@dataclass(frozen=True)
class KVCacheSize:
    """The KV cache one server process gets on the CPU, and the arithmetic behind it."""

    gib: int
    ram_bytes: int
    processes: int  # server processes sharing RAM_SHARE of the RAM
    sequences: int
    sequences_from: str  # what set the number of sequences, in words
    tokens: int | None  # per sequence (max_model_len); None: unknown
    shape: KVShape | None  # None: the config gave no layers and heads
    dtype: str
    value_bytes: int
    limited_by: str  # "need", "ram" (RAM_SHARE won) or "floor" (one full-length sequence)
    unsized: str | None = None  # why the need could not be counted, in words (then the RAM share alone)

    @property
    def needed_bytes(self) -> int | None:
        if self.shape is None or self.tokens is None:
            return None
        return self.tokens * self.sequences * self.shape.bytes_per_token(self.value_bytes)

    def describe(self) -> str:
        """One line: the size, why, and how to change it."""
        share = f"{RAM_SHARE_TEXT} of {_gib(self.ram_bytes)} GiB RAM" + (
            f" over {self.processes} server processes" if self.processes > 1 else ""
        )
        needed = self.needed_bytes
        if needed is None:
            why = f"{share} ({self.unsized or 'the need could not be counted'})"
        else:
            shape, per_token = self.shape, self.shape.bytes_per_token(self.value_bytes)
            arithmetic = (
                f"{self.tokens} tokens × {self.sequences} sequences ({self.sequences_from}) × "
                f"{per_token / 1024:.1f} KiB per token ({shape.layers} layers × {shape.kv_heads} KV heads × "
                f"{shape.head_dim} dims × 2 (K, V) × {self.value_bytes} bytes, dtype {self.dtype}) = {_gib(needed)} GiB"
            )
            why = {
                "need": f"{arithmetic}, rounded up to whole GiB; at most {share}",
                "ram": f"{share}, less than the {arithmetic}",
                "floor": f"one sequence of {self.tokens} tokens, the least vLLM starts with, more than {share} "
                "(a smaller max_model_len needs less)",
            }[self.limited_by]
        return f"KV cache {self.gib} GiB = {why} (set the server's env {KV_CACHE_VAR} in GiB to change)"


def size_kv_cache(
    config: dict | None,
    *,
    sequences: int | None,
    sequences_from: str | None = None,
    max_model_len: int | None = None,
    dtype: str | None = None,
    ram_bytes: int,
    processes: int = 1,
) -> KVCacheSize:
    """The CPU KV cache of one server process: ``max_model_len × sequences × bytes per token`` in whole
    GiB, rounded up, at most `RAM_SHARE` of `ram_bytes` split between `processes`, and never less than one
    sequence of max_model_len (vLLM refuses to start with less) nor 1 GiB.

    Args:
        config: the model's config.json; None when it cannot be read (the RAM share alone then).
        sequences: requests in flight at one server process at most; None: vLLM's CPU max_num_seqs.
        sequences_from: what set `sequences`, in words, for the line that says the size.
        max_model_len: the server's context length; None: the model's max_position_embeddings.
        dtype: vLLM's --kv-cache-dtype, else --dtype ('auto' when None).
        ram_bytes: the machine's RAM (`machine_ram_bytes()`).
        processes: the server processes started together, which share RAM_SHARE.
    """
    shape = KVShape.from_config(config) if config else None
    tokens = max_model_len or (shape.max_position_embeddings if shape else None)
    dtype = (dtype or "auto").lower()
    value_bytes = DTYPE_BYTES.get(dtype, 2)
    processes = max(1, processes)
    cap_gib = max(1, int(ram_bytes * RAM_SHARE / processes // GIB))
    unsized = None
    if config is None:
        unsized = "the model's config.json is not found locally to size it by"
    elif shape is None:
        unsized = "the model's config.json gives no layers and KV heads to size it by"
    elif tokens is None:
        unsized = "neither max_model_len nor the model's max_position_embeddings gives a context length"
    if unsized:
        gib, limited_by = cap_gib, "ram"
    else:
        per_sequence = tokens * shape.bytes_per_token(value_bytes)
        need_gib = max(1, math.ceil(per_sequence * max(1, sequences or VLLM_CPU_MAX_NUM_SEQS) / GIB))
        floor_gib = max(1, math.ceil(per_sequence / GIB))
        if need_gib <= cap_gib:
            gib, limited_by = need_gib, "need"
        elif floor_gib > cap_gib:
            gib, limited_by = floor_gib, "floor"
        else:
            gib, limited_by = cap_gib, "ram"
    return KVCacheSize(
        gib=gib,
        ram_bytes=ram_bytes,
        processes=processes,
        sequences=max(1, sequences or VLLM_CPU_MAX_NUM_SEQS),
        sequences_from=sequences_from or ("requests in flight" if sequences else "vLLM's max_num_seqs on CPU"),
        tokens=tokens,
        shape=shape,
        dtype=dtype,
        value_bytes=value_bytes,
        limited_by=limited_by,
        unsized=unsized,
    )


def read_model_config(model: str) -> dict | None:
    """A model's config.json: from its directory, or from the local Hugging Face cache for a Hub id (never
    downloaded: vLLM fetches the model itself); None when neither has it."""
    path = Path(model) / "config.json"
    if not path.is_file():
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(model, "config.json")
        except Exception:  # noqa: BLE001 - not a repo id, no hub library: size by RAM alone
            return None
        if not isinstance(cached, str):
            return None
        path = Path(cached)
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return config if isinstance(config, dict) else None


def machine_ram_bytes() -> int:
    """The RAM this process may use: the machine's, or its cgroup's memory limit when that is lower."""
    physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for limit_file in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            limit = Path(limit_file).read_text().strip()
        except OSError:
            continue
        if limit.isdigit():
            return min(physical, int(limit))
    return physical


def _gib(size: int) -> str:
    return f"{size / GIB:.2f}".rstrip("0").rstrip(".")
