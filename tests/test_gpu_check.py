"""scripts/gpu_check.sh, as far as a machine without CUDA can check it: its --cpu mode end to end (one family, the
Gemma-2-it fixture), in an environment missing what the GPU machine misses, and the comparisons it decides with."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# What the GPU machine does not have and the train/evaluate path must not need (trl, datasets and
# bitsandbytes travel as wheels; these do not).
ABSENT_THERE = ("openai", "wandb", "gguf", "vllm", "lm_eval")


def load_gpu_check():
    """scripts/gpu_check.py as a module (scripts/ is no package)."""
    if "gpu_check" not in sys.modules:
        spec = importlib.util.spec_from_file_location("gpu_check", REPO / "scripts" / "gpu_check.py")
        sys.modules["gpu_check"] = importlib.util.module_from_spec(spec)  # its dataclasses look themselves up
        spec.loader.exec_module(sys.modules["gpu_check"])
    return sys.modules["gpu_check"]


@pytest.fixture(scope="module")
def cpu_run(tmp_path_factory):
    """`bash scripts/gpu_check.sh --cpu` with openai, wandb, gguf, vllm and lm_eval unimportable, no wheels."""
    root = tmp_path_factory.mktemp("gpu-check")
    blocker = root / "absent"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(
        "import sys\n"
        f"for name in {ABSENT_THERE!r}:\n"
        "    sys.modules[name] = None  # `import name` raises ImportError, find_spec finds nothing\n"
    )
    env = dict(os.environ, PYTHON=sys.executable, PYTHONPATH=str(blocker), OUT=str(root / "out"))
    env["GPU_CHECK_WHEELS"] = str(root / "no-wheels")
    process = subprocess.run(
        ["bash", "scripts/gpu_check.sh", "--cpu", "--families", "gemma-2-it", "--steps", "3", "--limit", "12",
         "--work", str(root / "work")],
        cwd=REPO, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=900,
    )  # fmt: skip
    return process, root / "out"


@pytest.mark.slow
def test_cpu_mode_passes_without_the_packages_the_gpu_machine_lacks(cpu_run):
    process, out = cpu_run
    assert process.returncode == 0, process.stdout[-4000:]
    summary = json.loads((out / "gpu_check.json").read_text())
    assert summary["passed"] and summary["mode"] == "cpu"
    assert [check["name"] for check in summary["checks"]] == [
        "environment", "gemma-2-it train qlora-4bit", "gemma-2-it score qlora-4bit: cpu vs cpu",
        "gemma-2-it train lora-fp32", "gemma-2-it score lora-fp32: cpu vs cpu",
    ]  # fmt: skip
    assert (out / "gpu_check.log").read_text().rstrip().endswith(process.stdout.rstrip().splitlines()[-1])


@pytest.mark.slow
def test_cpu_mode_trains_qlora_through_the_recipe_in_4_bit(cpu_run):
    process, out = cpu_run
    checks = {check["name"]: check for check in json.loads((out / "gpu_check.json").read_text())["checks"]}
    assert len(checks["gemma-2-it train qlora-4bit"]["facts"]["losses"]) == 3
    assert "recipes/gemma-2-9b-it/sft/qlora.yaml" in process.stdout and "QLoRA r=16" in process.stdout


@pytest.mark.slow
def test_cpu_mode_trains_and_scores_the_adapter_it_trained(cpu_run):
    process, out = cpu_run
    checks = {check["name"]: check for check in json.loads((out / "gpu_check.json").read_text())["checks"]}
    training = checks["gemma-2-it train lora-fp32"]["facts"]
    assert len(training["losses"]) == 3 and training["lora_b_matrices"] == 14  # the recipe's 7 modules x 2 layers
    scoring = checks["gemma-2-it score lora-fp32: cpu vs cpu"]["facts"]
    assert scoring["device"]["n"] == scoring["cpu"]["n"] == 12
    assert scoring["device"]["adapter_merged"] and scoring["device"]["dtype"] == "float32"
    # Two different batchings: close, not necessarily identical, and the adapter changed the scores.
    assert scoring["max_ll_difference"] <= scoring["tolerance"]["ll_atol"]
    assert scoring["adapter_vs_base_max_ll_difference"] > 10 * scoring["tolerance"]["ll_atol"]


def row(index, mc1_lls, mc2_lls, mc2_acc, mc1_pred=None):
    pred = max(range(len(mc1_lls)), key=mc1_lls.__getitem__) if mc1_pred is None else mc1_pred
    return {
        "index": index, "mc1_pred": pred, "mc2_acc": mc2_acc,
        "mc1": {"loglikelihoods": mc1_lls}, "mc2": {"loglikelihoods": mc2_lls},
    }  # fmt: skip


def test_scores_within_float32_rounding_agree():
    gpu_check = load_gpu_check()
    reference = [row(0, [-10.0, -12.0], [-10.0, -12.0, -15.0], 0.88)]
    compared = [row(0, [-10.0002, -12.0001], [-10.0002, -12.0001, -15.0003], 0.8801)]
    agreement = gpu_check.score_agreement(compared, reference)
    assert agreement["problems"] == []
    assert agreement["max_ll_difference"] == pytest.approx(3e-4)


def test_a_log_likelihood_beyond_the_tolerance_is_named():
    gpu_check = load_gpu_check()
    reference = [row(0, [-10.0, -12.0], [-10.0, -12.0], 0.88), row(1, [-5.0, -9.0], [-5.0, -9.0], 0.98)]
    compared = [row(0, [-10.0, -12.0], [-10.0, -12.0], 0.88), row(1, [-5.0, -9.0], [-5.0, -9.5], 0.98)]
    assert gpu_check.score_agreement(compared, reference)["problems"] == [
        "question 1 mc2: log-likelihood -9.500000 vs -9.000000"
    ]


def test_an_mc1_pick_that_flips_on_a_near_tie_is_not_a_disagreement():
    gpu_check = load_gpu_check()
    reference = [row(0, [-10.0, -10.0001], [-10.0], 1.0, mc1_pred=0)]
    compared = [row(0, [-10.0001, -10.0], [-10.0], 1.0, mc1_pred=1)]
    assert gpu_check.score_agreement(compared, reference)["problems"] == []


def test_an_mc1_pick_that_flips_on_a_clear_gap_is_named():
    gpu_check = load_gpu_check()
    reference = [row(0, [-10.0, -11.0], [-10.0], 1.0, mc1_pred=0)]
    compared = [row(0, [-10.0, -11.0], [-10.0], 1.0, mc1_pred=1)]
    assert gpu_check.score_agreement(compared, reference)["problems"] == ["question 0: MC1 picks choice 1 vs 0"]


def test_a_4bit_base_scored_on_two_devices_is_held_to_the_two_quantizations_tolerance():
    # Nested quantization rounds each block's absmax differently on CUDA and on the CPU (measured on an H100):
    # the Qwen2.5 fixture's QLoRA scores came out 2.8e-4 (relative) and MC2 1.4e-3 apart.
    gpu_check = load_gpu_check()
    reference = [row(0, [-39.637, -60.0], [-59.2425, -61.0], 0.4000)]
    compared = [row(0, [-39.648, -60.0], [-59.2347, -61.0], 0.4014)]
    assert len(gpu_check.score_agreement(compared, reference, gpu_check.QLORA_LL_RTOL)["problems"]) == 3
    lenient = gpu_check.score_agreement(
        compared, reference, gpu_check.QLORA_DEVICE_LL_RTOL, gpu_check.QLORA_DEVICE_MC_ATOL
    )
    assert lenient["problems"] == []


def test_the_fixture_files_are_found_outside_the_import_path(tmp_path, monkeypatch):
    # On the GPU machine llama-models and mistral-common are unpacked where nothing imports them (gpu_check.sh).
    from support.families import _package_folder

    (tmp_path / "carried_only_for_files").mkdir()
    (tmp_path / "carried_only_for_files" / "__init__.py").write_text("raise ImportError('never imported')\n")
    monkeypatch.setenv("SPRI_SFT_FIXTURE_FILES", str(tmp_path))
    assert _package_folder("carried_only_for_files") == tmp_path / "carried_only_for_files"
    with pytest.raises(ModuleNotFoundError):
        _package_folder("no_such_package_anywhere")


def test_carried_wheels_requirements_are_checked_against_what_is_installed(tmp_path):
    import pytest as installed_pytest

    dist_info = tmp_path / "carried-1.0.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: carried\nVersion: 1.0\n"
        "Requires-Dist: packaging>=20\n"
        "Requires-Dist: pytest<1\n"
        "Requires-Dist: no-such-distribution-anywhere>=2\n"
        'Requires-Dist: also-not-installed; extra == "docs"\n'
        'Requires-Dist: windows-only-thing; sys_platform == "win32"\n'
    )
    assert load_gpu_check().unmet_requirements(tmp_path) == [
        f"carried needs pytest<1: {installed_pytest.__version__} installed",
        "carried needs no-such-distribution-anywhere>=2: not installed",
    ]
