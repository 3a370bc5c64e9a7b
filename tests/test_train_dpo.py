"""LoRA DPO with the `spri-sft dpo` entry on a tiny real model (CPU), fresh or continuing an SFT adapter."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import CPU_STEP_FLAGS, build_sft_dataset, tiny_lora_argv, train_and_check_only_lora_moved

from spri_sft.cli import main as spri_sft
from spri_sft.errors import UserError
from spri_sft.train import dpo, sft

RECIPE = Path(__file__).resolve().parents[1] / "recipes/smollm2-135m-instruct/dpo/lora.yaml"

PAIRS = [
    ("What is rain?", "Water falling from clouds.", "Rain rain rain."),
    ("Name a colour.", "Blue.", "Colour colour."),
    ("Is ice cold?", "Yes, it is.", "Maybe hot."),
    ("Count to three.", "One, two, three.", "Three, one."),
]


def build_preference_dataset(directory: Path, train_rows: int = 8, validation_rows: int = 2) -> Path:
    """A dataset shaped as `spri-sft format --preference true` writes it (conversational preference rows)."""
    from datasets import Dataset, DatasetDict

    def rows(n):
        return [
            {
                "prompt": [{"role": "user", "content": q}],
                "chosen": [{"role": "assistant", "content": good}],
                "rejected": [{"role": "assistant", "content": bad}],
                "chosen_score": 4.0,
                "rejected_score": 2.0,
                "mode": "spri",
                "record_id": f"rec{i:03d}",
            }
            for i, (q, good, bad) in enumerate(PAIRS[i % len(PAIRS)] for i in range(n))
        ]

    DatasetDict(
        {"train": Dataset.from_list(rows(train_rows)), "validation": Dataset.from_list(rows(validation_rows))}
    ).save_to_disk(directory)
    return directory


@pytest.fixture(scope="module")
def preference_dataset(tmp_path_factory):
    return build_preference_dataset(tmp_path_factory.mktemp("preference") / "hf")


@pytest.fixture(scope="module")
def sft_adapter(tiny_model_dir, tmp_path_factory):
    """A LoRA adapter trained a few steps by `spri-sft train`, as the pipeline's SFT stage leaves one."""
    output_dir = tmp_path_factory.mktemp("sft-adapter")
    dataset = build_sft_dataset(tmp_path_factory.mktemp("sft-data") / "hf")
    argv = tiny_lora_argv(tiny_model_dir, dataset, output_dir, "--learning_rate", "1e-2", "--lora_r", "4")
    sft.main(*sft.make_parser().parse_args_and_config(args=argv))
    return output_dir


def dpo_argv(model_dir: Path, dataset: Path, output_dir: Path, *overrides: str) -> list[str]:
    """`spri-sft dpo` flags for 2 CPU LoRA steps on the tiny model; later flags override earlier ones."""
    return [
        "--model_name_or_path", str(model_dir),
        "--dataset_path", str(dataset),
        "--output_dir", str(output_dir),
        "--use_peft", "--lora_r", "8", "--lora_alpha", "16", "--lora_target_modules", "q_proj", "v_proj",
        "--learning_rate", "1e-2",
        "--per_device_train_batch_size", "4",
        "--max_steps", "2",
        *CPU_STEP_FLAGS,
        *overrides,
    ]  # fmt: skip


def parse(*argv: str):
    return dpo.make_parser().parse_args_and_config(args=list(argv))


def test_two_dpo_steps_through_the_command_line_log_the_dpo_loss_and_save_an_adapter(
    tiny_model_dir, preference_dataset, tmp_path, capsys
):
    argv = dpo_argv(
        tiny_model_dir, preference_dataset, tmp_path, "--eval_strategy", "steps", "--eval_steps", "2",
        "--per_device_train_batch_size", "2", "--effective_batch_size", "4",
    )  # fmt: skip

    assert spri_sft(["dpo", *argv]) == 0

    history = json.loads((tmp_path / "trainer_state.json").read_text())["log_history"]
    steps = [entry for entry in history if "loss" in entry]
    assert [entry["step"] for entry in steps] == [1, 2]
    assert all("rewards/margins" in entry for entry in steps)
    assert any("eval_loss" in entry for entry in history)
    assert (tmp_path / "adapter_model.safetensors").is_file()
    effective = json.loads((tmp_path / "effective_config.json").read_text())
    assert effective["DPOConfig"]["beta"] == 0.1
    assert effective["reference"] == "the base model (adapter disabled)"
    assert effective["DPOConfig"]["gradient_accumulation_steps"] == 2 and effective["effective_batch"]["size"] == 4
    assert "effective batch 4 = 2 per device × 2 accumulation × 1 process" in capsys.readouterr().out


def test_dpo_steps_change_every_lora_parameter_and_no_frozen_one(tiny_model_dir, preference_dataset, tmp_path):
    train_and_check_only_lora_moved(dpo.build_trainer(*parse(*dpo_argv(tiny_model_dir, preference_dataset, tmp_path))))


def test_continuing_an_sft_adapter_trains_it_against_a_frozen_copy_of_it(
    tiny_model_dir, preference_dataset, sft_adapter, tmp_path
):
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    argv = dpo_argv(tiny_model_dir, preference_dataset, tmp_path, "--sft_adapter", str(sft_adapter))
    trainer = dpo.build_trainer(*parse(*argv))
    model = trainer.model
    assert set(model.peft_config) == {"default", "ref"}
    assert model.peft_config["default"].r == 4  # the SFT adapter's shape, not this run's lora_r 8
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".default." in name for name in trainable)
    # The reference starts as the SFT adapter: its copy equals the adapter being trained.
    assert all(torch.equal(before[name], before[name.replace(".default.", ".ref.")]) for name in trainable)

    trainer.train()

    for name, param in model.named_parameters():
        changed = not torch.equal(before[name], param)
        assert changed == (name in trainable), f"{name} {'changed' if changed else 'did not change'}"

    dpo.main(*parse(*argv))  # a second run, as the command runs it: saved

    assert not (tmp_path / "ref").exists()  # the reference is the SFT adapter itself, not saved twice
    revisions = json.loads((tmp_path / "effective_config.json").read_text())["revisions"]
    # The tokenizer is the SFT adapter's (saved with its training template): a local folder, recorded by its path.
    assert revisions["tokenizer"]["local_directory"] == str(sft_adapter.resolve())
    assert revisions["model"]["local_directory"] == str(tiny_model_dir.resolve())
    sft_weights, dpo_weights = (
        load_file(sft_adapter / "adapter_model.safetensors"),
        load_file(tmp_path / "adapter_model.safetensors"),
    )
    assert sft_weights.keys() == dpo_weights.keys()
    assert any(not torch.equal(sft_weights[key], dpo_weights[key]) for key in sft_weights)
    # The DPO adapter applies to the base model like any `spri-sft train` adapter.
    reloaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), tmp_path)
    assert reloaded.peft_config["default"].r == 4


def test_an_sft_dataset_is_refused_with_where_the_preference_data_is(tiny_model_dir, tmp_path):
    sft_data = build_sft_dataset(tmp_path / "sft" / "hf")
    with pytest.raises(UserError, match=r"no prompt, chosen, rejected column.*preference/"):
        dpo.build_trainer(*parse(*dpo_argv(tiny_model_dir, sft_data, tmp_path / "out")))


def test_an_sft_adapter_needs_use_peft(tiny_model_dir, preference_dataset, sft_adapter, tmp_path):
    argv = dpo_argv(
        tiny_model_dir, preference_dataset, tmp_path, "--sft_adapter", str(sft_adapter), "--use_peft", "false"
    )
    with pytest.raises(UserError, match="use_peft"):
        dpo.build_trainer(*parse(*argv))


def test_an_unknown_recipe_field_names_the_dpo_command(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("model_name_or_path: some/model\nbetaa: 0.2\n")
    with pytest.raises(UserError, match=r"unknown field 'betaa' \(did you mean 'beta'\?\)"):
        dpo.cli(["--config", str(recipe)])


def test_the_fields_both_jobs_take_are_declared_once_in_the_shared_script_arguments():
    from dataclasses import fields

    from spri_sft.train.job import JobScriptArguments

    def declared(cls) -> dict:
        return {f.name: f for f in fields(cls)}

    sft_fields, dpo_fields = declared(sft.SFTScriptArguments), declared(dpo.DPOScriptArguments)
    assert set(sft_fields) & set(dpo_fields) == set(declared(JobScriptArguments))
    # Not redeclared by either job (a redeclared field would be a second copy of its help and default).
    assert all(sft_fields[name] is dpo_fields[name] for name in declared(JobScriptArguments))


def test_the_recipe_parses_into_a_lora_dpo_job_on_the_preference_data(monkeypatch):
    for variable in ("WANDB_PROJECT", "WANDB_RUN_GROUP"):
        # The recipe's env: block sets them through os.environ; setting them here first makes
        # monkeypatch restore them (it records nothing to undo for an unset variable it deletes).
        monkeypatch.setenv(variable, "")
        monkeypatch.delenv(variable)
    script_args, training_args, model_args = parse("--config", str(RECIPE))
    assert script_args.dataset_path.endswith("/preference") and script_args.sft_adapter is None
    assert model_args.use_peft and training_args.beta == 0.1 and training_args.loss_type == ["sigmoid"]
    assert not training_args.gradient_checkpointing  # DPOConfig's default is on


@pytest.mark.slow
def test_smollm2_two_dpo_steps_with_the_recipe(tmp_path):
    dataset = build_preference_dataset(tmp_path / "preference" / "hf", train_rows=4, validation_rows=2)
    argv = [
        "--config", str(RECIPE), "--dataset_path", str(dataset), "--output_dir", str(tmp_path / "out"),
        "--max_steps", "2", "--eval_steps", "2", "--save_steps", "2", "--report_to", "none",
    ]  # fmt: skip

    assert spri_sft(["dpo", *argv]) == 0

    history = json.loads((tmp_path / "out" / "trainer_state.json").read_text())["log_history"]
    assert [entry["step"] for entry in history if "loss" in entry] == [1, 2]
    assert any("eval_rewards/margins" in entry for entry in history)
