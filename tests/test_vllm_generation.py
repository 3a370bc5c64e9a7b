"""Generation against real vLLM servers (the CPU build, serving SmolLM2-135M-Instruct).

One pair of replicas is started for the module through `backend: vllm` roles (`ServedModels`) and
serves every test; the last test kills it. Skipped without `.venv-vllm` (`bash scripts/setup.sh
--vllm`); `.ci/run` builds it, so CI runs these.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from spri_sft.config import dump_yaml
from spri_sft.errors import UserError
from spri_sft.generate.config import GenerateConfig
from spri_sft.generate.engine import TABLE4_MODES, LoopSettings
from spri_sft.generate.inputs import PromptSource
from spri_sft.generate.run import generate
from spri_sft.generate.servers import ServedModels
from spri_sft.llm import openai_http
from spri_sft.llm.base import EndpointConfig
from spri_sft.serve import VLLMServer

REPO = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.vllm, pytest.mark.timeout(1200)]

MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"  # the served name; the weights are the embedded default's
PROMPTS = [
    ("Give me two tips for keeping basil alive indoors.", "Give it sun and water it when the soil is dry."),
    ("Write a one-line birthday wish for a coworker.", "Happy birthday, and thanks for making work brighter!"),
    ("What is a good name for a grey cat?", "Smoky."),
]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    if not (REPO / ".venv-vllm" / "bin" / "python").exists():
        pytest.skip("no .venv-vllm (build it with `bash scripts/setup.sh --vllm`)")
    servers = ServedModels(tmp_path_factory.mktemp("servers"))
    role = vllm_role()
    started = time.monotonic()
    (endpoint,) = servers.endpoints(role)
    print(f"two vLLM replicas ready in {time.monotonic() - started:.0f} s at {endpoint.base_url}")
    yield servers, endpoint
    servers.close()


def vllm_role(**overrides) -> EndpointConfig:
    server = VLLMServer(dtype="bfloat16", max_model_len=2048, replicas=2, env={"VLLM_CPU_KVCACHE_SPACE": "1"})
    return EndpointConfig(backend="vllm", model=MODEL, vllm=server, max_concurrency=8, **overrides)


def prompts_file(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": p, "answer": a}) + "\n" for p, a in PROMPTS))
    return path


def job(directory: Path, mode: str, max_new_tokens: int = 48, **settings) -> GenerateConfig:
    role = vllm_role(max_new_tokens=max_new_tokens)
    return GenerateConfig(
        output_dir=str(directory / mode),
        mode=mode,
        prompts=PromptSource(path=str(prompts_file(directory)), response_column="answer"),
        base=role,
        critic=role,
        loop=LoopSettings(max_rounds=2, score_retries=0),
        progress=False,
        **settings,
    )


def records(config: GenerateConfig) -> list[dict]:
    return [json.loads(line) for line in (Path(config.output_dir) / "records.jsonl").read_text().splitlines()]


def test_every_table4_row_runs_end_to_end_with_the_real_servers_usage(served, tmp_path):
    servers, _ = served
    for mode in TABLE4_MODES:
        config = job(tmp_path, mode)
        summary = generate(config, servers)
        assert summary["records"] == len(PROMPTS) and "failed" not in summary["status"], mode
        for record in records(config):
            for usage in record["usage"].values():  # the tokens vLLM reported, per role
                assert usage["calls"] >= 1 and usage["prompt_tokens"] > 0 and usage["completion_tokens"] > 0
            if mode == "oracle":
                assert record["usage"] == {} and record["response"] in dict(PROMPTS).values()


def test_a_reply_cut_at_max_new_tokens_is_recorded_as_length(served, tmp_path):
    servers, _ = served
    config = job(tmp_path, "direct", max_new_tokens=4)
    generate(config, servers)
    finish = [r["rounds"][-1]["finish_reason"] for r in records(config)]
    assert finish == ["length"] * len(PROMPTS)


def test_the_two_replicas_share_the_load(served, tmp_path):
    servers, endpoint = served
    generate(job(tmp_path, "spri"), servers)
    logs = sorted(Path(servers.log_dir).glob("vllm-*.log"))
    requests = [log.read_text().count("POST /v1/") for log in logs]
    assert len(logs) == 2 and all(n > 0 for n in requests), requests


def test_a_killed_generation_resumes_to_the_same_records(served, tmp_path):
    _, endpoint = served
    config = job(tmp_path, "spri")
    config.base = config.critic = EndpointConfig(
        backend="openai", model=MODEL, base_url=endpoint.base_url, max_new_tokens=48
    )
    recipe = tmp_path / "generate.yaml"
    dump_yaml(config, recipe)
    command = [sys.executable, "-m", "spri_sft.cli", "generate", "--config", str(recipe)]
    child = subprocess.Popen(command, cwd=REPO, start_new_session=True)
    journal = Path(config.output_dir) / "journal.jsonl"
    wait_for(journal, child.poll)  # killed once its first replies are journaled, with prompts in flight
    os.killpg(child.pid, signal.SIGKILL)
    child.wait()

    assert subprocess.call(command, cwd=REPO) == 0
    done = records(config)
    assert len(done) == len({r["id"] for r in done}) == len(PROMPTS)
    assert all(r["status"] != "failed" for r in done)
    assert not journal.exists()  # compacted away once every record was written


def test_servers_killed_mid_run_give_failed_records_with_a_reason_after_retries(served, tmp_path, monkeypatch):
    servers, endpoint = served
    monkeypatch.setattr(openai_http, "BACKOFF_BASE", 0.01)
    monkeypatch.setattr(openai_http, "BACKOFF_CAP", 0.05)
    config = job(tmp_path, "spri", fail_fast_after=None)
    config.base = config.critic = EndpointConfig(
        backend="openai", model=MODEL, base_url=endpoint.base_url, max_new_tokens=48, max_retries=2
    )

    def kill_servers_once_replies_arrive():
        wait_for(Path(config.output_dir) / "journal.jsonl", lambda: None)
        for group in servers.pids:
            os.killpg(group, signal.SIGKILL)  # every replica gone, as on a crashed node

    killer = threading.Thread(target=kill_servers_once_replies_arrive)
    killer.start()
    try:
        generate(config)
    except UserError as err:  # when no record got done before the kill
        assert "no record succeeded" in str(err)
    killer.join()
    done = records(config)
    assert len(done) == len(PROMPTS)  # every prompt has its record: nothing lost
    failed = [r for r in done if r["status"] == "failed"]
    # A dead server refuses connections or leaves them hanging: either way the reason says so.
    assert failed and all(r["error"].startswith(("APIConnectionError", "APITimeoutError")) for r in failed), [
        r["error"] for r in failed
    ]


def wait_for(journal: Path, exited, seconds: float = 300) -> None:
    """Until the journal holds a reply (it is created empty before the first call)."""
    deadline = time.monotonic() + seconds
    while not has_a_line(journal) and exited() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert has_a_line(journal), f"{journal} got no reply"


def has_a_line(path: Path) -> bool:
    return path.exists() and b"\n" in path.read_bytes()
