"""A generate run that cannot succeed says so in one line and a non-zero exit, and stops early when it can tell."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from spri_sft.cli import main
from spri_sft.errors import UserError
from spri_sft.generate.config import GenerateConfig
from spri_sft.generate.inputs import PromptSource
from spri_sft.generate.run import generate
from spri_sft.llm.base import EndpointConfig
from spri_sft.testing.fake_openai_server import FakeOpenAIServer, FaultPlan

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
        with pytest.raises(UserError, match=r"stopped early: the first 5 records all failed with InternalServerError") as caught:
            generate(config)

    assert "\n" not in str(caught.value)
    assert statuses(config) == ["failed"] * 5, "the failed records are kept; the other prompts are left for a rerun"
    summary = json.loads((Path(config.output_dir) / "summary.json").read_text())
    assert summary["missing"] == 25 and summary["failure"].startswith("stopped early")


def test_a_run_in_which_no_record_succeeded_is_an_error_naming_the_most_common_one(tmp_path):
    with FakeOpenAIServer(faults=FaultPlan(rate_500=1.0)) as server:
        config = job(tmp_path, server, 4, fail_fast_after=None)
        with pytest.raises(UserError, match=r"no record succeeded: all 4 records of this run failed, 4 of them with InternalServerError"):
            generate(config)
    assert statuses(config) == ["failed"] * 4


def test_failures_among_successes_neither_stop_the_run_nor_fail_it(tmp_path):
    # The first two requests get a 429 and, with no retries, fail their prompts; the rest succeed.
    with FakeOpenAIServer(faults=FaultPlan(fail_first_n=2)) as server:
        summary = generate(job(tmp_path, server, 10, fail_fast_after=3))
    assert summary["status"] == {"failed": 2, "accepted": 8} and "failure" not in summary


def test_first_records_failing_with_different_errors_do_not_stop_the_run_early(tmp_path):
    def refuse(messages, body):
        raise ValueError(f"no answer to {messages[-1]['content'][:40]!r}")  # an error naming its prompt

    with FakeOpenAIServer(reply_fn=refuse) as server:
        config = job(tmp_path, server, 6, fail_fast_after=3)
        with pytest.raises(UserError, match=r"no record succeeded: all 6 records of this run failed, 1 of them with"):
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
