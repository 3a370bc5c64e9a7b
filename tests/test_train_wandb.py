"""W&B logging of the train job without an API key: offline, one run, metrics, dataset, recipe names.

Nothing here reaches a W&B server. With no WANDB_API_KEY, no WANDB_MODE and no ~/.netrc entry
(HOME is an empty folder), `main()` must switch W&B to offline by itself; the run then lives in
`$WANDB_DIR/wandb/offline-run-*/run-<id>.wandb`, the append-only record log that `wandb sync`
uploads later. The tests read that log back (see `wandb_records`) and check what a synced run
would show: the training loss per step, the dataset artifact, and the project and run name the
recipe set (`env: {WANDB_PROJECT: ...}` and `run_name`, parsed by TrlParser).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import build_sft_dataset, tiny_lora_argv
from wandb_log import wandb_records, without_wandb_credentials

from spri_sft.train.sft import main, make_parser

MAX_STEPS = 3


@pytest.fixture(scope="module")
def sft_dataset(tmp_path_factory):
    return build_sft_dataset(tmp_path_factory.mktemp("sft-data") / "hf", train_rows=8, validation_rows=2)


def train_argv(model_dir: Path, dataset: Path, output_dir: Path, report_to: str) -> list[str]:
    return tiny_lora_argv(model_dir, dataset, output_dir, "--max_steps", str(MAX_STEPS), "--report_to", report_to)


@pytest.fixture(scope="module")
def offline_run(tiny_model_dir, sft_dataset, tmp_path_factory, shared_dir):
    """One training run with report_to wandb, its recipe setting the project and the run name, scored on
    TruthfulQA before and after training."""
    import wandb
    import yaml

    tmp = tmp_path_factory.mktemp("wandb-run")
    with pytest.MonkeyPatch.context() as mp:
        without_wandb_credentials(mp, tmp / "home", tmp / "wandb-dir")
        mp.chdir(tmp)
        recipe = tmp / "recipe.yaml"
        recipe.write_text(yaml.safe_dump({"env": {"WANDB_PROJECT": "my-project"}, "run_name": "my-run"}))
        args = make_parser().parse_args_and_config(
            args=[
                "--config", str(recipe), *train_argv(tiny_model_dir, sft_dataset, tmp / "out", "wandb"),
                "--truthfulqa_file", str(shared_dir / "data/truthfulqa/data/v0/mc_task.json"),
                "--truthfulqa_limit", "2", "--truthfulqa_before", "true",
            ]
        )  # fmt: skip
        project_after_parse = os.environ.get("WANDB_PROJECT")

        metrics = main(*args)

        mode_after_main = os.environ.get("WANDB_MODE")
        run_left_open = wandb.run is not None
        if run_left_open:  # see test_main_closes_the_wandb_run_it_opened; finishing flushes the record log
            wandb.finish()
    run_dirs = sorted(p for p in (tmp / "wandb-dir" / "wandb").glob("*run-*") if p.is_dir())
    return SimpleNamespace(
        tmp=tmp,
        args=args,
        metrics=metrics,
        project_after_parse=project_after_parse,
        mode_after_main=mode_after_main,
        run_left_open=run_left_open,
        run_dirs=run_dirs,
        records=wandb_records(run_dirs[0]) if len(run_dirs) == 1 else None,
    )


def records_of(offline_run, kind: str) -> list:
    assert offline_run.records is not None, f"expected one run directory, found {offline_run.run_dirs}"
    return [getattr(r, kind) for r in offline_run.records if r.WhichOneof("record_type") == kind]


def test_without_an_api_key_main_switches_wandb_to_offline(offline_run):
    assert offline_run.mode_after_main == "offline"


def test_exactly_one_offline_run_directory_in_wandb_dir(offline_run):
    assert [p.name.split("-")[0] for p in offline_run.run_dirs] == ["offline"], offline_run.run_dirs
    assert not (offline_run.tmp / "wandb").exists(), "a run was written to the working directory, not WANDB_DIR"


def test_the_run_holds_the_training_loss_of_every_step(offline_run):
    # "train/loss" is stored as the nested key ["train", "loss"].
    history = [
        {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in h.item}
        for h in records_of(offline_run, "history")
    ]
    losses = {row["train/global_step"]: row["train/loss"] for row in history if "train/loss" in row}
    assert sorted(losses) == list(range(1, MAX_STEPS + 1))
    assert all(math.isfinite(loss) and loss > 0 for loss in losses.values())
    # The same numbers the trainer averaged into its own train_loss.
    assert sum(losses.values()) / MAX_STEPS == pytest.approx(offline_run.metrics["train_loss"], rel=1e-4)


def artifacts_of_type(offline_run, kind: str) -> list:
    return [a for a in records_of(offline_run, "artifact") if a.type == kind]


def test_the_dataset_is_logged_as_an_artifact(offline_run, sft_dataset):
    (artifact,) = artifacts_of_type(offline_run, "dataset")
    assert artifact.type == "dataset" and artifact.name == sft_dataset.name
    files = {entry.path for entry in artifact.manifest.contents}
    assert {"dataset_dict.json", "train/data-00000-of-00001.arrow", "validation/data-00000-of-00001.arrow"} <= files


def test_the_dataset_artifact_leaves_out_tokenization_caches(offline_run):
    (artifact,) = artifacts_of_type(offline_run, "dataset")
    assert not [entry.path for entry in artifact.manifest.contents if Path(entry.path).name.startswith("cache-")]


def test_truthfulqa_before_and_after_training_are_summary_metrics_of_the_training_run(offline_run):
    summary = {}
    for record in records_of(offline_run, "summary"):
        summary.update({item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.update})
    out = Path(offline_run.args[1].output_dir)
    before = json.loads((out / "truthfulqa_before/results.json").read_text())
    after = json.loads((out / "truthfulqa/results.json").read_text())
    assert before["adapter"] is None and after["adapter"] == str(out)
    assert summary["before/truthfulqa_mc1/acc"] == before["mc1"]
    assert summary["before/truthfulqa_mc2/acc"] == before["mc2"]
    assert summary["truthfulqa_mc1/acc"] == after["mc1"] and summary["truthfulqa_mc2/acc"] == after["mc2"]
    assert offline_run.metrics["truthfulqa_before_mc2"] == before["mc2"]
    assert len(artifacts_of_type(offline_run, "evaluation")) == 1


def test_project_and_run_name_come_from_the_recipe(offline_run):
    assert offline_run.project_after_parse == "my-project"  # TrlParser applied the recipe's env: block
    assert offline_run.args[1].run_name == "my-run"
    (run,) = records_of(offline_run, "run")
    assert (run.project, run.display_name) == ("my-project", "my-run")


def test_main_closes_the_wandb_run_it_opened(offline_run):
    assert not offline_run.run_left_open


def test_report_to_none_creates_no_wandb_directory(tiny_model_dir, sft_dataset, tmp_path, monkeypatch):
    import wandb

    without_wandb_credentials(monkeypatch, tmp_path / "home", tmp_path / "wandb-dir")
    monkeypatch.chdir(tmp_path)

    main(*make_parser().parse_args_and_config(args=train_argv(tiny_model_dir, sft_dataset, tmp_path / "out", "none")))

    assert not (tmp_path / "wandb-dir").exists() and not (tmp_path / "wandb").exists()
    assert "WANDB_MODE" not in os.environ and wandb.run is None
