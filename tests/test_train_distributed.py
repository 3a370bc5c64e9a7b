"""`accelerate launch` with two CPU ranks (gloo): the multi-process path of the train entry script.

The test shells out to `accelerate launch --config_file recipes/accelerate/ddp_cpu.yaml
scripts/sft.py ...` exactly as a user runs it, with W&B on and no API key anywhere (no
WANDB_API_KEY, WANDB_MODE unset, HOME pointing at an empty folder so no ~/.netrc is found): each
rank must switch W&B to offline by itself, and only rank 0 may open a run.

That there really are two ranks is read from what training leaves behind, not from the launcher's
word: the Trainer writes one `rng_state_<rank>.pth` per process into a checkpoint, and the epoch
reached after `max_steps` doubles with the world size (each step consumes
`per_device_train_batch_size` rows on every rank). `accelerate launch --cpu --num_processes 2`
would pass neither check: it starts one process.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import build_sft_dataset

REPO = Path(__file__).resolve().parents[1]
LAUNCH_TIMEOUT = 240  # seconds; a healthy run takes ~20 s on 2 busy cores, a hung rank never ends

pytestmark = pytest.mark.skipif(
    not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
    reason="torch.distributed with the gloo backend is not available",
)

ROWS = 8
PER_DEVICE_BATCH = 2
MAX_STEPS = 4
WORLD_SIZE = 2


@pytest.fixture(scope="module")
def sft_dataset(tmp_path_factory):
    return build_sft_dataset(tmp_path_factory.mktemp("sft-data") / "hf", train_rows=ROWS, validation_rows=2)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_to_end(argv: list[str], env: dict, log: Path, timeout: float) -> int:
    """Run argv in its own process group; on timeout kill the whole group (torchrun and its ranks)."""
    with log.open("wb") as handle:
        process = subprocess.Popen(
            argv, stdout=handle, stderr=subprocess.STDOUT, env=env, cwd=REPO, start_new_session=True
        )
        try:
            return process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            pytest.fail(f"accelerate launch did not end within {timeout} s; log:\n{log.read_text()[-3000:]}")


def test_two_cpu_ranks_train_the_planned_steps_and_log_one_offline_wandb_run(tiny_model_dir, sft_dataset, tmp_path):
    home, wandb_dir, output_dir = tmp_path / "home", tmp_path / "wandb-dir", tmp_path / "out"
    home.mkdir()
    wandb_dir.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}  # no key, no mode, no project
    env.update(HOME=str(home), WANDB_DIR=str(wandb_dir), HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    argv = [
        # `python -m accelerate.commands.launch` is `accelerate launch` without relying on PATH.
        sys.executable, "-m", "accelerate.commands.launch",
        "--config_file", str(REPO / "recipes/accelerate/ddp_cpu.yaml"),
        "--main_process_port", str(free_port()),
        str(REPO / "scripts/sft.py"),
        "--model_name_or_path", str(tiny_model_dir),
        "--dataset_path", str(sft_dataset),
        "--output_dir", str(output_dir),
        "--use_peft", "--lora_r", "8", "--lora_alpha", "16", "--lora_target_modules", "q_proj", "v_proj",
        "--assistant_only_loss", "true",
        "--per_device_train_batch_size", str(PER_DEVICE_BATCH),
        "--max_steps", str(MAX_STEPS),
        "--logging_steps", "1",
        "--eval_strategy", "no",
        "--save_strategy", "steps", "--save_steps", str(MAX_STEPS),
        "--use_cpu", "true",
        "--report_to", "wandb",
        "--dataloader_num_workers", "0",
    ]  # fmt: skip
    log = tmp_path / "launch.log"
    repo_runs_before = set((REPO / "wandb").glob("*run-*"))

    returncode = run_to_end(argv, env, log, LAUNCH_TIMEOUT)

    assert returncode == 0, log.read_text()[-3000:]
    checkpoint = output_dir / f"checkpoint-{MAX_STEPS}"
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    assert state["global_step"] == MAX_STEPS
    # Every process saved its own RNG state: two ranks, no more.
    assert sorted(p.name for p in checkpoint.glob("rng_state*.pth")) == ["rng_state_0.pth", "rng_state_1.pth"]
    # Each step consumed PER_DEVICE_BATCH rows on each of the two ranks.
    assert state["epoch"] == pytest.approx(MAX_STEPS * PER_DEVICE_BATCH * WORLD_SIZE / ROWS)
    assert [entry["step"] for entry in state["log_history"] if "loss" in entry] == list(range(1, MAX_STEPS + 1))
    assert (output_dir / "adapter_model.safetensors").exists() and (output_dir / "all_results.json").exists()

    # One W&B run, offline, opened by rank 0 only; rank 1 opened none.
    runs = sorted(p.name for p in (wandb_dir / "wandb").glob("*run-*") if p.is_dir())
    assert len(runs) == 1 and runs[0].startswith("offline-run-"), runs
    assert list((wandb_dir / "wandb" / runs[0]).glob("*.wandb")), "the offline run has no .wandb log"
    assert set((REPO / "wandb").glob("*run-*")) == repo_runs_before, "a rank wrote a run outside WANDB_DIR"


# -- GRPO: one vllm critic for every rank -------------------------------------------------------------------------

FAKE_VLLM = [sys.executable, "-m", "support.fake_vllm_server"]  # the fake OpenAI server behind vLLM's command line
GRPO_STEPS = 2


def launch_grpo(tiny_model_dir: Path, tmp_path: Path, critic_server) -> tuple[int, Path, Path]:
    """`accelerate launch scripts/grpo.py` on two CPU ranks, the records' critic a `vllm` role on `critic_server`
    (a `VLLMServer`): (return code, output directory, log)."""
    from test_grpo import grpo_argv, make_run, record

    critic = {"backend": "vllm", "model": "judge/critic-7b", "vllm": critic_server, "max_retries": 1, "timeout": 5.0}
    dataset = make_run(tmp_path, [record(n, [5]) for n in range(12)], critic=critic)
    output_dir, log = tmp_path / "out", tmp_path / "launch.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    # Every rank, and the server the main one starts, import this checkout and the tests' support package.
    env.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", PYTHONPATH=f"{REPO}{os.pathsep}{REPO / 'tests'}")
    argv = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--config_file", str(REPO / "recipes/accelerate/ddp_cpu.yaml"),
        "--main_process_port", str(free_port()),
        str(REPO / "scripts/grpo.py"),
        *grpo_argv(tiny_model_dir, dataset, output_dir, "--max_steps", str(GRPO_STEPS)),
    ]  # fmt: skip
    return run_to_end(argv, env, log, LAUNCH_TIMEOUT), output_dir, log


def test_two_cpu_ranks_ask_the_one_vllm_critic_server_the_main_process_starts(tiny_model_dir, tmp_path):
    from spri_sft.serve import VLLMServer

    returncode, output_dir, log = launch_grpo(tiny_model_dir, tmp_path, VLLMServer(model="/w", command=FAKE_VLLM))

    assert returncode == 0, log.read_text()[-3000:]
    # One server was started, by one process: one log, one fake vLLM in it.
    server_logs = list((output_dir / "servers").glob("vllm-*.log"))
    assert len(server_logs) == 1, server_logs
    assert server_logs[0].read_text().count("fake vLLM pid") == 1
    # Both ranks' completions were scored by it: 8 completions of one prompt a rank and a step (8 per device, 8 per
    # prompt), summed over the two ranks in reward.json.
    counts = json.loads((output_dir / "reward.json").read_text())
    assert counts["completions"] == counts["scored"] == counts["calls"] == GRPO_STEPS * 8 * WORLD_SIZE


@pytest.mark.slow  # ~20 s on 2 busy cores: a second launch of two ranks, beside the one above
def test_a_critic_server_the_main_process_cannot_start_stops_every_rank_in_one_line(tiny_model_dir, tmp_path):
    from spri_sft.serve import VLLMServer

    script = "import sys; print('CUDA out of memory', flush=True); sys.exit(3)"
    failing = VLLMServer(model="/w", command=[sys.executable, "-c", script])

    returncode, output_dir, log = launch_grpo(tiny_model_dir, tmp_path, failing)

    assert returncode != 0
    errors = [line for line in log.read_text().splitlines() if line.startswith("spri-sft: error:")]
    assert len(errors) == WORLD_SIZE, log.read_text()[-3000:]  # each rank says it, and none waits forever
    assert any("the main process could not start the critic's vllm server" in line for line in errors), errors
    assert not (output_dir / "trainer_state.json").exists()
