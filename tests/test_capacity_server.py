"""`CapacityServer`: at most C requests in service, a FIFO queue, seeded lognormal service times,
and replies the SPRI engine can turn into records."""

from __future__ import annotations

import asyncio
import json
import math
import random
from pathlib import Path

import aiohttp
import pytest
from support.capacity_server import CapacityServer, FifoSlots

from spri_sft.generate.config import GenerateConfig
from spri_sft.generate.inputs import PromptSource
from spri_sft.generate.run import generate
from spri_sft.generate.scoring import parse_score
from spri_sft.llm.base import EndpointConfig

pytestmark = pytest.mark.timeout(60)

CRITIC_PROMPT = "Rate the response. End with [RESULT] and a score from 1 to 5."


def chat_body(text: str) -> dict:
    return {"model": "capacity-model", "messages": [{"role": "user", "content": text}], "max_tokens": 256}


async def post_all(url: str, bodies: list[dict], path: str = "/chat/completions") -> list[dict]:
    async with aiohttp.ClientSession() as session:

        async def one(body: dict) -> dict:
            async with session.post(url + path, json=body) as reply:
                assert reply.status == 200, await reply.text()
                return await reply.json()

        return await asyncio.gather(*(one(b) for b in bodies))


async def post_in_order(server: CapacityServer, bodies: list[dict]) -> None:
    """Send each request only once the previous one has reached the server's queue (or got further)."""
    async with aiohttp.ClientSession() as session:
        tasks = []
        for index, body in enumerate(bodies):
            tasks.append(asyncio.create_task(session.post(server.base_url + "/chat/completions", json=body)))
            while (stats := server.stats)["served"] + stats["in_service"] + stats["queued"] < index + 1:
                await asyncio.sleep(0.001)
        for reply in await asyncio.gather(*tasks):
            reply.release()


def overlap_peak(intervals: list[tuple[float, float]]) -> int:
    """The most intervals [start, end) covering one instant."""
    events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
    peak = current = 0
    for _, step in events:  # at equal times an end (-1) sorts before a start (+1)
        current += step
        peak = max(peak, current)
    return peak


def test_no_more_than_capacity_requests_are_ever_in_service():
    with CapacityServer(capacity=3, median=0.02, seed=1) as server:
        asyncio.run(post_all(server.base_url, [chat_body(f"question {i}") for i in range(12)]))
        stats, served = server.stats, server.served
    assert stats["served"] == 12
    assert stats["max_in_service"] == 3  # reached (12 requests at once) and never exceeded
    assert overlap_peak([(r.started, r.finished) for r in served]) <= 3
    assert stats["max_queued"] >= 1


def test_waiting_requests_are_served_first_in_first_out():
    with CapacityServer(capacity=1, median=0.02, seed=2) as server:
        asyncio.run(post_in_order(server, [chat_body(f"question {i}") for i in range(6)]))
        served = server.served
    arrivals = [r.arrived for r in served]  # in order of service start
    assert arrivals == sorted(arrivals)


def test_a_freed_slot_goes_to_the_oldest_waiter_that_has_not_given_up():
    async def scenario() -> list[str]:
        slots, order = FifoSlots(1), []
        await slots.acquire()

        async def wait(name: str) -> None:
            await slots.acquire()
            order.append(name)
            slots.release()

        first, gave_up, last = (asyncio.create_task(wait(n)) for n in ("first", "gave_up", "last"))
        await asyncio.sleep(0)  # all three are queued, in this order
        gave_up.cancel()
        await asyncio.sleep(0)
        slots.release()
        await asyncio.gather(first, last)
        assert gave_up.cancelled() and slots.busy == 0
        return order

    assert asyncio.run(scenario()) == ["first", "last"]


def serve_sequentially(seed: int, count: int, median: float = 0.005) -> list[float]:
    with CapacityServer(capacity=1, median=median, seed=seed) as server:
        asyncio.run(post_in_order(server, [chat_body(f"q{i}") for i in range(count)]))
        return [r.service_time for r in server.served]


def test_service_times_are_the_seeded_lognormal_draws_in_order_of_service():
    drawn = serve_sequentially(seed=7, count=5)
    rng = random.Random(7)
    assert drawn == [rng.lognormvariate(math.log(0.005), 0.6) for _ in range(5)]
    assert serve_sequentially(seed=7, count=5) == drawn
    assert serve_sequentially(seed=8, count=5) != drawn


def test_stats_give_the_ideal_time_as_drawn_service_over_capacity():
    with CapacityServer(capacity=2, median=0.01, seed=3) as server:
        asyncio.run(post_all(server.base_url, [chat_body(f"q{i}") for i in range(6)]))
        stats, served = server.stats, server.served
    assert stats["service_time_sum"] == pytest.approx(sum(r.service_time for r in served))
    assert stats["ideal_seconds"] == pytest.approx(stats["service_time_sum"] / 2)
    assert stats["busy_seconds"] == pytest.approx(max(r.finished for r in served) - min(r.arrived for r in served))
    assert stats["ratio"] == pytest.approx(stats["ideal_seconds"] / stats["busy_seconds"])


def test_critic_prompts_get_a_parseable_score_fixed_by_the_text_and_the_accept_rate():
    async def scores(server: CapacityServer) -> list[int | None]:
        replies = await post_all(server.base_url, [chat_body(f"{CRITIC_PROMPT} Version {i}.") for i in range(20)])
        return [parse_score(r["choices"][0]["message"]["content"]) for r in replies]

    with CapacityServer(capacity=8, median=0.001, accept_rate=0.5, seed=4) as server:
        first = asyncio.run(scores(server))
        again = asyncio.run(scores(server))
    assert set(first) == {3, 5}
    assert first == again
    with CapacityServer(capacity=8, median=0.001, accept_rate=1.0) as server:
        assert set(asyncio.run(scores(server))) == {5}


def test_plain_completions_health_and_models_are_answered():
    async def calls(url: str) -> tuple[dict, int, dict]:
        root = url.removesuffix("/v1")
        async with aiohttp.ClientSession() as session:
            async with session.post(url + "/completions", json={"model": "m", "prompt": f"User: {CRITIC_PROMPT}"}) as r:
                text = await r.json()
            async with session.get(root + "/health") as r:
                health = r.status
            async with session.get(url + "/models") as r:
                models = await r.json()
        return text, health, models

    with CapacityServer(capacity=1, median=0.001, model="served-name") as server:
        text, health, models = asyncio.run(calls(server.base_url))
    assert parse_score(text["choices"][0]["text"]) == 5
    assert health == 200
    assert [m["id"] for m in models["data"]] == ["served-name"]


def test_spri_generate_against_it_makes_one_accepted_record_per_prompt(tmp_path: Path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"Explain topic {i}."}) + "\n" for i in range(6)))
    with CapacityServer(capacity=4, median=0.002, seed=5) as server:
        endpoint = EndpointConfig(
            backend="openai", model="capacity-model", base_url=[server.base_url], max_concurrency=4
        )
        config = GenerateConfig(
            output_dir=str(tmp_path / "out"),
            mode="spri",
            prompts=PromptSource(path=str(prompts)),
            base=endpoint,
            critic=endpoint,
            progress=False,
        )
        summary = generate(config)
        stats = server.stats
    assert summary["status"] == {"accepted": 6}
    assert stats["served"] == summary["this_run"]["calls"] == 6 * 4
    assert stats["max_in_service"] <= 4
