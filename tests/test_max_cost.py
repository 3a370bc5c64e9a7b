"""Prices and `generate.max_cost`: what a run costs in summary.json, and a clean, resumable stop at a cost.

Generation runs end to end against `FakeOpenAIServer`, which reports the tokens of every reply
(words stand in for tokens), so a run's cost is its tokens times the prices set on its roles.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support.fake_openai_server import FakeOpenAIServer

from spri_sft.errors import UserError
from spri_sft.generate.config import GenerateConfig
from spri_sft.generate.identity import generation_identity
from spri_sft.generate.inputs import PromptSource
from spri_sft.generate.plan import Prices
from spri_sft.generate.prompts import PromptSet
from spri_sft.generate.run import generate
from spri_sft.llm.base import EndpointConfig

pytestmark = pytest.mark.timeout(120)

# USD per million tokens: a prompt token costs $0.001 and a completion token $0.004, so a prompt of
# the fake server (some 800 tokens) costs about a dollar.
PROMPT_PRICE, COMPLETION_PRICE = 1000.0, 4000.0


def write_prompts(directory: Path, count: int) -> Path:
    path = directory / "prompts.jsonl"
    path.write_text(
        "".join(json.dumps({"prompt": f"Question {i}: why is the sky blue on day {i}?"}) + "\n" for i in range(count))
    )
    return path


def priced(url: str, **overrides) -> EndpointConfig:
    settings = dict(
        backend="openai", model="fake-model", base_url=[url], timeout=5.0,
        price_prompt_per_million=PROMPT_PRICE, price_completion_per_million=COMPLETION_PRICE,
    )  # fmt: skip
    return EndpointConfig(**{**settings, **overrides})


def config_for(
    tmp_path: Path, prompts_file: Path, base: EndpointConfig, critic: EndpointConfig, **overrides
) -> GenerateConfig:
    return GenerateConfig(
        output_dir=str(tmp_path / "out"), prompts=PromptSource(path=str(prompts_file)), base=base, critic=critic,
        progress=False, **overrides,
    )  # fmt: skip


def tokens_cost(records: list[dict], role: str) -> float:
    usage = [r["usage"][role] for r in records if role in r["usage"]]
    return sum(u["prompt_tokens"] * PROMPT_PRICE + u["completion_tokens"] * COMPLETION_PRICE for u in usage) / 1e6


def read_records(config: GenerateConfig) -> list[dict]:
    return [json.loads(line) for line in (Path(config.output_dir) / "records.jsonl").read_text().splitlines()]


def test_the_summary_holds_the_cost_of_each_role_and_their_total(tmp_path):
    with FakeOpenAIServer() as server:
        config = config_for(tmp_path, write_prompts(tmp_path, 3), priced(server.base_url), priced(server.base_url))
        summary = generate(config)
    records = read_records(config)

    base, critic = tokens_cost(records, "base"), tokens_cost(records, "critic")
    assert base > 0 and critic > 0
    assert summary["cost_usd"]["base"] == pytest.approx(base)
    assert summary["cost_usd"]["critic"] == pytest.approx(critic)
    assert summary["cost_usd"]["total"] == pytest.approx(base + critic)
    assert summary["this_run"]["cost_usd"] == pytest.approx(base + critic)  # one run made them all


def test_a_run_without_prices_has_an_unknown_cost_not_a_zero_one(tmp_path):
    with FakeOpenAIServer() as server:
        plain = EndpointConfig(backend="openai", model="fake-model", base_url=[server.base_url])
        summary = generate(config_for(tmp_path, write_prompts(tmp_path, 1), plain, plain))
    assert summary["cost_usd"] == {"total": None}
    assert summary["this_run"]["cost_usd"] is None


def test_max_cost_stops_cleanly_and_a_rerun_finishes_the_rest(tmp_path):
    prompts_file = write_prompts(tmp_path, 12)
    with FakeOpenAIServer(latency=0.01) as server:
        endpoint = priced(server.base_url)
        config = config_for(tmp_path, prompts_file, endpoint, endpoint, max_concurrent_prompts=2, max_cost=3.0)
        first = generate(config)
        first_records = read_records(config)

        assert first["stopped_by_budget"] is True and first["stopped_by"] == "max_cost"
        assert first["this_run"]["cost_usd"] >= 3.0
        assert 1 <= len(first_records) < 12
        assert all(r["status"] == "accepted" for r in first_records)  # unfinished prompts left no record
        assert first["missing"] == 12 - len(first_records)

        config.max_cost = None
        second = generate(config)

    records = read_records(config)
    assert records[: len(first_records)] == first_records  # kept as they were
    assert len({r["id"] for r in records}) == 12
    assert second["stopped_by_budget"] is False and second["missing"] == 0
    assert second["this_run"]["records"] == 12 - len(first_records)


def test_max_cost_counts_only_this_runs_spending(tmp_path):
    # A rerun under the same limit makes progress: the first run's records are paid for already.
    prompts_file = write_prompts(tmp_path, 6)
    with FakeOpenAIServer() as server:
        endpoint = priced(server.base_url)
        config = config_for(tmp_path, prompts_file, endpoint, endpoint, max_concurrent_prompts=1, max_cost=2.0)
        first = generate(config)
        second = generate(config)
    assert first["stopped_by_budget"] and first["records"] < 6
    assert second["records"] > first["records"]


def test_max_cost_with_no_price_on_any_role_is_refused_before_any_call(tmp_path):
    with FakeOpenAIServer() as server:
        plain = EndpointConfig(backend="openai", model="fake-model", base_url=[server.base_url])
        with pytest.raises(UserError, match="max_cost.*price"):
            generate(config_for(tmp_path, write_prompts(tmp_path, 1), plain, plain, max_cost=1.0))
        assert server.received == []


def test_gpu_hours_are_priced_for_the_runs_wall_time(tmp_path):
    with FakeOpenAIServer(latency=0.01) as server:
        self_hosted = EndpointConfig(
            backend="openai", model="fake-model", base_url=[server.base_url], price_per_gpu_hour=36.0, gpus=2
        )
        summary = generate(config_for(tmp_path, write_prompts(tmp_path, 2), self_hosted, self_hosted))
    run = summary["this_run"]
    # wall_seconds is rounded to 0.01 s; gpu_hours is priced from the unrounded time.
    assert run["gpu_hours"] == pytest.approx(2 * summary["wall_seconds"] / 3600, abs=2 * 0.005 / 3600)
    assert run["cost_usd"] == pytest.approx(36.0 * run["gpu_hours"], rel=1e-3)


def test_roles_on_one_server_pay_its_gpus_once():
    shared = EndpointConfig(backend="openai", base_url=["http://a/v1"], price_per_gpu_hour=2.0, gpus=4)
    own = EndpointConfig(backend="openai", base_url=["http://b/v1"], price_per_gpu_hour=2.0, gpus=4)
    assert Prices(GenerateConfig(base=shared, critic=shared)).gpus() == 4
    assert Prices(GenerateConfig(base=shared, critic=own)).gpus() == 8
    assert Prices(GenerateConfig(mode="direct", base=shared, critic=own)).gpus() == 4  # direct calls no critic


def test_a_vllm_role_counts_the_gpus_of_its_replicas():
    role = EndpointConfig(backend="vllm")
    role.vllm.tensor_parallel_size, role.vllm.replicas = 2, 3
    assert role.gpu_count() == 6


def test_prices_change_no_record_id():
    plain = GenerateConfig()
    priced_config = GenerateConfig(
        base=EndpointConfig(price_prompt_per_million=3.0, price_completion_per_million=15.0),
        critic=EndpointConfig(price_per_gpu_hour=2.5, gpus=8),
    )
    assert generation_identity(plain, PromptSet()) == generation_identity(priced_config, PromptSet())
