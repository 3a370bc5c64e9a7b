"""The bugs issue 21 found where one concept had two homes: each reader now goes through the one home.

- `spri-sft check-template --dataset` reads a dataset as training does (the format output directory, or its hf/);
- the pipeline reads its training recipes and accelerate config through the one YAML reader (one line, FILE:LINE);
- `HF_HUB_OFFLINE` has one reader (`spri_sft.models.hub_offline`), which takes huggingface_hub's true values;
- `dtype: auto` says in each field's help what it loads (generation's differs from training's and evaluation's).
"""

from __future__ import annotations

from pathlib import Path

import pytest

MALFORMED_YAML = "learning_rate: 1e-4\nlora_r: [16\n"  # the list never closes: the error is on line 3 (end of file)


def test_check_template_takes_the_format_output_directory_its_help_names(tiny_model_dir, tmp_path, capsys):
    from conftest import build_sft_dataset

    from spri_sft.cli import main

    build_sft_dataset(tmp_path / "dataset" / "hf")  # where `spri-sft format` saves it
    assert main(["check-template", str(tiny_model_dir), "--dataset", str(tmp_path / "dataset")]) == 0
    assert "ok, trains on" in capsys.readouterr().out


def test_check_template_takes_the_saved_dataset_itself(tiny_model_dir, tmp_path, capsys):
    from conftest import build_sft_dataset

    from spri_sft.cli import main

    build_sft_dataset(tmp_path / "dataset" / "hf")
    assert main(["check-template", str(tiny_model_dir), "--dataset", str(tmp_path / "dataset" / "hf")]) == 0
    assert "8 rows" in capsys.readouterr().out  # the dataset's 8 training rows, not the built-in probes


def test_check_template_with_a_folder_holding_no_dataset_is_one_line(tiny_model_dir, tmp_path, capsys):
    from spri_sft.cli import main

    (tmp_path / "empty").mkdir()
    assert main(["check-template", str(tiny_model_dir), "--dataset", str(tmp_path / "empty")]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and f"{tmp_path / 'empty'}: not a saved dataset" in error


@pytest.mark.parametrize("job", ["train", "dpo"])
def test_a_malformed_training_recipe_is_one_line_naming_file_and_line(job, tmp_path):
    from spri_sft.errors import UserError
    from spri_sft.pipeline.run import _recipe_args

    recipe = tmp_path / "lora.yaml"
    recipe.write_text(MALFORMED_YAML)
    with pytest.raises(UserError, match=rf"^{recipe}:3: invalid YAML") as raised:
        _recipe_args(job, str(recipe), {})
    assert "\n" not in str(raised.value)


def test_a_malformed_training_recipe_stops_spri_sft_run_in_one_line(tmp_path, capsys):
    from spri_sft.cli import main

    recipe = tmp_path / "lora.yaml"
    recipe.write_text(MALFORMED_YAML)
    pipeline = tmp_path / "pipeline.yaml"
    pipeline.write_text(f"output_dir: {tmp_path / 'run'}\ntrain:\n  recipe: {recipe}\n")
    assert main(["run", str(pipeline)]) == 2
    assert (
        capsys.readouterr().err
        == f"spri-sft: error: {recipe}:3: invalid YAML (expected ',' or ']', but got '<stream end>')\n"
    )


def test_a_malformed_accelerate_config_is_one_line_naming_file_and_line(tmp_path):
    from spri_sft.errors import UserError
    from spri_sft.pipeline.run import TrainPlan, _train

    accelerate = tmp_path / "accelerate.yaml"
    accelerate.write_text("num_processes: 2\ndistributed_type: [MULTI_GPU\n")
    plan = TrainPlan("spri", tmp_path / "checkpoints" / "spri", {"learning_rate": 1e-4}, str(accelerate))
    with pytest.raises(UserError, match=rf"^{accelerate}:3: invalid YAML"):
        _train(plan, after="dataset-id")
    assert not (tmp_path / "checkpoints").exists()  # refused before the stage began


@pytest.mark.parametrize("value", ["on", "ON", "On"])
def test_hf_hub_offline_on_is_offline_for_every_reader(value, monkeypatch, tmp_path, capsys):
    """One reader: models.hub_offline, which the TruthfulQA source rule and the model resolver both call."""
    from spri_sft.models import hub_offline
    from spri_sft.truthfulqa_data import SOURCE, choose_source

    monkeypatch.setenv("HF_HUB_OFFLINE", value)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    assert hub_offline()
    source = choose_source(None, "truthfulqa/truthful_qa", directory=tmp_path, setting="--truthfulqa_file")
    assert source.described == SOURCE
    assert "(HF_HUB_OFFLINE is set)" in capsys.readouterr().out


def test_no_module_reads_hf_hub_offline_but_the_one_reader():
    package = Path(__file__).resolve().parents[1] / "spri_sft"
    readers = [
        path.relative_to(package).as_posix()
        for path in package.rglob("*.py")
        if 'environ.get("HF_HUB_OFFLINE"' in path.read_text() or "constants.HF_HUB_OFFLINE" in path.read_text()
    ]
    assert readers == ["models.py"]


def test_dtype_auto_says_what_it_loads_in_generation_and_evaluation():
    """auto is the checkpoint's dtype in transformers, training (TRL) and evaluation; generation's auto is bfloat16
    on CUDA, float32 elsewhere (the records made so far were), and its help says so beside the other meaning."""
    import dataclasses

    from spri_sft.evaluate.config import EvaluateConfig
    from spri_sft.llm.base import EndpointConfig

    def help_of(cls, name):
        return next(f.metadata["help"] for f in dataclasses.fields(cls) if f.name == name)

    generation, evaluation = help_of(EndpointConfig, "dtype"), help_of(EvaluateConfig, "dtype")
    assert "auto = bfloat16 on CUDA, float32 elsewhere" in generation and "checkpoint's" in generation
    assert "auto = the checkpoint's" in evaluation and "bfloat16 on CUDA, float32 elsewhere" in evaluation
