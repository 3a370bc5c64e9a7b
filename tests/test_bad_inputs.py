"""Every bad input a new user is likely to give, run through the real `spri-sft` command line.

Each case writes its files, runs `python -m spri_sft.cli ...` and expects either exit code 2
with exactly one line on stderr (`spri-sft: error: ...`, naming the file and line, or the
field, to fix) or, for inputs that only look odd, a run that succeeds. The errors all come
before any model is loaded or called.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conftest import build_sft_dataset

from spri_sft.train.job import has_accelerator

HUB_ROW = {"question": "Is the sky green?", "mc1_targets": {"choices": ["No.", "Yes."], "labels": [1, 0]},
           "mc2_targets": {"choices": ["No.", "Yes."], "labels": [1, 0]}}  # fmt: skip


@dataclass
class Case:
    """`files` are written into the case's directory, then `argv` runs there ({model} is the tiny model)."""

    argv: list[str]
    files: dict[str, str | bytes | Callable[[Path], object]] = field(default_factory=dict)
    error: str | None = None  # the one stderr line must contain it; None: the run must succeed
    check: Callable[[Path, str], None] | None = None  # for a run that succeeds: its outputs and stdout


TRAIN_RECIPE = "model_name_or_path: {model}\ndataset_path: format/hf\noutput_dir: out\nreport_to: none\n"
TRAIN_FLAGS = ["--max_steps", "1", "--use_peft", "true", "--lora_target_modules", "q_proj", "v_proj"]


def cpu_chosen_and_recorded(directory: Path, stdout: str) -> None:
    assert "[spri-sft] no GPU: training on the CPU (--use_cpu true --bf16 false)" in stdout
    effective = json.loads((directory / "out" / "effective_config.json").read_text())["SFTConfig"]
    assert effective["use_cpu"] is True and effective["bf16"] is False


def the_bom_prompt_generated(directory: Path, stdout: str) -> None:
    records = [json.loads(line) for line in (directory / "out" / "records.jsonl").read_text().splitlines()]
    assert [r["prompt"] for r in records] == ["What is rain?"]


def sft_dataset(directory: Path) -> None:
    build_sft_dataset(directory / "format" / "hf")


def train_only_dataset(directory: Path) -> None:
    from datasets import Dataset, DatasetDict

    rows = [{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}]
    DatasetDict({"train": Dataset.from_list(rows * 4)}).save_to_disk(directory / "format" / "hf")


CASES = {
    # spri-sft train
    "train-malformed-yaml": Case(
        ["train", "--config", "recipe.yaml"],
        {"recipe.yaml": "model_name_or_path: x\nlora_target_modules: [q_proj\n"},
        "recipe.yaml:3: invalid YAML",
    ),
    "train-empty-yaml": Case(
        ["train", "--config", "recipe.yaml"], {"recipe.yaml": "# nothing yet\n"}, "recipe.yaml: the recipe is empty"
    ),
    "train-yaml-not-a-mapping": Case(
        ["train", "--config", "recipe.yaml"],
        {"recipe.yaml": "- model_name_or_path\n"},
        "recipe.yaml: expected a mapping of `spri-sft train` fields, got a YAML list",
    ),
    "train-recipe-not-found": Case(["train", "--config", "nope.yaml"], {}, "nope.yaml: config file not found"),
    "train-unknown-key-on-cpu": Case(
        ["train", "--config", "recipe.yaml"],
        {"recipe.yaml": TRAIN_RECIPE + "learning_rat: 1.0e-4\n"},
        "recipe.yaml: unknown field 'learning_rat' (did you mean 'learning_rate'?)",
    ),
    "train-unknown-flag": Case(
        ["train", "--config", "recipe.yaml", "--max_step", "3"],
        {"recipe.yaml": TRAIN_RECIPE},
        "--max_step: unknown field 'max_step' (did you mean 'max_steps'?)",
    ),
    "train-bad-value": Case(
        ["train", "--config", "recipe.yaml", "--max_steps", "ten"],
        {"recipe.yaml": TRAIN_RECIPE},
        "argument --max_steps/--max-steps: invalid int value: 'ten'",
    ),
    "train-missing-validation-split": Case(
        ["train", "--config", "recipe.yaml", *TRAIN_FLAGS, "--eval_strategy", "steps", "--eval_steps", "1"],
        {"recipe.yaml": TRAIN_RECIPE, "format": train_only_dataset},
        "dataset_path format/hf: no split 'validation' (splits: train); set dataset_test_split to one of them",
    ),
    "train-malformed-truthfulqa-file": Case(
        ["train", "--config", "recipe.yaml", *TRAIN_FLAGS, "--truthfulqa_file", "mc.jsonl"],
        {"recipe.yaml": TRAIN_RECIPE, "format": sft_dataset, "mc.jsonl": '{"question": "torn",\n'},
        "mc.jsonl:1: malformed JSON line",
    ),
    "train-format-dir-without-hf": Case(
        ["train", "--config", "recipe.yaml", *TRAIN_FLAGS, "--dataset_path", "format", "--use_cpu", "true"],
        {"recipe.yaml": TRAIN_RECIPE, "format": sft_dataset},
    ),
    "train-no-gpu-picks-the-cpu": Case(
        ["train", "--config", "recipe.yaml", *TRAIN_FLAGS],
        {"recipe.yaml": TRAIN_RECIPE, "format": sft_dataset},
        check=cpu_chosen_and_recorded,
    ),
    # spri-sft evaluate
    "evaluate-malformed-jsonl": Case(
        ["evaluate", "--truthfulqa_file", "mc.jsonl", "--model", "{model}"],
        {"mc.jsonl": json.dumps(HUB_ROW) + '\n{"question": "torn",\n'},
        "mc.jsonl:2: malformed JSON line",
    ),
    "evaluate-malformed-json": Case(
        ["evaluate", "--truthfulqa_file", "mc_task.json", "--model", "{model}"],
        {"mc_task.json": '[\n  {"question": "a",\n   "mc1_targets": {"No.": 1,}}\n]\n'},
        "mc_task.json:3: malformed JSON",
    ),
    "evaluate-row-without-targets": Case(
        ["evaluate", "--truthfulqa_file", "mc.jsonl", "--model", "{model}"],
        {"mc.jsonl": json.dumps(HUB_ROW) + "\n" + json.dumps({"question": "no targets"}) + "\n"},
        "mc.jsonl:2: expected question, mc1_targets and mc2_targets",
    ),
    "evaluate-limit-0": Case(
        ["evaluate", "--truthfulqa_file", "mc.jsonl", "--limit", "0"],
        {"mc.jsonl": json.dumps(HUB_ROW) + "\n"},
        "--limit: must be >= 1, got 0",
    ),
    # spri-sft generate
    "generate-threshold-9": Case(
        ["generate", "--loop.threshold", "9"], {}, "--loop.threshold: must be >= 1 and <= 5, got 9"
    ),
    "generate-max-rounds-0-in-yaml": Case(
        ["generate", "--config", "gen.yaml"],
        {"gen.yaml": "loop:\n  max_rounds: 0\n"},
        "gen.yaml: field 'loop.max_rounds': must be >= 1, got 0",
    ),
    "generate-limit-minus-1": Case(["generate", "--prompts.limit", "-1"], {}, "--prompts.limit: must be >= 0, got -1"),
    "generate-csv-missing-column": Case(
        ["generate", "--prompts.path", "p.csv"],
        {"p.csv": "question\nWhat is rain?\n"},
        "p.csv:2: missing field 'prompt' (fields: question)",
    ),
    "generate-csv-with-bom": Case(
        [
            "generate",
            "--prompts.path",
            "p.csv",
            "--mode",
            "direct",
            "--base.model",
            "{model}",
            "--critic.model",
            "{model}",
            "--base.max_new_tokens",
            "4",
            "--output_dir",
            "out",
            "--progress",
            "false",
        ],
        {"p.csv": "\ufeffprompt,source\nWhat is rain?,sheet\n".encode("utf-8")},
        check=the_bom_prompt_generated,
    ),  # fmt: skip
    "generate-malformed-jsonl": Case(
        ["generate", "--prompts.path", "p.jsonl"],
        {"p.jsonl": '{"prompt": "ok"}\n{"prompt": \n'},
        "p.jsonl:2: malformed JSON line",
    ),
    # spri-sft format and run
    "format-validation-fraction-1": Case(
        ["format", "--validation_fraction", "1"], {}, "--validation_fraction: must be >= 0 and < 1, got 1.0"
    ),
    "run-threshold-in-the-recipe": Case(
        ["run", "recipe.yaml"],
        {"recipe.yaml": "generate:\n  loop:\n    threshold: 6\n"},
        "recipe.yaml: field 'generate.loop.threshold': must be >= 1 and <= 5, got 6",
    ),
}


def run_cli(argv: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "WANDB_MODE": "disabled"}
    return subprocess.run(
        [sys.executable, "-m", "spri_sft.cli", *argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


@pytest.mark.parametrize("name", list(CASES))
def test_a_bad_input_is_one_line_naming_what_to_fix(name, tiny_model_dir, tmp_path):
    case = CASES[name]
    if name == "train-no-gpu-picks-the-cpu" and has_accelerator():
        pytest.skip("this machine has an accelerator")
    for filename, content in case.files.items():
        if callable(content):
            content(tmp_path)
        elif isinstance(content, bytes):
            (tmp_path / filename).write_bytes(content)
        else:
            (tmp_path / filename).write_text(content.replace("{model}", str(tiny_model_dir)))
    result = run_cli([arg.replace("{model}", str(tiny_model_dir)) for arg in case.argv], tmp_path)
    if case.error is None:
        assert result.returncode == 0, result.stderr[-3000:]
        if case.check:
            case.check(tmp_path, result.stdout)
        return
    assert result.returncode == 2, result.stderr[-3000:]
    assert result.stderr.splitlines() == [result.stderr.strip()], result.stderr  # exactly one line
    assert result.stderr.startswith("spri-sft: error: ") and case.error in result.stderr, result.stderr
