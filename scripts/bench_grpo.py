"""Benchmark: is the critic the bottleneck of `spri-sft grpo`? GRPO's reward against a server of C slots.

    python scripts/bench_grpo.py --output bench_grpo.json                      # C=64, batches of 64, 256, 1024
    python scripts/bench_grpo.py --capacity 64 --batches 256 --median 0.2      # quicker

The reward (`spri_sft.train.grpo_reward.PrincipleReward`) asks the critic one Stage II critique per sampled
completion, every completion of a training step at once, and the step waits for the last one. Against
`CapacityServer` (tests/support/capacity_server.py, in a child process: at most C requests in service, the
rest in its FIFO queue, seeded lognormal service times of median `--median`, sigma 0.6) each level sends one
step's batch of B completions, with the client's limit at K x C in flight (`--client-limit`, 2 by default: C
more wait in the server's queue, as requests to a real server with max_num_seqs = C do). Columns:

* calls: critiques the server answered (one per completion: the capacity server always writes a score);
* ideal: the service times the server drew, summed, over C (every slot busy all the time);
* busy: the server's busy period, first request arrived to last reply done;
* ratio: ideal / busy, the share of the server's capacity the reward used (a batch's last critiques
  finish with fewer than C left in service, so a batch of B = C cannot reach 1: that drain is the step's);
* bound: the least busy period any client could have for this batch, the larger of ideal and the longest
  service time drawn (a batch is done when its slowest critique is); bound/busy is the ratio to it, what the
  client's own scheduling costs;
* critiques/s: calls over the reward call's wall time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # `support` (tests/support/): the fake servers, which the wheel leaves out
sys.path.insert(0, str(REPO / "scripts"))

import support  # noqa: E402
from bench_generate import CapacityChild  # noqa: E402

from spri_sft.generate.engine import LoopSettings  # noqa: E402
from spri_sft.llm.base import EndpointConfig  # noqa: E402
from spri_sft.llm.openai_http import OpenAIChat  # noqa: E402
from spri_sft.train.grpo_reward import PrincipleReward  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="GRPO's reward against a capacity server (module docstring).")
    parser.add_argument("--capacity", type=int, default=64, help="the server's slots C (default 64)")
    parser.add_argument("--batches", default="64,256,1024", help="completions per step B, comma-separated")
    parser.add_argument("--client-limit", type=float, default=2.0, help="requests in flight, as a multiple of C")
    parser.add_argument("--median", type=float, default=0.5, help="median service time, s (default 0.5)")
    parser.add_argument("--sigma", type=float, default=0.6, help="lognormal sigma (default 0.6)")
    parser.add_argument("--seed", type=int, default=0, help="the server's seed (default 0)")
    parser.add_argument("--accept-rate", type=float, default=0.5, help="share of critiques scored 5 (else 3)")
    parser.add_argument("--output", type=Path, default=None, help="also write the results as JSON to this path")
    return parser.parse_args(argv)


def run_level(batch: int, args: argparse.Namespace) -> dict:
    limit = max(1, round(args.client_limit * args.capacity))
    with CapacityChild(args.capacity, args) as server:
        critic = OpenAIChat(
            EndpointConfig(
                backend="openai",
                model="capacity-model",
                base_url=[server.base_url],
                max_concurrency=limit,
                timeout=600.0,
            )
        )
        reward = PrincipleReward(critic, loop=LoopSettings(score_retries=0), max_concurrent=batch)
        prompts = [[{"role": "user", "content": f"Question {i}: how do tides work?"}] for i in range(batch)]
        completions = [[{"role": "assistant", "content": f"Answer {i}: the moon pulls the sea."}] for i in range(batch)]
        principles = ["Explain the cause, then one consequence."] * batch

        async def step() -> tuple[list, float]:
            await reward.start()
            started = time.perf_counter()
            rewards = await reward(prompts=prompts, completions=completions, principles=principles)
            wall = time.perf_counter() - started
            await reward.close()
            return rewards, wall

        rewards, wall = asyncio.run(step())
        stats = server.stats()
    served = stats.pop("served_requests")
    bound = max(stats["ideal_seconds"], max(r["service_time"] for r in served))
    scored = sum(r is not None for r in rewards)
    if stats["served"] != batch or scored != batch:
        raise RuntimeError(f"B={batch}: the server served {stats['served']} critiques, {scored} rewards scored")
    return {
        "capacity": args.capacity,
        "batch": batch,
        "client_limit": limit,
        "calls": stats["served"],
        "ideal_s": round(stats["ideal_seconds"], 3),
        "busy_s": round(stats["busy_seconds"], 3),
        "ratio": round(stats["ratio"], 4),
        "bound_s": round(bound, 3),
        "bound_over_busy": round(bound / stats["busy_seconds"], 4),
        "reward_wall_s": round(wall, 3),
        "critiques_per_s": round(batch / wall, 2),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    support.put_tests_on_pythonpath()  # the capacity server's child process imports support too
    results = [run_level(int(batch), args) for batch in args.batches.split(",")]
    print(
        f"{'C':>4} {'B':>6} {'calls':>6} {'ideal':>8} {'busy':>8} {'ratio':>6} {'bound':>8} {'bound/busy':>10} {'critiques/s':>12}"
    )
    for row in results:
        print(
            f"{row['capacity']:>4} {row['batch']:>6} {row['calls']:>6} {row['ideal_s']:>8.2f} {row['busy_s']:>8.2f} "
            f"{row['ratio']:>6.3f} {row['bound_s']:>8.2f} {row['bound_over_busy']:>10.3f} {row['critiques_per_s']:>12.1f}"
        )
    if args.output:
        settings = {k: v for k, v in vars(args).items() if k != "output"}
        args.output.write_text(json.dumps({"settings": settings, "results": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
