"""`spri-sft generate` stops cleanly: Ctrl-C, SIGTERM, `token_budget` and `max_cost` end with one line and no
traceback, finished records kept and summary.json written; and no numeric setting out of its range gets as far
as a model call.

The generate command runs as a real subprocess (signals go to it, and what it prints at exit is what a user
sees) against the fake OpenAI-compatible server in this process.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support.fake_openai_server import FakeOpenAIServer

from spri_sft.cli import main
from spri_sft.errors import UserError
from spri_sft.generate.config import GenerateConfig
from spri_sft.generate.run import dollars, generate

pytestmark = pytest.mark.timeout(120)

PROMPT_COUNT = 40
WAIT = 60.0  # seconds any one wait on a generate process may take before the test fails


@pytest.fixture(scope="module")
def server():
    with FakeOpenAIServer(latency=0.05) as running:
        yield running


@pytest.fixture
def prompts_file(tmp_path: Path) -> Path:
    path = tmp_path / "prompts.jsonl"
    path.write_text(
        "".join(json.dumps({"prompt": f"Prompt {i}: explain topic {i} briefly."}) + "\n" for i in range(PROMPT_COUNT))
    )
    return path


def command(server, prompts_file: Path, output_dir: Path, *extra: str) -> list[str]:
    roles = [
        arg for role in ("base", "critic") for arg in (
            f"--{role}.backend", "openai", f"--{role}.model", "fake-model", f"--{role}.base_url", server.base_url,
        )
    ]  # fmt: skip
    return [
        sys.executable, "-m", "spri_sft.cli", "generate", "--output_dir", str(output_dir), "--prompts.path",
        str(prompts_file), "--max_concurrent_prompts", "4", "--progress", "false", *roles, *extra,
    ]  # fmt: skip


def stopped_by(signal_number: int, argv: list[str], records: Path) -> subprocess.CompletedProcess:
    """Run `argv`, send it `signal_number` once it has written two records, and wait for it to exit."""
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + WAIT
        while not (records.exists() and records.read_bytes().count(b"\n") >= 2):
            assert process.poll() is None, f"generate exited before two records:\n{process.communicate()[1][-4000:]}"
            assert time.monotonic() < deadline, "no two records in time"
            time.sleep(0.01)
        process.send_signal(signal_number)
        stdout, stderr = process.communicate(timeout=WAIT)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    return subprocess.CompletedProcess(argv, process.returncode, stdout, stderr)


def assert_one_line_and_a_summary(result: subprocess.CompletedProcess, output_dir: Path) -> dict:
    assert "Traceback" not in result.stderr and "never retrieved" not in result.stderr, result.stderr[-4000:]
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    summary = json.loads((output_dir / "summary.json").read_text())
    written = (output_dir / "records.jsonl").read_text().splitlines()
    assert summary["records"] == len(written) >= 2
    assert summary["missing"] == PROMPT_COUNT - len(written)
    return summary


def test_ctrl_c_ends_with_one_line_exit_130_and_the_finished_records_summary(tmp_path, server, prompts_file):
    output_dir = tmp_path / "out"
    result = stopped_by(signal.SIGINT, command(server, prompts_file, output_dir), output_dir / "records.jsonl")

    assert result.returncode == 130
    assert result.stderr.startswith("spri-sft: interrupted")
    assert assert_one_line_and_a_summary(result, output_dir)["stopped_by"] == "interrupted"


def test_sigterm_ends_with_one_line_exit_143_and_the_finished_records_summary(tmp_path, server, prompts_file):
    output_dir = tmp_path / "out"
    result = stopped_by(signal.SIGTERM, command(server, prompts_file, output_dir), output_dir / "records.jsonl")

    assert result.returncode == 143
    assert assert_one_line_and_a_summary(result, output_dir)["stopped_by"] == "interrupted"


def test_a_rerun_after_ctrl_c_finishes_the_rest(tmp_path, server, prompts_file):
    output_dir = tmp_path / "out"
    argv = command(server, prompts_file, output_dir)
    stopped_by(signal.SIGINT, argv, output_dir / "records.jsonl")
    assert subprocess.run(argv, capture_output=True, timeout=WAIT).returncode == 0

    ids = [json.loads(line)["id"] for line in (output_dir / "records.jsonl").read_text().splitlines()]
    assert len(ids) == len(set(ids)) == PROMPT_COUNT


def test_a_token_budget_stop_prints_no_traceback(tmp_path, server, prompts_file):
    output_dir = tmp_path / "out"
    result = subprocess.run(
        command(server, prompts_file, output_dir, "--token_budget", "10000"),
        capture_output=True,
        text=True,
        timeout=WAIT,
    )
    assert result.returncode == 0 and result.stderr == ""
    assert "token budget of 10,000 spent" in result.stdout
    assert json.loads((output_dir / "summary.json").read_text())["stopped_by"] == "token_budget"


def test_a_max_cost_stop_prints_no_traceback_and_shows_a_small_cost(tmp_path, server, prompts_file):
    output_dir = tmp_path / "out"
    prices = [f"--{role}.price_{kind}_per_million" for role in ("base", "critic") for kind in ("prompt", "completion")]
    argv = command(server, prompts_file, output_dir, "--max_cost", "0.002", *[a for p in prices for a in (p, "1")])
    result = subprocess.run(argv, capture_output=True, text=True, timeout=WAIT)

    assert result.returncode == 0 and result.stderr == ""
    assert (
        "max_cost of $0.002 spent ($0.00" in result.stdout and "($0.00)" not in result.stdout
    )  # before: "$0.00 spent ($0.00)"


def test_dollars_show_small_amounts_to_four_significant_digits():
    assert [dollars(x) for x in (0.0021347, 0.002, 0.5, 12.5, 1234.5, 0.0)] == [
        "$0.002135", "$0.002", "$0.5", "$12.50", "$1,234.50", "$0.00",
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--max_concurrent_prompts", "0", "--max_concurrent_prompts: must be >= 1, got 0"),  # before: hung forever
        ("--max_concurrent_prompts", "-4", "--max_concurrent_prompts: must be >= 1, got -4"),  # before: ValueError
        ("--token_budget", "-100", "--token_budget: must be >= 1, got -100"),  # before: accepted
        ("--max_cost", "0", "--max_cost: must be > 0, got 0.0"),
        ("--max_failed_share", "1.5", "--max_failed_share: must be >= 0 and <= 1, got 1.5"),
        ("--fail_fast_after", "0", "--fail_fast_after: must be >= 1, got 0"),
        ("--loop.max_rounds", "0", "--loop.max_rounds: must be >= 1, got 0"),
        ("--base.temperature", "-1", "--base.temperature: must be >= 0, got -1.0"),
        ("--critic.requests_per_minute", "0", "--critic.requests_per_minute: must be > 0, got 0.0"),
        ("--base.tokens_per_minute", "-5", "--base.tokens_per_minute: must be > 0, got -5.0"),
        ("--base.batch_wait_ms", "-1", "--base.batch_wait_ms: must be >= 0, got -1.0"),
    ],
)
def test_a_numeric_setting_out_of_its_range_is_one_line_before_anything_runs(tmp_path, capsys, flag, value, message):
    assert main(["generate", "--output_dir", str(tmp_path / "out"), flag, value]) == 2
    assert capsys.readouterr().err.strip() == f"spri-sft: error: {message}"
    assert not (tmp_path / "out").exists()


def test_a_config_built_in_code_is_range_checked_too(tmp_path):
    with pytest.raises(UserError, match=r"generate: field 'max_concurrent_prompts': must be >= 1, got 0"):
        generate(GenerateConfig(output_dir=str(tmp_path / "out"), max_concurrent_prompts=0))
    assert not (tmp_path / "out").exists()
