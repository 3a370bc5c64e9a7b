#!/usr/bin/env bash
# Download into .whl/ the wheels scripts/gpu_check.sh installs on the lent GPU machine, here, where pip works.
#
#   bash scripts/gpu_wheels.sh
#
# That machine (Python 3.12, x86-64) has torch 2.11+cu130, transformers 5.17, peft, accelerate 1.15,
# huggingface-hub 1.33, pandas, pyarrow, numpy, xxhash, psutil, jinja2, pyyaml, tqdm and fsspec, but no
# trl, datasets or bitsandbytes, and it can fetch nothing: what it lacks travels with the checkout, whose
# whole working tree (wheels included) may be 64 MiB. Hence exactly these, each pinned, without their
# dependencies (--no-deps); every Requires-Dist of each was checked against that machine's package list,
# and gpu_check.sh checks them again there against what is really installed:
#   trl          the version this project is tested with; needs transformers>=4.56.2, accelerate>=1.10.1,
#                datasets>=4.7, huggingface_hub>=0.34, pyarrow>=21, pandas, psutil, jinja2: all there but datasets
#   datasets     the version tested here; needs huggingface-hub>=1.31 (1.33 there), pyarrow>=24, xxhash, ...
#   dill, multiprocess   datasets' two requirements that machine lacks (dill<0.4.2, multiprocess<0.70.20)
#   fsspec       datasets needs fsspec<=2026.9.0, and that machine's (torch's requirement) is likely newer:
#                this one shadows it in /tmp/site
#   bitsandbytes 4-bit QLoRA; its wheel carries one library per CUDA version (cuda130 for torch's cu130)
#   llama-models, mistral-common   only for their files: Llama 3's tiktoken vocabulary and Mistral v3's
#                SentencePiece model, which the family fixtures (tests/support/families.py) read; none of
#                their code runs beyond the package's __init__, so their requirements are not checked
#   sentencepiece, protobuf   transformers' conversion of Mistral's SentencePiece model to a fast tokenizer
# spri_sft itself needs nothing else on its train and evaluate path: openai, wandb and gguf are imported
# only by generation, W&B tracking and model conversion (tests/test_gpu_check.py imports that path with
# them blocked).
set -euo pipefail
cd "$(dirname "$0")/.."

WHEELS=(
    trl==1.16.0
    datasets==5.2.0
    dill==0.4.1
    multiprocess==0.70.19
    fsspec==2026.9.0
    bitsandbytes==0.50.2
    llama-models==0.3.0
    mistral-common==1.13.1
    sentencepiece==0.2.3
    protobuf==7.36.2
)
python="${PYTHON:-}"
if [ -z "$python" ]; then
    if [ -x .venv/bin/python ]; then python=.venv/bin/python; else python=python3; fi
fi
limit=$((64 * 1024 * 1024))

# Never committed, never sent unless a device call carries it.
exclude="$(git rev-parse --git-path info/exclude)"
mkdir -p "$(dirname "$exclude")"
grep -qxF "/.whl/" "$exclude" 2>/dev/null || echo "/.whl/" >>"$exclude"

rm -rf .whl  # one version of each: two versions of one package stop the whole install there
platforms=()
for platform in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 \
    manylinux2014_x86_64 manylinux1_x86_64; do
    platforms+=(--platform "$platform")
done
"$python" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${platforms[@]}" -d .whl "${WHEELS[@]}"

if ! unzip -l .whl/bitsandbytes-*.whl | grep -q "libbitsandbytes_cuda130"; then
    echo "gpu_wheels.sh: the bitsandbytes wheel has no CUDA 13.0 library (torch there is cu130); it has:" >&2
    unzip -l .whl/bitsandbytes-*.whl | grep -o "libbitsandbytes_[a-z0-9]*\.so" | sort -u >&2
    exit 1
fi

wheels=$(du -cb .whl/*.whl | tail -1 | cut -f1)
tree=$(git ls-files -co --exclude-standard -z | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1)
mib() { awk -v b="$1" 'BEGIN { printf "%.1f MiB", b / 1048576 }'; }
for wheel in .whl/*.whl; do printf '  %-70s %s\n' "${wheel#.whl/}" "$(mib "$(stat -c %s "$wheel")")"; done
echo "gpu_wheels.sh: $(ls .whl/*.whl | wc -l) wheels, $(mib "$wheels"); with the working tree ($(mib "$tree")): $(mib $((wheels + tree))) of the 64 MiB a device call may send"
if [ $((wheels + tree)) -gt "$limit" ]; then
    echo "gpu_wheels.sh: over 64 MiB: the device call would be refused; carry fewer wheels" >&2
    exit 1
fi
