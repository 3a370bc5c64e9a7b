"""`spri-sft generate`: prompts in, `records.jsonl` + `config.yaml` + `summary.json` out.

Every prompt is its own coroutine (up to `max_concurrent_prompts` at once) that calls the
backends and appends its record when it finishes, so nothing waits for a whole stage to end.
Every reply a prompt gets before then is journaled (`journal.py`), so a killed run's rerun
replays them instead of paying for them again. A rerun with the same settings skips finished
ids; changed settings change the ids (`identity.py`).

A run whose records all failed is an error, and so is one whose first `fail_fast_after`
records failed with one same error (it stops there): both name the error in one line.

`token_budget` and `max_cost` stop a run cleanly once it has spent that many tokens or dollars
(at the roles' prices, `spri_sft.generate.plan.Prices`): finished records are kept, unfinished
prompts are dropped with their journals, and a rerun with a higher limit (or none) finishes them.
summary.json says what the records cost (`cost_usd`) and what this run spent (`this_run`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import Counter
from dataclasses import asdict
from pathlib import Path

from tqdm.auto import tqdm

from spri_sft.config import dump_yaml
from spri_sft.errors import UserError
from spri_sft.generate.config import GenerateConfig
from spri_sft.generate.engine import MODE_ROLES, Engine, Session
from spri_sft.generate.identity import generation_identity, record_id, request_settings
from spri_sft.generate.inputs import load_prompts, prompt_origin
from spri_sft.generate.journal import Journal, ReplayedCompletion
from spri_sft.generate.plan import Prices, call_bounds
from spri_sft.generate.prompts import PromptSet, load_prompt_set
from spri_sft.generate.servers import ServedModels
from spri_sft.generate.store import RecordStore
from spri_sft.llm import Completion, build_backends

logger = logging.getLogger(__name__)


def generate(config: GenerateConfig, servers: ServedModels | None = None) -> dict:
    """Run generation to completion (or to the token budget or max_cost) and return the summary.

    `backend: vllm` roles run on `servers` (kept running for the caller), or on servers started
    for this run and stopped at its end. Raises UserError, after writing the summary, when no
    record of this run succeeded or when the first `fail_fast_after` records failed with the
    same error (the run stops there)."""
    summary = asyncio.run(_generate(config, servers))
    failure = summary.get("failure")
    if failure:
        raise UserError(f"generate: {failure}")
    return summary


def run_records(config: GenerateConfig) -> tuple[list[dict], bool]:
    """This configuration's finished records, in prompt order, and whether its records.jsonl also
    holds records of other prompts or settings (a reused or shared output_dir)."""
    _, _, ids = _inputs(config)
    store = RecordStore(Path(config.output_dir) / "records.jsonl")
    store.close()
    mine = [store.records[i] for i in ids if i in store]
    return mine, len(mine) < len(store.records)


def _inputs(config: GenerateConfig) -> tuple[PromptSet, list[str], list[str]]:
    """The templates, the prompts and their record ids, in order."""
    templates = load_prompt_set(config.loop.prompts_file)
    prompts = load_prompts(config.prompts, config.shard)
    identity = generation_identity(config, templates)
    return templates, prompts, [record_id(p, identity) for p in prompts]


async def _generate(config: GenerateConfig, servers: ServedModels | None) -> dict:
    started = time.monotonic()
    output_dir = Path(config.output_dir)
    prices = Prices(config)
    if config.max_cost is not None and not prices.priced:
        roles = " or ".join(f"{role}.price_prompt_per_million" for role in prices.roles) or "a role's price"
        raise UserError(f"generate: max_cost {config.max_cost} needs a price: set {roles} (or another price_* field)")
    templates, prompts, ids = _inputs(config)

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

    cost = call_bounds(config, len(pending))
    print(
        f"[spri-sft] {len(prompts)} prompts, {len(prompts) - len(pending)} already done, {len(pending)} to generate "
        f"(mode {config.mode}): {cost['calls_min']:,}-{cost['calls_max']:,} model calls, "
        f"at most {cost['completion_tokens_max']:,} completion tokens",
        flush=True,
    )
    if prompts.report.line():  # the parts read and the rows skipped, by reason
        print(f"[spri-sft] {prompts.report.line()}", flush=True)

    meter = _Meter(config, prices, started)
    try:
        if pending:
            journal = Journal(output_dir / "journal.jsonl", {i for i, _ in pending})
            if journal.torn_bytes:
                logger.warning("cut off a torn last journal line (%d bytes) left by an interrupted run", journal.torn_bytes)
            if journal.entries:
                print(f"[spri-sft] {journal.entries} replies of unfinished prompts journaled by an interrupted run: replayed, not asked again", flush=True)
            engine = Engine(config.mode, templates, config.loop, source=config.prompts)
            own_servers = servers is None
            servers = servers or ServedModels(output_dir / "servers")
            try:
                base, critic = _backends(config, engine.mode, servers)
                try:
                    await base.start()
                    await critic.start()
                    await _run_prompts(pending, engine, base, critic, store, journal, meter, config)
                finally:
                    journal.close()
                    await base.close()
                    await critic.close()
            finally:
                if own_servers:
                    servers.close()
    finally:
        store.close()

    wanted = set(ids)
    summary = summarize([r for r in store.records.values() if r["id"] in wanted])
    stopped_by = meter.stop_reason if meter.stop_reason in _LIMITS and meter.records < len(pending) else None
    wall_seconds = time.monotonic() - started
    summary.update(
        prompt_rows=prompts.report.as_dict(),
        wall_seconds=round(wall_seconds, 2),
        # The tokens of the records at the roles' prices; GPU-hours are paid per run, below.
        cost_usd=prices.records_cost(summary["usage"]),
        this_run={
            "records": meter.records, "calls": meter.calls, "replayed_calls": meter.replayed, "tokens": meter.tokens,
            # From the first prompt started to the last one finished: without model loading or server start.
            "generating_seconds": round(meter.generating_seconds, 3),
            # The finished prompts' own times, summed (each from its start to its record).
            "prompt_seconds": round(meter.prompt_seconds, 3),
            "gpu_hours": round(prices.gpu_hours(wall_seconds), 9),
            "cost_usd": round(meter.cost(wall_seconds), 6) if prices.priced else None,
        },
        stopped_by_budget=stopped_by is not None,
        stopped_by=stopped_by,
        missing=len(wanted - set(store.records)),
    )
    failure = meter.failure()
    if failure:
        summary["failure"] = failure
    (output_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    if stopped_by == "token_budget":
        print(f"[spri-sft] token budget of {config.token_budget:,} spent: stopped with every finished record kept")
    elif stopped_by == "max_cost":
        print(
            f"[spri-sft] max_cost of ${config.max_cost:,.2f} spent (${summary['this_run']['cost_usd']:,.2f}): "
            "stopped with every finished record kept"
        )
    return summary


def _backends(config: GenerateConfig, mode: str, servers: ServedModels):
    """The base and critic backends of the roles `mode` calls (a mode that calls the critic also calls
    the base model); a role it never calls gets none: no model loaded, no server started for it."""
    used = MODE_ROLES[mode]
    if "base" not in used:
        return _NoModel(config.base.model), _NoModel(config.critic.model)
    endpoints = dict(zip(used, servers.endpoints(*(getattr(config, role) for role in used))))
    base, critic = build_backends(endpoints["base"], endpoints.get("critic", endpoints["base"]))
    return base, critic if "critic" in used else _NoModel(config.critic.model)


class _NoModel:
    """The backend of a role the mode never calls."""

    def __init__(self, model: str):
        self.model = model

    async def start(self) -> None:
        pass

    async def chat(self, messages):
        raise RuntimeError(f"this mode calls no {self.model} model")  # MODE_ROLES says it never does

    async def close(self) -> None:
        pass


# The stop reasons of a run that spent what it was allowed: it stopped cleanly, and a rerun resumes.
_LIMITS = ("token_budget", "max_cost")


class _Meter:
    """Counts calls, tokens, dollars and records; says when the run must stop (a limit spent, or failing alike)."""

    def __init__(self, config: GenerateConfig, prices: Prices, started: float):
        self.budget, self.max_cost, self.fail_fast_after = config.token_budget, config.max_cost, config.fail_fast_after
        self.prices, self.started = prices, started
        self.calls = self.replayed = self.tokens = self.records = self.accepted = 0
        self.tokens_cost = 0.0  # USD of this run's tokens
        self.generating_seconds = self.prompt_seconds = 0.0
        self.errors: Counter[str] = Counter()  # the errors of this run's failed records
        self.first_outcomes: list[str | None] = []  # error or None, of this run's first records
        self.stop = asyncio.Event()
        self.stop_reason: str | None = None
        self.on_change = lambda: None

    def __call__(self, role: str, completion: Completion) -> None:
        if isinstance(completion, ReplayedCompletion):
            self.replayed += 1  # paid by an earlier run: neither a call nor tokens of this one
            return
        self.calls += 1
        self.tokens += completion.prompt_tokens + completion.completion_tokens
        self.tokens_cost += self.prices.tokens_cost(role, completion.prompt_tokens, completion.completion_tokens)
        if self.budget is not None and self.tokens >= self.budget:
            self._stop("token_budget")
        if self.max_cost is not None and self.cost(time.monotonic() - self.started) >= self.max_cost:
            self._stop("max_cost")
        self.on_change()

    def cost(self, seconds: float) -> float:
        """USD this run has spent: its tokens, and its self-hosted GPUs over `seconds` of wall time."""
        return self.tokens_cost + self.prices.gpu_cost(seconds)

    def record(self, fields: dict, seconds: float) -> None:
        self.records += 1
        self.prompt_seconds += seconds
        self.accepted += fields["status"] == "accepted"
        error = fields.get("error") if fields["status"] == "failed" else None
        if error is not None:
            self.errors[error] += 1
        if self.fail_fast_after and len(self.first_outcomes) < self.fail_fast_after:
            self.first_outcomes.append(error)
            first = self.first_outcomes
            if len(first) == self.fail_fast_after and first[0] is not None and first.count(first[0]) == len(first):
                self._stop("failing")

    def _stop(self, reason: str) -> None:
        if not self.stop.is_set():
            self.stop_reason = reason
            self.stop.set()

    def failure(self) -> str | None:
        """One line naming why this run failed as a whole, or None."""
        if self.stop_reason == "failing":
            return (
                f"stopped early: the first {self.fail_fast_after} records all failed with {_one_line(self.first_outcomes[0])} "
                "(fix its cause and rerun with --retry_failed true; --fail_fast_after null turns this check off)"
            )
        failed = sum(self.errors.values())
        if self.records and failed == self.records:
            error, count = self.errors.most_common(1)[0]
            return (
                f"no record succeeded: all {failed} records of this run failed, {count} of them with "
                f"{_one_line(error)} (fix its cause and rerun with --retry_failed true)"
            )
        return None


def _one_line(error: str, limit: int = 300) -> str:
    text = " ".join(error.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


async def _run_prompts(pending, engine, base, critic, store, journal, meter, config) -> None:
    """Run every pending prompt, or until the meter says stop (unfinished prompts keep their journal)."""
    slots = asyncio.Semaphore(config.max_concurrent_prompts)
    bar = tqdm(total=len(pending), desc="generate", unit="prompt", disable=not config.progress, dynamic_ncols=True)
    settings = {"base": request_settings(config.base), "critic": request_settings(config.critic)}
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
            if meter.stop.is_set():
                return
            prompt_started = time.monotonic()
            calls = journal.prompt(record_id)
            session = Session(
                calls.backend("base", base, settings["base"]), calls.backend("critic", critic, settings["critic"]), on_usage=meter
            )
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
            for role, replayed in calls.replayed.items():
                fields["usage"][role]["replayed_calls"] = replayed  # of its calls, those read back from the journal
            # Synchronous on purpose: a finished prompt's record is written before anything can cancel it.
            store.append({"id": record_id, "prompt": prompt, "mode": engine.mode, **prompt_origin(prompt), **fields})
            journal.forget(record_id)
            meter.record(fields, time.monotonic() - prompt_started)
            show(force=True)
            bar.update()

    tasks = [asyncio.create_task(one(i, p)) for i, p in pending]
    everything = asyncio.gather(*tasks)
    stop = asyncio.create_task(meter.stop.wait())
    generating = time.monotonic()
    try:
        await asyncio.wait({everything, stop}, return_when=asyncio.FIRST_COMPLETED)
        if not everything.done():
            # Budget spent or failing alike: unfinished prompts are dropped, to be generated on a later run.
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        else:
            everything.result()
    finally:
        meter.generating_seconds = time.monotonic() - generating
        stop.cancel()
        bar.close()


def summarize(records: list[dict]) -> dict:
    """Counts by status, score and round histograms, tokens and calls per model."""
    statuses = Counter(r["status"] for r in records)
    score_hist = {"principles": Counter(), "response": Counter()}
    final_scores = {"principles": Counter(), "response": Counter()}
    rounds_hist = {"principles": Counter(), "response": Counter()}
    usage: dict[str, Counter] = {}
    truncated = unscored = 0
    critiques = {"principles": Counter(), "response": Counter()}  # per stage: all, and unscored
    for record in records:
        last = {}
        for round_ in record.get("rounds", []):
            stage = round_["stage"]
            score_hist[stage][str(round_["score"])] += 1
            last[stage] = round_
            truncated += round_.get("finish_reason") == "length"
            unscored += round_.get("critique") is not None and round_["score"] is None
            if round_.get("critique") is not None:
                critiques[stage].update(all=1, unscored=round_["score"] is None)
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
        # Critic replies left without a score, per stage, over that stage's critiques.
        "unscored_rate": {stage: round(c["unscored"] / c["all"], 4) for stage, c in critiques.items() if c["all"]},
        "usage": {key: dict(c) for key, c in usage.items()},
    }
