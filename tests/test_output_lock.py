"""One writer per output directory: a second command into a directory being written refuses in one line
naming the first; a lock left by a writer that died is taken over, and said."""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import tiny_lora_argv
from support.fake_openai_server import FakeOpenAIServer

from spri_sft.errors import UserError
from spri_sft.evaluate.config import EvaluateConfig
from spri_sft.evaluate.run import evaluate_truthfulqa
from spri_sft.format.build import build_dataset
from spri_sft.format.config import FormatConfig
from spri_sft.pipeline.config import PipelineConfig
from spri_sft.pipeline.run import run_pipeline
from spri_sft.processes import LOCK_NAME, hold_output_dir
from spri_sft.train.sft import cli as train_cli

pytestmark = pytest.mark.timeout(120)

PROMPTS = 12
HOLDER = """
import sys, time
from spri_sft.processes import hold_output_dir
with hold_output_dir(sys.argv[1]):
    print("held", flush=True)
    time.sleep(120)
"""


@pytest.fixture
def other_process_holds(tmp_path):
    """`other_process_holds(directory)`: a separate process holds `directory` until the test ends; returns it."""
    holders = []

    def hold(directory: Path) -> subprocess.Popen:
        holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(directory)], stdout=subprocess.PIPE, text=True)
        holders.append(holder)
        assert holder.stdout.readline().strip() == "held"
        return holder

    yield hold
    for holder in holders:
        holder.kill()
        holder.wait()


def generate_argv(server_url: str, prompts: Path, output_dir: Path) -> list[str]:
    endpoint = ["backend", "openai", "model", "fake-model", "base_url", server_url]
    roles = [arg for role in ("base", "critic") for key, value in zip(endpoint[::2], endpoint[1::2])
             for arg in (f"--{role}.{key}", value)]  # fmt: skip
    return [
        sys.executable, "-m", "spri_sft.cli", "generate", "--output_dir", str(output_dir),
        "--prompts.path", str(prompts), "--progress", "false", "--max_concurrent_prompts", "2", *roles,
    ]  # fmt: skip


def test_a_second_generate_into_the_same_directory_refuses_in_one_line_and_the_first_writes_each_record_once(
    tmp_path,
):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"Question {i}: why?"}) + "\n" for i in range(PROMPTS)))
    output_dir = tmp_path / "out"
    # Slow replies keep the first run writing while the second starts.
    with FakeOpenAIServer(latency=0.3) as server:
        argv = generate_argv(server.base_url, prompts, output_dir)
        first = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        while not (output_dir / LOCK_NAME).is_file():
            assert first.poll() is None and time.monotonic() < deadline, "the first generate never took its lock"
            time.sleep(0.05)
        second = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        first_out, first_err = first.communicate(timeout=90)

    assert second.returncode == 2
    assert second.stderr.strip().count("\n") == 0, second.stderr
    refusal = f"spri-sft: error: {output_dir} is being written by pid {first.pid} (spri-sft generate"
    assert second.stderr.startswith(refusal)
    assert second.stderr.rstrip().endswith("wait for it or stop it")
    assert first.returncode == 0, first_err[-3000:]
    ids = [json.loads(line)["id"] for line in (output_dir / "records.jsonl").read_text().splitlines()]
    assert len(ids) == PROMPTS and len(set(ids)) == PROMPTS
    assert not (output_dir / LOCK_NAME).exists(), "a writer that ends removes its lock file"


def test_a_lock_file_left_by_a_dead_writer_is_taken_over_and_said(tmp_path, caplog):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    output_dir = tmp_path / "out"
    output_dir.mkdir()
    left = {"pid": dead.pid, "command": "spri-sft generate --config gen.yaml", "started": time.time() - 60}
    (output_dir / LOCK_NAME).write_text(json.dumps(left))

    with caplog.at_level(logging.WARNING, logger="spri_sft"), hold_output_dir(output_dir):
        holder = json.loads((output_dir / LOCK_NAME).read_text())

    said = [r.getMessage() for r in caplog.records if "taking over" in r.getMessage()]
    assert said == [
        f"{output_dir}: taking over the lock of pid {dead.pid} (spri-sft generate --config gen.yaml), started "
        f"{time.strftime('%H:%M:%S', time.localtime(left['started']))}, which ended without releasing it (killed?)"
    ]
    assert holder["pid"] != dead.pid
    assert not (output_dir / LOCK_NAME).exists()


def test_format_refuses_a_directory_another_process_writes(tmp_path, other_process_holds):
    output_dir = tmp_path / "dataset"
    holder = other_process_holds(output_dir)
    with pytest.raises(UserError, match=rf"^{output_dir} is being written by pid {holder.pid} \(.*\), started "):
        build_dataset(FormatConfig(records=[str(tmp_path / "records.jsonl")], output_dir=str(output_dir)))


def test_evaluate_refuses_a_directory_another_process_writes(tmp_path, other_process_holds):
    output_dir = tmp_path / "eval"
    holder = other_process_holds(output_dir)
    with pytest.raises(UserError, match=rf"is being written by pid {holder.pid} "):
        evaluate_truthfulqa(EvaluateConfig(model="unused", output_dir=str(output_dir)))


def test_run_refuses_a_run_directory_another_process_writes(tmp_path, other_process_holds):
    root = tmp_path / "run"
    holder = other_process_holds(root)
    with pytest.raises(UserError, match=rf"is being written by pid {holder.pid} "):
        run_pipeline(PipelineConfig(output_dir=str(root)))


def test_train_refuses_an_output_dir_another_process_writes(tmp_path, other_process_holds, tiny_model_dir):
    output_dir = tmp_path / "checkpoints"
    holder = other_process_holds(output_dir)
    with pytest.raises(UserError, match=rf"is being written by pid {holder.pid} "):
        train_cli(tiny_lora_argv(tiny_model_dir, tmp_path / "no-dataset-needed", output_dir))


def test_a_directory_inside_one_being_written_is_a_lock_of_its_own(tmp_path, other_process_holds):
    other_process_holds(tmp_path / "run")
    with hold_output_dir(tmp_path / "run" / "generate" / "spri"):
        assert (tmp_path / "run" / "generate" / "spri" / LOCK_NAME).is_file()


def test_a_job_refused_before_writing_leaves_no_directory_behind(tmp_path):
    output_dir = tmp_path / "new" / "dataset"
    with pytest.raises(UserError):
        build_dataset(FormatConfig(records=[str(tmp_path / "missing.jsonl")], output_dir=str(output_dir)))
    assert not (tmp_path / "new").exists()


def test_ranks_other_than_0_of_a_distributed_launch_share_rank_0s_lock(tmp_path, other_process_holds, monkeypatch):
    other_process_holds(tmp_path / "checkpoints")
    monkeypatch.setenv("RANK", "1")
    with hold_output_dir(tmp_path / "checkpoints"):
        pass


def test_a_filesystem_without_locks_is_said_in_one_line_and_the_job_runs(tmp_path, monkeypatch, caplog):
    def no_locks_here(descriptor, operation):
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(fcntl, "flock", no_locks_here)  # as on Lustre mounted without -o flock
    with caplog.at_level(logging.WARNING, logger="spri_sft"), hold_output_dir(tmp_path / "out"):
        ran = True

    assert ran
    assert [r.getMessage() for r in caplog.records] == [
        f"{tmp_path / 'out'}: its filesystem does not support locks (No locks available): nothing stops a second "
        "command writing there"
    ]
    assert not (tmp_path / "out").exists(), "created for the job, left empty by it: removed"


def test_an_output_dir_that_cannot_be_made_is_one_line_naming_it(tmp_path):
    (tmp_path / "taken").write_text("a file, not a folder")
    output_dir = tmp_path / "taken" / "out"
    with pytest.raises(UserError, match=rf"^output directory {output_dir}: cannot create it \(Not a directory\)$"):
        with hold_output_dir(output_dir):
            pass


def test_redo_refuses_to_empty_a_stage_directory_another_process_is_writing(tmp_path, other_process_holds):
    from spri_sft.pipeline.run import StageNode, _clear_stages

    generation = tmp_path / "generate" / "spri"
    generation.mkdir(parents=True)
    (generation / "records.jsonl").write_text('{"id": "a"}\n')
    other_process_holds(generation)  # a standalone `spri-sft generate` writing there

    with pytest.raises(UserError, match="is being written by pid"):
        _clear_stages(["generate/spri"], {"generate/spri": StageNode(generation, ())}, ["generate/spri"])
    assert (generation / "records.jsonl").read_text() == '{"id": "a"}\n'
