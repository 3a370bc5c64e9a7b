"""A generate run that cannot succeed says so in one line and a non-zero exit, and stops early when it can tell."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import yaml
from support.fake_openai_server import FakeOpenAIServer, FaultPlan

from spri_sft.cli import main
from spri_sft.errors import UserError
from spri_sft.generate.config import GenerateConfig
from spri_sft.generate.inputs import PromptSource
from spri_sft.generate.run import generate
from spri_sft.llm.base import EndpointConfig

pytestmark = pytest.mark.timeout(120)


def job(tmp_path: Path, server, prompts: int, **overrides) -> GenerateConfig:
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"Question {i}: why?"}) + "\n" for i in range(prompts)))
    ep = EndpointConfig(backend="openai", model="fake-model", base_url=[server.base_url], timeout=5.0, max_retries=0)
    settings = dict(
        output_dir=str(tmp_path / "out"), prompts=PromptSource(path=str(path)), base=ep, critic=ep, progress=False,
        max_concurrent_prompts=1,
    )  # fmt: skip
    settings.update(overrides)
    return GenerateConfig(**settings)


def statuses(config: GenerateConfig) -> list[str]:
    return [json.loads(line)["status"] for line in (Path(config.output_dir) / "records.jsonl").read_text().splitlines()]


def test_a_run_whose_first_records_all_fail_alike_stops_there_naming_the_error(tmp_path):
    with FakeOpenAIServer(faults=FaultPlan(rate_500=1.0)) as server:
        config = job(tmp_path, server, 30, fail_fast_after=5)
        with pytest.raises(
            UserError, match=r"stopped early: the first 5 records all failed with InternalServerError"
        ) as caught:
            generate(config)

    assert "\n" not in str(caught.value)
    assert statuses(config) == ["failed"] * 5, "the failed records are kept; the other prompts are left for a rerun"
    summary = json.loads((Path(config.output_dir) / "summary.json").read_text())
    assert summary["missing"] == 25 and summary["failure"].startswith("stopped early")


def test_a_run_in_which_no_record_succeeded_is_an_error_naming_the_most_common_one(tmp_path):
    with FakeOpenAIServer(faults=FaultPlan(rate_500=1.0)) as server:
        config = job(tmp_path, server, 4, fail_fast_after=None)
        with pytest.raises(
            UserError, match=r"no record succeeded: all 4 records failed, 4 of them with InternalServerError"
        ):
            generate(config)
    assert statuses(config) == ["failed"] * 4


def test_failures_among_successes_within_max_failed_share_neither_stop_the_run_nor_fail_it(tmp_path):
    # The first two requests get a 429 and, with no retries, fail their prompts; the rest succeed.
    with FakeOpenAIServer(faults=FaultPlan(fail_first_n=2)) as server:
        summary = generate(job(tmp_path, server, 10, fail_fast_after=3, max_failed_share=0.2))
    assert summary["status"] == {"failed": 2, "accepted": 8} and "failure" not in summary


def test_first_records_failing_with_different_errors_do_not_stop_the_run_early(tmp_path):
    def refuse(messages, body):
        raise ValueError(f"no answer to {messages[-1]['content'][:40]!r}")  # an error naming its prompt

    with FakeOpenAIServer(reply_fn=refuse) as server:
        config = job(tmp_path, server, 6, fail_fast_after=3)
        with pytest.raises(UserError, match=r"no record succeeded: all 6 records failed, 1 of them with"):
            generate(config)
    assert statuses(config) == ["failed"] * 6


def test_the_cli_exits_non_zero_with_one_line_when_every_record_failed(tmp_path, capsys):
    with FakeOpenAIServer(faults=FaultPlan(rate_500=1.0)) as server:
        config = job(tmp_path, server, 3)
        argv = [
            "generate", "--output_dir", config.output_dir, "--prompts.path", config.prompts.path, "--progress", "false",
            *[arg for role in ("base", "critic") for arg in (
                f"--{role}.backend", "openai", f"--{role}.model", "fake-model", f"--{role}.base_url", server.base_url,
                f"--{role}.max_retries", "0",
            )],
        ]  # fmt: skip
        assert main(argv) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("spri-sft: error:")]
    assert len(errors) == 1 and "no record succeeded" in errors[0] and "InternalServerError" in errors[0]


# -- failed is not done: the file's records decide, and a rerun retries what may succeed now ---------------


def answered_job(tmp_path: Path, responses: list[str | None], **overrides) -> GenerateConfig:
    """An `oracle` run, which calls no model: a prompt without a reference response fails, and fails again on
    every rerun (a permanent error)."""
    path = tmp_path / "answered.jsonl"
    path.write_text(
        "".join(json.dumps({"prompt": f"Question {i}: why?", "response": r}) + "\n" for i, r in enumerate(responses))
    )
    source = PromptSource(path=str(path), response_column="response")
    return GenerateConfig(output_dir=str(tmp_path / "out"), mode="oracle", prompts=source, progress=False, **overrides)


def test_more_failed_records_than_max_failed_share_is_an_error_naming_the_setting(tmp_path):
    # The first two requests get a 429 and, with no retries, fail their prompts; the other eight succeed.
    with FakeOpenAIServer(faults=FaultPlan(fail_first_n=2)) as server:
        config = job(tmp_path, server, 10, fail_fast_after=None)  # max_failed_share at its default, 0.1
        with pytest.raises(
            UserError,
            match=r"2 of 10 records failed \(20%, over max_failed_share 0\.1\).*--max_failed_share allows more",
        ):
            generate(config)
    summary = json.loads((Path(config.output_dir) / "summary.json").read_text())
    assert summary["status"] == {"failed": 2, "accepted": 8} and "over max_failed_share" in summary["failure"]


def test_a_rerun_over_records_that_all_failed_is_an_error_again_not_a_finished_run(tmp_path):
    with FakeOpenAIServer(faults=FaultPlan(rate_500=1.0)) as server:
        config = job(tmp_path, server, 4, fail_fast_after=None)
        with pytest.raises(UserError, match="no record succeeded"):
            generate(config)
        with pytest.raises(UserError, match="no record succeeded: all 4 records failed"):
            generate(config)
    assert statuses(config) == ["failed"] * 4


def test_a_rerun_retries_the_records_that_failed_on_the_server_once_it_answers(tmp_path):
    with FakeOpenAIServer(faults=FaultPlan(rate_500=1.0)) as broken:
        config = job(tmp_path, broken, 4)
        with pytest.raises(
            UserError, match=r"rerun the same command: records that failed to connect, with an HTTP error"
        ):
            generate(config)
    failed = [json.loads(line) for line in (Path(config.output_dir) / "records.jsonl").read_text().splitlines()]
    assert {(r["status"], r["error_kind"]) for r in failed} == {("failed", "transient")}

    with FakeOpenAIServer() as fixed:
        # The fixed server's URL shapes no record id: the same records are asked for again.
        config.base = config.critic = dataclasses.replace(config.base, base_url=[fixed.base_url])
        summary = generate(config)
    assert statuses(config) == ["accepted"] * 4 and summary["missing"] == 0
    assert {
        json.loads(line)["id"] for line in (Path(config.output_dir) / "records.jsonl").read_text().splitlines()
    } == {r["id"] for r in failed}


def test_a_rerun_keeps_records_that_failed_with_a_permanent_error_and_names_the_flag_that_retries_them(
    tmp_path, capsys
):
    config = answered_job(tmp_path, [None, None, "Because it scatters blue light."])
    with pytest.raises(UserError, match="2 of 3 records failed"):
        generate(config)
    records = (Path(config.output_dir) / "records.jsonl").read_text()
    assert '"error_kind": "permanent"' in records

    with pytest.raises(
        UserError, match=r"2 of 3 records failed .*rerun with --retry_failed true: 2 failed with a permanent error"
    ):
        generate(config)
    assert (Path(config.output_dir) / "records.jsonl").read_text() == records, "nothing asked again, nothing appended"
    assert "2 records that failed in an earlier run with a permanent error: kept" in capsys.readouterr().out


def test_the_cli_exits_non_zero_on_a_rerun_when_no_record_in_the_file_succeeded(tmp_path, capsys):
    config = answered_job(tmp_path, [None, None])
    argv = [
        "generate", "--mode", "oracle", "--output_dir", config.output_dir, "--prompts.path", config.prompts.path,
        "--prompts.response_column", "response", "--progress", "false",
    ]  # fmt: skip
    assert main(argv) == 2
    assert main(argv) == 2, "the rerun generated nothing, and its file still holds no record that succeeded"
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("spri-sft: error:")]
    assert len(errors) == 2 and all("no record succeeded: all 2 records failed" in line for line in errors)


def pipeline_recipe(tmp_path: Path, tiny_model_dir: Path, server: FakeOpenAIServer, mode: str) -> str:
    """A 3-prompt pipeline recipe of one mode against `server`, no evaluation; the path of its file."""
    endpoint = {"backend": "openai", "model": "fake-model", "base_url": [server.base_url], "max_retries": 0}
    recipe = {
        "output_dir": str(tmp_path / "run"), "modes": [mode],
        "generate": {"prompts": {"limit": 3}, "base": endpoint, "critic": endpoint, "progress": False},
        "train": {"args": {"model_name_or_path": str(tiny_model_dir), "max_steps": 1, "use_cpu": True}},
        "evaluate": {"enabled": False}, "wandb": {"enabled": False},
    }  # fmt: skip
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    return str(tmp_path / "recipe.yaml")


def test_a_pipeline_generate_stage_whose_records_all_failed_is_not_done_on_any_rerun(tmp_path, tiny_model_dir, capsys):
    with FakeOpenAIServer(faults=FaultPlan(rate_500=1.0)) as server:
        recipe = pipeline_recipe(tmp_path, tiny_model_dir, server, "spri")
        assert main(["run", recipe]) == 2
        assert main(["run", recipe]) == 2, "before: the rerun marked the stage done"

    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("spri-sft: error:")]
    assert len(errors) == 2 and all("no record succeeded: all 3 records failed" in line for line in errors)
    stage = json.loads((tmp_path / "run/generate/spri/stage.json").read_text())
    assert stage["status"] == "running"
    assert not (tmp_path / "run/dataset").exists()


def test_a_pipeline_names_the_flags_spri_sft_run_takes(tmp_path, tiny_model_dir, capsys):
    with FakeOpenAIServer(faults=FaultPlan(fail_first_n=1)) as server:
        assert main(["run", pipeline_recipe(tmp_path, tiny_model_dir, server, "direct")]) == 2

    error = next(line for line in capsys.readouterr().err.splitlines() if line.startswith("spri-sft: error:"))
    assert "1 of 3 records failed" in error and "--generate.max_failed_share allows more" in error
    assert " --max_failed_share" not in error and " --retry_failed" not in error
