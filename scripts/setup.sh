#!/usr/bin/env bash
# Create .venv (once) and install spri-sft with its test dependencies into it.
# torch is pinned to 2.13.0: on CPU-only machines that is the CPU build; an unpinned torch
# would pull a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet torch==2.13.0 -e ".[dev]"
