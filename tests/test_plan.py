"""`spri-sft plan`: a sample of each mode run for real, extrapolated to the whole prompt set, and checked
against a measured run of the same recipe; and the call bounds `spri-sft generate` prints.

The server is `FakeOpenAIServer`, whose critic here gives some versions a failing score (by a
hash of the text judged), so prompts take different numbers of rounds, as real ones do, and a
sample's mean can miss the whole set's.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from support.fake_openai_server import CRITIC_MARKER, FakeOpenAIServer, default_reply, message_text

from spri_sft.cli import main
from spri_sft.generate.config import GenerateConfig
from spri_sft.generate.engine import MODES, LoopSettings
from spri_sft.generate.inputs import PromptSource
from spri_sft.generate.plan import call_bounds, sample_prompts
from spri_sft.generate.run import generate
from spri_sft.llm.base import EndpointConfig
from spri_sft.pipeline.config import PipelineConfig
from spri_sft.pipeline.plan import PlanSettings, plan_recipe

pytestmark = pytest.mark.timeout(180)

PROMPTS = 24
# The plan's calls and tokens, over those of the full run, stay within this band when it samples
# 6 of the 24 prompts (the sample is fixed by the prompts' hashes, so this is one fixed draw).
BAND = (0.75, 1.33)


def varied_critic(messages, request_json) -> str:
    """Scores 2 or 5, by a hash of what is judged: about a third of the versions fail and are revised."""
    if not any(CRITIC_MARKER in message_text(m) for m in messages):
        return default_reply(messages, request_json)
    judged = message_text(messages[-1])
    score = 2 if hashlib.sha256(judged.encode()).digest()[0] % 3 == 0 else 5
    return f"Feedback: judged. [RESULT] {score}"


def write_prompts(directory: Path, count: int = PROMPTS) -> Path:
    path = directory / "prompts.jsonl"
    # Prompts of different lengths, so tokens per prompt vary too.
    rows = [{"prompt": f"Question {i}: " + " ".join(["why do tides rise"] * (1 + i % 5))} for i in range(count)]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def endpoint(url: str) -> EndpointConfig:
    return EndpointConfig(
        backend="openai", model="fake-model", base_url=[url], timeout=5.0,
        price_prompt_per_million=2.0, price_completion_per_million=8.0,
    )  # fmt: skip


def generate_config(tmp_path: Path, url: str, mode: str = "spri") -> GenerateConfig:
    return GenerateConfig(
        output_dir=str(tmp_path / "run"), mode=mode, prompts=PromptSource(path=str(write_prompts(tmp_path))),
        base=endpoint(url), critic=endpoint(url), progress=False,
    )  # fmt: skip


def within_band(predicted: float, measured: float) -> bool:
    return BAND[0] <= predicted / measured <= BAND[1]


def test_the_plan_predicts_calls_tokens_and_cost_of_the_measured_run(tmp_path):
    with FakeOpenAIServer(latency=0.005, reply_fn=varied_critic) as server:
        config = generate_config(tmp_path, server.base_url)
        plan = plan_recipe(config, PlanSettings(sample=6))["modes"][0]
        measured = generate(config)

    calls = sum(u["calls"] for u in measured["usage"].values())
    prompt_tokens = sum(u["prompt_tokens"] for u in measured["usage"].values())
    completion_tokens = sum(u["completion_tokens"] for u in measured["usage"].values())
    assert plan["prompts"] == PROMPTS and plan["sampled"] == 6
    assert within_band(plan["calls"], calls)
    assert within_band(plan["prompt_tokens"], prompt_tokens)
    assert within_band(plan["completion_tokens"], completion_tokens)
    assert within_band(plan["cost_usd"], measured["cost_usd"]["total"])
    assert plan["bounds"]["calls_min"] <= plan["calls"] <= plan["bounds"]["calls_max"]


def test_the_plan_of_each_role_is_its_tokens_at_its_prices(tmp_path):
    with FakeOpenAIServer(reply_fn=varied_critic) as server:
        plan = plan_recipe(generate_config(tmp_path, server.base_url), PlanSettings(sample=2))["modes"][0]
    for role in ("base", "critic"):
        role_plan = plan["roles"][role]
        expected = (role_plan["prompt_tokens"] * 2.0 + role_plan["completion_tokens"] * 8.0) / 1e6
        assert role_plan["cost_usd"] == pytest.approx(expected, rel=1e-3)
    assert plan["cost_usd"] == pytest.approx(
        plan["roles"]["base"]["cost_usd"] + plan["roles"]["critic"]["cost_usd"], rel=1e-3
    )


def test_a_pipeline_recipe_is_planned_mode_by_mode_with_its_own_roles(tmp_path):
    with FakeOpenAIServer() as server:
        recipe = PipelineConfig(
            output_dir=str(tmp_path / "pipeline"),
            modes=["spri", "direct", "oracle"],
            generate=GenerateConfig(
                prompts=PromptSource(path=str(write_prompts(tmp_path, 5)), response_column="prompt"),
                base=endpoint(server.base_url), critic=endpoint(server.base_url), progress=False,
            ),
        )  # fmt: skip
        plan = plan_recipe(recipe, PlanSettings(sample=2))
        asked = len(server.received)

    written = json.loads((tmp_path / "pipeline" / "plan" / "plan.json").read_text())
    assert written == plan
    by_mode = {p["mode"]: p for p in plan["modes"]}
    assert set(by_mode["spri"]["roles"]) == {"base", "critic"}
    assert set(by_mode["direct"]["roles"]) == {"base"}
    assert by_mode["direct"]["calls"] == 5  # one call a prompt, whatever the sample
    assert by_mode["oracle"]["calls"] == 0 and by_mode["oracle"]["roles"] == {}
    assert asked == sum(p["sample"]["calls"] for p in plan["modes"])  # only the samples were generated
    assert not (tmp_path / "pipeline" / "generate").exists()


def test_the_plan_counts_the_prompts_that_already_have_records(tmp_path):
    with FakeOpenAIServer() as server:
        config = generate_config(tmp_path, server.base_url, mode="direct")
        config.prompts.limit = 3
        generate(config)
        config.prompts.limit = None
        plan = plan_recipe(config, PlanSettings(sample=2))["modes"][0]
    assert plan["prompts"] == PROMPTS and plan["already_done"] == 3


def test_the_sample_is_spread_by_hash_whatever_the_order_of_the_prompts():
    prompts = [f"prompt {i}" for i in range(100)]
    chosen = sample_prompts(prompts, 4)
    assert len(chosen) == 4
    assert sample_prompts(list(reversed(prompts)), 4) == chosen
    assert chosen != prompts[:4]


def test_spri_sft_plan_prints_each_mode_and_writes_plan_json(tmp_path, capsys):
    with FakeOpenAIServer() as server:
        recipe = tmp_path / "recipe.yaml"
        recipe.write_text(
            f"output_dir: {tmp_path / 'out'}\nmode: direct\nprompts: {{path: {write_prompts(tmp_path, 7)}}}\n"
            f"base: {{backend: openai, model: fake-model, base_url: ['{server.base_url}'], price_prompt_per_million: 1.0}}\n"
            "progress: false\n"
        )
        assert main(["plan", str(recipe), "--plan.sample", "3", "--max_concurrent_prompts", "2"]) == 0
    printed = capsys.readouterr().out
    assert "plan direct: 7 prompts" in printed and "7 calls" in printed and "at 2 prompts in flight" in printed
    plan = json.loads((tmp_path / "out" / "plan" / "plan.json").read_text())
    assert plan["sample"] == 3 and plan["modes"][0]["sampled"] == 3


# -- the call bounds `spri-sft generate` prints before it starts --------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_the_call_bounds_hold_every_mode(mode):
    bounds = call_bounds(GenerateConfig(mode=mode, loop=LoopSettings(max_rounds=4, score_retries=0)), 10)
    assert 0 <= bounds["calls_min"] <= bounds["calls_max"]
    assert (bounds["calls_max"] == 0) == (mode == "oracle")


def test_the_call_bounds_of_self_refine_count_a_refinement_after_every_feedback():
    config = GenerateConfig(mode="self-refine", loop=LoopSettings(max_rounds=4, score_retries=0))
    assert call_bounds(config, 1)["calls_max"] == 1 + 4 + 4
