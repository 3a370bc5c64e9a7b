"""`spri-sft run`: the whole pipeline from one recipe, on the tiny model.

Generation talks to the fake OpenAI-compatible server (its critic passes everything with
"[RESULT] 5"), training is a real `spri-sft train` child process (LoRA on the tiny Llama), and
evaluation scores the first TruthfulQA questions of ../shared's mc_task.json. W&B runs offline
with no credentials, into <output_dir>/wandb.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from support.fake_openai_server import FakeOpenAIServer
from wandb_log import wandb_records, without_wandb_credentials

from spri_sft.cli import main
from spri_sft.errors import UserError
from spri_sft.format.benchmarks import read_questions
from spri_sft.pipeline.config import PipelineConfig
from spri_sft.pipeline.run import run_pipeline
from spri_sft.pipeline.stages import Stage

pytestmark = pytest.mark.timeout(300)

QUESTIONS = 4


@pytest.fixture(scope="module")
def server():
    with FakeOpenAIServer() as running:
        yield running


@pytest.fixture(scope="module")
def truthfulqa_file(shared_dir) -> Path:
    return shared_dir / "data/truthfulqa/data/v0/mc_task.json"


def make_recipe(directory: Path, model_dir: Path, server, truthfulqa_file: Path, modes=("spri",), **train_args) -> Path:
    endpoint = {"backend": "openai", "model": "fake-model", "base_url": [server.base_url], "timeout": 5.0}
    recipe = {
        "output_dir": str(directory / "run"),
        "run_name": "tiny-run",
        "modes": list(modes),
        "generate": {"prompts": {"limit": 8}, "base": endpoint, "critic": endpoint, "progress": False},
        "format": {"validation_fraction": 0.25},
        "train": {
            "args": {
                "model_name_or_path": str(model_dir),
                "use_peft": True,
                "lora_r": 8,
                "lora_alpha": 16,
                "lora_target_modules": ["q_proj", "v_proj"],
                "assistant_only_loss": True,
                "per_device_train_batch_size": 4,
                "learning_rate": 1e-3,
                "max_steps": 3,
                "logging_steps": 1,
                "eval_strategy": "steps",
                "eval_steps": 3,
                "save_strategy": "no",
                "use_cpu": True,
                "dataloader_num_workers": 0,
                **train_args,
            }
        },  # fmt: skip
        "evaluate": {"truthfulqa_file": str(truthfulqa_file), "limit": QUESTIONS, "dtype": "float32"},
        "wandb": {"project": "pipeline-test"},
    }
    path = directory / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


@pytest.fixture
def no_wandb_credentials(tmp_path, monkeypatch):
    without_wandb_credentials(monkeypatch, tmp_path / "home", tmp_path / "unused")
    monkeypatch.setenv("WANDB_DIR", "")  # the pipeline picks <output_dir>; teardown removes what it sets
    monkeypatch.delenv("WANDB_DIR")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")


def read(path: Path) -> dict:
    return json.loads(path.read_text())


# -- one mode, end to end ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, tiny_model_dir, server, truthfulqa_file):
    """One `spri-sft run RECIPE.yaml`, its stdout, then a second run of the same command."""
    tmp = tmp_path_factory.mktemp("pipeline")
    with pytest.MonkeyPatch.context() as mp:
        without_wandb_credentials(mp, tmp / "home", tmp / "unused")
        mp.setenv("WANDB_DIR", "")
        mp.delenv("WANDB_DIR")
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("TOKENIZERS_PARALLELISM", "false")
        recipe = make_recipe(tmp, tiny_model_dir, server, truthfulqa_file)
        first = _run_capturing(["run", str(recipe)])
        wandb_dir_after = os.environ.get("WANDB_DIR")
        root = tmp / "run"
        mtimes = {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file() and "wandb" not in p.parts}
        second = _run_capturing(["run", str(recipe)])
    return {
        "root": root, "recipe": recipe, "first": first, "second": second, "mtimes": mtimes,
        "wandb_dir_after": wandb_dir_after,
    }  # fmt: skip


def _run_capturing(argv: list[str]) -> str:
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(argv) == 0
    return out.getvalue()


def test_every_stage_writes_its_outputs_in_one_directory(finished_run):
    root = finished_run["root"]
    assert len((root / "generate/spri/records.jsonl").read_text().splitlines()) == 8
    assert (root / "dataset/spri/hf/dataset_dict.json").is_file()
    assert (root / "checkpoints/spri/adapter_model.safetensors").is_file()
    assert read(root / "eval/base/results.json")["n"] == QUESTIONS
    assert read(root / "eval/spri/results.json")["adapter"] == str(root / "checkpoints/spri")
    assert {p.name for p in root.iterdir()} >= {"config.yaml", "report.md", "report.json", "wandb"}
    for stage in ("generate/spri", "dataset/spri", "eval/base", "checkpoints/spri", "eval/spri"):
        assert read(root / stage / "stage.json")["status"] == "done", stage


def test_report_numbers_are_the_stages_own_numbers(finished_run):
    root = finished_run["root"]
    report = read(root / "report.json")
    row = report["modes"]["spri"]
    generation = read(root / "generate/spri/summary.json")
    trained = read(root / "checkpoints/spri/all_results.json")
    before, after = read(root / "eval/base/results.json"), read(root / "eval/spri/results.json")

    assert row["generation"]["records"] == generation["records"] == 8
    assert row["generation"]["accepted"] == generation["status"]["accepted"]
    calls = sum(u["calls"] for key, u in generation["usage"].items() if key.startswith("base:"))
    assert row["generation"]["base_calls_per_record"] == round(calls / 8, 2)
    assert row["dataset"]["splits"] == {"train": 6, "validation": 2}
    state = read(root / "checkpoints/spri/trainer_state.json")
    last_loss = [entry["loss"] for entry in state["log_history"] if "loss" in entry][-1]
    assert row["train"] == {"steps": 3, "train_loss": last_loss, "eval_loss": trained["eval_loss"]}
    assert report["base"]["mc1"] == before["mc1"] and report["base"]["mc2"] == before["mc2"]
    assert row["truthfulqa"]["mc2"] == after["mc2"]
    assert row["truthfulqa"]["mc2_delta"] == pytest.approx(after["mc2"] - before["mc2"])


def test_report_md_has_every_field_filled(finished_run):
    text = (finished_run["root"] / "report.md").read_text()
    lines = text.splitlines()
    (row,) = [i for i, line in enumerate(lines) if line.startswith("| SFT on spri |")]
    header = row
    while header > 0 and lines[header - 1].startswith("|"):
        header -= 1  # the table's first line names its columns

    def cells(line: str) -> list[str]:
        return [cell.strip() for cell in line.strip("|").split("|")]

    assert len(cells(lines[row])) == len(cells(lines[header])) and "–" not in cells(lines[row]), lines[row]


def test_format_counts_the_rows_over_the_training_recipes_max_length_and_the_report_shows_it(
    finished_run, tiny_model_dir
):
    root = finished_run["root"]
    lengths = read(root / "dataset/spri/summary.json")["lengths"]
    # The recipe names no max_length: TRL's default, 1024, is what training cuts at.
    assert (lengths["tokenizer"], lengths["max_length"], lengths["policy"]) == (str(tiny_model_dir), 1024, "drop")
    assert lengths["rows"] == {"train": 6, "validation": 2}
    assert lengths["over_max_length"] == {"train": 0, "validation": 0}
    printed = f"[spri-sft] format: 0 of 8 rows exceed max_length=1024 tokens of `{tiny_model_dir}`"
    assert printed in finished_run["first"]
    text = (root / "report.md").read_text()
    header = next(line for line in text.splitlines() if line.startswith("| model | records |"))
    column = [cell.strip() for cell in header.strip("|").split("|")].index("over max_length")
    (row,) = [line for line in text.splitlines() if line.startswith("| SFT on spri |")]
    assert [cell.strip() for cell in row.strip("|").split("|")][column].startswith("0 of 8")


def test_the_run_ends_with_the_report_then_where_the_report_adapter_and_wandb_runs_are(finished_run):
    root = finished_run["root"]
    text = (root / "report.md").read_text()
    report, _, tail = finished_run["first"].rstrip().rpartition(text.rstrip())
    runs = root.resolve() / "wandb"
    assert report and tail.strip().splitlines() == [
        f"[spri-sft] report: {root / 'report.md'}",
        f"[spri-sft] adapter (spri): {root / 'checkpoints/spri'}",
        f"[spri-sft] W&B runs (offline): {runs}; upload them with `wandb sync {runs}/offline-run-*`",
    ]


def test_the_run_leaves_the_wandb_environment_as_it_found_it(finished_run):
    assert finished_run["wandb_dir_after"] is None


def test_all_wandb_runs_are_offline_in_one_group(finished_run):
    run_dirs = sorted((finished_run["root"] / "wandb").glob("offline-run-*"))
    runs = []
    for run_dir in run_dirs:
        (record,) = [r.run for r in wandb_records(run_dir) if r.WhichOneof("record_type") == "run"][:1]
        runs.append((record.run_group, record.job_type, record.display_name))
    assert {group for group, _, _ in runs} == {"tiny-run"}
    names = {name for _, _, name in runs}
    # The first run's five (generate, eval-base, train, eval-spri, report) plus the rerun's report.
    assert names == {
        "tiny-run-generate-spri",
        "tiny-run-eval-base",
        "tiny-run-spri",
        "tiny-run-eval-spri",
        "tiny-run-report",
    }
    assert len(runs) == 6


def test_a_rerun_skips_every_finished_stage_and_rewrites_nothing(finished_run):
    skipped = re.findall(r"\[spri-sft\] (\S+): done in an earlier run, skipped", finished_run["second"])
    assert skipped == ["generate/spri", "dataset/spri", "eval/base", "checkpoints/spri", "eval/spri"]
    for path, mtime in finished_run["mtimes"].items():
        if path.name not in ("report.md", "report.json", "config.yaml", "sample.html"):  # the report's own outputs
            assert path.stat().st_mtime_ns == mtime, path


def test_a_rerun_with_changed_training_settings_is_refused(finished_run):
    with pytest.raises(UserError, match=r"checkpoints/spri was made with other settings"):
        run_pipeline_from(finished_run["recipe"], "--train.args.learning_rate", "0.5")


def test_a_run_sharing_a_generate_dir_reuses_its_records(finished_run, tmp_path, capsys):
    shared = finished_run["root"] / "generate"
    records = (shared / "spri/records.jsonl").read_bytes()
    report = run_pipeline_from(
        finished_run["recipe"], "--output_dir", str(tmp_path / "other"), "--generate_dir", str(shared),
        "--evaluate.enabled", "false", "--wandb.enabled", "false",
    )  # fmt: skip
    assert "generate/spri: done in an earlier run, skipped" in capsys.readouterr().out
    assert (shared / "spri/records.jsonl").read_bytes() == records
    assert not (tmp_path / "other/generate").exists()
    assert report["modes"]["spri"]["generation"]["records"] == 8
    assert (tmp_path / "other/checkpoints/spri/adapter_model.safetensors").is_file()


def run_pipeline_from(recipe: Path, *overrides: str) -> dict:
    from spri_sft.config import load_config

    return run_pipeline(load_config(PipelineConfig, ["--config", str(recipe), *overrides]))


def run_capturing(argv: list[str]) -> str:
    """`spri-sft ARGV`'s standard output; it must succeed."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(argv) == 0
    return out.getvalue()


def run_twice(tmp: Path, write_recipe) -> dict:
    """`spri-sft run` of the recipe `write_recipe(tmp)` writes (output_dir tmp/run), then the same command again, without
    W&B credentials or the Hub: {root, first and second stdout, every file's mtime after the first}."""
    with pytest.MonkeyPatch.context() as mp:
        without_wandb_credentials(mp, tmp / "home", tmp / "unused")
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("TOKENIZERS_PARALLELISM", "false")
        recipe = write_recipe(tmp)
        first = run_capturing(["run", str(recipe)])
        root = tmp / "run"
        mtimes = {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}
        second = run_capturing(["run", str(recipe)])
    return {"root": root, "first": first, "second": second, "mtimes": mtimes}


# -- ablation: two modes, one table -----------------------------------------------------------


def test_two_modes_train_two_adapters_against_one_base_score(
    tmp_path, tiny_model_dir, server, truthfulqa_file, no_wandb_credentials, capsys
):
    recipe = make_recipe(tmp_path, tiny_model_dir, server, truthfulqa_file, modes=("spri", "direct"))
    report = run_pipeline_from(recipe, "--wandb.enabled", "false")

    root = tmp_path / "run"
    assert set(report["modes"]) == {"spri", "direct"}
    for mode in ("spri", "direct"):
        assert (root / "checkpoints" / mode / "adapter_model.safetensors").is_file()
        assert report["modes"][mode]["truthfulqa"]["mc1"] is not None
    assert sorted(p.name for p in (root / "eval").iterdir()) == ["base", "direct", "spri"]
    for mode in ("spri", "direct"):
        assert read(root / "eval" / mode / "results.json")["adapter"] == str(root / "checkpoints" / mode)
    spri, direct = report["modes"]["spri"]["generation"], report["modes"]["direct"]["generation"]
    assert spri["critic_calls_per_record"] > 0 and spri["principle_rounds_mean"] is not None
    assert direct["critic_calls_per_record"] == 0 and direct["principle_rounds_mean"] is None
    table = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| SFT on ")]
    assert [line.split("|")[1].strip() for line in table] == ["SFT on spri", "SFT on direct"]
    assert not (root / "wandb").exists()


# -- stage resume after a kill during training -------------------------------------------------


def test_a_run_killed_during_training_resumes_without_regenerating_or_reformatting(
    tmp_path, tiny_model_dir, server, truthfulqa_file, no_wandb_credentials
):
    recipe = make_recipe(
        tmp_path, tiny_model_dir, server, truthfulqa_file,
        max_steps=40, save_strategy="steps", save_steps=10, eval_strategy="no",
    )  # fmt: skip
    root = tmp_path / "run"
    command = [sys.executable, "-m", "spri_sft.cli", "run", str(recipe), "--wandb.enabled", "false"]

    with (tmp_path / "first.log").open("wb") as log:
        first = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 240
    checkpoint_state = root / "checkpoints/spri/checkpoint-10/trainer_state.json"
    while not checkpoint_state.is_file() and first.poll() is None:
        assert time.monotonic() < deadline, "no checkpoint within 240 s"
        time.sleep(0.2)
    os.killpg(first.pid, signal.SIGKILL)  # the pipeline and its training child, no cleanup
    first.wait()
    assert read(root / "checkpoints/spri/stage.json")["status"] == "running"
    records = root / "generate/spri/records.jsonl"
    untouched = {p: p.stat().st_mtime_ns for p in [records, *(root / "dataset/spri").rglob("*")] if p.is_file()}

    second = subprocess.run(command, capture_output=True, text=True, timeout=240)

    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    output = second.stdout + second.stderr
    assert "generate/spri: done in an earlier run, skipped" in output
    assert "dataset/spri: done in an earlier run, skipped" in output
    assert re.search(r"resuming from \S*checkpoint-(10|20|30)", output)
    assert all(p.stat().st_mtime_ns == mtime for p, mtime in untouched.items())
    state = read(root / "checkpoints/spri/trainer_state.json")
    assert state["global_step"] == 40
    assert [e["step"] for e in state["log_history"] if "loss" in e] == list(range(1, 41))
    assert read(root / "checkpoints/spri/stage.json")["attempts"] == 2
    report = read(root / "report.json")["modes"]["spri"]["train"]
    assert (
        report["steps"] == 40 and report["train_loss"] == [e["loss"] for e in state["log_history"] if "loss" in e][-1]
    )


# -- errors before any work -------------------------------------------------------------------


def test_a_typo_in_the_training_arguments_stops_the_run_before_generation(
    tmp_path, tiny_model_dir, server, truthfulqa_file
):
    recipe = make_recipe(tmp_path, tiny_model_dir, server, truthfulqa_file, learnig_rate=1e-4)
    with pytest.raises(UserError, match="learnig_rate"):
        run_pipeline_from(recipe)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["--modes", "[spri, sprii]"], "sprii"),
        (["--modes", "[spri, spri]"], "distinct"),
        (["--generate.output_dir", "elsewhere"], "generate.output_dir is set by the pipeline"),
        (["--format.records", "[a.jsonl]"], "format.records is set by the pipeline"),
        (["--generate.mode", "direct"], r"list the modes in modes: \(e.g. \[direct\]\)"),
        (["--evaluate.truthfulqa_file", "missing.json"], "missing.json: file not found"),
    ],
)
def test_recipe_mistakes_are_one_line_errors(tmp_path, tiny_model_dir, server, truthfulqa_file, overrides, message):
    recipe = make_recipe(tmp_path, tiny_model_dir, server, truthfulqa_file)
    with pytest.raises(UserError, match=message):
        run_pipeline_from(recipe, *overrides)


def test_without_truthfulqa_data_or_the_hub_the_packaged_copy_is_used_in_one_line(
    tmp_path, tiny_model_dir, server, truthfulqa_file, no_wandb_credentials, capsys
):
    from spri_sft import truthfulqa_data

    recipe = make_recipe(tmp_path, tiny_model_dir, server, truthfulqa_file)
    report = run_pipeline_from(recipe, "--evaluate.truthfulqa_file", "null", "--wandb.enabled", "false")

    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("[spri-sft] TruthfulQA")]
    assert len(lines) == 1 and "Hub is unreachable" in lines[0]
    assert report["truthfulqa"]["source"] == truthfulqa_data.SOURCE and report["base"]["mc1"] is not None
    assert read(tmp_path / "run/eval/spri/results.json")["data_sha256"] == truthfulqa_data.SHA256


# -- stage markers ----------------------------------------------------------------------------


def test_a_stage_is_done_only_after_finish_and_only_with_its_own_settings(tmp_path):
    stage = Stage("train/x", tmp_path / "x", "abc")
    assert not stage.is_done()
    stage.begin()
    assert not stage.is_done()
    stage.finish(loss=1.0)
    assert stage.is_done()
    assert read(stage.marker)["outputs"] == {"loss": 1.0}
    with pytest.raises(UserError, match="was made with other settings"):
        Stage("train/x", tmp_path / "x", "def").is_done()


def test_a_torn_stage_marker_means_run_the_stage_again(tmp_path):
    stage = Stage("train/x", tmp_path / "x", "abc")
    stage.begin()
    stage.marker.write_text('{"stage": "train/x", "fingerp')
    assert not stage.is_done()


def test_without_a_file_the_hub_questions_are_snapshotted_once_for_guard_and_evaluation(
    tmp_path, truthfulqa_file, monkeypatch
):
    from spri_sft import truthfulqa_data
    from spri_sft.evaluate import truthfulqa
    from spri_sft.pipeline import run

    hub_calls = []
    load_questions = truthfulqa.load_questions

    def load_from_hub(path, dataset, split):
        hub_calls.append((path, dataset, split))
        return load_questions(str(truthfulqa_file))  # stands in for the Hub's 817 rows

    monkeypatch.setattr(truthfulqa_data, "hub_reachable", lambda: True)
    monkeypatch.setattr(truthfulqa, "load_questions", load_from_hub)
    config = PipelineConfig()

    source = run._truthfulqa_source(config, tmp_path)
    again = run._truthfulqa_source(config, tmp_path)

    assert hub_calls == [(None, "truthfulqa/truthful_qa", "validation")]
    assert source == again and source["file"] == str(tmp_path / "eval/truthfulqa.jsonl")
    questions, _ = load_questions(source["file"])
    assert questions == load_questions(str(truthfulqa_file))[0]
    assert read_questions(source["file"]) == [q.question for q in questions]


def test_help_lists_the_sections_of_every_stage(capsys):
    assert main(["run", "--help"]) == 0
    text = capsys.readouterr().out
    for section in ("generate", "format", "train", "evaluate", "wandb"):  # each its own --help=SECTION
        assert main(["run", f"--help={section}"]) == 0
        text += capsys.readouterr().out
    for option in (
        "--modes",
        "--generate.base.model",
        "--format.validation_rows",
        "--train.recipe",
        "--evaluate.truthfulqa_file",
        "--wandb.group",
    ):
        assert option in text, option


def test_a_stage_started_with_other_settings_starts_over_when_it_left_nothing_to_resume(tmp_path):
    Stage("eval/x", tmp_path / "x", "abc").begin()
    assert not Stage("eval/x", tmp_path / "x", "def").is_done(resumable=False)
    with pytest.raises(UserError, match="was started with other settings"):
        Stage("eval/x", tmp_path / "x", "def").is_done(resumable=True)


def test_an_incremental_stage_made_with_other_settings_runs_again_instead_of_being_refused(tmp_path):
    stage = Stage("generate/x", tmp_path / "x", "abc", incremental=True)
    stage.begin()
    stage.finish()
    assert not Stage("generate/x", tmp_path / "x", "def", incremental=True).is_done()
    assert Stage("generate/x", tmp_path / "x", "abc", incremental=True).is_done()


def test_input_files_enter_fingerprints_by_their_contents(tmp_path):
    from spri_sft.pipeline.stages import file_digest

    path = tmp_path / "questions.json"
    path.write_text("[1]")
    before = file_digest(path)
    path.write_text("[2]")  # edited in place: same path, other input
    assert file_digest(path) != before
    assert file_digest(tmp_path / "copy.json") != file_digest(path)


def test_each_finish_names_new_outputs(tmp_path):
    stage = Stage("generate/x", tmp_path / "x", "abc")
    stage.begin()
    stage.finish()
    first = stage.output_id
    stage.begin()
    stage.finish()
    assert first and stage.output_id and stage.output_id != first


def test_redone_generation_is_not_silently_paired_with_the_old_dataset(
    tmp_path, tiny_model_dir, server, truthfulqa_file, no_wandb_credentials
):
    import shutil

    recipe = make_recipe(tmp_path, tiny_model_dir, server, truthfulqa_file, max_steps=1)
    overrides = ("--evaluate.enabled", "false", "--wandb.enabled", "false")
    run_pipeline_from(recipe, *overrides)
    shutil.rmtree(tmp_path / "run/generate/spri")  # e.g. to draw new samples with the same settings

    with pytest.raises(UserError, match=r"dataset/spri was made with other settings or from other inputs"):
        run_pipeline_from(recipe, *overrides)


def test_training_arguments_merge_into_the_recipe_key_by_key(tmp_path):
    from spri_sft.config import load_config
    from spri_sft.pipeline.run import train_plan

    base = tmp_path / "lora.yaml"
    base.write_text(yaml.safe_dump({"model_name_or_path": "m", "env": {"A": "1", "B": "2"}, "learning_rate": 1e-4}))
    config = load_config(
        PipelineConfig,
        ["--train.recipe", str(base), "--train.args.env.B", "3", "--train.args.learning_rate", "0.001"],
    )
    plan = train_plan(config, "spri", tmp_path, "name", "group")
    assert plan.args["env"] == {"A": "1", "B": 3, "WANDB_PROJECT": "spri-sft", "WANDB_RUN_GROUP": "group"}
    assert plan.args["learning_rate"] == 0.001


# -- format measures rows with the training recipe's tokenizer and max_length ------------------


def format_stage_of(tmp_path: Path, train_args: dict, **format_section):
    """format_stage of mode spri for a recipe whose format section is `format_section`, after a finished generation."""
    from spri_sft.config import from_dict
    from spri_sft.pipeline.run import TrainPlan, format_stage

    config = from_dict(PipelineConfig, {"output_dir": str(tmp_path), "format": format_section})
    generated = Stage("generate/spri", tmp_path / "generate/spri", "g")
    if generated.output_id is None:
        generated.begin()
        generated.finish()
    plan = TrainPlan("spri", tmp_path / "checkpoints/spri", {"model_name_or_path": "student/model", **train_args}, None)
    return format_stage(config, "spri", tmp_path, generated, None, plan)


def test_format_takes_the_student_max_length_template_and_overlong_from_the_training_recipe(tmp_path):
    def lengths(job):
        return job.tokenizer, job.max_length, job.training_template, job.overlong

    job, _ = format_stage_of(tmp_path, {"max_length": 2048, "training_template": "alpaca", "overlong": "keep"})
    assert lengths(job) == ("student/model", 2048, "alpaca", "keep")

    job, _ = format_stage_of(tmp_path, {})  # the recipe names none: TRL's default is what training cuts at
    assert lengths(job) == ("student/model", 1024, "model", "drop")

    job, _ = format_stage_of(tmp_path, {"max_length": None})  # training cuts nothing: nothing to count
    assert job.tokenizer is None and job.max_length is None

    own = {"tokenizer": "other/tokenizer", "max_length": 512, "overlong": "keep"}  # the recipe's format section wins
    job, _ = format_stage_of(tmp_path, {"max_length": 2048, "overlong": "drop"}, **own)
    assert lengths(job) == ("other/tokenizer", 512, "model", "keep")


def test_a_dataset_made_before_rows_were_measured_stays_done_unless_the_recipe_asks_for_lengths(tmp_path, capsys):
    _, before = format_stage_of(tmp_path, {"max_length": None})  # no length fields in its fingerprint, as before them
    before.begin()
    before.finish(rows=8)

    _, stage = format_stage_of(tmp_path, {"max_length": 1024})
    assert stage.is_done()
    assert "dataset/spri: made without measuring its rows against training's max_length" in capsys.readouterr().out

    _, stage = format_stage_of(tmp_path, {}, tokenizer="student/model", max_length=1024)  # the recipe's own setting
    with pytest.raises(UserError, match="dataset/spri was made with other settings"):
        stage.is_done()


def test_guard_training_data_false_turns_formats_truthfulqa_guard_off_under_the_unguarded_fingerprint(tmp_path):
    """format guards against the default TruthfulQA source when given no file, so the pipeline must say `none`."""
    from spri_sft.config import from_dict
    from spri_sft.pipeline.run import format_stage

    generated = Stage("generate/spri", tmp_path / "generate/spri", "g")
    generated.begin()
    generated.finish()
    questions = {"file": str(tmp_path / "questions.jsonl"), "source": "a file"}

    def stage_of(guard: bool):
        config = from_dict(PipelineConfig, {"output_dir": str(tmp_path), "evaluate": {"guard_training_data": guard}})
        return format_stage(config, "spri", tmp_path, generated, questions, None)

    (unguarded, stage), (guarded, _) = stage_of(False), stage_of(True)
    assert unguarded.truthfulqa_file == "none"
    assert guarded.truthfulqa_file == questions["file"]
    without_evaluation = format_stage(
        from_dict(PipelineConfig, {"output_dir": str(tmp_path)}), "spri", tmp_path, generated, None, None
    )[1]
    assert stage.fingerprint == without_evaluation.fingerprint  # datasets made before the switch stay done


def test_a_measured_dataset_is_redone_when_training_cuts_elsewhere(tmp_path):
    _, first = format_stage_of(tmp_path, {"max_length": 1024})
    first.begin()
    first.finish(rows=8)
    assert format_stage_of(tmp_path, {"max_length": 1024})[1].is_done()
    with pytest.raises(UserError, match="dataset/spri was made with other settings"):
        format_stage_of(tmp_path, {"max_length": 512})[1].is_done()
