"""evaluate.lm_eval_tasks: lm-evaluation-harness itself on the base model and on each adapter, its numbers kept.

A small local multiple-choice task (20 rows of a JSON-lines file, a task YAML with `dataset_path:
json`, both written into tmp_path) runs through the pipeline's lm-eval stage on conftest's tiny
Llama and on a LoRA adapter of it whose weights are random (so its scores differ from the base
model's). Every number is compared with what `lm_eval.simple_evaluate` returns when called directly.
Offline: HF_DATASETS_OFFLINE=1, HF_HUB_OFFLINE=1.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml

from spri_sft.config import from_dict
from spri_sft.errors import UserError
from spri_sft.pipeline.config import PipelineConfig
from spri_sft.pipeline.report import build_report, lm_eval_rows, render_markdown
from spri_sft.pipeline.run import TrainPlan, lm_eval_job, lm_eval_stage
from spri_sft.pipeline.stages import Stage

lm_eval = pytest.importorskip("lm_eval", reason="lm-eval is an optional dependency (pip install 'spri-sft[lm-eval]')")

TASK = "spri_test_colours"
COLOURS = ["red", "green", "blue", "yellow"]


def write_task(directory: Path, rows: int = 20) -> Path:
    """A folder for lm-eval's include_path: a 20-question multiple-choice task over a local JSON-lines file."""
    directory.mkdir(parents=True, exist_ok=True)
    data = directory / "colours.jsonl"
    data.write_text(
        "".join(
            json.dumps({"question": f"Item {i} is painted. Which colour is it?", "choices": COLOURS, "answer": i % 4})
            + "\n"
            for i in range(rows)
        )
    )
    task = {
        "task": TASK,
        "dataset_path": "json",
        "dataset_name": None,
        "dataset_kwargs": {"data_files": {"test": str(data)}},
        "test_split": "test",
        "output_type": "multiple_choice",
        "doc_to_text": "Question: {{question}}\nAnswer:",
        "doc_to_choice": "choices",
        "doc_to_target": "answer",
        "metric_list": [
            {"metric": "acc", "aggregation": "mean", "higher_is_better": True},
            {"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True},
        ],
        "metadata": {"version": 2.0},
    }
    (directory / f"{TASK}.yaml").write_text(yaml.safe_dump(task, sort_keys=False))
    return directory


def make_adapter(model_dir: Path, directory: Path) -> Path:
    """A LoRA adapter of the tiny model with random A and B (not PEFT's zero B), so it changes the scores."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(1)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    lora = LoraConfig(r=4, lora_alpha=16, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    get_peft_model(model, lora).save_pretrained(directory)
    return directory


def recipe(root: Path, task_dir: Path, **evaluate) -> PipelineConfig:
    settings = {
        "lm_eval_tasks": [TASK], "lm_eval_include_path": str(task_dir), "lm_eval_include_defaults": False,
        "lm_eval_args": {"bootstrap_iters": 200},
        "dtype": "float32", "device": "cpu", "batch_size": 8, **evaluate,
    }  # fmt: skip
    return from_dict(
        PipelineConfig, {"output_dir": str(root), "modes": ["spri"], "evaluate": settings, "wandb": {"enabled": False}}
    )


def finished_training(plan: TrainPlan) -> Stage:
    """The training stage's marker, as a finished training leaves it beside its adapter."""
    stage = Stage(f"checkpoints/{plan.mode}", plan.output_dir, "trained")
    stage.begin()
    stage.finish(steps=3)
    return stage


def direct_lm_eval(model: Path, task_dir: Path, adapter: Path | None = None) -> dict:
    """lm-eval called by hand, as its documentation shows, with the settings of `recipe`."""
    from lm_eval.tasks import TaskManager

    model_args = {"pretrained": str(model), "dtype": "float32", **({"peft": str(adapter)} if adapter else {})}
    return lm_eval.simple_evaluate(
        model="hf", model_args=model_args, tasks=[TASK], task_manager=TaskManager(include_path=str(task_dir), include_defaults=False),
        batch_size=8, device="cpu", bootstrap_iters=200,
    )  # fmt: skip


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory, tiny_model_dir):
    """The pipeline's lm-eval stage on the base model (eval/base/lm_eval) and on an adapter (eval/spri/lm_eval)."""
    tmp = tmp_path_factory.mktemp("lm-eval")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_DATASETS_OFFLINE", "1")
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("HF_DATASETS_CACHE", str(tmp / "datasets-cache"))
        task_dir = write_task(tmp / "tasks")
        root = tmp / "run"
        config = recipe(root, task_dir)
        adapter = make_adapter(tiny_model_dir, root / "checkpoints" / "spri")
        plan = TrainPlan("spri", adapter, {"model_name_or_path": str(tiny_model_dir), "use_peft": True}, None)
        trained = finished_training(plan)
        base = lm_eval_stage(config, root / "eval" / "base" / "lm_eval", plan, None, "run", "group")
        tuned = lm_eval_stage(config, root / "eval" / "spri" / "lm_eval", plan, trained, "run", "group")
        direct = {
            "base": direct_lm_eval(tiny_model_dir, task_dir),
            "spri": direct_lm_eval(tiny_model_dir, task_dir, adapter),
        }
        yield {
            "root": root, "config": config, "plan": plan, "trained": trained, "stages": {"base": base, "spri": tuned},
            "direct": direct, "model": tiny_model_dir, "adapter": adapter, "task_dir": task_dir,
        }  # fmt: skip


def results_of(evaluated, name: str) -> dict:
    return json.loads((evaluated["root"] / "eval" / name / "lm_eval" / "results.json").read_text())


@pytest.mark.parametrize("name", ["base", "spri"])
def test_every_metric_is_the_one_lm_eval_returns_when_called_directly(evaluated, name):
    ours = results_of(evaluated, name)["tasks"][TASK]
    theirs = evaluated["direct"][name]["results"][TASK]
    assert ours["metrics"] == {key: value for key, value in theirs.items() if key != "alias"}
    assert (
        ours["metric"] == "acc" and ours["value"] == theirs["acc,none"] and ours["stderr"] == theirs["acc_stderr,none"]
    )


def test_the_adapter_is_scored_with_its_weights_not_as_the_base_model(evaluated):
    base, tuned = (results_of(evaluated, name) for name in ("base", "spri"))
    assert tuned["simple_evaluate"]["model_args"]["peft"] == str(evaluated["adapter"])
    assert "peft" not in base["simple_evaluate"]["model_args"]
    assert base["tasks"][TASK]["metrics"] != tuned["tasks"][TASK]["metrics"]


def test_results_keep_lm_evals_task_versions_and_shots(evaluated):
    results = results_of(evaluated, "base")
    assert results["versions"] == {TASK: 2.0} and results["n-shot"] == {TASK: 0}
    assert results["tasks"][TASK]["version"] == 2.0 and results["tasks"][TASK]["n-shot"] == 0
    assert results["lm_eval_version"] == lm_eval.__version__


def test_the_report_has_a_column_per_task_for_the_base_model_and_each_mode_with_its_delta(evaluated):
    report = build_report(
        evaluated["config"], evaluated["root"], "run", str(evaluated["model"]), {"file": "-", "source": "-"}
    )
    text = render_markdown(report)
    section = text.split("## lm-evaluation-harness tasks", 1)[1].split("\n## ", 1)[0]
    table = section.split("\n\n")[2]  # heading, the line on lm-eval's numbers, the table
    header, _, base_row, spri_row = table.splitlines()
    base, tuned = (results_of(evaluated, name)["tasks"][TASK] for name in ("base", "spri"))
    assert header == f"| model | {TASK} (acc) |"
    assert base_row == f"| base (before) | {base['value']:.4f} ± {base['stderr']:.4f} |"
    delta = tuned["value"] - base["value"]
    assert spri_row == f"| SFT on spri | {tuned['value']:.4f} ± {tuned['stderr']:.4f} ({delta:+.4f}) |"
    assert report["lm_eval"]["rows"]["spri"][TASK]["delta"] == delta


def test_the_wandb_comparison_table_has_each_tasks_value_stderr_and_delta(evaluated):
    report = build_report(
        evaluated["config"], evaluated["root"], "run", str(evaluated["model"]), {"file": "-", "source": "-"}
    )
    columns, rows = lm_eval_rows(report)
    tuned = dict(zip(columns, rows[1]))
    scores = results_of(evaluated, "spri")["tasks"][TASK]
    assert tuned["model"] == "spri" and tuned[f"{TASK}/acc"] == scores["value"]
    assert tuned[f"{TASK}/acc_stderr"] == scores["stderr"]
    assert tuned[f"{TASK}/acc_delta"] == scores["value"] - results_of(evaluated, "base")["tasks"][TASK]["value"]


def test_a_rerun_skips_the_finished_evaluations(evaluated, capsys):
    before = (evaluated["root"] / "eval" / "spri" / "lm_eval" / "results.json").stat().st_mtime_ns
    lm_eval_stage(
        evaluated["config"],
        evaluated["root"] / "eval" / "spri" / "lm_eval",
        evaluated["plan"],
        evaluated["trained"],
        "run",
        "group",
    )
    assert "eval/spri/lm_eval: done in an earlier run, skipped" in capsys.readouterr().out
    assert (evaluated["root"] / "eval" / "spri" / "lm_eval" / "results.json").stat().st_mtime_ns == before


def test_a_finished_evaluation_asked_for_other_tasks_or_arguments_is_refused(evaluated):
    changed = recipe(evaluated["root"], evaluated["task_dir"], lm_eval_args={"bootstrap_iters": 200, "limit": 5})
    with pytest.raises(UserError, match="delete .*eval/spri/lm_eval"):
        lm_eval_stage(
            changed,
            evaluated["root"] / "eval" / "spri" / "lm_eval",
            evaluated["plan"],
            evaluated["trained"],
            "run",
            "group",
        )


def test_an_edited_local_task_file_changes_the_fingerprint(tmp_path, tiny_model_dir):
    from spri_sft.pipeline.run import lm_eval_fingerprint

    task_dir = write_task(tmp_path / "tasks")
    config = recipe(tmp_path / "run", task_dir)
    plan = TrainPlan("spri", tmp_path / "adapter", {"model_name_or_path": str(tiny_model_dir)}, None)
    before = lm_eval_fingerprint(config, plan, None)
    write_task(task_dir, rows=19)
    assert lm_eval_fingerprint(config, plan, None) != before


def test_an_unknown_task_name_is_a_one_line_error_before_anything_runs(tmp_path, tiny_model_dir):
    from spri_sft.evaluate.lm_eval_tasks import check_job

    config = recipe(tmp_path / "run", write_task(tmp_path / "tasks"), lm_eval_tasks=[TASK, "hellaswagg"])
    plan = TrainPlan("spri", tmp_path / "adapter", {"model_name_or_path": str(tiny_model_dir)}, None)
    with pytest.raises(UserError, match="hellaswagg not found among .*tasks"):
        check_job(lm_eval_job(config, plan, None))


def test_an_argument_simple_evaluate_does_not_take_is_refused(tmp_path, tiny_model_dir):
    from spri_sft.evaluate.lm_eval_tasks import check_job

    config = recipe(tmp_path / "run", write_task(tmp_path / "tasks"), lm_eval_args={"num_fewshots": 5})
    plan = TrainPlan("spri", tmp_path / "adapter", {"model_name_or_path": str(tiny_model_dir)}, None)
    with pytest.raises(UserError, match="num_fewshots are not arguments of lm_eval.simple_evaluate"):
        check_job(lm_eval_job(config, plan, None))


def test_without_lm_eval_installed_asking_for_its_tasks_is_a_one_line_error(monkeypatch):
    from spri_sft.evaluate.lm_eval_tasks import require_lm_eval

    monkeypatch.setitem(sys.modules, "lm_eval", None)  # what `import lm_eval` finds when it is not installed
    with pytest.raises(UserError, match=r"pip install 'spri-sft\[lm-eval\]'"):
        require_lm_eval()


@pytest.mark.slow  # indexes lm-eval's ~15,000 task files (about a minute on two busy cores)
def test_the_papers_five_benchmarks_are_lm_eval_task_names(tmp_path, tiny_model_dir):
    from spri_sft.evaluate.lm_eval_tasks import check_job

    paper = ["leaderboard_musr", "leaderboard_gpqa", "leaderboard_bbh", "leaderboard_mmlu_pro", "hellaswag"]
    config = from_dict(PipelineConfig, {"output_dir": str(tmp_path), "evaluate": {"lm_eval_tasks": paper}})
    check_job(lm_eval_job(config, TrainPlan("spri", tmp_path, {"model_name_or_path": str(tiny_model_dir)}, None), None))


def test_the_wandb_run_holds_every_metric_in_the_pipelines_group(evaluated, tmp_path, monkeypatch):
    from wandb_log import wandb_records, without_wandb_credentials

    from spri_sft.evaluate.lm_eval_tasks import log_to_wandb

    without_wandb_credentials(monkeypatch, tmp_path / "home", tmp_path / "wandb-dir")
    directory = evaluated["root"] / "eval" / "spri" / "lm_eval"
    log_to_wandb(results_of(evaluated, "spri"), directory, "lm-eval-test", "the-group", "run-lm-eval-spri")

    (run_dir,) = (tmp_path / "wandb-dir" / "wandb").glob("offline-run-*")
    records = wandb_records(run_dir)
    (info,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    assert (info.project, info.run_group, info.job_type) == ("lm-eval-test", "the-group", "evaluate")
    summary = {
        item.key or "/".join(item.nested_key): json.loads(item.value_json)
        for r in records if r.WhichOneof("record_type") == "summary" for item in r.summary.update
    }  # fmt: skip
    scores = results_of(evaluated, "spri")["tasks"][TASK]["metrics"]
    assert summary[f"lm_eval/{TASK}/acc"] == scores["acc,none"]
    assert summary[f"lm_eval/{TASK}/acc_norm_stderr"] == scores["acc_norm_stderr,none"]
    assert not any(key.endswith("/") for key in summary)
