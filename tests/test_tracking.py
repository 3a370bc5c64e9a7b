"""`spri_sft.tracking`, the one home of W&B: offline without a key, runs of a group, what they record.

Every run here is a real offline W&B run, read back from its `.wandb` record log (`wandb_log.py`);
nothing reaches a W&B server (no key, HOME an empty folder).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from wandb_log import wandb_records, without_wandb_credentials

from spri_sft import tracking


@pytest.fixture
def no_credentials(tmp_path, monkeypatch) -> Path:
    """No W&B login anywhere; runs go to <tmp>/wandb-dir/wandb."""
    without_wandb_credentials(monkeypatch, tmp_path / "home", tmp_path / "wandb-dir")
    monkeypatch.setenv("WANDB_SILENT", "true")
    return tmp_path / "wandb-dir" / "wandb"


def records(run_dir: Path, kind: str) -> list:
    return [getattr(r, kind) for r in wandb_records(run_dir) if r.WhichOneof("record_type") == kind]


def items(updates) -> dict:
    return {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in updates}


@pytest.mark.parametrize(
    "report_to, env, netrc, expected_mode",
    [
        (["wandb"], {}, None, "offline"),
        ("all", {}, None, "offline"),
        (["wandb"], {"WANDB_API_KEY": "x" * 40}, None, None),
        (["wandb"], {"WANDB_MODE": "disabled"}, None, "disabled"),
        (["wandb"], {}, "machine api.wandb.ai\n  login user\n  password " + "x" * 40 + "\n", None),
        (["wandb"], {}, "machine example.com\n  login user\n  password secret\n", "offline"),
        (["tensorboard"], {}, None, None),
        (["none"], {}, None, None),
    ],
    ids=[
        "no-key",
        "report-to-all",
        "api-key",
        "explicit-mode",
        "netrc-login",
        "netrc-other-host",
        "tensorboard",
        "none",
    ],
)
def test_offline_only_when_wandb_is_used_and_no_login_is_found(
    tmp_path, monkeypatch, report_to, env, netrc, expected_mode
):
    without_wandb_credentials(monkeypatch, tmp_path / "home", tmp_path / "wandb-dir")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    if netrc is not None:
        (tmp_path / "home" / ".netrc").write_text(netrc)

    tracking.use_offline_without_key(report_to)

    assert os.environ.get("WANDB_MODE") == expected_mode


def test_a_run_is_offline_in_its_group_and_records_summary_charts_tables_and_artifacts(no_credentials, tmp_path):
    data = tmp_path / "records.jsonl"
    data.write_text('{"id": 1}\n')
    with tracking.run(project="p", group="g", name="n", job_type="generate", config={"mode": "spri"}) as run:
        run.summarize({"generate/records": 1})
        run.log(
            tables={"t": (["a", "b"], [[1, "x"], [2, "y"]])},
            bar_charts={"scores": ({"5": 3, "4": 1}, "value", "records", "final score")},
        )
        run.log_artifact("records-spri", "sft-records", {"inside/records.jsonl": data}, metadata={"records": 1})

    (run_dir,) = no_credentials.glob("offline-run-*")
    (info,) = records(run_dir, "run")
    assert (info.project, info.run_group, info.display_name, info.job_type) == ("p", "g", "n", "generate")
    summary = {}
    for record in records(run_dir, "summary"):
        summary.update(items(record.update))
    assert summary["generate/records"] == 1
    logged = {}
    for history in records(run_dir, "history"):
        for item in history.item:
            if len(item.nested_key) == 2:
                logged.setdefault(item.nested_key[0], {})[item.nested_key[1]] = json.loads(item.value_json)
    assert logged["t"]["_type"] == "table-file" and logged["t"]["nrows"] == 2
    assert (
        logged["scores_table"]["_type"] == "table-file" and logged["scores_table"]["nrows"] == 2
    )  # the bar chart's data
    (artifact,) = [a for a in records(run_dir, "artifact") if a.type == "sft-records"]  # tables are artifacts too
    assert artifact.name == "records-spri"
    assert [entry.path for entry in artifact.manifest.contents] == ["inside/records.jsonl"]


def test_joining_uses_the_open_run_and_leaves_it_open(no_credentials, monkeypatch):
    import wandb

    monkeypatch.setenv("WANDB_MODE", "offline")
    opened = wandb.init(project="p", name="the-trainers-run")
    with tracking.run(project="other", group=None, name="ignored", job_type="evaluate", join_open=True) as run:
        run.summarize({"truthfulqa_mc1/acc": 0.25})
    assert wandb.run is opened and opened.summary["truthfulqa_mc1/acc"] == 0.25
    assert tracking.active_run().id == opened.id
    tracking.finish_active_run()
    assert wandb.run is None and tracking.active_run() is None


def test_without_an_open_run_joining_starts_one_under_the_fallback_directory(tmp_path, monkeypatch):
    without_wandb_credentials(monkeypatch, tmp_path / "home", tmp_path / "unused")
    monkeypatch.delenv("WANDB_DIR")
    monkeypatch.setenv("WANDB_SILENT", "true")
    with tracking.run(
        project="p", group=None, name="eval", job_type="evaluate", fallback_dir=tmp_path / "eval", join_open=True
    ):
        pass
    assert len(list((tmp_path / "eval" / "wandb").glob("offline-run-*"))) == 1
    assert tracking.active_run() is None  # finished with the block


def test_a_pipelines_environment_is_set_for_its_runs_and_undone_after(tmp_path, monkeypatch):
    without_wandb_credentials(monkeypatch, tmp_path / "home", tmp_path / "unused")
    for name in ("WANDB_DIR", "WANDB_SILENT"):
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    with tracking.environment(tmp_path / "run"):
        inside = {name: os.environ.get(name) for name in ("WANDB_DIR", "WANDB_MODE", "WANDB_SILENT")}
        hint = tracking.sync_hint()
    assert inside == {"WANDB_DIR": str((tmp_path / "run").resolve()), "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    runs = (tmp_path / "run").resolve() / "wandb"
    assert hint == f"W&B runs (offline): {runs}; upload them with `wandb sync {runs}/offline-run-*`"
    assert not any(os.environ.get(name) for name in ("WANDB_DIR", "WANDB_MODE", "WANDB_SILENT"))


def test_a_wandb_dir_the_user_set_is_kept(tmp_path, monkeypatch):
    without_wandb_credentials(monkeypatch, tmp_path / "home", tmp_path / "mine")
    with tracking.environment(tmp_path / "run"):
        assert os.environ["WANDB_DIR"] == str(tmp_path / "mine")
    assert os.environ["WANDB_DIR"] == str(tmp_path / "mine")


def test_with_a_login_the_hint_names_the_directory_without_a_sync_command(tmp_path, monkeypatch):
    without_wandb_credentials(monkeypatch, tmp_path / "home", tmp_path / "mine")
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert tracking.sync_hint() == f"W&B runs: {tmp_path / 'mine' / 'wandb'}"


def test_the_group_environment_names_project_and_group_for_a_child_process():
    assert tracking.group_environment(None, "tiny-run") == {"WANDB_PROJECT": "spri-sft", "WANDB_RUN_GROUP": "tiny-run"}
