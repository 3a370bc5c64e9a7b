"""`spri-sft run` refuses what would fail later before it pays for anything (no generation, no training), and
a stage refused for changed settings says which settings changed and which directories to remove.

Most recipes here point generation at an address nothing listens on: a check that comes too late shows as a
connection error (or a records.jsonl) instead of the one-line refusal.
"""

from __future__ import annotations

import dataclasses
import json
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


# -- the training recipes' field names, checked as `spri-sft train` and `spri-sft dpo` check them ----------


def test_a_misspelt_field_in_the_train_recipe_stops_the_run_naming_the_file_and_the_field_meant(tmp_path, capsys):
    recipe_file = tmp_path / "lora.yaml"
    recipe_file.write_text("model_name_or_path: tiny-student\nuse_peft: true\nlearning_rat: 1.0e-4\n")
    recipe = write_recipe(tmp_path, train={"recipe": str(recipe_file)})

    assert main(["run", str(recipe)]) == 2

    assert capsys.readouterr().err == (
        f"spri-sft: error: train ({recipe_file}): unknown field 'learning_rat' (did you mean 'learning_rate'?)\n"
    )
    assert records_written(tmp_path) == []


def test_a_misspelt_field_in_train_args_is_named_as_set_there(tmp_path, capsys):
    recipe = write_recipe(tmp_path, train={"args": {"model_name_or_path": "tiny-student", "max_step": 1}})

    assert main(["run", str(recipe)]) == 2

    assert capsys.readouterr().err == (
        "spri-sft: error: train (train.args): unknown field 'max_step' (did you mean 'max_steps'?)\n"
    )
    assert records_written(tmp_path) == []


# -- the training recipe, through TRL's and transformers' own checks ----------------------------


def test_a_training_recipe_transformers_refuses_stops_the_run_before_generation_in_one_line(tmp_path, capsys):
    recipe_file = tmp_path / "lora.yaml"
    recipe_file.write_text(
        yaml.safe_dump(
            {
                "model_name_or_path": "tiny-student",
                "use_peft": True,
                "load_best_model_at_end": True,
                "eval_strategy": "steps",
                "eval_steps": 10,
                "save_steps": 15,
            }  # fmt: skip
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


def test_a_grpo_recipe_is_checked_as_the_grpo_child_checks_it_its_own_checks_included(tmp_path):
    batch = {"effective_batch_size": 16, "steps_per_generation": 2}  # GRPO's own refusal, not TRL's
    recipe = write_recipe(tmp_path, grpo={"enabled": True, "args": batch})
    with pytest.raises(UserError, match=r"^grpo \(grpo.args\): steps_per_generation with effective_batch_size 16: "):
        run_pipeline(load_config(PipelineConfig, ["--config", str(recipe)]))
    assert records_written(tmp_path) == []


def test_checking_the_recipes_leaves_this_process_without_accelerate_device_state(tmp_path):
    from accelerate.state import PartialState

    from spri_sft.pipeline.recipe_check import training_recipes_checked

    earlier = dict(PartialState._shared_state)  # left by an in-process training earlier in this test session
    PartialState._shared_state.clear()
    try:
        with training_recipes_checked(
            [("train", {"model_name_or_path": "x", "output_dir": str(tmp_path), "max_steps": 2}, "train")]
        ):
            pass
        assert PartialState._shared_state == {}
    finally:
        PartialState._shared_state.update(earlier)


def child_commands() -> list[str]:
    """The command lines of this process's live children (Linux /proc)."""
    import os

    commands = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == os.getpid() and fields[0] != "Z":
                commands.append((stat.parent / "cmdline").read_text().replace("\0", " "))
        except (OSError, IndexError):
            continue
    return commands


def test_a_check_cut_short_by_another_refusal_leaves_no_child_behind(tmp_path):
    from spri_sft.pipeline.recipe_check import training_recipes_checked

    recipe = ("train", {"model_name_or_path": "x", "output_dir": str(tmp_path), "max_steps": 3}, "train")
    with pytest.raises(UserError, match="truthfulqa_file"):
        with training_recipes_checked([recipe]):
            assert any("spri_sft.pipeline.recipe_check" in command for command in child_commands())
            raise UserError("evaluate.truthfulqa_file missing.json: file not found")
    assert not any("spri_sft.pipeline.recipe_check" in command for command in child_commands())


# -- a stage refused for changed settings, and --redo ------------------------------------------


def test_a_refused_stage_names_each_changed_setting_and_input(tmp_path):
    from spri_sft.pipeline.stages import Stage, StageChanged

    made = Stage.made_from("checkpoints/spri", tmp_path / "c", {"learning_rate": 0.0002, "lora_r": 8, "after": "a1"})
    made.begin()
    made.finish()
    rerun = Stage.made_from("checkpoints/spri", tmp_path / "c", {"learning_rate": 0.0001, "lora_r": 8, "after": "b2"})

    with pytest.raises(StageChanged) as refused:
        rerun.is_done()

    message = refused.value.describe("dataset/spri", [tmp_path / "c", tmp_path / "e"])
    assert "(checkpoints/spri: learning_rate 0.0002 → 0.0001; the outputs of dataset/spri changed)" in message
    assert f"rerun with --redo checkpoints/spri, or remove {tmp_path / 'c'} {tmp_path / 'e'}" in message


def test_a_stage_made_before_settings_were_recorded_is_refused_saying_so(tmp_path):
    from spri_sft.pipeline.stages import Stage, StageChanged

    old = Stage("eval/spri", tmp_path / "e", "0123456789abcdef")  # as stage.json was written before this version
    old.begin()
    old.finish()
    with pytest.raises(StageChanged, match=r"settings were not recorded \(made before this version\)"):
        Stage.made_from("eval/spri", tmp_path / "e", {"limit": 4}).is_done(resumable=False)


def test_a_changed_input_file_is_named_by_its_setting_not_by_its_digests(tmp_path):
    from spri_sft.pipeline.stages import changes, file_digest

    first, second = tmp_path / "a.json", tmp_path / "b.json"
    first.write_text("[1]")
    second.write_text("[2]")
    assert changes({"truthfulqa_file": file_digest(first)}, {"truthfulqa_file": file_digest(second)}) == [
        "truthfulqa_file: the file's contents changed"
    ]


def plans_of(config: PipelineConfig, root: Path):
    """(SFT plans by mode, the plans of the trainings after SFT by model) as run_pipeline makes them, paths only."""
    from spri_sft.pipeline.config import continued
    from spri_sft.pipeline.run import TrainPlan

    train = {mode: TrainPlan(mode, root / "checkpoints" / mode, {"use_peft": True}, None) for mode in config.modes}
    after = {
        continued(mode, job): TrainPlan(
            continued(mode, job), root / "checkpoints" / continued(mode, job), {}, None, job
        )
        for mode in config.modes
        for job in config.after_sft()
    }
    return train, after


def test_redoing_a_training_takes_every_stage_after_it_that_reads_its_outputs(tmp_path):
    from spri_sft.pipeline.run import redo_stages, stage_graph

    config = PipelineConfig(output_dir=str(tmp_path), modes=["spri", "direct"])
    config.dpo.enabled = True
    config.evaluate.lm_eval_tasks = ["hellaswag"]
    graph = stage_graph(config, tmp_path, *plans_of(config, tmp_path))

    assert redo_stages(["train/spri"], graph, tmp_path) == [
        "checkpoints/spri", "eval/spri", "eval/spri/lm_eval", "checkpoints/spri+dpo", "eval/spri+dpo",
        "eval/spri+dpo/lm_eval",
    ]  # fmt: skip
    assert redo_stages(["dataset/direct"], graph, tmp_path)[:2] == ["dataset/direct", "checkpoints/direct"]
    assert redo_stages(["eval/base"], graph, tmp_path) == ["eval/base"]


def test_dpo_and_grpo_each_continue_the_sft_model_and_redo_by_their_own_names(tmp_path):
    from spri_sft.pipeline.run import redo_stages, stage_graph

    config = PipelineConfig(output_dir=str(tmp_path), modes=["spri", "direct"])
    config.dpo.enabled = config.grpo.enabled = True
    graph = stage_graph(config, tmp_path, *plans_of(config, tmp_path))

    assert [stage for stage in graph if stage.startswith("checkpoints/")] == [
        "checkpoints/spri", "checkpoints/spri+dpo", "checkpoints/spri+grpo",
        "checkpoints/direct", "checkpoints/direct+dpo", "checkpoints/direct+grpo",
    ]  # fmt: skip
    assert graph["checkpoints/spri+grpo"].made_from == ("dataset/spri", "checkpoints/spri")  # not from DPO's
    assert redo_stages(["grpo/spri"], graph, tmp_path) == ["checkpoints/spri+grpo", "eval/spri+grpo"]
    assert redo_stages(["train/direct"], graph, tmp_path) == [
        "checkpoints/direct", "eval/direct", "checkpoints/direct+dpo", "eval/direct+dpo", "checkpoints/direct+grpo",
        "eval/direct+grpo",
    ]  # fmt: skip


def test_redo_of_an_unknown_stage_is_one_line_listing_the_stages(tmp_path):
    from spri_sft.pipeline.run import redo_stages, stage_graph

    config = PipelineConfig(output_dir=str(tmp_path))
    graph = stage_graph(config, tmp_path, *plans_of(config, tmp_path))
    with pytest.raises(UserError, match=r"^redo: no stage 'train/sprii' in this run \(its stages: generate/spri, "):
        redo_stages(["train/sprii"], graph, tmp_path)


def test_an_unknown_redo_flag_stops_the_run_before_generation(tmp_path, capsys):
    recipe = write_recipe(tmp_path)

    assert main(["run", str(recipe), "--redo", "train/sprii"]) == 2

    error = capsys.readouterr().err.strip()
    assert error.startswith("spri-sft: error: redo: no stage 'train/sprii' in this run (its stages: generate/spri, ")
    assert records_written(tmp_path) == []


def test_redo_refuses_to_remove_a_generation_shared_from_outside_the_run(tmp_path):
    from spri_sft.pipeline.run import redo_stages, stage_graph

    config = PipelineConfig(output_dir=str(tmp_path / "run"), generate_dir=str(tmp_path / "shared"))
    graph = stage_graph(config, tmp_path / "run", *plans_of(config, tmp_path / "run"))
    with pytest.raises(UserError, match=r"redo generate/spri: its directory .*shared/spri is outside"):
        redo_stages(["generate/spri"], graph, tmp_path / "run")


# -- on a finished run of the tiny model ---------------------------------------------------------


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, tiny_model_dir, shared_dir):
    """One finished `spri-sft run` (fake generation server, 1 training step, 2 TruthfulQA questions), no W&B."""
    from support.fake_openai_server import FakeOpenAIServer
    from test_pipeline import make_recipe

    tmp = tmp_path_factory.mktemp("finished")
    with FakeOpenAIServer() as server, pytest.MonkeyPatch.context() as env:
        env.setenv("HF_HUB_OFFLINE", "1")
        env.setenv("TOKENIZERS_PARALLELISM", "false")
        recipe = make_recipe(
            tmp, tiny_model_dir, server, shared_dir / "data/truthfulqa/data/v0/mc_task.json", max_steps=1
        )
        config = load_config(
            PipelineConfig, ["--config", str(recipe), "--wandb.enabled", "false", "--evaluate.limit", "2"]
        )
        run_pipeline(config)
        yield {"root": tmp / "run", "config": config}


@pytest.mark.slow
def test_a_changed_training_setting_is_refused_naming_it_and_the_directories_to_remove(finished_run):
    from spri_sft.pipeline.stages import StageChanged

    root, config = finished_run["root"], finished_run["config"]
    train = dataclasses.replace(config.train, args={**config.train.args, "learning_rate": 0.5})

    with pytest.raises(UserError) as refused:
        run_pipeline(dataclasses.replace(config, train=train))

    message = str(refused.value)
    assert not isinstance(refused.value, StageChanged) and "\n" not in message
    assert "(checkpoints/spri: learning_rate 0.001 → 0.5)" in message
    assert (
        f"rerun with --redo checkpoints/spri, or remove {root / 'checkpoints/spri'} {root / 'eval/spri'} to redo it"
        in message
    )


@pytest.mark.slow
def test_redo_of_a_training_retrains_and_rescores_that_mode_without_regenerating_or_reformatting(finished_run, capsys):
    root, config = finished_run["root"], finished_run["config"]
    before = {name: json.loads((root / name / "stage.json").read_text())["output_id"]
              for name in ("generate/spri", "dataset/spri", "eval/base", "checkpoints/spri", "eval/spri")}  # fmt: skip
    records = (root / "generate/spri/records.jsonl").stat().st_mtime_ns
    capsys.readouterr()

    run_pipeline(dataclasses.replace(config, redo=["checkpoints/spri"]))

    out = capsys.readouterr().out
    assert "[spri-sft] redo checkpoints/spri: running again checkpoints/spri, eval/spri" in out
    after = {name: json.loads((root / name / "stage.json").read_text())["output_id"] for name in before}
    assert [name for name in before if after[name] != before[name]] == ["checkpoints/spri", "eval/spri"]
    assert (root / "generate/spri/records.jsonl").stat().st_mtime_ns == records
    assert yaml.safe_load((root / "config.yaml").read_text())["redo"] == []  # its saved config redoes nothing


def test_grpo_with_several_processes_and_an_in_process_critic_stops_the_run_before_generation(tmp_path, capsys):
    launch = tmp_path / "two.yaml"
    launch.write_text("distributed_type: MULTI_CPU\nnum_processes: 2\n")
    critic = {"backend": "transformers", "model": "tiny-critic"}
    recipe = write_recipe(tmp_path, grpo={"enabled": True})
    recipe_text = yaml.safe_load(recipe.read_text())
    recipe_text["generate"]["critic"] = critic
    recipe_text["train"]["accelerate_config"] = str(launch)
    recipe.write_text(yaml.safe_dump(recipe_text))

    assert main(["run", str(recipe)]) == 2

    error = capsys.readouterr().err.strip()
    assert error.startswith(
        f"spri-sft: error: grpo with train.accelerate_config {launch}: critic backend transformers with 2 processes "
        "would load a copy of the model in each"
    ), error
    assert records_written(tmp_path) == []


def test_grpo_with_several_processes_and_a_critic_server_slower_to_start_than_ddp_timeout_stops_before_generation(
    tmp_path, capsys
):
    launch = tmp_path / "two.yaml"
    launch.write_text("distributed_type: MULTI_CPU\nnum_processes: 2\n")
    recipe = write_recipe(tmp_path, grpo={"enabled": True, "args": {"ddp_timeout": 600}})
    recipe_text = yaml.safe_load(recipe.read_text())
    recipe_text["generate"]["critic"] = {"backend": "vllm", "model": "judge", "vllm": {"startup_timeout": 900}}
    recipe_text["train"]["accelerate_config"] = str(launch)
    recipe.write_text(yaml.safe_dump(recipe_text))

    assert main(["run", str(recipe)]) == 2

    error = capsys.readouterr().err.strip()
    assert error.startswith(
        f"spri-sft: error: grpo with train.accelerate_config {launch}: critic vllm.startup_timeout 900 s is longer "
        "than ddp_timeout 600 s"
    ), error
    assert records_written(tmp_path) == []


def test_the_critic_of_a_generate_config_the_grpo_recipe_names_is_the_one_checked_before_generation(tmp_path, capsys):
    launch = tmp_path / "two.yaml"
    launch.write_text("distributed_type: MULTI_CPU\nnum_processes: 2\n")
    own = tmp_path / "generate.yaml"  # the recipe's own generate config: its critic judges, not the run's
    own.write_text("critic:\n  backend: transformers\n  model: tiny-critic\n")
    recipe = write_recipe(tmp_path, grpo={"enabled": True, "args": {"generate_config": str(own)}})
    recipe_text = yaml.safe_load(recipe.read_text())
    recipe_text["train"]["accelerate_config"] = str(launch)  # the run's own critic is an openai server: fine
    recipe.write_text(yaml.safe_dump(recipe_text))

    assert main(["run", str(recipe)]) == 2

    error = capsys.readouterr().err.strip()
    assert "critic backend transformers with 2 processes would load a copy of the model in each" in error, error
    assert records_written(tmp_path) == []
