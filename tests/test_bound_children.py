"""Children bound to their parent: a SIGKILLed parent leaves none behind; a stopped one (Ctrl-C, SIGTERM) stops
its child, gives it time to finish what it writes, and waits for it. SIGTERM stops a command in one line."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from spri_sft.processes import LOCK_NAME

pytestmark = pytest.mark.timeout(300)

# A child that takes a moment to finish its file when asked to stop, as a trainer saving a checkpoint does.
CHILD = """
import signal, sys, time
def finish(*_):
    time.sleep(1.0)
    open(sys.argv[1], "w").write("finished")
    sys.exit(0)
signal.signal(signal.SIGTERM, finish)
print("child ready", flush=True)
time.sleep(300)
"""
PARENT = """
import signal, sys
from spri_sft.errors import Terminated
from spri_sft.processes import run_bound
def terminate(*_):
    raise Terminated()
signal.signal(signal.SIGTERM, terminate)
try:
    run_bound([sys.executable, "-c", sys.argv[1], sys.argv[2]], grace=10)
except KeyboardInterrupt as stop:
    print("parent stopped", flush=True)
    sys.exit(143 if isinstance(stop, Terminated) else 130)
"""


def start_parent(marker: Path) -> subprocess.Popen:
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, CHILD, str(marker)], stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    assert parent.stdout.readline().strip() == "child ready"
    return parent


def descendants(pid: int) -> list[psutil.Process]:
    return psutil.Process(pid).children(recursive=True)


def gone(process: psutil.Process) -> bool:
    try:
        return process.status() == psutil.STATUS_ZOMBIE  # dead, only not yet reaped by whoever adopted it
    except psutil.NoSuchProcess:
        return True


def wait_until_gone(processes: list[psutil.Process], seconds: float) -> list[psutil.Process]:
    """The processes still alive after `seconds` (an empty list: all gone)."""
    deadline = time.monotonic() + seconds
    while any(not gone(p) for p in processes) and time.monotonic() < deadline:
        time.sleep(0.1)
    return [p for p in processes if not gone(p)]


def test_a_bound_child_dies_when_its_parent_is_sigkilled(tmp_path):
    parent = start_parent(tmp_path / "marker")
    children = descendants(parent.pid)
    assert len(children) == 2  # the guard and the child

    parent.kill()
    parent.wait()

    assert wait_until_gone(children, 15) == []


@pytest.mark.parametrize("signum, exit_code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_stopped_parent_stops_its_child_gives_it_time_to_finish_and_waits_for_it(tmp_path, signum, exit_code):
    marker = tmp_path / "marker"
    parent = start_parent(marker)
    children = descendants(parent.pid)

    parent.send_signal(signum)
    output, _ = parent.communicate(timeout=30)

    assert parent.returncode == exit_code and output.strip() == "parent stopped"
    assert marker.read_text() == "finished", "the child finished its write before the parent went on"
    assert [p for p in children if not gone(p)] == []


def test_sigterm_stops_a_command_with_one_line_exit_143_and_its_lock_released(tmp_path, tiny_model_dir, shared_dir):
    output_dir = tmp_path / "eval"
    command = [
        sys.executable, "-m", "spri_sft.cli", "evaluate", "--model", str(tiny_model_dir), "--dtype", "float32",
        "--truthfulqa_file", str(shared_dir / "data/truthfulqa/data/v0/mc_task.json"), "--output_dir", str(output_dir),
    ]  # fmt: skip
    evaluation = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (output_dir / LOCK_NAME).is_file():  # it has started writing there
        assert evaluation.poll() is None and time.monotonic() < deadline, evaluation.communicate()[1][-3000:]
        time.sleep(0.05)

    evaluation.send_signal(signal.SIGTERM)
    _, errors = evaluation.communicate(timeout=60)

    assert evaluation.returncode == 143, errors[-3000:]
    assert "Traceback" not in errors
    assert errors.strip().splitlines()[-1] == "spri-sft: stopped by SIGTERM; rerun the same command to start it again"
    assert not (output_dir / LOCK_NAME).exists() and not (output_dir / "results.json").exists()


# -- the pipeline's training child -------------------------------------------------------------


def trainer_of(run: subprocess.Popen, deadline: float) -> list[psutil.Process]:
    """The pipeline's training child and its guard, once it is running."""
    while True:
        children = descendants(run.pid)
        if any("train" in p.cmdline() for p in children if not gone(p)):
            return children
        assert run.poll() is None and time.monotonic() < deadline, "no training child"
        time.sleep(0.2)


@pytest.fixture
def tiny_run(tmp_path, tiny_model_dir, shared_dir, monkeypatch):
    """A `spri-sft run` command on the tiny recipe whose training saves a checkpoint every 2 of 10 steps."""
    from support.fake_openai_server import FakeOpenAIServer
    from test_pipeline import make_recipe

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    with FakeOpenAIServer() as server:
        recipe = make_recipe(
            tmp_path, tiny_model_dir, server, shared_dir / "data/truthfulqa/data/v0/mc_task.json",
            max_steps=10, save_strategy="steps", save_steps=2, eval_strategy="no",
        )  # fmt: skip
        yield [sys.executable, "-m", "spri_sft.cli", "run", str(recipe), "--wandb.enabled", "false",
               "--evaluate.enabled", "false"]  # fmt: skip


@pytest.mark.slow
def test_a_sigkilled_run_leaves_no_trainer_and_a_rerun_resumes_from_the_last_complete_checkpoint(tmp_path, tiny_run):
    root = tmp_path / "run"
    with (tmp_path / "first.log").open("wb") as log:
        run = subprocess.Popen(tiny_run, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    trainer = trainer_of(run, time.monotonic() + 240)
    while not (root / "checkpoints/spri/checkpoint-2/trainer_state.json").is_file():
        assert run.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
        time.sleep(0.1)

    os.kill(run.pid, signal.SIGKILL)  # the pipeline alone: its trainer is left to the guard
    run.wait()

    assert wait_until_gone(trainer, 15) == []
    second = subprocess.run(tiny_run, capture_output=True, text=True, timeout=240)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert re.search(r"resuming from \S*checkpoint-(2|4|6|8)\b", second.stdout + second.stderr)
    assert json.loads((root / "checkpoints/spri/trainer_state.json").read_text())["global_step"] == 10


@pytest.mark.slow
def test_sigterm_of_a_run_stops_its_trainer_and_exits_143_in_one_line(tmp_path, tiny_run):
    run = subprocess.Popen(tiny_run, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    trainer = trainer_of(run, time.monotonic() + 240)

    run.send_signal(signal.SIGTERM)
    _, errors = run.communicate(timeout=120)

    assert run.returncode == 143, errors[-3000:]
    assert "Traceback" not in errors
    assert errors.strip().splitlines()[-1].startswith("spri-sft: stopped by SIGTERM; finished stages are kept")
    assert [p for p in trainer if not gone(p)] == []
