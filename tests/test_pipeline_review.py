"""`spri-sft run` and a reviewer's decisions: the run's review/decisions.jsonl shapes its datasets, and a changed
decision redoes a dataset and what was made from it, never its generation.

The run is test_pipeline's tiny recipe (fake server, tiny model) with one training step and no evaluation.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support.fake_openai_server import FakeOpenAIServer
from test_format import make_record, write_records
from test_pipeline import format_stage_of, make_recipe, run_pipeline_from
from test_report import BASE_MC1, report_of, table_row, write_json
from wandb_log import wandb_records, without_wandb_credentials

from spri_sft.config import dump_yaml, from_dict
from spri_sft.errors import UserError
from spri_sft.pipeline.config import PipelineConfig
from spri_sft.pipeline.report import build_report, log_report_to_wandb, render_markdown, write_report
from spri_sft.pipeline.stages import StageChanged
from spri_sft.review.decisions import append_decision

pytestmark = pytest.mark.timeout(300)

QUICK = ("--evaluate.enabled", "false", "--wandb.enabled", "false")


def read(path: Path) -> dict:
    return json.loads(path.read_text())


def dataset_ids(root: Path) -> set[str]:
    return {
        json.loads(line)["id"]
        for name in ("train", "validation")
        for line in (root / f"dataset/spri/{name}.jsonl").open()
    }


@pytest.mark.slow  # three runs, two of them training: ~35 s on 2 shared cores
def test_an_exclusion_redoes_the_dataset_and_training_and_not_the_generation(
    tmp_path, tiny_model_dir, shared_dir, monkeypatch, capsys
):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    with FakeOpenAIServer() as server:
        recipe = make_recipe(
            tmp_path, tiny_model_dir, server, shared_dir / "data/truthfulqa/data/v0/mc_task.json", max_steps=1
        )
        before, excluded = run_then_exclude(recipe, tmp_path / "run")
        capsys.readouterr()
        run_pipeline_from(recipe, *QUICK)  # the same command: the decision is what changed

    root = tmp_path / "run"
    out = capsys.readouterr().out
    assert "dataset/spri: review decisions changed (none → 1 excluded, 0 kept · " in out
    assert "generate/spri: done in an earlier run, skipped" in out
    assert read(root / "generate/spri/stage.json") == before["generate/spri"]
    assert (root / "generate/spri/records.jsonl").stat().st_mtime_ns == before["records written"]
    for stage in ("dataset/spri", "checkpoints/spri"):
        assert read(root / stage / "stage.json")["output_id"] != before[stage]["output_id"], stage
    assert excluded not in dataset_ids(root)
    assert read(root / "dataset/spri/summary.json")["dropped"]["review"] == 1
    assert read(root / "dataset/spri/summary.json")["review_reasons"] == {"off topic": 1}


def run_then_exclude(recipe: Path, root: Path) -> tuple[dict, str]:
    """Run the recipe, then exclude one of its dataset's rows; what the run made, and the excluded id."""
    run_pipeline_from(recipe, *QUICK)
    before = {
        stage: read(root / stage / "stage.json") for stage in ("generate/spri", "dataset/spri", "checkpoints/spri")
    }
    before["records written"] = (root / "generate/spri/records.jsonl").stat().st_mtime_ns
    excluded = sorted(dataset_ids(root))[0]
    append_decision(root / "review/decisions.jsonl", excluded, "spri", "exclude", "off topic", "ana")
    return before, excluded


def test_no_decisions_leave_the_fingerprint_of_a_dataset_made_before_reviews_unchanged(tmp_path):
    _, before = format_stage_of(tmp_path, {"max_length": None})

    (tmp_path / "review").mkdir()
    (tmp_path / "review/decisions.jsonl").write_text("")
    _, empty = format_stage_of(tmp_path, {"max_length": None})
    append_decision(tmp_path / "review/decisions.jsonl", "r1", "direct", "exclude", None, "ana")
    _, other_mode = format_stage_of(tmp_path, {"max_length": None})

    assert before.fingerprint == empty.fingerprint == other_mode.fingerprint


def test_the_runs_own_decisions_are_the_datasets_review_file_and_change_its_fingerprint(tmp_path):
    job, before = format_stage_of(tmp_path, {"max_length": None})
    assert job.review_file == "none"  # not format's default beside the records: that is not this run's review

    decisions = tmp_path / "review/decisions.jsonl"
    append_decision(decisions, "r1", "spri", "exclude", None, "ana")
    job, excluded = format_stage_of(tmp_path, {"max_length": None})
    append_decision(decisions, "r1", "spri", "keep", None, "ana")
    _, kept = format_stage_of(tmp_path, {"max_length": None})

    assert job.review_file == str(decisions)
    assert len({before.fingerprint, excluded.fingerprint, kept.fingerprint}) == 3
    assert kept.settings["review_file"].startswith("0 excluded, 1 kept · ")


def finished_dataset(root: Path, mode: str = "spri") -> None:
    """A dataset stage of `mode` recorded done with the settings it was made from (no decision then)."""
    from spri_sft.pipeline.stages import Stage

    stage = Stage.made_from(f"dataset/{mode}", root / "dataset" / mode, {"min_response_score": None})
    stage.begin()
    stage.finish(rows=8)


def test_a_rerun_rebuilds_a_finished_dataset_whose_modes_decisions_changed_and_says_so(tmp_path, capsys):
    from spri_sft.pipeline.run import reviewed_datasets

    config = from_dict(PipelineConfig, {"output_dir": str(tmp_path), "modes": ["spri", "direct"]})
    finished_dataset(tmp_path, "spri")
    finished_dataset(tmp_path, "direct")
    assert reviewed_datasets(config, tmp_path) == []

    append_decision(tmp_path / "review/decisions.jsonl", "r1", "spri", "exclude", "off topic", "ana")

    assert reviewed_datasets(config, tmp_path) == ["dataset/spri"]  # direct has no decision: it stays done
    assert "dataset/spri: review decisions changed (none → 1 excluded, 0 kept · " in capsys.readouterr().out


def test_a_review_file_the_recipe_names_but_that_is_missing_stops_the_run_before_generation(tmp_path):
    from spri_sft.pipeline.run import reviewed_datasets

    config = from_dict(
        PipelineConfig, {"output_dir": str(tmp_path), "format": {"review_file": str(tmp_path / "no.jsonl")}}
    )
    with pytest.raises(UserError, match=r"format.review_file .*no.jsonl: not found"):
        reviewed_datasets(config, tmp_path)


def test_a_changed_decision_refuses_the_finished_dataset_naming_the_review(tmp_path):
    decisions = tmp_path / "review/decisions.jsonl"
    append_decision(decisions, "r1", "spri", "exclude", None, "ana")
    _, made = format_stage_of(tmp_path, {"max_length": None})
    made.begin()
    made.finish(rows=8)

    append_decision(decisions, "r2", "spri", "exclude", "off topic", "ana")
    _, stage = format_stage_of(tmp_path, {"max_length": None})

    with pytest.raises(StageChanged, match=r"review_file \"1 excluded, 0 kept · \w+\" → \"2 excluded, 0 kept · \w+\""):
        stage.is_done()


# -- the report ------------------------------------------------------------------------------


def reviewed_report(root: Path) -> dict:
    """test_report's one-mode run whose dataset excluded 3 records by review (2 off topic, 1 without a reason)."""
    report_of(root, {"spri": (BASE_MC1, [0.6] * 40)})
    summary = read(root / "dataset/spri/summary.json")
    summary.update(
        review={"file": str(root / "review/decisions.jsonl"), "excluded": 3, "kept": 1},
        review_reasons={"off topic": 2, "no reason given": 1},
    )
    write_json(root / "dataset/spri/summary.json", summary)
    config = from_dict(PipelineConfig, {"output_dir": str(root), "modes": ["spri"]})
    return build_report(config, root, "run", "student", {"file": "tqa.json", "source": "tqa.json"})


def test_the_report_counts_the_reviewers_exclusions_by_reason(tmp_path):
    report = reviewed_report(tmp_path)

    assert report["modes"]["spri"]["dataset"]["review"] == {
        "file": str(tmp_path / "review/decisions.jsonl"),
        "excluded": 3,
        "kept": 1,
        "reasons": {"off topic": 2, "no reason given": 1},
    }
    text = render_markdown(report)
    assert "## Review" in text
    assert table_row(text, "spri") == ["spri", "3", "off topic 2, no reason given 1", "1"]


def test_a_report_of_datasets_made_without_a_review_has_no_review_section(tmp_path):
    report = report_of(tmp_path, {"spri": (BASE_MC1, [0.6] * 40)})
    assert "review" not in report["modes"]["spri"]["dataset"]
    assert "## Review" not in render_markdown(report)


def test_the_report_run_logs_the_viewers_sample_of_the_records(tmp_path, monkeypatch):
    without_wandb_credentials(monkeypatch, tmp_path / "home", tmp_path / "wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    (tmp_path / "wandb").mkdir()
    root = tmp_path / "run"
    report = reviewed_report(root)
    dump_yaml(from_dict(PipelineConfig, {"output_dir": str(root), "modes": ["spri"]}), root / "config.yaml")
    write_records(root / "generate/spri/records.jsonl", [make_record(n) for n in range(12)])
    write_report(report, root)

    log_report_to_wandb(report, root, "report-test", "group", "run-report")

    page = (root / "review/sample.html").read_text()
    assert 'id="spri-data"' in page and "rec011" in page
    (run_dir,) = (tmp_path / "wandb" / "wandb").glob("offline-run-*")
    history = [
        item for r in wandb_records(run_dir) if r.WhichOneof("record_type") == "history" for item in r.history.item
    ]
    logged = {item.nested_key[1]: json.loads(item.value_json) for item in history
              if list(item.nested_key[:1]) == ["report/records_sample"]}  # fmt: skip
    assert logged["_type"] == "html-file"
    (html_file,) = run_dir.glob("files/media/html/report/records_sample_*.html")
    assert html_file.read_text() == page, "shown as exported: no stylesheet injected"
