"""`backend: vllm` roles: generation starts their servers, talks to them over HTTP, and stops them.

The server command is the fake vLLM (`support.fake_vllm_server`: the project's fake
OpenAI server behind vLLM's command line), so these run without vLLM; tests/test_vllm_server.py
covers the real one.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import sys
from pathlib import Path

import pytest

from spri_sft.generate.config import GenerateConfig
from spri_sft.generate.engine import LoopSettings
from spri_sft.generate.identity import generation_identity, record_id
from spri_sft.generate.inputs import PromptSource
from spri_sft.generate.prompts import PromptSet
from spri_sft.generate.run import generate
from spri_sft.generate.servers import ServedModels
from spri_sft.llm.base import EndpointConfig
from spri_sft.serve import VLLMServer

pytestmark = pytest.mark.timeout(120)

FAKE_VLLM = [sys.executable, "-m", "support.fake_vllm_server"]


def vllm_role(model: str = "judge/model-7b", **server) -> EndpointConfig:
    return EndpointConfig(
        backend="vllm", model=model, vllm=VLLMServer(model="/weights/here", command=FAKE_VLLM, **server)
    )


def config(tmp_path: Path, mode: str = "spri", **roles) -> GenerateConfig:
    tmp_path.mkdir(parents=True, exist_ok=True)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"How do I plant tulip bulb {i}?"}) + "\n" for i in range(3)))
    return GenerateConfig(
        output_dir=str(tmp_path / "out"),
        mode=mode,
        prompts=PromptSource(path=str(prompts)),
        loop=LoopSettings(max_rounds=2),
        progress=False,
        **roles,
    )


def server_pids(log_dir: Path) -> list[int]:
    text = "".join(path.read_text() for path in sorted(log_dir.glob("vllm-*.log")))
    return [int(pid) for pid in re.findall(r"fake vLLM pid (\d+)", text)]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}").exists() and "Z" not in Path(f"/proc/{pid}/stat").read_text().split()[2]


def test_base_and_critic_on_one_model_share_one_started_server_which_stops_at_the_end(tmp_path):
    run = config(tmp_path, base=vllm_role(), critic=vllm_role())

    summary = generate(run)

    assert summary["records"] == 3 and summary["status"].get("failed", 0) == 0
    pids = server_pids(tmp_path / "out" / "servers")
    assert len(pids) == 1
    assert not alive(pids[0])
    records = [json.loads(line) for line in (tmp_path / "out" / "records.jsonl").read_text().splitlines()]
    assert {r["usage"]["critic"]["model"] for r in records} == {"judge/model-7b"}  # the served name is the role's model


def test_a_mode_that_never_calls_the_critic_starts_no_server_for_it(tmp_path):
    run = config(tmp_path, mode="direct", base=vllm_role("writer/model-70b"), critic=vllm_role("judge/model-7b"))

    generate(run)

    logs = [path.name for path in (tmp_path / "out" / "servers").glob("vllm-*.log")]
    assert logs == ["vllm-model-70b-0.log"]  # the base model's (writer/model-70b), not the critic's


def test_a_managed_server_gives_the_records_the_ids_any_server_of_that_model_would(tmp_path):
    managed = config(tmp_path, base=vllm_role("writer/model-70b"), critic=vllm_role())
    hosted = config(
        tmp_path,
        base=EndpointConfig(backend="openai", model="writer/model-70b", base_url=["http://elsewhere:8000/v1"]),
        critic=EndpointConfig(backend="openai", model="judge/model-7b", base_url=["http://elsewhere:8001/v1"]),
    )
    assert record_id("p", generation_identity(managed, PromptSet())) == record_id(
        "p", generation_identity(hosted, PromptSet())
    )


def test_served_models_outlive_one_generation_when_the_caller_holds_them(tmp_path):
    with ServedModels(tmp_path / "servers") as servers:
        generate(config(tmp_path / "a", base=vllm_role(), critic=vllm_role()), servers)
        generate(config(tmp_path / "b", mode="direct", base=vllm_role(), critic=vllm_role()), servers)
        pids = server_pids(tmp_path / "servers")
        assert len(pids) == 1 and alive(pids[0])  # one start served both runs
    assert not alive(pids[0])


def test_a_servers_kv_cache_is_sized_for_the_requests_the_run_can_send_it(tmp_path, smollm2_config_dir, caplog):
    # Base and critic share the server (one connection pool): at most the larger max_concurrency (16), and
    # never more than the prompts in flight (12).
    server = VLLMServer(model=str(smollm2_config_dir), max_model_len=2048, command=FAKE_VLLM)
    base = EndpointConfig(backend="vllm", model="judge/model-7b", vllm=server, max_concurrency=8)
    critic = dataclasses.replace(base, max_concurrency=16)
    run = dataclasses.replace(config(tmp_path, base=base, critic=critic), max_concurrent_prompts=12)

    with caplog.at_level("INFO", logger="spri_sft.serve.vllm"):
        generate(run)

    assert "KV cache 1 GiB = 2048 tokens × 12 sequences (requests in flight)" in caplog.text
