"""`spri-sft run` refuses what would fail later before it pays for anything (no generation, no training), and
a stage refused for changed settings says which settings changed and which directories to remove.

Most recipes here point generation at an address nothing listens on: a check that comes too late shows as a
connection error (or a records.jsonl) instead of the one-line refusal.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from spri_sft.cli import main
from spri_sft.config import load_config
from spri_sft.errors import UserError
from spri_sft.pipeline.config import PipelineConfig
from spri_sft.pipeline.run import run_pipeline

NOWHERE = "http://127.0.0.1:9/v1"  # the discard port: a generation that starts fails at once


def write_recipe(directory: Path, model: str = "tiny-student", **sections) -> Path:
    endpoint = {"backend": "openai", "model": "fake-model", "base_url": [NOWHERE], "timeout": 1.0}
    recipe = {
        "output_dir": str(directory / "run"),
        "generate": {"prompts": {"limit": 4}, "base": endpoint, "critic": endpoint, "progress": False},
        "train": {"args": {"model_name_or_path": model, "use_peft": True, "max_steps": 1}},
        "evaluate": {"enabled": False},
        "wandb": {"enabled": False},
        **sections,
    }
    path = directory / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def records_written(directory: Path) -> list[Path]:
    return list(directory.rglob("records.jsonl"))


# -- evaluate's ranges -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [("--evaluate.limit", "-3", "--evaluate.limit: must be >= 1, got -3"),
     ("--evaluate.batch_size", "0", "--evaluate.batch_size: must be >= 1, got 0")],
)  # fmt: skip
def test_an_evaluate_setting_out_of_range_stops_the_run_before_generation(tmp_path, capsys, flag, value, message):
    recipe = write_recipe(tmp_path)

    assert main(["run", str(recipe), flag, value]) == 2

    assert capsys.readouterr().err.strip() == f"spri-sft: error: {message}"
    assert records_written(tmp_path) == []


def test_an_evaluate_setting_out_of_range_in_the_recipe_file_names_the_file_and_field(tmp_path):
    recipe = write_recipe(tmp_path, evaluate={"limit": 0})
    with pytest.raises(UserError, match=rf"{recipe}: field 'evaluate.limit': must be >= 1, got 0"):
        load_config(PipelineConfig, ["--config", str(recipe)])


def test_a_config_built_in_code_is_range_checked_before_generation(tmp_path):
    config = load_config(PipelineConfig, ["--config", str(write_recipe(tmp_path))])
    config.evaluate.batch_size = 0
    with pytest.raises(UserError, match=r"field 'evaluate.batch_size': must be >= 1, got 0"):
        run_pipeline(config)
    assert records_written(tmp_path) == []


# -- the training recipe, through TRL's and transformers' own checks ----------------------------


def test_a_training_recipe_transformers_refuses_stops_the_run_before_generation_in_one_line(tmp_path, capsys):
    recipe_file = tmp_path / "lora.yaml"
    recipe_file.write_text(
        yaml.safe_dump(
            {"model_name_or_path": "tiny-student", "use_peft": True, "load_best_model_at_end": True,
             "eval_strategy": "steps", "eval_steps": 10, "save_steps": 15}  # fmt: skip
        )
    )
    recipe = write_recipe(tmp_path, train={"recipe": str(recipe_file)})

    assert main(["run", str(recipe)]) == 2

    error = capsys.readouterr().err.strip()
    assert error.startswith(f"spri-sft: error: train ({recipe_file}): --load_best_model_at_end requires")
    assert "15, which is not a round multiple of 10" in error and "\n" not in error
    assert records_written(tmp_path) == []


def test_a_dpo_recipe_is_checked_as_the_dpo_child_parses_it(tmp_path):
    recipe = write_recipe(tmp_path, dpo={"enabled": True, "args": {"logging_strategy": "steps", "logging_steps": 0}})
    with pytest.raises(UserError, match=r"^dpo \(dpo.args\): logging strategy .* requires non-zero --logging_steps$"):
        run_pipeline(load_config(PipelineConfig, ["--config", str(recipe)]))
    assert records_written(tmp_path) == []


def test_checking_the_recipes_leaves_this_process_without_accelerate_device_state(tmp_path):
    from accelerate.state import PartialState

    from spri_sft.pipeline.recipe_check import check_training_recipes

    assert PartialState._shared_state == {}
    check_training_recipes([("train", {"model_name_or_path": "x", "output_dir": str(tmp_path), "max_steps": 2}, "train")])
    assert PartialState._shared_state == {}
