"""The GPU check: every model family's fixture trained with QLoRA 4-bit and bf16 LoRA through `spri-sft train` and
its recipe, then TruthfulQA scored on CUDA and on the CPU with the same adapters, which must agree.

    bash scripts/gpu_check.sh          # on a CUDA machine (installs the wheels scripts/gpu_wheels.sh carried)
    bash scripts/gpu_check.sh --cpu    # the same steps on the CPU (QLoRA included: bitsandbytes' NF4 runs there)
    bash scripts/gpu_check.sh --families llama-3.1-instruct,gemma-2-it   # a subset

Every family of tests/support/families.py (Llama-3.1 base and instruct, Mistral-7B-v0.3 base and instruct,
Gemma-2 base and it, Qwen2.5-Instruct: tiny random weights, the released layouts) is built from scratch, with no
download. Training goes through the real command-line entry (`python -m spri_sft.cli train`), in its own
process, with the student's own recipe (recipes/<student>/sft/{qlora,lora}.yaml; Qwen2.5 takes SmolLM2's with
4-bit flags): only model, data, output, steps, learning rate (large, so a few steps visibly move the scores),
logging and, on the CPU, precision are overridden. Scoring calls the function `spri-sft evaluate` runs
(spri_sft.evaluate.run.evaluate_truthfulqa), in this process: one start-up instead of one per scoring. Per family:

1. (once) environment: versions, the GPU, and every requirement of the carried wheels met by what is installed;
2. the family's tiny model, a tiny `messages` dataset (save_to_disk) and the packaged TruthfulQA copy;
3. train `qlora-4bit` (the QLoRA recipe: nf4, nested quantization; float32 compute, so that its scores compare
   tightly below) and `lora-bf16` (the LoRA recipe: bf16 weights and mixed precision); for the first family also
   `qlora-4bit-bf16`, the QLoRA recipe's own bf16 compute, trained only: every planned step logs a finite loss
   and every LoRA B matrix (initialised to zero) has moved. With --cpu, both train in float32 (`qlora-4bit`
   still 4-bit NF4 weights, `lora-fp32`);
4. score each adapter on TruthfulQA (`--limit` questions) in float32 on the device and on the CPU (a QLoRA
   adapter on its 4-bit base in its training's dtype, float32, as evaluation loads it from the adapter's
   effective_config.json), and compare:
   every summed log-likelihood within LL_ATOL + LL_RTOL * |ll| (QLORA_LL_RTOL on a 4-bit base; on CUDA against
   the CPU, QLORA_DEVICE_LL_RTOL: the two devices' nested quantization makes two slightly different 4-bit models), MC2
   per question within MC_ATOL (QLORA_DEVICE_MC_ATOL there), MC1's pick the same wherever its top two choices are further apart than the
   log-likelihood tolerance; the adapter must
   also move the log-likelihoods off the base model's (else both sides may ignore it). With --cpu, "the
   device" is the CPU scoring one question per pass (batch_size 1) against the default batching, so the
   comparison still compares two different computations.

A summary table is printed last; with --out (default $OUT) the JSON summary lands in gpu_check.json there.
The exit status is 1 when any check failed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # spri_sft from this checkout: the GPU machine has it nowhere else
sys.path.insert(0, str(REPO / "tests"))  # `support` (tests/support/): the family fixtures, which the wheel leaves out

# float32 on two devices: the same sums in a different order (cuBLAS/SDPA vs CPU kernels). A summed
# log-likelihood here is tens of nats over up to ~60 tokens; float32 rounding moves it by ~1e-5.
LL_ATOL = 1e-3
LL_RTOL = 1e-5
MC_ATOL = 1e-3
# On a 4-bit base, bitsandbytes' kernels dequantize and sum in an order that depends on the batch's shape: measured
# on the CPU, one question per pass against the default batching, up to 1.6e-5 relative (4e-3 of 248 nats).
QLORA_LL_RTOL = 1e-4
# On two devices a 4-bit base is not the same model: bitsandbytes (0.50.2) quantizes float32 weights to the same NF4
# codes on CUDA and on the CPU, but nested quantization (the recipes' use_bnb_nested_quant) stores each block's absmax
# in 8 bits, and the two devices round those differently. Measured on an H100 (2026-12-05): 68-88% of the
# dequantized weights of a layer differ between the devices, by up to 6e-4 where |W| <= 0.1 (un-nested: bit-identical);
# scored, up to 0.033 nats apart (2.8e-4 relative) and MC2 1.4e-3 apart, on the Qwen2.5 fixture's QLoRA adapter.
QLORA_DEVICE_LL_RTOL = 1e-3
QLORA_DEVICE_MC_ATOL = 5e-3

RECIPES = REPO / "recipes"


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    seconds: float = 0.0
    facts: dict = field(default_factory=dict)


def main(argv: list[str] | None = None) -> int:
    from support.families import FAMILIES

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cpu", action="store_true", help="run on the CPU: scores compared CPU to CPU")
    parser.add_argument("--families", help=f"comma-separated subset of {', '.join(FAMILIES)} (default: all)")
    parser.add_argument("--steps", type=int, default=5, help="optimizer steps per training")
    parser.add_argument("--limit", type=int, default=20, help="TruthfulQA questions scored")
    parser.add_argument("--work", type=Path, help="working folder (models, data, adapters); default a temporary one")
    parser.add_argument("--out", type=Path, default=Path(os.environ["OUT"]) if os.environ.get("OUT") else None,
                        help="where gpu_check.json goes (default $OUT; unset: nowhere)")  # fmt: skip
    parser.add_argument(
        "--site", type=Path, help="folder the carried wheels were installed into (their requirements are checked)"
    )
    args = parser.parse_args(argv)
    families = args.families.split(",") if args.families else list(FAMILIES)
    unknown = [name for name in families if name not in FAMILIES]
    if unknown:
        parser.error(f"unknown families {unknown}; choose from {', '.join(FAMILIES)}")

    # As run_entry's children: nothing can be fetched on the GPU machine, and bars would fill the returned log.
    os.environ.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TQDM_DISABLE="1")
    start = time.perf_counter()
    work = args.work or Path(tempfile.mkdtemp(prefix="gpu-check-"))
    work.mkdir(parents=True, exist_ok=True)
    device = "cpu" if args.cpu else "cuda"
    checks: list[Check] = []

    checks.append(environment(device, args.site))
    if not checks[-1].ok and device == "cuda" and "no CUDA device" in checks[-1].detail:
        return finish(checks, args, start)  # nothing below can run

    dataset_dir, truthfulqa = prepare(work)
    for index, name in enumerate(families):
        model_dir = family_model(name, work)
        base = score(model_dir, None, "cpu", truthfulqa, args.limit, work / "scores" / name / "base-cpu")
        # bf16 is a GPU check; on the CPU, LoRA trains in float32, the train entry's CPU default.
        for variant in ("qlora-4bit", "lora-bf16" if device == "cuda" else "lora-fp32"):
            adapter = work / "adapters" / name / variant
            check = train(name, variant, device, model_dir, dataset_dir, adapter, args.steps)
            checks.append(check)
            if check.ok:
                checks.append(
                    compare_scores(name, variant, device, model_dir, adapter, truthfulqa, args.limit, work, base)
                )
        if device == "cuda" and index == 0:  # the QLoRA recipe as users run it, bf16 compute: trained, not compared
            variant = "qlora-4bit-bf16"
            checks.append(
                train(name, variant, device, model_dir, dataset_dir, work / "adapters" / name / variant, args.steps)
            )
    return finish(checks, args, start)


# 1. Environment


def environment(device: str, site: Path | None) -> Check:
    import importlib.metadata as metadata

    import torch

    names = ["torch", "transformers", "trl", "peft", "datasets", "accelerate", "huggingface-hub", "pyarrow", "fsspec",
             "bitsandbytes", "llama-models", "mistral-common", "sentencepiece", "protobuf"]  # fmt: skip
    # llama-models and mistral-common may lie outside the import path (gpu_check.sh: SPRI_SFT_FIXTURE_FILES).
    search = [folder for folder in os.environ.get("SPRI_SFT_FIXTURE_FILES", "").split(os.pathsep) if folder] + sys.path
    versions = {}
    for name in names:
        found = next(iter(metadata.distributions(name=name, path=search)), None)
        versions[name] = found.version if found else None
    facts = {"python": sys.version.split()[0], "versions": versions, "device": device}
    problems = [f"{name} not installed" for name, version in versions.items() if version is None]
    if device == "cuda":
        if not torch.cuda.is_available():
            return Check(
                "environment", False, "no CUDA device (torch.cuda.is_available() is False); use --cpu", facts=facts
            )
        facts["gpu"] = torch.cuda.get_device_name(0)
        facts["cuda"] = torch.version.cuda
    if site is not None:
        problems += unmet_requirements(site)
    facts["problems"] = problems
    summary = ", ".join(f"{n} {v}" for n, v in versions.items() if v) + (f"; {facts['gpu']}" if "gpu" in facts else "")
    return Check("environment", not problems, "; ".join(problems) or summary, facts=facts)


# Carried only for the vocabulary files the family fixtures read (scripts/gpu_wheels.sh): no code of theirs runs
# beyond the package's __init__, so what their own code would need does not matter here.
FILES_ONLY = {"llama-models", "llama_models", "mistral-common", "mistral_common"}


def unmet_requirements(site: Path) -> list[str]:
    """Each requirement of a distribution installed in `site` that the environment does not meet.

    `pip install --no-deps` (the only install possible where nothing can be fetched) checks none of them;
    a wrong version otherwise shows up later as an obscure import or attribute error."""
    import importlib.metadata as metadata

    from packaging.requirements import Requirement

    unmet = []
    for dist in sorted(metadata.distributions(path=[str(site)]), key=lambda d: d.metadata["Name"].lower()):
        if dist.metadata["Name"] in FILES_ONLY:
            continue
        for line in dist.requires or []:
            requirement = Requirement(line)
            if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
                continue  # an optional extra, or another platform's
            try:
                installed = metadata.version(requirement.name)
            except metadata.PackageNotFoundError:
                unmet.append(f"{dist.metadata['Name']} needs {requirement}: not installed")
                continue
            if requirement.specifier and not requirement.specifier.contains(installed, prereleases=True):
                unmet.append(f"{dist.metadata['Name']} needs {requirement}: {installed} installed")
    return unmet


# 2. Inputs


def prepare(work: Path) -> tuple[Path, Path]:
    """A tiny SFT dataset and the packaged TruthfulQA file, written once into `work`."""
    from support.tiny_model import build_sft_dataset

    from spri_sft.truthfulqa_data import write_packaged_copy

    dataset_dir = work / "sft-data" / "hf"
    if not (dataset_dir / "dataset_dict.json").is_file():
        build_sft_dataset(dataset_dir, train_rows=32, validation_rows=4)
    return dataset_dir, write_packaged_copy(work / "truthfulqa")


def family_model(name: str, work: Path) -> Path:
    from support.families import build_family

    model_dir = work / "models" / name
    if not (model_dir / "config.json").is_file():
        build_family(name, model_dir)
    return model_dir


# 3. Training


def train_argv(name: str, variant: str, device: str, model_dir: Path, dataset_dir: Path, output_dir: Path,
               steps: int) -> list[str]:  # fmt: skip
    """The family's own recipe (its QLoRA one for qlora-4bit), and only what a check must override."""
    from support.families import FAMILIES

    family = FAMILIES[name]
    kind = "qlora" if variant.startswith("qlora") else "lora"
    recipe = RECIPES / family.recipe_dir / "sft" / f"{kind}.yaml" if family.recipe_dir else None
    argv = [
        "--config", str(recipe or RECIPES / "smollm2-135m-instruct" / "sft" / "lora.yaml"),
        "--model_name_or_path", str(model_dir),
        "--dataset_path", str(dataset_dir),
        "--output_dir", str(output_dir),
        "--learning_rate", "1e-2",
        "--max_steps", str(steps),
        "--logging_steps", "1",
        "--eval_strategy", "no",
        "--save_strategy", "no",
        "--load_best_model_at_end", "false",
        "--report_to", "none",
        "--dataloader_num_workers", "0",
        "--seed", "0",
    ]  # fmt: skip
    if kind == "qlora" and recipe is None:  # no QLoRA recipe for this family: SmolLM2's with 4-bit loading
        argv += ["--load_in_4bit", "true", "--bnb_4bit_quant_type", "nf4", "--use_bnb_nested_quant", "true"]
    if device == "cuda" and variant != "qlora-4bit":
        argv += ["--use_cpu", "false", "--dtype", "bfloat16", "--bf16", "true"]
    elif device == "cuda":
        # NF4 weights with float32 compute: its adapter is scored on that base in float32 on CUDA and on the CPU,
        # which compare tightly (in bf16 compute the two devices' kernels would differ by far more).
        argv += ["--use_cpu", "false", "--dtype", "float32", "--bf16", "false"]
    else:
        argv += ["--use_cpu", "true", "--dtype", "float32", "--bf16", "false"]
    return argv


def train(name: str, variant: str, device: str, model_dir: Path, dataset_dir: Path, output_dir: Path,
          steps: int) -> Check:  # fmt: skip
    argv = train_argv(name, variant, device, model_dir, dataset_dir, output_dir, steps)
    check = f"{name} train {variant}"
    rc, output, seconds = run_entry(["train", *argv], check)
    if rc != 0:
        return Check(check, False, f"exit {rc}: {last_line(output)}", seconds, {"exit": rc})
    problems, facts = trained_adapter_problems(output_dir, steps)
    if variant.startswith("qlora") and "QLoRA r=" not in output:
        problems.append("the train entry did not report QLoRA (was 4-bit loading skipped?)")
    losses = facts.get("losses") or [float("nan")]
    detail = "; ".join(problems) or f"{len(losses)} steps, loss {losses[0]:.3f} -> {losses[-1]:.3f}, all LoRA B moved"
    return Check(check, not problems, detail, seconds, facts)


def trained_adapter_problems(output_dir: Path, steps: int) -> tuple[list[str], dict]:
    """What is wrong with a finished training's output: its logged losses and its saved adapter."""
    from safetensors.torch import load_file

    problems = []
    state_file = output_dir / "trainer_state.json"
    if not state_file.is_file():
        return [f"no {state_file.name} in {output_dir}"], {}
    history = json.loads(state_file.read_text())["log_history"]
    losses = [entry["loss"] for entry in history if "loss" in entry]
    if len(losses) != steps:
        problems.append(f"{len(losses)} losses logged for {steps} steps")
    if not all(math.isfinite(loss) for loss in losses):
        problems.append(f"non-finite loss: {losses}")
    adapter_file = output_dir / "adapter_model.safetensors"
    if not adapter_file.is_file():
        return problems + [f"no {adapter_file.name} in {output_dir}"], {"losses": losses}
    tensors = load_file(str(adapter_file))
    lora_b = {name: tensor for name, tensor in tensors.items() if "lora_B" in name}
    unmoved = [name for name, tensor in lora_b.items() if not tensor.float().abs().sum() > 0]
    if not lora_b:
        problems.append("the adapter has no LoRA B matrices")
    elif unmoved:
        problems.append(f"{len(unmoved)} of {len(lora_b)} LoRA B matrices still zero (untrained), e.g. {unmoved[0]}")
    return problems, {"losses": losses, "lora_b_matrices": len(lora_b)}


# 4. Scoring


def score(model_dir: Path, adapter: Path | None, device: str, truthfulqa: Path, limit: int, output_dir: Path,
          batch_size: int | None = None) -> dict:  # fmt: skip
    """What `spri-sft evaluate` computes (its function, in this process), in float32: results.json and the
    per-question log-likelihoods, or the failure."""
    from spri_sft.evaluate.config import EvaluateConfig
    from spri_sft.evaluate.run import evaluate_truthfulqa

    config = EvaluateConfig(
        model=str(model_dir), adapter=str(adapter) if adapter else None, truthfulqa_file=str(truthfulqa), limit=limit,
        dtype="float32", device=device, output_dir=str(output_dir), report_to="none",
    )  # fmt: skip
    if batch_size is not None:
        config.batch_size = batch_size
    print(f"\n=== evaluate {output_dir.parent.name}/{output_dir.name} on {device}", flush=True)
    start = time.perf_counter()
    try:
        results = evaluate_truthfulqa(config)
    except Exception as err:  # noqa: BLE001 -- any failure is this check's finding, named in the summary
        return {
            "error": f"evaluate on {device}: {type(err).__name__}: {err}"[-300:],
            "seconds": time.perf_counter() - start,
        }
    rows = [json.loads(line) for line in (output_dir / "per_question.jsonl").read_text().splitlines()]
    return {"results": results, "rows": rows, "seconds": time.perf_counter() - start}


def compare_scores(name: str, variant: str, device: str, model_dir: Path, adapter: Path, truthfulqa: Path, limit: int,
                   work: Path, base: dict) -> Check:  # fmt: skip
    check = f"{name} score {variant}: {device} vs cpu"
    scores = work / "scores" / name
    # On the CPU, the compared side scores one question per pass: different batching, so different sums.
    compared = score(model_dir, adapter, device, truthfulqa, limit, scores / f"{variant}-compared-{device}",
                     batch_size=1 if device == "cpu" else None)  # fmt: skip
    reference = score(model_dir, adapter, "cpu", truthfulqa, limit, scores / f"{variant}-reference-cpu")
    seconds = compared["seconds"] + reference["seconds"]
    errors = [side["error"] for side in (compared, reference, base) if "error" in side]
    if errors:
        return Check(check, False, "; ".join(errors), seconds)
    rtol, mc_atol = LL_RTOL, MC_ATOL
    if variant.startswith("qlora"):
        rtol, mc_atol = (QLORA_LL_RTOL, MC_ATOL) if device == "cpu" else (QLORA_DEVICE_LL_RTOL, QLORA_DEVICE_MC_ATOL)
    agreement = score_agreement(compared["rows"], reference["rows"], rtol, mc_atol)
    moved = max_ll_difference(reference["rows"], base["rows"])
    keys = ("mc1", "mc2", "n", "device", "dtype", "adapter_merged")
    facts = {
        "device": {k: compared["results"].get(k) for k in keys},
        "cpu": {k: reference["results"].get(k) for k in keys},
        "adapter_vs_base_max_ll_difference": moved,
        "tolerance": {"ll_atol": LL_ATOL, "ll_rtol": rtol, "mc_atol": mc_atol},
        **agreement,
    }
    problems = list(agreement["problems"])
    if compared["results"]["n"] != limit or reference["results"]["n"] != limit:
        problems.append(f"scored {compared['results']['n']} and {reference['results']['n']} questions, not {limit}")
    if not moved > 10 * LL_ATOL:
        problems.append(f"the adapter barely moves the log-likelihoods off the base model's (max {moved:.2e})")
    detail = "; ".join(problems[:3]) or (
        f"MC1 {facts['device']['mc1']:.4f}/{facts['cpu']['mc1']:.4f}, MC2 {facts['device']['mc2']:.4f}/"
        f"{facts['cpu']['mc2']:.4f}, max |dll| {agreement['max_ll_difference']:.1e}"
    )
    return Check(check, not problems, detail, seconds, facts)


def score_agreement(
    compared: list[dict], reference: list[dict], ll_rtol: float = LL_RTOL, mc_atol: float = MC_ATOL
) -> dict:
    """How far two scorings of the same questions are apart, and each disagreement beyond the tolerances."""
    problems = []
    max_ll = max_mc2 = 0.0
    for a, b in zip(compared, reference, strict=True):
        for metric in ("mc1", "mc2"):
            for x, y in zip(a[metric]["loglikelihoods"], b[metric]["loglikelihoods"], strict=True):
                max_ll = max(max_ll, abs(x - y))
                if abs(x - y) > LL_ATOL + ll_rtol * abs(y):
                    problems.append(f"question {a['index']} {metric}: log-likelihood {x:.6f} vs {y:.6f}")
        max_mc2 = max(max_mc2, abs(a["mc2_acc"] - b["mc2_acc"]))
        if abs(a["mc2_acc"] - b["mc2_acc"]) > mc_atol:
            problems.append(f"question {a['index']}: MC2 {a['mc2_acc']:.6f} vs {b['mc2_acc']:.6f}")
        top_two = sorted(b["mc1"]["loglikelihoods"], reverse=True)[:2]
        clear_pick = len(top_two) < 2 or top_two[0] - top_two[1] > 2 * (LL_ATOL + ll_rtol * abs(top_two[0]))
        if clear_pick and a["mc1_pred"] != b["mc1_pred"]:
            problems.append(f"question {a['index']}: MC1 picks choice {a['mc1_pred']} vs {b['mc1_pred']}")
    return {"max_ll_difference": max_ll, "max_mc2_difference": max_mc2, "problems": problems}


def max_ll_difference(a_rows: list[dict], b_rows: list[dict]) -> float:
    return max(
        abs(x - y)
        for a, b in zip(a_rows, b_rows, strict=True)
        for metric in ("mc1", "mc2")
        for x, y in zip(a[metric]["loglikelihoods"], b[metric]["loglikelihoods"], strict=True)
    )


# Running the entries, and the summary


def run_entry(argv: list[str], label: str) -> tuple[int, str, float]:
    """`python -m spri_sft.cli ARGV` in its own process, offline; its output is echoed and returned."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    # Nothing can be fetched on the GPU machine: fail at once rather than after network timeouts.
    env |= {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    env |= {"TQDM_DISABLE": "1", "PYTHONUNBUFFERED": "1"}  # bars would fill the log the GPU machine returns
    print(f"\n=== {label}: python -m spri_sft.cli {' '.join(argv)}", flush=True)
    start = time.perf_counter()
    process = subprocess.run(
        [sys.executable, "-m", "spri_sft.cli", *argv], cwd=REPO, env=env, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    seconds = time.perf_counter() - start
    print(process.stdout, end="", flush=True)
    print(f"=== {label}: exit {process.returncode} in {seconds:.1f} s", flush=True)
    return process.returncode, process.stdout, seconds


def last_line(output: str) -> str:
    lines = [line for line in output.splitlines() if line.strip()]
    errors = [line for line in lines if re.search(r"error|Error|Traceback", line)]
    return (errors or lines or ["(no output)"])[-1][-300:]


def finish(checks: list[Check], args, start: float) -> int:
    wall = time.perf_counter() - start
    ok = all(check.ok for check in checks)
    width = max(len(check.name) for check in checks)
    print("\n=== GPU check summary" + (" (--cpu)" if args.cpu else ""))
    for check in checks:
        print(f"{'ok  ' if check.ok else 'FAIL'}  {check.name:<{width}}  {check.seconds:6.1f} s  {check.detail}")
    print(f"{'PASSED' if ok else 'FAILED'}: {sum(c.ok for c in checks)} of {len(checks)} checks in {wall:.0f} s")
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        summary = {"passed": ok, "mode": "cpu" if args.cpu else "cuda", "wall_seconds": round(wall, 1),
                   "checks": [asdict(check) for check in checks]}  # fmt: skip
        (args.out / "gpu_check.json").write_text(json.dumps(summary, indent=2) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
