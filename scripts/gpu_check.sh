#!/usr/bin/env bash
# The GPU check, one command from the repository root (scripts/gpu_check.py says what it checks):
#
#   bash scripts/gpu_check.sh          # a CUDA machine; meant to take under 8 minutes on one GPU
#   bash scripts/gpu_check.sh --cpu    # the same steps on the CPU (QLoRA too: bitsandbytes NF4 runs there)
#   bash scripts/gpu_check.sh --families llama-3.1-instruct,gemma-2-it   # a subset of the family fixtures
#
# On a machine that can fetch nothing (the lent GPU machine), the packages it lacks travel as wheels in
# .whl/ (made here by scripts/gpu_wheels.sh; the device call names .whl in `carry`): they are installed
# into /tmp/site, put first on PYTHONPATH, and their requirements checked against what is installed.
# Without .whl/ the current environment is used as it is. With $OUT set, the whole log goes to
# $OUT/gpu_check.log and the JSON summary to $OUT/gpu_check.json. Exit status: 0 only when every check passed.
#
# On the lent H200 (after `bash scripts/gpu_wheels.sh` here): the device tool's run with carry [".whl"],
# command `bash scripts/gpu_check.sh`, timeout_s 540. First run on an H100 on 2026-12-05: docs/train.md#gpu-check.
set -uo pipefail
cd "$(dirname "$0")/.."

python="${PYTHON:-}"
if [ -z "$python" ]; then
    if [ -x .venv/bin/python ]; then python=.venv/bin/python; else python=python3; fi
fi
wheels="${GPU_CHECK_WHEELS:-.whl}"  # another folder of wheels, or an empty one to use none
site="${GPU_CHECK_SITE:-/tmp/site}"

log=/dev/null
if [ -n "${OUT:-}" ]; then mkdir -p "$OUT" && log="$OUT/gpu_check.log"; fi

{
    site_args=()
    if compgen -G "$wheels/*.whl" >/dev/null; then
        echo "[gpu_check] installing $(ls "$wheels"/*.whl | wc -l) carried wheels into $site"
        # llama-models and mistral-common are carried for their data files only, and go where nothing imports them:
        # transformers' AutoTokenizer goes into its Mistral integration whenever mistral_common is importable, and
        # that needs pydantic, which the machine lacks. tests/support/families.py finds them through this variable.
        files_only=("$wheels"/llama_models-*.whl "$wheels"/mistral_common-*.whl)
        code=()
        for wheel in "$wheels"/*.whl; do
            case " ${files_only[*]} " in *" $wheel "*) ;; *) code+=("$wheel") ;; esac
        done
        "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target "$site" "${code[@]}" || { echo "[gpu_check] FAILED: could not install the wheels of $wheels/"; exit 1; }
        for wheel in "${files_only[@]}"; do
            if [ -f "$wheel" ]; then "$python" -m zipfile -e "$wheel" "$site-files" || exit 1; fi
        done
        export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}" SPRI_SFT_FIXTURE_FILES="$site-files"
        site_args=(--site "$site")
    else
        echo "[gpu_check] no wheels in $wheels/: using the packages of $python as they are"
    fi
    PYTHONUNBUFFERED=1 "$python" scripts/gpu_check.py "${site_args[@]}" "$@"
} 2>&1 | tee "$log"
