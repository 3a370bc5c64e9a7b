"""Every training recipe parses into the train entry's dataclasses: no unknown or mistyped field."""

from __future__ import annotations

from pathlib import Path

import pytest

from spri_sft.train.sft import make_parser

RECIPES = sorted((Path(__file__).resolve().parents[1] / "recipes").glob("*/sft/*.yaml"))


def test_the_published_models_have_lora_and_qlora_recipes():
    names = {(p.parts[-3], p.stem) for p in RECIPES}
    for model in ["llama-3.1-8b", "llama-3.1-8b-instruct", "mistral-7b-v0.3", "mistral-7b-instruct-v0.3", "gemma-2-9b", "gemma-2-9b-it"]:
        assert {(model, "lora"), (model, "qlora")} <= names


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: f"{p.parts[-3]}/{p.stem}")
def test_recipe_parses(recipe, monkeypatch):
    for variable in ("WANDB_PROJECT", "WANDB_RUN_GROUP"):
        monkeypatch.delenv(variable, raising=False)  # the recipe's env: block sets them
    script_args, training_args, model_args = make_parser().parse_args_and_config(
        args=["--config", str(recipe), "--use_cpu", "true", "--bf16", "false"]
    )
    assert script_args.dataset_path and training_args.output_dir and model_args.model_name_or_path
    assert training_args.assistant_only_loss
    assert model_args.use_peft and model_args.load_in_4bit == (recipe.stem == "qlora")
    if "instruct" not in recipe.parts[-3] and not recipe.parts[-3].endswith("-it") and "smollm2" not in recipe.parts[-3]:
        assert script_args.chat_template_fallback == "alpaca"
