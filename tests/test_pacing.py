"""Requests- and tokens-per-minute pacing, on a simulated clock (no wall-clock assertions)."""

from __future__ import annotations

import asyncio

from spri_sft.llm import openai_http
from spri_sft.llm.openai_http import _Pacer


class SimulatedClock:
    def __init__(self):
        self.now = 0.0
        self.slept = []

    def monotonic(self):
        return self.now

    async def sleep(self, seconds):
        self.slept.append(seconds)
        self.now += seconds


def run_pacer(monkeypatch, per_minute, takes):
    clock = SimulatedClock()
    monkeypatch.setattr(openai_http.time, "monotonic", clock.monotonic)
    monkeypatch.setattr(openai_http.asyncio, "sleep", clock.sleep)

    async def main():
        pacer = _Pacer(per_minute)
        for amount in takes:
            await pacer.take(amount)

    asyncio.run(main())
    return clock


def test_a_full_minute_bursts_without_waiting(monkeypatch):
    clock = run_pacer(monkeypatch, per_minute=60, takes=[1] * 60)
    assert clock.now == 0.0


def test_past_the_burst_requests_are_spaced_at_the_rate(monkeypatch):
    clock = run_pacer(monkeypatch, per_minute=60, takes=[1] * 70)
    # 10 requests beyond the bucket at 1 per second.
    assert abs(clock.now - 10.0) < 1e-6


def test_token_pacing_waits_for_large_requests(monkeypatch):
    clock = run_pacer(monkeypatch, per_minute=6000, takes=[4000, 4000])
    # After 4000 of 6000, the next 4000 needs 2000 more tokens: 20 s at 100 tokens/s.
    assert abs(clock.now - 20.0) < 1e-6


def test_a_request_larger_than_the_bucket_still_goes_through(monkeypatch):
    clock = run_pacer(monkeypatch, per_minute=100, takes=[500])
    assert clock.now == 0.0
