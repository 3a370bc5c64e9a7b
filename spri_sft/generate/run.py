"""`spri-sft generate`: prompts in, `records.jsonl` + `config.yaml` + `summary.json` out.

Every prompt is its own coroutine (up to `max_concurrent_prompts` at once) that calls the
backends and appends its record when it finishes, so nothing waits for a whole stage to end.
Every reply a prompt gets before then is journaled (`journal.py`), so a killed run's rerun
replays them instead of paying for them again. A rerun with the same settings skips finished
ids; changed settings change the ids (`identity.py`).

One output_dir holds one mode's records: a run of another mode into a directory that holds
records of a mode is refused (give it its own output_dir), so records.jsonl, summary.json and
config.yaml always describe one mode, and `spri-sft format` never meets two modes' versions of
one prompt in one file.

Failed is not done. A failed record keeps its error and its kind (`error_kind`): `transient`
for a failure to connect, an HTTP error status or a timeout (a server down, a wrong URL, a rate
limit outlasting the retries: fixing the server fixes it), `permanent` for any other (the same
request would fail again). A rerun retries this configuration's transient failures by itself (a
record's id says its settings are unchanged); `retry_failed` retries the permanent ones too. When
no record of this configuration in records.jsonl succeeded, or more than `max_failed_share` of
them failed, the run is an error (after summary.json is written) naming the most common error
and what to do, and so is a run whose first `fail_fast_after` records failed with one same error
(it stops there). `max_failed_share` defaults to 0.1: a healthy run, whose requests are retried on
429s, 5xx and timeouts, fails almost none, so one record in ten failing has a cause to fix, and a
dataset without those prompts is skewed towards the ones that succeed; since a rerun retries
transient failures by itself, stopping costs no more than that rerun.

Clean stops. `token_budget` and `max_cost` stop a run cleanly once it has spent that many tokens
or dollars (at the roles' prices, `spri_sft.generate.plan.Prices`), and so do Ctrl-C and SIGTERM
(which then go on as KeyboardInterrupt and `spri_sft.errors.Terminated`): unfinished prompts are
cancelled and awaited, so none is left to print a traceback; finished records are kept, the
unfinished prompts' journals too (a budget stop drops them), and summary.json is written
(`stopped_by`: token_budget, max_cost or interrupted); a rerun finishes the rest. summary.json says
what the records cost (`cost_usd`) and what this run spent (`this_run`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import asdict
from pathlib import Path

from tqdm.auto import tqdm

from spri_sft.config import check_ranges, dump_yaml
from spri_sft.errors import Terminated, UserError
from spri_sft.generate.config import GenerateConfig
from spri_sft.generate.engine import ALIASES, MODE_ROLES, Engine, Session
from spri_sft.generate.identity import generation_identity, record_id, request_settings
from spri_sft.generate.inputs import load_prompts, prompt_origin
from spri_sft.generate.journal import Journal, ReplayedCompletion
from spri_sft.generate.plan import Prices, call_bounds
from spri_sft.generate.prompts import PromptSet, load_prompt_set
from spri_sft.generate.record import Outcome, Record
from spri_sft.generate.servers import ServedModels
from spri_sft.generate.store import RecordStore
from spri_sft.llm import Completion, build_backends
from spri_sft.processes import writes_output_dir

logger = logging.getLogger(__name__)


@writes_output_dir  # a second run into the same output_dir refuses instead of appending the same records
def generate(config: GenerateConfig, servers: ServedModels | None = None, flags: str = "--") -> dict:
    """Run generation to completion (or to the token budget or max_cost) and return the summary.

    `backend: vllm` roles run on `servers` (kept running for the caller), or on servers started
    for this run and stopped at its end. Raises UserError, after writing the summary, when no
    record of this configuration succeeded, more than `max_failed_share` failed, or the first
    `fail_fast_after` records failed with the same error (the run stops there). `flags` is how the
    command being run spells this config's fields (`--generate.` in `spri-sft run`), for the
    flags its errors name. Ctrl-C and SIGTERM stop it cleanly (module docstring) and go on as
    KeyboardInterrupt and Terminated."""
    check_ranges(config, "generate")  # a config built in code; one read from YAML or flags was checked as it was read
    terminated = False

    async def until_sigterm() -> dict:
        # asyncio turns Ctrl-C into a cancellation of this task; SIGTERM gets the same, so both stop at an
        # await, never in the middle of a record's write, and leave no task to print a traceback.
        task, loop = asyncio.current_task(), asyncio.get_running_loop()

        def on_sigterm(signum, frame) -> None:
            nonlocal terminated
            if terminated:  # a second SIGTERM (a process group signalled twice) must not cut the clean-up short
                return
            terminated = True
            loop.call_soon_threadsafe(task.cancel)

        previous = _handle_sigterm(on_sigterm)
        try:
            return await _generate(config, servers, flags)
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)

    try:
        summary = asyncio.run(until_sigterm())
    except asyncio.CancelledError:
        if terminated:
            raise Terminated() from None
        raise
    failure = summary.get("failure")
    if failure:
        raise UserError(f"generate: {Path(config.output_dir) / 'records.jsonl'}: {failure}")
    return summary


def _handle_sigterm(handler):
    """Install `handler` for SIGTERM and return the one it replaces; None (nothing installed) off the main
    thread, where signals cannot be handled, or when SIGTERM is ignored on purpose (nohup)."""
    if threading.current_thread() is not threading.main_thread():
        return None
    previous = signal.getsignal(signal.SIGTERM)
    if previous == signal.SIG_IGN:
        return None
    signal.signal(signal.SIGTERM, handler)
    return previous if previous is not None else signal.SIG_DFL


def run_records(config: GenerateConfig) -> tuple[StoredRecords, bool]:
    """This configuration's finished records, in prompt order (read from records.jsonl as they are iterated,
    not held in memory), and whether its records.jsonl also holds records of other prompts or settings (a
    reused or shared output_dir)."""
    _, _, ids = _inputs(config)
    path = Path(config.output_dir) / "records.jsonl"
    store = RecordStore(path)
    store.close()
    mine = [i for i in ids if i in store]
    return StoredRecords(path, mine), len(mine) < len(store)


class StoredRecords:
    """Records of a records.jsonl, by id: their count, and the records themselves read from the file as they
    are iterated (the file is indexed anew each time)."""

    def __init__(self, path: Path, ids: list[str]):
        self.path, self.ids = path, ids

    def __len__(self) -> int:
        return len(self.ids)

    def __iter__(self) -> Iterator[dict]:
        store = RecordStore(self.path)
        try:
            for record_id in self.ids:
                yield store.get(record_id)
        finally:
            store.close()


def _inputs(config: GenerateConfig) -> tuple[PromptSet, list[str], list[str]]:
    """The templates, the prompts and their record ids, in order."""
    templates = load_prompt_set(config.loop.prompts_file)
    prompts = load_prompts(config.prompts, config.shard)
    identity = generation_identity(config, templates)
    return templates, prompts, [record_id(p, identity) for p in prompts]


async def _generate(config: GenerateConfig, servers: ServedModels | None, flags: str) -> dict:
    started = time.monotonic()
    output_dir = Path(config.output_dir)
    prices = Prices(config)
    if config.max_cost is not None and not prices.priced:
        roles = " or ".join(f"{role}.price_prompt_per_million" for role in prices.roles) or "a role's price"
        raise UserError(f"generate: max_cost {config.max_cost} needs a price: set {roles} (or another price_* field)")
    templates, prompts, ids = _inputs(config)

    output_dir.mkdir(parents=True, exist_ok=True)
    store = RecordStore(output_dir / "records.jsonl")
    try:
        _refuse_another_mode(store, ALIASES.get(config.mode, config.mode), flags)
    except UserError:
        store.close()
        raise
    others = len(store) - sum(i in store for i in ids)
    if others:
        logger.warning(
            "%s holds %d records of other prompts or settings: kept, but not counted in this run's summary",
            store.path,
            others,
        )
    dump_yaml(config, output_dir / "config.yaml")
    if store.torn_bytes:
        logger.warning("cut off a torn last line (%d bytes) left by an interrupted run", store.torn_bytes)
    _drop_failed_to_retry(store, set(ids), config.retry_failed, flags)
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
                logger.warning(
                    "cut off a torn last journal line (%d bytes) left by an interrupted run", journal.torn_bytes
                )
            if journal.entries:
                print(
                    f"[spri-sft] {journal.entries} replies of unfinished prompts journaled by an interrupted run: replayed, not asked again",
                    flush=True,
                )
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
    except (asyncio.CancelledError, KeyboardInterrupt):
        # Ctrl-C or SIGTERM: the finished records' summary, then the interrupt goes on to the caller.
        _write_summary(config, store, ids, prompts, prices, meter, started, "interrupted", flags)
        raise
    finally:
        store.close()

    limit = meter.stop_reason if meter.stop_reason in _LIMITS and meter.records < len(pending) else None
    summary = _write_summary(config, store, ids, prompts, prices, meter, started, limit, flags)
    if limit == "token_budget":
        print(f"[spri-sft] token budget of {config.token_budget:,} spent: stopped with every finished record kept")
    elif limit == "max_cost":
        print(
            f"[spri-sft] max_cost of {dollars(config.max_cost)} spent ({dollars(summary['this_run']['cost_usd'])}): "
            "stopped with every finished record kept"
        )
    return summary


def _write_summary(config, store, ids, prompts, prices, meter, started, stopped_by: str | None, flags: str) -> dict:
    """summary.json of this configuration's records in the file (not only this run's), with what this run did."""
    wanted = set(ids)
    failed = []  # this configuration's failed records, for the verdict below: read in the same pass

    def records():
        for record in store.read(wanted):
            if record["status"] == "failed":
                failed.append(record)
            yield record

    summary = summarize(records())
    wall_seconds = time.monotonic() - started
    summary.update(
        prompt_rows=prompts.report.as_dict(),
        wall_seconds=round(wall_seconds, 2),
        # The tokens of the records at the roles' prices; GPU-hours are paid per run, below.
        cost_usd=prices.records_cost(summary["usage"]),
        this_run={
            "records": meter.records,
            "calls": meter.calls,
            "replayed_calls": meter.replayed,
            "tokens": meter.tokens,
            # From the first prompt started to the last one finished: without model loading or server start.
            "generating_seconds": round(meter.generating_seconds, 3),
            # The finished prompts' own times, summed (each from its start to its record).
            "prompt_seconds": round(meter.prompt_seconds, 3),
            "gpu_hours": round(prices.gpu_hours(wall_seconds), 9),
            "cost_usd": round(meter.cost(wall_seconds), 6) if prices.priced else None,
        },
        stopped_by_budget=stopped_by in _LIMITS,
        stopped_by=stopped_by,
        missing=sum(i not in store for i in wanted),
    )
    if stopped_by != "interrupted":  # an interrupted run is not judged: the interrupt is what the caller hears
        failure = meter.failure(flags) or _records_failure(failed, summary["records"], config.max_failed_share, flags)
        if failure:
            summary["failure"] = failure
    (Path(config.output_dir) / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def dollars(amount: float) -> str:
    """A dollar amount as a line prints it: cents from a dollar up, else four significant digits ($0.002135),
    so a small spend never reads as $0.00."""
    if amount == 0 or abs(amount) >= 1:
        return f"${amount:,.2f}"
    return f"${amount:.4g}"


def _refuse_another_mode(store: RecordStore, mode: str, flags: str) -> None:
    """One output_dir holds one mode's records (module docstring): refuse a run of another mode into it."""
    found = Counter()
    for written, count in store.modes.items():
        found[ALIASES.get(written, written)] += count
    found.pop(mode, None)
    if found:
        other, count = found.most_common(1)[0]
        raise UserError(
            f"{store.path} holds {count} records of mode {other}, and one output_dir holds one mode's records: "
            f"give mode {mode} its own {flags}output_dir"
        )


TRANSIENT, PERMANENT = "transient", "permanent"
_RETRIED = "records that failed to connect, with an HTTP error status or a timeout are retried"


def _transient_errors() -> tuple[type[BaseException], ...]:
    """What a server or the network did, not the request: a rerun may well succeed (module docstring)."""
    import openai

    from spri_sft.llm.openai_http import MalformedReply

    # APIConnectionError includes the SDK's APITimeoutError; APIStatusError is any HTTP error status.
    return openai.APIConnectionError, openai.APIStatusError, MalformedReply, ConnectionError, TimeoutError


def error_kind(error: BaseException) -> str:
    return TRANSIENT if isinstance(error, _transient_errors()) else PERMANENT


def recorded_error_kind(record: dict) -> str:
    """A failed record's `error_kind`; for one written before records kept it, read from its error's type name."""
    if "error_kind" in record:
        return record["error_kind"]
    name = (record.get("error") or "").split(":", 1)[0]
    return (
        TRANSIENT if name in {cls.__name__ for base in _transient_errors() for cls in _subclasses(base)} else PERMANENT
    )


def _subclasses(cls: type) -> list[type]:
    return [cls] + [sub for direct in cls.__subclasses__() for sub in _subclasses(direct)]


def _drop_failed_to_retry(store: RecordStore, ids: set[str], retry_failed: bool, flags: str) -> None:
    """Drop this configuration's failed records that a rerun retries: the transient ones, or all with `retry_failed`."""
    failed = [store.get(i) for i in store.failed if i in ids]
    retried = {r["id"] for r in failed if retry_failed or recorded_error_kind(r) == TRANSIENT}
    if retried:
        store.drop(retried)
        why = "--retry_failed" if retry_failed else "a connection, HTTP status or timeout error"
        print(f"[spri-sft] {len(retried)} records that failed in an earlier run ({why}): generated again", flush=True)
    kept = len(failed) - len(retried)
    if kept:
        print(
            f"[spri-sft] {kept} records that failed in an earlier run with a permanent error: kept "
            f"({flags}retry_failed true generates them again)",
            flush=True,
        )


def _records_failure(failed: list[dict], records: int, max_failed_share: float, flags: str) -> str | None:
    """One line saying why this configuration's `records` (a count), `failed` of them, are a failed run (module
    docstring), or None."""
    if not failed:
        return None
    share = len(failed) / records
    if len(failed) < records and share <= max_failed_share:
        return None
    error, count = Counter(_one_line(r.get("error") or "no error recorded") for r in failed).most_common(1)[0]
    if len(failed) == records:
        what = f"no record succeeded: all {len(failed)} records failed"
        limit = ""
    else:
        what = f"{len(failed)} of {records} records failed ({share:.0%}, over max_failed_share {max_failed_share:g})"
        limit = f"; {flags}max_failed_share allows more"
    permanent = sum(recorded_error_kind(r) == PERMANENT for r in failed)
    if permanent:
        todo = (
            f"fix its cause and rerun with {flags}retry_failed true: {permanent} failed with a permanent error, which "
            "a plain rerun keeps"
        )
    else:
        todo = f"fix its cause and rerun the same command: {_RETRIED}"
    return f"{what}, {count} of them with {error} ({todo}{limit})"


def _backends(config: GenerateConfig, mode: str, servers: ServedModels):
    """The base and critic backends of the roles `mode` calls (a mode that calls the critic also calls
    the base model); a role it never calls gets none: no model loaded, no server started for it."""
    used = MODE_ROLES[mode]
    if "base" not in used:
        return _NoModel(config.base.model), _NoModel(config.critic.model)
    roles = (getattr(config, role) for role in used)
    endpoints = dict(zip(used, servers.endpoints(*roles, prompts_in_flight=config.max_concurrent_prompts)))
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
        self.first_outcomes: list[str | None] = []  # error or None, of this run's first records
        self.first_kind: str | None = None  # error_kind of the first of them
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
        if self.fail_fast_after and len(self.first_outcomes) < self.fail_fast_after:
            if not self.first_outcomes:
                self.first_kind = fields.get("error_kind")
            self.first_outcomes.append(error)
            first = self.first_outcomes
            if len(first) == self.fail_fast_after and first[0] is not None and first.count(first[0]) == len(first):
                self._stop("failing")

    def _stop(self, reason: str) -> None:
        if not self.stop.is_set():
            self.stop_reason = reason
            self.stop.set()

    def failure(self, flags: str) -> str | None:
        """One line naming why this run stopped early, or None; `flags` spells the fields as the command takes them."""
        if self.stop_reason != "failing":
            return None
        if self.first_kind == TRANSIENT:
            rerun = f"rerun the same command: {_RETRIED}"
        else:
            rerun = f"rerun with {flags}retry_failed true"
        return (
            f"stopped early: the first {self.fail_fast_after} records all failed with {_one_line(self.first_outcomes[0])} "
            f"(fix its cause and {rerun}; {flags}fail_fast_after null turns this check off)"
        )


def _one_line(error: str, limit: int = 300) -> str:
    text = " ".join(error.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


async def _run_prompts(pending, engine, base, critic, store, journal, meter, config) -> None:
    """Run every pending prompt, or until the meter says stop (unfinished prompts keep their journal)."""
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
        prompt_started = time.monotonic()
        calls = journal.prompt(record_id)
        session = Session(
            calls.backend("base", base, settings["base"]),
            calls.backend("critic", critic, settings["critic"]),
            on_usage=meter,
        )
        try:
            fields = await engine.run(prompt, session)
        except asyncio.CancelledError:
            raise
        except Exception as err:  # one prompt's failure never stops the run
            fields = Outcome(
                principles=None,
                response=None,
                status="failed",
                error=f"{type(err).__name__}: {err}",
                error_kind=error_kind(err),  # whether a rerun retries it by itself (module docstring)
                rounds=[],
                usage={role: asdict(u) for role, u in session.usage.items() if u.calls},
            )
        for role, replayed in calls.replayed.items():
            fields["usage"][role]["replayed_calls"] = replayed  # of its calls, those read back from the journal
        # Synchronous on purpose: a finished prompt's record is written before anything can cancel it.
        store.append(Record(id=record_id, prompt=prompt, mode=engine.mode, **prompt_origin(prompt), **fields))
        journal.forget(record_id)
        meter.record(fields, time.monotonic() - prompt_started)
        show(force=True)
        bar.update()

    prompts = iter(pending)  # shared by the workers: each prompt is taken by one of them, in order

    async def worker() -> None:
        for prompt_id, prompt in prompts:
            if meter.stop.is_set():
                return
            await one(prompt_id, prompt)

    # One task per prompt in flight, not per prompt: a task waiting its turn holds memory, and a run may hold
    # a million prompts.
    tasks = [asyncio.create_task(worker()) for _ in range(min(config.max_concurrent_prompts, len(pending)))]
    # A cancelled prompt is a result of this gather, not an exception nobody retrieves (a traceback at exit).
    everything = asyncio.gather(*tasks, return_exceptions=True)
    stop = asyncio.create_task(meter.stop.wait())
    generating = time.monotonic()
    try:
        await asyncio.wait({everything, stop}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        # Budget spent, failing alike, or interrupted (this task cancelled): unfinished prompts are cancelled and
        # awaited here, before the backends close under them and before anything else can report them.
        meter.generating_seconds = time.monotonic() - generating
        for task in (*tasks, stop):
            task.cancel()
        await asyncio.gather(*tasks, stop, return_exceptions=True)
        bar.close()
    for outcome in await everything:  # done by now, or as soon as its callbacks have run
        if isinstance(outcome, Exception):  # not a prompt's failure (those are records): a fault of this loop
            raise outcome


def summarize(records: Iterable[dict]) -> dict:
    """Counts by status, score and round histograms, tokens and calls per model (one pass over `records`)."""
    statuses = Counter()
    score_hist = {"principles": Counter(), "response": Counter()}
    final_scores = {"principles": Counter(), "response": Counter()}
    rounds_hist = {"principles": Counter(), "response": Counter()}
    usage: dict[str, Counter] = {}
    truncated = unscored = 0
    critiques = {"principles": Counter(), "response": Counter()}  # per stage: all, and unscored
    for record in records:
        statuses[record["status"]] += 1
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
        "records": statuses.total(),
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
