"""What a generation costs: its call bounds, its prices, and the plan extrapolated from a sample.

One home for every prediction and price of a generate run:

- `call_bounds`: the fewest and most model calls (and the most completion tokens) the prompts
  can take, from the mode's round limits and the roles' length caps; `spri-sft generate` prints
  it before it starts.
- `Prices`: the roles' prices (`EndpointConfig.price_*`) as money: tokens per role, and
  GPU-hours of self-hosted servers for the run's wall time (a server two roles share is counted
  once). `spri-sft generate` writes what its records and its run cost into summary.json and
  stops at `generate.max_cost` with it.
- `sample_prompts` and `extrapolate`: `spri-sft plan` runs a few prompts of each mode for real
  (`spri_sft.pipeline.plan`) and scales what that sample measured to the whole prompt set.

How the plan extrapolates: calls and tokens per prompt are the sample's means, times the
prompts. Wall time is the sample's time before its first prompt ran (model load, server start)
plus its mean call latency (its prompts' own times over their calls) times the predicted calls,
divided by the prompts in flight (`max_concurrent_prompts`, or fewer prompts); the run's last
prompts, finishing with slots idle, are not in it. It assumes a call takes as long at the run's full
concurrency as it did in the sample: true of a server with room to spare, optimistic for a
saturated one and for the in-process `transformers` backend, whose batches grow slower as they
grow larger.
"""

from __future__ import annotations

from spri_sft.generate.config import GenerateConfig
from spri_sft.generate.identity import digest
from spri_sft.generate.modes import mode_spec
from spri_sft.llm.base import EndpointConfig

SECONDS_PER_HOUR = 3600.0


def call_bounds(config: GenerateConfig, pending: int) -> dict:
    """Calls and tokens the pending prompts may cost, from the mode's round limits (`ModeSpec.calls_per_prompt`)
    and the roles' length caps."""
    per_prompt = mode_spec(config.mode).calls_per_prompt(config.loop.max_rounds, config.loop.score_retries)
    calls_min = sum(low for low, _ in per_prompt.values()) * pending
    calls_max = sum(high for _, high in per_prompt.values()) * pending
    completion_max = pending * (
        per_prompt["base"][1] * config.base.max_new_tokens + per_prompt["critic"][1] * config.critic.max_new_tokens
    )
    return {"prompts": pending, "calls_min": calls_min, "calls_max": calls_max, "completion_tokens_max": completion_max}


class Prices:
    """The prices of the roles a mode calls, in USD: per million prompt and completion tokens, and per
    GPU-hour of a self-hosted role's GPUs (`EndpointConfig.gpu_count`). Prices shape no record: they
    are not part of `EndpointConfig.decoding()`, so setting or changing one changes no record id."""

    def __init__(self, config: GenerateConfig):
        self.roles = {role: getattr(config, role) for role in mode_spec(config.mode).roles}
        # Each server once: roles sharing one (base and critic on the same model) pay its GPUs once.
        self._hardware: list[EndpointConfig] = []
        for endpoint in self.roles.values():
            if not any(_same_hardware(endpoint, seen) for seen in self._hardware):
                self._hardware.append(endpoint)

    @property
    def priced(self) -> bool:
        """Whether any role the mode calls has a price (else every cost is unknown, not zero)."""
        return any(
            price is not None
            for e in self.roles.values()
            for price in (e.price_prompt_per_million, e.price_completion_per_million, e.price_per_gpu_hour)
        )

    def tokens_cost(self, role: str, prompt_tokens: float, completion_tokens: float) -> float:
        """USD of these tokens of `role` (an unpriced kind of token costs nothing)."""
        endpoint = self.roles.get(role)
        if endpoint is None:
            return 0.0
        return (
            prompt_tokens * (endpoint.price_prompt_per_million or 0.0)
            + completion_tokens * (endpoint.price_completion_per_million or 0.0)
        ) / 1e6

    def gpus(self) -> int:
        """The GPUs the mode's roles run on, each server counted once."""
        return sum(endpoint.gpu_count() for endpoint in self._hardware)

    def gpu_hours(self, seconds: float) -> float:
        return self.gpus() * seconds / SECONDS_PER_HOUR

    def gpu_cost(self, seconds: float) -> float:
        """USD of the self-hosted GPUs over `seconds` of wall time."""
        hours = seconds / SECONDS_PER_HOUR
        return sum(endpoint.gpu_count() * (endpoint.price_per_gpu_hour or 0.0) * hours for endpoint in self._hardware)

    def records_cost(self, usage: dict[str, dict]) -> dict[str, float | None]:
        """USD of the tokens in a summary's `usage` ({"role:model": {...}}), per role and in total;
        None where nothing is priced."""
        if not self.priced:
            return {"total": None}
        costs: dict[str, float] = {}
        for key, counts in usage.items():
            role = key.split(":", 1)[0]
            costs[role] = costs.get(role, 0.0) + self.tokens_cost(
                role, counts["prompt_tokens"], counts["completion_tokens"]
            )
        return {**{role: round(cost, 6) for role, cost in costs.items()}, "total": round(sum(costs.values()), 6)}


def _same_hardware(a: EndpointConfig, b: EndpointConfig) -> bool:
    """Whether two roles run on one server or one loaded model (as `spri_sft.llm.factory` and
    `spri_sft.generate.servers` share them)."""
    if a.backend != b.backend:
        return False
    if a.backend == "vllm":
        return (a.model, a.vllm) == (b.model, b.vllm)
    if a.backend == "openai":
        return sorted(a.base_url) == sorted(b.base_url)
    return (a.model, a.device, a.dtype) == (b.model, b.device, b.dtype)


def sample_prompts(prompts: list[str], count: int) -> list[str]:
    """The `count` prompts a plan runs: those whose text hashes lowest, so the sample is spread over
    the whole set whatever its order (a file sorted by length or topic), and the same on every run."""
    return sorted(prompts, key=lambda prompt: digest(prompt))[:count]


def extrapolate(config: GenerateConfig, sample: dict, prompts: int, already_done: int = 0) -> dict:
    """The plan of one mode for `prompts` prompts, from the summary.json of its sample run (`sample`):
    calls, tokens, wall time, GPU-hours and cost, per role and in total, beside the call bounds."""
    measured = sample["this_run"]
    sampled = measured["records"]
    scale = prompts / sampled if sampled else 0.0
    prices = Prices(config)
    roles: dict[str, dict] = {}
    for key, counts in sample["usage"].items():
        role = key.split(":", 1)[0]
        role_plan = roles.setdefault(
            role, {"model": key.split(":", 1)[1], "calls": 0.0, "prompt_tokens": 0.0, "completion_tokens": 0.0}
        )
        for name in ("calls", "prompt_tokens", "completion_tokens"):
            role_plan[name] += counts[name] * scale
    for role, role_plan in roles.items():
        cost = prices.tokens_cost(role, role_plan["prompt_tokens"], role_plan["completion_tokens"])
        role_plan.update({name: round(role_plan[name]) for name in ("calls", "prompt_tokens", "completion_tokens")})
        role_plan["cost_usd"] = round(cost, 6) if prices.priced else None

    calls = sum(role_plan["calls"] for role_plan in roles.values())
    sample_calls = measured["calls"]
    in_flight = min(config.max_concurrent_prompts, prompts) or 1
    # Seconds one call took, on average: a prompt makes its calls one after another.
    call_seconds = measured["prompt_seconds"] / sample_calls if sample_calls else 0.0
    startup_seconds = max(sample["wall_seconds"] - measured["generating_seconds"], 0.0)
    wall_seconds = startup_seconds + call_seconds * calls / in_flight
    token_cost = sum(prices.tokens_cost(role, p["prompt_tokens"], p["completion_tokens"]) for role, p in roles.items())
    return {
        "mode": config.mode,
        "prompts": prompts,
        "already_done": already_done,
        "sampled": sampled,
        "roles": roles,
        "calls": calls,
        "prompt_tokens": sum(p["prompt_tokens"] for p in roles.values()),
        "completion_tokens": sum(p["completion_tokens"] for p in roles.values()),
        "in_flight": in_flight,
        "call_seconds": round(call_seconds, 4),
        "startup_seconds": round(startup_seconds, 2),
        "wall_seconds": round(wall_seconds, 2),
        "gpus": prices.gpus(),
        "gpu_hours": round(prices.gpu_hours(wall_seconds), 4),
        "cost_usd": round(token_cost + prices.gpu_cost(wall_seconds), 6) if prices.priced else None,
        "bounds": call_bounds(config, prompts),
        "sample": {key: measured[key] for key in ("calls", "tokens", "generating_seconds", "prompt_seconds")},
    }


def plan_lines(plans: list[dict]) -> list[str]:
    """The plan as printed: one line per mode, then the total of a plan of several modes."""
    lines = []
    for plan in plans:
        roles = (
            "; ".join(
                f"{role} {p['calls']:,} calls, {p['prompt_tokens']:,} + {p['completion_tokens']:,} tokens"
                + (f", ${p['cost_usd']:,.2f}" if p["cost_usd"] is not None else "")
                for role, p in plan["roles"].items()
            )
            or "no model calls"
        )
        done = f" ({plan['already_done']:,} already have records)" if plan["already_done"] else ""
        lines.append(
            f"[spri-sft] plan {plan['mode']}: {plan['prompts']:,} prompts{done} from {plan['sampled']} sampled: {roles}; "
            f"{_duration(plan['wall_seconds'])} at {plan['in_flight']} prompts in flight"
            + (f", {plan['gpu_hours']:,.2f} GPU-hours" if plan["gpus"] else "")
            + (f", ${plan['cost_usd']:,.2f}" if plan["cost_usd"] is not None else ", no prices set")
        )
    if len(plans) > 1:
        cost = [p["cost_usd"] for p in plans if p["cost_usd"] is not None]
        lines.append(
            f"[spri-sft] plan total: {sum(p['calls'] for p in plans):,} calls, "
            f"{sum(p['prompt_tokens'] for p in plans):,} + {sum(p['completion_tokens'] for p in plans):,} tokens, "
            f"{_duration(sum(p['wall_seconds'] for p in plans))}"
            + (f", {sum(p['gpu_hours'] for p in plans):,.2f} GPU-hours" if any(p["gpus"] for p in plans) else "")
            + (f", ${sum(cost):,.2f}" if cost else "")
        )
    return lines


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
