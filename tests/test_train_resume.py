"""Resuming `spri-sft train` after a crash.

A training run of the tiny model is a real subprocess, killed with SIGKILL (no cleanup, no
`finally`) as soon as its first complete checkpoint is on disk, then started again with the same
command. The rerun must pick up that checkpoint by itself, run only the steps that were left, and
end at `max_steps` with one continuous log history.

A checkpoint counts as complete once its `trainer_state.json` parses: the Trainer writes that file
last, after the adapter, optimizer, scheduler and RNG state.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import build_sft_dataset, tiny_lora_argv

MAX_STEPS = 40
SAVE_STEPS = 10
RUN_TIMEOUT = 180.0  # seconds any one training run (or the wait for its first checkpoint) may take
RESUMING = re.compile(r"resuming from (\S*checkpoint-(\d+))")
BAR_START = re.compile(r"train:\s+\d+%\|[^|]*\|\s*(\d+)/(\d+)")  # the progress bar's first line: step/total


@pytest.fixture(scope="module")
def sft_dataset(tmp_path_factory):
    return build_sft_dataset(tmp_path_factory.mktemp("sft-data") / "hf", train_rows=12, validation_rows=2)


def train_args(model_dir: Path, dataset: Path, output_dir: Path, max_steps: int, save_steps: int) -> list[str]:
    return tiny_lora_argv(
        model_dir, dataset, output_dir,
        "--learning_rate", "1e-3",
        "--max_steps", str(max_steps),
        "--save_strategy", "steps", "--save_steps", str(save_steps), "--save_total_limit", "2",
    )  # fmt: skip


def complete_checkpoints(output_dir: Path) -> dict[int, dict]:
    """step -> trainer state, for every checkpoint whose trainer_state.json is written and parses."""
    found = {}
    for path in output_dir.glob("checkpoint-*"):
        try:
            found[int(path.name.split("-")[1])] = json.loads((path / "trainer_state.json").read_text())
        except (OSError, ValueError):
            continue  # not there yet, or half written
    return found


def start(argv: list[str], log: Path, env: dict) -> subprocess.Popen:
    with log.open("wb") as handle:
        return subprocess.Popen(argv, stdout=handle, stderr=subprocess.STDOUT, env=env, start_new_session=True)


def kill(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def test_a_run_killed_after_a_checkpoint_resumes_from_it_and_runs_only_the_remaining_steps(
    tiny_model_dir, sft_dataset, tmp_path
):
    output_dir = tmp_path / "out"
    args = train_args(tiny_model_dir, sft_dataset, output_dir, MAX_STEPS, SAVE_STEPS)
    argv = [sys.executable, "-m", "spri_sft.cli", "train", *args]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}

    # First run: SIGKILL as soon as one complete checkpoint exists.
    first_log = tmp_path / "first.log"
    first = start(argv, first_log, env)
    try:
        deadline = time.monotonic() + RUN_TIMEOUT
        while not complete_checkpoints(output_dir):
            assert first.poll() is None, "ended before its first checkpoint:\n" + first_log.read_text()[-3000:]
            assert time.monotonic() < deadline, f"no checkpoint within {RUN_TIMEOUT} s"
            time.sleep(0.05)
    finally:
        kill(first)
    assert first.returncode == -signal.SIGKILL, "the first run finished before the kill; give it more steps"
    saved = complete_checkpoints(output_dir)
    killed_at = max(saved)
    assert 0 < killed_at < MAX_STEPS
    # Anything else on disk is complete too, so the rerun meets a clean crash, not a torn checkpoint.
    assert len(list(output_dir.glob("checkpoint-*"))) == len(saved)

    # Rerun, same command.
    second_log = tmp_path / "second.log"
    second = start(argv, second_log, env)
    try:
        second.wait(timeout=RUN_TIMEOUT)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the rerun did not end within {RUN_TIMEOUT} s")
    finally:
        kill(second)
    output = second_log.read_text()
    assert second.returncode == 0, output[-3000:]

    resumed = RESUMING.search(output)
    assert resumed, "the rerun did not say it resumed:\n" + output[-3000:]
    assert Path(resumed.group(1)) == output_dir / f"checkpoint-{killed_at}"
    # Only the remaining steps ran (the Trainer's speed metrics count the steps of this call), and the
    # progress bar starts where the run was killed.
    metrics = json.loads((output_dir / "all_results.json").read_text())
    assert round(metrics["train_steps_per_second"] * metrics["train_runtime"]) == MAX_STEPS - killed_at
    assert BAR_START.search(output).groups() == (str(killed_at), str(MAX_STEPS))

    final = complete_checkpoints(output_dir)
    assert max(final) == MAX_STEPS and final[MAX_STEPS]["global_step"] == MAX_STEPS
    # One continuous history: the steps before the kill (carried over) and after it, each once.
    logged_steps = [entry["step"] for entry in final[MAX_STEPS]["log_history"] if "loss" in entry]
    assert logged_steps == list(range(1, MAX_STEPS + 1))
    assert json.loads((output_dir / "all_results.json").read_text())["train_loss"] > 0


def test_a_checkpoint_torn_by_a_kill_during_saving_is_skipped(tiny_model_dir, sft_dataset, tmp_path):
    """What SIGKILL in the middle of `_save_checkpoint` leaves: the adapter written, nothing after it.

    Made by hand because hitting the few milliseconds of a save with a real kill is luck.
    """
    from spri_sft.train.sft import main, make_parser

    def train(max_steps):
        argv = train_args(tiny_model_dir, sft_dataset, tmp_path, max_steps, save_steps=2)
        return main(*make_parser().parse_args_and_config(args=argv))

    train(4)
    torn = tmp_path / "checkpoint-6"
    torn.mkdir()
    for name in ("adapter_model.safetensors", "adapter_config.json"):
        shutil.copy(tmp_path / "checkpoint-4" / name, torn / name)

    train(8)

    assert complete_checkpoints(tmp_path)[8]["global_step"] == 8


def test_rerunning_a_finished_training_trains_no_step_past_max_steps_and_keeps_its_result(
    tiny_model_dir, sft_dataset, tmp_path, capsys
):
    from spri_sft.cli import main

    output_dir = tmp_path / "out"
    # The best checkpoint is kept as the result, and by this metric it is step 1's, not the last one's.
    best_kept = ("--eval_strategy", "steps", "--eval_steps", "1", "--save_strategy", "steps", "--save_steps", "1",
                 "--load_best_model_at_end", "true", "--metric_for_best_model", "eval_loss", "--greater_is_better", "true")  # fmt: skip
    args = tiny_lora_argv(
        tiny_model_dir, sft_dataset, output_dir, "--max_steps", "2", "--learning_rate", "1e-2", *best_kept
    )
    assert main(["train", *args]) == 0
    assert json.loads((output_dir / "trainer_state.json").read_text())["best_model_checkpoint"].endswith("checkpoint-1")
    adapter = (output_dir / "adapter_model.safetensors").read_bytes()
    results = json.loads((output_dir / "all_results.json").read_text())
    capsys.readouterr()

    assert main(["train", *args]) == 0  # the same command again: its last checkpoint is at max_steps

    assert "checkpoint-2 is at step 2, max_steps 2: nothing left to train" in capsys.readouterr().out
    assert sorted(p.name for p in output_dir.glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2"]  # no -3
    assert json.loads((output_dir / "trainer_state.json").read_text())["global_step"] == 2
    assert (output_dir / "adapter_model.safetensors").read_bytes() == adapter  # the best one still, not the last
    again = json.loads((output_dir / "all_results.json").read_text())
    assert again["train_loss"] == results["train_loss"] and again["eval_loss"] == pytest.approx(results["eval_loss"])
