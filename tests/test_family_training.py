"""Every family through the real recipes: the template check, LoRA and QLoRA SFT, and DPO, two steps each.

One row per (family, stage). The recipes are the ones users run (recipes/<student>/sft/{lora,qlora}.yaml; Qwen2.5,
which has none, takes SmolLM2's); only the model, data, output, steps and, on this CPU, precision are overridden.
QLoRA runs for real: bitsandbytes quantizes the fixtures' hidden size 64 to 4-bit NF4 on the CPU. Each SFT row also
checks the tokens training sees: exactly one BOS first where the tokenizer puts one in front of text (evaluation
does), the end-of-turn token inside the loss, the prompt outside it.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from support.families import FAMILIES

ROOT = Path(__file__).resolve().parents[1]
RESPONSE = "Water falling from clouds."
WANDB_VARIABLES = ("WANDB_PROJECT", "WANDB_RUN_GROUP")


def recipe(name: str, kind: str) -> Path:
    family = FAMILIES[name]
    if not family.recipe_dir:
        return ROOT / "recipes/smollm2-135m-instruct/sft/lora.yaml"
    return ROOT / "recipes" / family.recipe_dir / "sft" / f"{kind}.yaml"


@pytest.fixture
def restore_wandb_variables(monkeypatch):
    for variable in WANDB_VARIABLES:  # set by the recipes' env: block; monkeypatch then restores them
        monkeypatch.setenv(variable, os.environ.get(variable, ""))


def build_sft(recipe_path: Path, model: Path, dataset: Path, output: Path, *flags: str):
    from spri_sft.train import sft

    argv = [
        "--config", str(recipe_path), "--model_name_or_path", str(model), "--dataset_path", str(dataset),
        "--output_dir", str(output), "--max_steps", "2", "--use_cpu", "true", "--bf16", "false", "--dtype", "float32",
        "--report_to", "none", "--eval_strategy", "no", "--save_strategy", "no", "--load_best_model_at_end", "false",
        "--gradient_checkpointing", "false", *flags,
    ]  # fmt: skip
    return sft.make_parser().parse_args_and_config(args=argv)


def trained_tokens(row: dict) -> list[int]:
    return [token for token, label in zip(row["input_ids"], row["labels"]) if label != -100]


@pytest.mark.parametrize("name", sorted(FAMILIES))
@pytest.mark.parametrize("kind", ["lora", "qlora"])
def test_sft_recipe_trains_two_steps_on_the_family_and_its_tokens(name, kind, family_dir, tmp_path,
                                                                 restore_wandb_variables):  # fmt: skip
    from conftest import build_sft_dataset
    from transformers import AutoTokenizer

    from spri_sft.train import sft

    family = FAMILIES[name]
    if kind == "qlora" and not family.recipe_dir:
        pytest.skip("the project has no QLoRA recipe for this family")
    model = family_dir(name)
    script_args, training_args, model_args = build_sft(
        recipe(name, kind), model, build_sft_dataset(tmp_path / "data"), tmp_path / "out"
    )
    assert model_args.load_in_4bit == (kind == "qlora")
    trainer = sft.build_trainer(script_args, training_args, model_args)

    tokenizer = AutoTokenizer.from_pretrained(model)
    end_of_turn = tokenizer.convert_tokens_to_ids(family.end_of_turn)
    row = trainer.train_dataset[0]
    ids = row["input_ids"]
    if family.bos is not None:
        bos = tokenizer.convert_tokens_to_ids(family.bos)
        assert ids[0] == bos and bos not in ids[1:], "exactly one BOS, first"
    trained = trained_tokens(row)
    assert end_of_turn in trained, "the end-of-turn token is trained"
    # The loss starts at the response (TRL's Qwen2.5 training template also trains the newline before it).
    assert tokenizer.decode(trained).lstrip("\n").startswith(RESPONSE), "the prompt is outside the loss"
    assert trainer.processing_class.eos_token_id == end_of_turn

    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    trainer.train()
    assert trainer.state.global_step == 2
    assert any(not p.detach().equal(before[n]) for n, p in trainer.model.named_parameters() if n in before)
    if kind == "qlora":
        assert type(trainer.model.base_model.model.model.layers[0].self_attn.q_proj.base_layer).__name__ == "Linear4bit"


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_check_template_passes_with_the_recipe_template_and_eos(name, family_dir, capsys):
    from spri_sft.cli import main

    family = FAMILIES[name]
    args = ["--eos-token", family.end_of_turn] + ([] if family.instruct else ["--template", "alpaca"])
    assert main(["check-template", str(family_dir(name)), *args]) == 0
    assert "ok, trains on" in capsys.readouterr().out


def test_gemma_it_without_its_eos_token_is_refused_before_training(family_dir, tmp_path, restore_wandb_variables):
    """The check that stopped Gemma-2-9b-it before step 0 still stops a recipe that forgets eos_token."""
    from conftest import build_sft_dataset

    from spri_sft.format.template import TemplateError
    from spri_sft.train import sft

    args = build_sft(
        recipe("gemma-2-it", "lora"),
        family_dir("gemma-2-it"),
        build_sft_dataset(tmp_path / "data"),
        tmp_path / "out",
        "--eos_token",
        "<eos>",
    )
    with pytest.raises(TemplateError, match="not inside the assistant mask"):
        sft.build_trainer(*args)


@pytest.mark.parametrize("name", ["llama-3.1-instruct", "gemma-2-it"])
def test_saved_generation_config_keeps_every_stop_id_and_the_trained_one(name, family_dir, tmp_path,
                                                                       restore_wandb_variables):  # fmt: skip
    from conftest import build_sft_dataset
    from transformers import AutoTokenizer, GenerationConfig

    from spri_sft.train import sft

    model = family_dir(name)
    args = build_sft(recipe(name, "lora"), model, build_sft_dataset(tmp_path / "data"), tmp_path / "out")
    sft.main(*args)
    stops = GenerationConfig.from_pretrained(tmp_path / "out").eos_token_id
    tokenizer = AutoTokenizer.from_pretrained(model)
    assert stops == tokenizer.convert_tokens_to_ids(list(FAMILIES[name].generation_eos))
    assert tokenizer.convert_tokens_to_ids(FAMILIES[name].end_of_turn) in stops


@pytest.fixture(scope="module")
def preference_data(tmp_path_factory) -> Path:
    from datasets import Dataset, DatasetDict

    pair = {
        "prompt": [{"role": "user", "content": "What is rain?"}],
        "chosen": [{"role": "assistant", "content": RESPONSE}],
        "rejected": [{"role": "assistant", "content": "No."}],
    }
    path = tmp_path_factory.mktemp("preference")
    DatasetDict({"train": Dataset.from_list([pair] * 4), "validation": Dataset.from_list([pair])}).save_to_disk(path)
    return path


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_dpo_trains_two_steps_on_the_family_with_one_bos_and_the_end_of_turn(name, family_dir, preference_data,
                                                                           tmp_path, restore_wandb_variables):  # fmt: skip
    """SmolLM2's DPO recipe (the only one) on each family; base students keep their SFT template, Alpaca."""
    from spri_sft.train import dpo

    family = FAMILIES[name]
    argv = [
        "--config", str(ROOT / "recipes/smollm2-135m-instruct/dpo/lora.yaml"), "--model_name_or_path",
        str(family_dir(name)), "--dataset_path", str(preference_data), "--output_dir", str(tmp_path / "out"),
        "--max_steps", "2", "--report_to", "none", "--eval_strategy", "no", "--save_strategy", "no",
        "--load_best_model_at_end", "false", *([] if family.instruct else ["--training_template", "alpaca"]),
    ]  # fmt: skip
    trainer = dpo.build_trainer(*dpo.make_parser().parse_args_and_config(args=argv))
    tokenizer = trainer.processing_class
    row = trainer.train_dataset[0]
    if family.bos is not None:
        bos = tokenizer.convert_tokens_to_ids(family.bos)
        assert row["prompt_ids"][0] == bos and bos not in row["prompt_ids"][1:] + row["chosen_ids"]
    end_of_turn = tokenizer.convert_tokens_to_ids(family.end_of_turn)
    assert end_of_turn in row["chosen_ids"] and end_of_turn in row["rejected_ids"]
    trainer.train()
    assert trainer.state.global_step == 2
