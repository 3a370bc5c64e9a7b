"""`spri-sft generate`: prompts in, `records.jsonl` + `config.yaml` + `summary.json` out.

Every prompt is its own coroutine (up to `max_concurrent_prompts` at once) that calls the
backends and appends its record when it finishes, so nothing waits for a whole stage to end.
A rerun with the same settings skips finished ids; changed settings change the ids.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections import Counter
from dataclasses import asdict
from pathlib import Path

from tqdm.auto import tqdm

from spri_sft.config import dump_yaml
from spri_sft.generate.config import GenerateConfig
from spri_sft.generate.engine import Engine, Session
from spri_sft.generate.inputs import load_prompts
from spri_sft.generate.prompts import PromptSet, load_prompt_set
from spri_sft.generate.store import RecordStore
from spri_sft.llm import Completion, build_backends

logger = logging.getLogger(__name__)

USES_CRITIC = {"spri", "seed-principles", "constitution"}


def record_id(prompt: str, config: GenerateConfig, prompts: PromptSet) -> str:
    """A stable hash of the prompt, the mode and every setting that changes the output."""
    settings = {
        "prompt": prompt,
        "mode": config.mode,
        "base": config.base.decoding(),
        "critic": config.critic.decoding() if config.mode in USES_CRITIC else None,
        "loop": {k: v for k, v in asdict(config.loop).items() if k != "prompts_file"},
        "templates": prompts.fingerprint(),
    }
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def plan(config: GenerateConfig, pending: int) -> dict:
    """Calls and tokens the pending prompts may cost, from the round limits and length caps."""
    from spri_sft.generate.engine import canonical_mode

    rounds, retries = config.loop.max_rounds, config.loop.score_retries
    critic_max = rounds * (1 + retries)
    one_call = {"base": (1, 1), "critic": (0, 0)}
    fixed_rules_critic = {"base": (1, rounds), "critic": (1, critic_max)}
    per_prompt = {
        "spri": {"base": (2, 2 * rounds), "critic": (2, 2 * critic_max)},
        "oracle": {"base": (0, 0), "critic": (0, 0)},
        "direct": one_call,
        "self-instruct": one_call,
        # A draft, up to `rounds` feedbacks (with their score reminders) and a refinement after each.
        "self-refine": {"base": (2, 1 + critic_max + rounds), "critic": (0, 0)},
        "seed-principles": one_call,
        "self-align": one_call,
        "seed-principles-critic": fixed_rules_critic,
        "self-align-critic": fixed_rules_critic,
    }[canonical_mode(config.mode)]
    calls_min = sum(low for low, _ in per_prompt.values()) * pending
    calls_max = sum(high for _, high in per_prompt.values()) * pending
    completion_max = pending * (
        per_prompt["base"][1] * config.base.max_new_tokens + per_prompt["critic"][1] * config.critic.max_new_tokens
    )
    return {"prompts": pending, "calls_min": calls_min, "calls_max": calls_max, "completion_tokens_max": completion_max}


def generate(config: GenerateConfig) -> dict:
    """Run generation to completion (or to the token budget) and return the summary."""
    return asyncio.run(_generate(config))


async def _generate(config: GenerateConfig) -> dict:
    started = time.monotonic()
    output_dir = Path(config.output_dir)
    templates = load_prompt_set(config.loop.prompts_file)
    prompts = load_prompts(config.prompts)
    ids = [record_id(p, config, templates) for p in prompts]

    output_dir.mkdir(parents=True, exist_ok=True)
    store = RecordStore(output_dir / "records.jsonl")
    others = set(store.records) - set(ids)
    if others:
        logger.warning(
            "%s holds %d records of other prompts or settings: kept, but not counted in this run's summary",
            store.path, len(others),
        )
    dump_yaml(config, output_dir / "config.yaml")
    if store.torn_bytes:
        logger.warning("cut off a torn last line (%d bytes) left by an interrupted run", store.torn_bytes)
    if config.retry_failed:
        logger.info("dropped %d failed records to retry them", store.drop("failed"))
    pending = [(i, p) for i, p in zip(ids, prompts) if i not in store]

    cost = plan(config, len(pending))
    print(
        f"[spri-sft] {len(prompts)} prompts, {len(prompts) - len(pending)} already done, {len(pending)} to generate "
        f"(mode {config.mode}): {cost['calls_min']:,}-{cost['calls_max']:,} model calls, "
        f"at most {cost['completion_tokens_max']:,} completion tokens",
        flush=True,
    )

    meter = _Meter(config.token_budget)
    stopped_by_budget = False
    try:
        if pending:
            engine = Engine(config.mode, templates, config.loop, source=config.prompts)
            base, critic = build_backends(config.base, config.critic)
            try:
                await base.start()
                await critic.start()
                stopped_by_budget = await _run_prompts(pending, engine, base, critic, store, meter, config)
            finally:
                await base.close()
                await critic.close()
    finally:
        store.close()

    wanted = set(ids)
    summary = summarize([r for r in store.records.values() if r["id"] in wanted])
    summary.update(
        wall_seconds=round(time.monotonic() - started, 2),
        this_run={"records": meter.records, "calls": meter.calls, "tokens": meter.tokens},
        stopped_by_budget=stopped_by_budget,
        missing=len(wanted - set(store.records)),
    )
    (output_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    if stopped_by_budget:
        print(f"[spri-sft] token budget of {config.token_budget:,} spent: stopped with every finished record kept")
    return summary


class _Meter:
    """Counts calls, tokens and records; signals when the token budget is spent."""

    def __init__(self, budget: int | None):
        self.budget = budget
        self.calls = self.tokens = self.records = self.accepted = 0
        self.spent = asyncio.Event()
        self.on_change = lambda: None

    def __call__(self, completion: Completion) -> None:
        self.calls += 1
        self.tokens += completion.prompt_tokens + completion.completion_tokens
        if self.budget is not None and self.tokens >= self.budget:
            self.spent.set()
        self.on_change()


async def _run_prompts(pending, engine, base, critic, store, meter, config) -> bool:
    """Run every pending prompt; returns True when the token budget stopped the run."""
    slots = asyncio.Semaphore(config.max_concurrent_prompts)
    bar = tqdm(total=len(pending), desc="generate", unit="prompt", disable=not config.progress, dynamic_ncols=True)
    started = time.monotonic()
    last_shown = 0.0

    def show(force: bool = False) -> None:
        # Called on every model call: redraw at most twice a second so fast servers are not slowed.
        nonlocal last_shown
        now = time.monotonic()
        if not force and now - last_shown < 0.5:
            return
        last_shown = now
        accepted = f"{meter.accepted / meter.records:.0%}" if meter.records else "-"
        rate = meter.calls / max(now - started, 1e-9)
        bar.set_postfix(accepted=accepted, tokens=f"{meter.tokens:,}", calls=meter.calls, req_s=f"{rate:.1f}")

    meter.on_change = show

    async def one(record_id: str, prompt: str) -> None:
        async with slots:
            if meter.spent.is_set():
                return
            session = Session(base, critic, on_usage=meter)
            try:
                fields = await engine.run(prompt, session)
            except asyncio.CancelledError:
                raise
            except Exception as err:  # one prompt's failure never stops the run
                fields = {
                    "principles": None,
                    "response": None,
                    "status": "failed",
                    "error": f"{type(err).__name__}: {err}",
                    "rounds": [],
                    "usage": {role: asdict(u) for role, u in session.usage.items() if u.calls},
                }
            # Synchronous on purpose: a finished prompt's record is written before anything can cancel it.
            store.append({"id": record_id, "prompt": prompt, "mode": engine.mode, **fields})
            meter.records += 1
            meter.accepted += fields["status"] == "accepted"
            show(force=True)
            bar.update()

    tasks = [asyncio.create_task(one(i, p)) for i, p in pending]
    everything = asyncio.gather(*tasks)
    budget_spent = asyncio.create_task(meter.spent.wait())
    try:
        await asyncio.wait({everything, budget_spent}, return_when=asyncio.FIRST_COMPLETED)
        if not everything.done():
            # Budget spent: unfinished prompts are dropped, to be generated on a later run.
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        else:
            everything.result()
    finally:
        budget_spent.cancel()
        bar.close()
    # A prompt that found the budget spent before it started returns without a record, so count records.
    return meter.spent.is_set() and meter.records < len(pending)


def summarize(records: list[dict]) -> dict:
    """Counts by status, score and round histograms, tokens and calls per model."""
    statuses = Counter(r["status"] for r in records)
    score_hist = {"principles": Counter(), "response": Counter()}
    final_scores = {"principles": Counter(), "response": Counter()}
    rounds_hist = {"principles": Counter(), "response": Counter()}
    usage: dict[str, Counter] = {}
    truncated = unscored = 0
    for record in records:
        last = {}
        for round_ in record.get("rounds", []):
            stage = round_["stage"]
            score_hist[stage][str(round_["score"])] += 1
            last[stage] = round_
            truncated += round_.get("finish_reason") == "length"
            unscored += round_.get("critique") is not None and round_["score"] is None
        for stage, round_ in last.items():
            final_scores[stage][str(round_["score"])] += 1
            rounds_hist[stage][str(round_["round"])] += 1
        for role, counts in record.get("usage", {}).items():
            key = f"{role}:{counts['model']}"
            usage.setdefault(key, Counter()).update(
                {k: counts[k] for k in ("calls", "prompt_tokens", "completion_tokens")}
            )
    return {
        "records": len(records),
        "status": dict(statuses),
        "final_score": {stage: dict(sorted(c.items())) for stage, c in final_scores.items() if c},
        "score_histogram_all_rounds": {stage: dict(sorted(c.items())) for stage, c in score_hist.items() if c},
        "rounds_histogram": {stage: dict(sorted(c.items())) for stage, c in rounds_hist.items() if c},
        "truncated_versions": truncated,
        "unscored_rounds": unscored,
        "usage": {key: dict(c) for key, c in usage.items()},
    }
