"""One evaluation config (issue 21, item 3): the pipeline's evaluate: section is `spri-sft evaluate`'s EvaluateConfig
plus two pipeline-only fields; the fields the pipeline sets itself are refused in a recipe; evaluations made before
keep their fingerprints; standalone `spri-sft evaluate` runs lm-eval's tasks as the pipeline does."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
from pathlib import Path

import pytest
import yaml

from spri_sft.config import load_config
from spri_sft.evaluate.config import EvaluateConfig
from spri_sft.pipeline.config import EVALUATE_SET_BY_PIPELINE, EvaluateStage, PipelineConfig

ROOT = Path(__file__).resolve().parents[1]
PIPELINE_ONLY = {"enabled", "guard_training_data"}


def names(cls) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


def test_the_pipelines_evaluate_section_is_evaluates_config_plus_only_pipeline_fields():
    assert issubclass(EvaluateStage, EvaluateConfig)
    assert names(EvaluateStage) - names(EvaluateConfig) == PIPELINE_ONLY


def test_the_pipeline_section_has_the_fields_its_copy_lacked():
    config = load_config(
        PipelineConfig,
        ["--evaluate.tokenizer", "tok", "--evaluate.trust_remote_code", "true", "--evaluate.merge_adapter", "false",
         "--evaluate.num_threads", "2"],
    )  # fmt: skip
    evaluate = config.evaluate
    assert (evaluate.tokenizer, evaluate.trust_remote_code, evaluate.merge_adapter, evaluate.num_threads) == (
        "tok", True, False, 2,
    )  # fmt: skip


def test_spri_sft_evaluate_help_names_every_field_of_the_pipelines_evaluate_stage(capsys):
    from spri_sft.cli import main

    assert main(["evaluate", "--help"]) == 0
    shown = capsys.readouterr().out
    for name in sorted(names(EvaluateStage) - PIPELINE_ONLY):
        assert f"--{name} " in shown, name


def test_a_range_is_stated_once_and_refused_in_both_commands():
    from spri_sft.errors import UserError

    with pytest.raises(UserError, match=r"--batch_size: must be >= 1, got 0"):
        load_config(EvaluateConfig, ["--batch_size", "0"])
    with pytest.raises(UserError, match=r"--evaluate.batch_size: must be >= 1, got 0"):
        load_config(PipelineConfig, ["--evaluate.batch_size", "0"])


@pytest.mark.parametrize("name", EVALUATE_SET_BY_PIPELINE)
def test_a_field_the_pipeline_sets_is_refused_in_a_recipe(name, tmp_path, capsys):
    from spri_sft.cli import main

    value = {"report_to": "wandb", "base_quantization": {"load_in_4bit": True}}.get(name, "someone/else")
    recipe = tmp_path / "pipeline.yaml"
    recipe.write_text(yaml.safe_dump({"output_dir": str(tmp_path / "run"), "evaluate": {name: value}}))
    assert main(["run", str(recipe)]) == 2
    assert capsys.readouterr().err == (
        f"spri-sft: error: evaluate.{name} is set by the pipeline (for each model it scores); remove it from the "
        "recipe\n"
    )
    assert not (tmp_path / "run" / "config.yaml").exists()


PIPELINE_RECIPES = sorted(
    {
        *ROOT.glob("recipes/**/pipeline*.yaml"),
        *ROOT.glob("recipes/*/pipeline/*.yaml"),
        *ROOT.glob("recipes/paper/**/*.yaml"),
    }
)


@pytest.mark.parametrize("recipe", PIPELINE_RECIPES, ids=lambda path: str(path.relative_to(ROOT / "recipes")))
def test_every_pipeline_recipe_loads_and_passes_the_recipe_check(recipe):
    from spri_sft.pipeline.run import check_recipe

    check_recipe(load_config(PipelineConfig, ["--config", str(recipe)]))


def plan_of(student: str, tmp_path: Path, **args):
    from spri_sft.pipeline.run import TrainPlan

    return TrainPlan("spri", tmp_path / "checkpoints" / "spri", {"model_name_or_path": student, **args}, None)


def test_an_evaluation_with_the_new_fields_at_their_defaults_has_the_settings_it_had_before(tmp_path):
    """The eval stage's fingerprint is the hash of these settings: runs made before the one config stay done."""
    from spri_sft.pipeline.run import evaluation_job, evaluation_settings
    from spri_sft.pipeline.stages import file_digest

    questions = tmp_path / "mc_task.json"
    questions.write_text("[]")
    config = load_config(PipelineConfig, ["--evaluate.limit", "5"])
    plan = plan_of("student/model", tmp_path)
    job = evaluation_job(config, plan, None, str(questions), tmp_path / "eval" / "base", "run", "group")
    assert evaluation_settings(config, plan, None, job) == {
        "limit": 5, "dtype": "auto", "chat_template": False, "batch_size": 32,
        "truthfulqa_file": file_digest(questions), "after": "student/model",
    }  # fmt: skip


def test_a_tokenizer_set_for_the_evaluation_counts_in_its_fingerprint(tmp_path):
    from spri_sft.pipeline.run import evaluation_job, evaluation_settings

    questions = tmp_path / "mc_task.json"
    questions.write_text("[]")
    config = load_config(PipelineConfig, ["--evaluate.tokenizer", "other/tokenizer"])
    plan = plan_of("student/model", tmp_path)
    job = evaluation_job(config, plan, None, str(questions), tmp_path / "eval" / "base", "run", "group")
    assert job.tokenizer == "other/tokenizer"
    assert evaluation_settings(config, plan, None, job)["tokenizer"] == "other/tokenizer"


def test_the_evaluation_job_scores_the_student_with_the_sections_settings_and_the_pipelines_fields(tmp_path):
    from spri_sft.pipeline.run import evaluation_job

    config = load_config(PipelineConfig, ["--evaluate.merge_adapter", "false", "--wandb.enabled", "false"])
    plan = plan_of("student/model", tmp_path, load_in_4bit=True, use_peft=True)
    job = evaluation_job(config, plan, None, "questions.json", tmp_path / "eval" / "base", "run", "group")
    assert (job.model, job.adapter, job.merge_adapter, job.report_to) == ("student/model", None, False, "none")
    assert job.base_quantization == {"load_in_4bit": True}  # the QLoRA student on its 4-bit base, as before
    assert (job.output_dir, job.truthfulqa_file) == (str(tmp_path / "eval" / "base"), "questions.json")


def test_the_untrained_student_is_scored_at_the_revision_the_train_recipe_pins(tmp_path):
    """The base row compares with adapters trained on the pinned commit: it is scored on that commit, not on main."""
    from spri_sft.pipeline.run import evaluation_job, evaluation_settings

    questions = tmp_path / "mc_task.json"
    questions.write_text("[]")
    config = load_config(PipelineConfig, [])
    plan = plan_of("student/model", tmp_path, model_revision="0123abc", use_peft=True)
    job = evaluation_job(config, plan, None, str(questions), tmp_path / "eval" / "base", "run", "group")
    assert job.model_revision == "0123abc"
    assert evaluation_settings(config, plan, None, job)["model_revision"] == "0123abc"  # a new pin rescores it


def test_an_adapter_is_scored_on_the_commit_its_training_recorded_not_on_the_recipes_revision(tmp_path):
    from spri_sft.pipeline.run import evaluation_job
    from spri_sft.pipeline.stages import Stage

    trained = Stage("checkpoints/spri", tmp_path / "checkpoints" / "spri", "fingerprint")
    plan = plan_of("student/model", tmp_path, model_revision="0123abc", use_peft=True)
    job = evaluation_job(load_config(PipelineConfig, []), plan, trained, None, tmp_path / "eval" / "spri", "", "")
    assert (job.adapter, job.model_revision) == (str(plan.output_dir), None)  # evaluate reads effective_config.json


needs_lm_eval = pytest.mark.skipif(
    importlib.util.find_spec("lm_eval") is None,
    reason="lm-eval is an optional dependency (pip install 'spri-sft[lm-eval]')",
)


@needs_lm_eval
def test_the_pipelines_lm_eval_call_is_unchanged_by_the_one_config(tmp_path):
    from spri_sft.evaluate.lm_eval_tasks import LmEvalJob
    from spri_sft.pipeline.run import lm_eval_job

    config = load_config(PipelineConfig, ["--evaluate.lm_eval_tasks", "hellaswag", "--evaluate.lm_eval_args",
                                          "{num_fewshot: 5, batch_size: 4}"])  # fmt: skip
    job = lm_eval_job(config, plan_of("student/model", tmp_path), None)
    assert job == LmEvalJob(
        model="student/model", adapter=None, tasks=["hellaswag"], include_path=None, include_defaults=True,
        batch_size=4, device="auto", dtype="auto", extra_args={"apply_chat_template": False, "num_fewshot": 5},
    )  # fmt: skip


@needs_lm_eval
def test_lm_eval_loads_the_untrained_student_at_the_revision_the_train_recipe_pins(tmp_path):
    from spri_sft.pipeline.run import lm_eval_job

    config = load_config(PipelineConfig, ["--evaluate.lm_eval_tasks", "hellaswag"])
    job = lm_eval_job(config, plan_of("student/model", tmp_path, model_revision="0123abc"), None)
    assert job.extra_args["model_args"] == {"revision": "0123abc"}


RECORDED = "0123456789abcdef0123456789abcdef01234567"


def trained_adapter(folder: Path, base: str) -> Path:
    """An adapter folder whose training recorded the commit RECORDED of `base` (train/job.py's effective_config)."""
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text("{}")
    revision = {"name_or_path": base, "revision": "main", "commit": RECORDED}
    (folder / "effective_config.json").write_text(json.dumps({"revisions": {"model": revision, "tokenizer": revision}}))
    return folder


def test_lm_eval_loads_a_pipeline_adapter_on_the_commit_its_training_recorded(tmp_path):
    """As TruthfulQA does: base-vs-adapter lm-eval scores compare the same base weights, not main's."""
    from spri_sft.pipeline.run import lm_eval_job
    from spri_sft.pipeline.stages import Stage

    plan = plan_of("student/model", tmp_path, use_peft=True)
    trained = Stage("checkpoints/spri", trained_adapter(plan.output_dir, "student/model"), "fingerprint")
    config = load_config(PipelineConfig, ["--evaluate.lm_eval_tasks", "hellaswag"])
    job = lm_eval_job(config, plan, trained)
    assert (job.adapter, job.extra_args["model_args"]) == (str(plan.output_dir), {"revision": RECORDED})


def test_standalone_evaluate_gives_lm_eval_the_commit_the_adapters_training_recorded(tmp_path):
    from spri_sft.evaluate.lm_eval_tasks import LmEvalJob

    adapter = trained_adapter(tmp_path / "run", "student/model")
    argv = ["--model", "student/model", "--adapter", str(adapter), "--lm_eval_tasks", "hellaswag"]
    assert LmEvalJob.of_evaluation(load_config(EvaluateConfig, argv)).extra_args["model_args"] == {"revision": RECORDED}
    pinned = load_config(EvaluateConfig, [*argv, "--model_revision", "v2"])  # asked for: wins over the record
    assert LmEvalJob.of_evaluation(pinned).extra_args["model_args"] == {"revision": "v2"}


@needs_lm_eval
def test_standalone_evaluate_runs_lm_evals_tasks_after_truthfulqa(tiny_model_dir, tmp_path, monkeypatch, capsys):
    from test_lm_eval_tasks import TASK, write_task

    from spri_sft.cli import main

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    out = tmp_path / "eval"
    argv = [
        "evaluate", "--model", str(tiny_model_dir), "--limit", "2", "--dtype", "float32", "--device", "cpu",
        "--output_dir", str(out), "--lm_eval_tasks", TASK, "--lm_eval_include_path", str(write_task(tmp_path / "tasks")),
        "--lm_eval_include_defaults", "false", "--lm_eval_args", "{limit: 4, bootstrap_iters: 0}",
    ]  # fmt: skip
    assert main(argv) == 0
    assert json.loads((out / "results.json").read_text())["n"] == 2
    scores = json.loads((out / "lm_eval" / "results.json").read_text())
    assert scores["tasks"][TASK]["metric"] == "acc" and 0 <= scores["tasks"][TASK]["value"] <= 1
    assert scores["model"] == str(tiny_model_dir)


@needs_lm_eval
def test_standalone_evaluate_refuses_an_unknown_task_before_loading_a_model(tmp_path, capsys):
    from test_lm_eval_tasks import write_task

    from spri_sft.cli import main

    argv = [
        "evaluate", "--model", str(tmp_path / "no-model"), "--output_dir", str(tmp_path / "eval"),
        "--lm_eval_tasks", "no_such_task", "--lm_eval_include_path", str(write_task(tmp_path / "tasks")),
        "--lm_eval_include_defaults", "false",
    ]  # fmt: skip
    assert main(argv) == 2
    assert "evaluate.lm_eval_tasks: no_such_task not found among" in capsys.readouterr().err
    assert not (tmp_path / "eval" / "results.json").exists()
