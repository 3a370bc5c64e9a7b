"""The GPU check: QLoRA 4-bit and bf16 LoRA steps through `spri-sft train`, then TruthfulQA scored on CUDA
and on the CPU with the same adapters, which must agree.

    bash scripts/gpu_check.sh          # on a CUDA machine (installs the wheels scripts/gpu_wheels.sh carried)
    bash scripts/gpu_check.sh --cpu    # the same steps on the CPU, where QLoRA must be refused

Everything runs on a tiny Llama built from a config (spri_sft.testing.tiny_model), with no download,
through the real command-line entries (`python -m spri_sft.cli train|evaluate`), each in its own process
as a user would run it. Top to bottom:

1. environment: versions, the GPU, and every requirement of the carried wheels met by what is installed;
2. the tiny model, a tiny `messages` dataset (save_to_disk) and the packaged TruthfulQA copy;
3. train `qlora-4bit` (load_in_4bit, nf4, nested quantization, bf16 compute) and `lora-bf16` (bf16
   weights, bf16 mixed precision): every planned step logs a finite loss and every LoRA B matrix
   (initialised to zero) has moved. With --cpu, QLoRA must instead stop with the train entry's one-line
   refusal, and LoRA trains in float32 instead (`lora-fp32`, the train entry's CPU default);
4. score each adapter on TruthfulQA (`--limit` questions) in float32 on the device and on the CPU, and
   compare: every summed log-likelihood within LL_ATOL + LL_RTOL * |ll|, MC2 per question within MC_ATOL,
   MC1's pick the same wherever its top two choices are further apart than the log-likelihood tolerance;
   the adapter must also move the log-likelihoods off the base model's (else both sides may ignore it).
   With --cpu, "the device" is the CPU scoring one question per pass (batch_size 1) against the default
   batching, so the comparison still compares two different computations.

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

# float32 on two devices: the same sums in a different order (cuBLAS/SDPA vs CPU kernels). A summed
# log-likelihood here is tens of nats over up to ~60 tokens; float32 rounding moves it by ~1e-5.
LL_ATOL = 1e-3
LL_RTOL = 1e-5
MC_ATOL = 1e-3

QLORA_REFUSAL = "QLoRA (load_in_4bit/load_in_8bit) needs a CUDA GPU"


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    seconds: float = 0.0
    facts: dict = field(default_factory=dict)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cpu", action="store_true", help="run on the CPU: QLoRA must be refused, scores compared CPU to CPU")
    parser.add_argument("--steps", type=int, default=5, help="optimizer steps per training")
    parser.add_argument("--limit", type=int, default=50, help="TruthfulQA questions scored")
    parser.add_argument("--work", type=Path, help="working folder (model, data, adapters); default a temporary one")
    parser.add_argument("--out", type=Path, default=Path(os.environ["OUT"]) if os.environ.get("OUT") else None,
                        help="where gpu_check.json goes (default $OUT; unset: nowhere)")  # fmt: skip
    parser.add_argument("--site", type=Path, help="folder the carried wheels were installed into (their requirements are checked)")
    args = parser.parse_args(argv)

    start = time.perf_counter()
    work = args.work or Path(tempfile.mkdtemp(prefix="gpu-check-"))
    work.mkdir(parents=True, exist_ok=True)
    device = "cpu" if args.cpu else "cuda"
    checks: list[Check] = []

    checks.append(environment(device, args.site))
    if not checks[-1].ok and device == "cuda" and "no CUDA device" in checks[-1].detail:
        return finish(checks, args, start)  # nothing below can run

    model_dir, dataset_dir, truthfulqa = prepare(work)
    adapters = {}
    # bf16 is a GPU check; on the CPU, LoRA trains in float32, the train entry's CPU default.
    for variant in ("qlora-4bit", "lora-bf16" if device == "cuda" else "lora-fp32"):
        check = train(variant, device, model_dir, dataset_dir, work / "adapters" / variant, args.steps)
        checks.append(check)
        if check.ok and check.facts.get("trained"):
            adapters[variant] = work / "adapters" / variant

    base = score(model_dir, None, "cpu", truthfulqa, args.limit, work / "scores" / "base-cpu")
    for variant, adapter in adapters.items():
        checks.append(compare_scores(variant, device, model_dir, adapter, truthfulqa, args.limit, work, base))
    return finish(checks, args, start)


# 1. Environment


def environment(device: str, site: Path | None) -> Check:
    import importlib.metadata as metadata

    import torch

    names = ["torch", "transformers", "trl", "peft", "datasets", "accelerate", "huggingface-hub", "pyarrow", "fsspec"]
    if device == "cuda":
        names.append("bitsandbytes")
    versions = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    facts = {"python": sys.version.split()[0], "versions": versions, "device": device}
    problems = [f"{name} not installed" for name, version in versions.items() if version is None]
    if device == "cuda":
        if not torch.cuda.is_available():
            return Check("environment", False, "no CUDA device (torch.cuda.is_available() is False); use --cpu", facts=facts)
        facts["gpu"] = torch.cuda.get_device_name(0)
        facts["cuda"] = torch.version.cuda
    if site is not None:
        problems += unmet_requirements(site)
    facts["problems"] = problems
    summary = ", ".join(f"{n} {v}" for n, v in versions.items() if v) + (f"; {facts['gpu']}" if "gpu" in facts else "")
    return Check("environment", not problems, "; ".join(problems) or summary, facts=facts)


def unmet_requirements(site: Path) -> list[str]:
    """Each requirement of a distribution installed in `site` that the environment does not meet.

    `pip install --no-deps` (the only install possible where nothing can be fetched) checks none of them;
    a wrong version otherwise shows up later as an obscure import or attribute error."""
    import importlib.metadata as metadata

    from packaging.requirements import Requirement

    unmet = []
    for dist in sorted(metadata.distributions(path=[str(site)]), key=lambda d: d.metadata["Name"].lower()):
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


def prepare(work: Path) -> tuple[Path, Path, Path]:
    """The tiny model, a tiny SFT dataset and the packaged TruthfulQA file, written once into `work`."""
    from spri_sft.evaluate.packaged_truthfulqa import write_packaged_copy
    from spri_sft.testing.tiny_model import build_sft_dataset, build_tiny_model

    model_dir = work / "tiny-llama"
    if not (model_dir / "config.json").is_file():
        build_tiny_model(model_dir)
    dataset_dir = work / "sft-data" / "hf"
    if not (dataset_dir / "dataset_dict.json").is_file():
        build_sft_dataset(dataset_dir, train_rows=32, validation_rows=4)
    return model_dir, dataset_dir, write_packaged_copy(work / "truthfulqa")


# 3. Training


def train_argv(variant: str, device: str, model_dir: Path, dataset_dir: Path, output_dir: Path, steps: int) -> list[str]:
    argv = [
        "--model_name_or_path", str(model_dir),
        "--dataset_path", str(dataset_dir),
        "--output_dir", str(output_dir),
        "--use_peft", "--lora_r", "8", "--lora_alpha", "16", "--lora_target_modules", "q_proj", "v_proj",
        "--assistant_only_loss", "true",
        "--per_device_train_batch_size", "8",
        "--learning_rate", "1e-2",
        "--max_steps", str(steps),
        "--logging_steps", "1",
        "--eval_strategy", "no",
        "--save_strategy", "no",
        "--report_to", "none",
        "--dataloader_num_workers", "0",
        "--seed", "0",
    ]  # fmt: skip
    if variant == "qlora-4bit":
        argv += ["--load_in_4bit", "true", "--bnb_4bit_quant_type", "nf4", "--use_bnb_nested_quant", "true"]
    if variant in ("qlora-4bit", "lora-bf16"):  # on the CPU too for QLoRA: the refusal must come first
        argv += ["--dtype", "bfloat16", "--bf16", "true"]
    return argv


def train(variant: str, device: str, model_dir: Path, dataset_dir: Path, output_dir: Path, steps: int) -> Check:
    argv = train_argv(variant, device, model_dir, dataset_dir, output_dir, steps)
    rc, output, seconds = run_entry(["train", *argv], f"train {variant}")
    name = f"train {variant}"
    if variant == "qlora-4bit" and device == "cpu":
        refused = rc == 2 and QLORA_REFUSAL in output
        detail = "refused on the CPU, as it must be" if refused else f"expected the QLoRA refusal (exit 2), got exit {rc}"
        return Check(name, refused, detail, seconds, {"trained": False, "exit": rc})
    if rc != 0:
        return Check(name, False, f"exit {rc}: {last_line(output)}", seconds, {"exit": rc})
    problems, facts = trained_adapter_problems(output_dir, steps)
    if variant == "qlora-4bit" and "QLoRA r=8" not in output:
        problems.append("the train entry did not report QLoRA (was 4-bit loading skipped?)")
    facts["trained"] = not problems
    losses = facts.get("losses") or [float("nan")]
    detail = "; ".join(problems) or f"{len(losses)} steps, loss {losses[0]:.3f} -> {losses[-1]:.3f}, all LoRA B moved"
    return Check(name, not problems, detail, seconds, facts)


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
    """`spri-sft evaluate` in float32; its results.json and per-question log-likelihoods (or its failure)."""
    argv = [
        "evaluate", "--model", str(model_dir), "--truthfulqa_file", str(truthfulqa), "--limit", str(limit),
        "--dtype", "float32", "--device", device, "--output_dir", str(output_dir),
    ]  # fmt: skip
    if adapter is not None:
        argv += ["--adapter", str(adapter)]
    if batch_size is not None:
        argv += ["--batch_size", str(batch_size)]
    rc, output, seconds = run_entry(argv, f"evaluate {output_dir.name}")
    if rc != 0:
        return {"error": f"evaluate on {device} exit {rc}: {last_line(output)}", "seconds": seconds}
    results = json.loads((output_dir / "results.json").read_text())
    rows = [json.loads(line) for line in (output_dir / "per_question.jsonl").read_text().splitlines()]
    return {"results": results, "rows": rows, "seconds": seconds}


def compare_scores(variant: str, device: str, model_dir: Path, adapter: Path, truthfulqa: Path, limit: int,
                   work: Path, base: dict) -> Check:  # fmt: skip
    name = f"score {variant}: {device} vs cpu"
    # On the CPU, the compared side scores one question per pass: different batching, so different sums.
    compared = score(model_dir, adapter, device, truthfulqa, limit, work / "scores" / f"{variant}-compared-{device}",
                     batch_size=1 if device == "cpu" else None)  # fmt: skip
    reference = score(model_dir, adapter, "cpu", truthfulqa, limit, work / "scores" / f"{variant}-reference-cpu")
    seconds = compared["seconds"] + reference["seconds"]
    errors = [side["error"] for side in (compared, reference, base) if "error" in side]
    if errors:
        return Check(name, False, "; ".join(errors), seconds)
    agreement = score_agreement(compared["rows"], reference["rows"])
    moved = max_ll_difference(reference["rows"], base["rows"])
    facts = {
        "device": {k: compared["results"][k] for k in ("mc1", "mc2", "n", "device", "dtype", "adapter_merged")},
        "cpu": {k: reference["results"][k] for k in ("mc1", "mc2", "n", "device", "dtype", "adapter_merged")},
        "adapter_vs_base_max_ll_difference": moved,
        "tolerance": {"ll_atol": LL_ATOL, "ll_rtol": LL_RTOL, "mc_atol": MC_ATOL},
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
    return Check(name, not problems, detail, seconds, facts)


def score_agreement(compared: list[dict], reference: list[dict]) -> dict:
    """How far two scorings of the same questions are apart, and each disagreement beyond the tolerances."""
    problems = []
    max_ll = max_mc2 = 0.0
    for a, b in zip(compared, reference, strict=True):
        for metric in ("mc1", "mc2"):
            for x, y in zip(a[metric]["loglikelihoods"], b[metric]["loglikelihoods"], strict=True):
                max_ll = max(max_ll, abs(x - y))
                if abs(x - y) > LL_ATOL + LL_RTOL * abs(y):
                    problems.append(f"question {a['index']} {metric}: log-likelihood {x:.6f} vs {y:.6f}")
        max_mc2 = max(max_mc2, abs(a["mc2_acc"] - b["mc2_acc"]))
        if abs(a["mc2_acc"] - b["mc2_acc"]) > MC_ATOL:
            problems.append(f"question {a['index']}: MC2 {a['mc2_acc']:.6f} vs {b['mc2_acc']:.6f}")
        top_two = sorted(b["mc1"]["loglikelihoods"], reverse=True)[:2]
        clear_pick = len(top_two) < 2 or top_two[0] - top_two[1] > 2 * (LL_ATOL + LL_RTOL * abs(top_two[0]))
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
