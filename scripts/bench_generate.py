"""Benchmark: how close does `spri-sft generate` come to ideal concurrency against a slow server?

Run (defaults: 200 prompts, 0.2 s per reply, concurrency 1, 16 and 64; about 3 minutes,
2 min 40 s of which is the C=1 run):

    python scripts/bench_generate.py --output bench_generate.json

A quicker look:

    python scripts/bench_generate.py --prompts 256 --concurrency 16,64 --latency 0.2

A `FakeOpenAIServer` answers every chat request after a fixed latency, with no faults. The
run uses mode `spri`; the fake critic scores everything 5, so every prompt makes exactly 4
dependent calls (principles, critique, response, critique). Concurrency C is what a server
sees: the requests in flight to it, `max_concurrency = C` (base and critic on one server share
that limit). Every prompt is in flight at once (`max_concurrent_prompts = N`), so whenever a
slot frees up some prompt has its next call ready. For each C it runs `generate()` into a
fresh temporary directory with the progress bar off, and reports:

* calls: chat requests the server received (and checks the run's own count agrees);
* measured: wall time of the `generate()` call;
* ideal: calls * latency / C, the time if all C slots were busy all the time;
* ideal/meas: the efficiency (the target is >= 0.9 at C=64);
* peak: the most requests the server ever had in flight at once (thread server only).

Before the timed runs, an untimed warm-up run (8 prompts, no latency) pays the one-off costs
of a fresh process (lazy imports inside `openai`, first connections), which otherwise land
on whichever level runs first (about 1 s; `--no-warmup` to see it).

`--server process` runs the fake server in a child process, so the client's event loop does
not share a GIL (and CPU) with the server's, as it does with the default in-process thread.

Scheduling ratio (`--bench scheduling`): against `CapacityServer` in a child process, which
serves at most C requests at once (the rest wait in its FIFO queue, like a real server's batch
slots) with seeded lognormal service times (median `--median`, sigma 0.6):

    python scripts/bench_generate.py --bench scheduling --output bench_scheduling.json
    python scripts/bench_generate.py --bench scheduling --levels 64:512,256:1024   # quicker

Each level C:N runs mode spri on N prompts with every prompt in flight
(`max_concurrent_prompts = N`) and base and critic on the one server URL, so they share one
client limit, `max_concurrency = K * C` for each K of `--client-limit` (K = 1: the client
never sends more than the server can serve; K = 2: up to C more wait in the server's queue, as
requests to a real server with `max_num_seqs = C` do). Columns:

* ideal: the service times the server drew, summed, over C (every slot busy all the time);
* busy: the server's busy period, first request arrived to last reply done;
* ratio: ideal / busy (the goal: >= 0.95 at C=64, >= 0.9 at C=256);
* idle: slot-seconds left idle, as a share of C * busy, split into ramp (until C are first in
  service), steady (from then to the last request's arrival: the client refilling slots late)
  and drain (after the last arrival: the last prompts' final calls finish, fewer than C left);
* cli/call, srv/call: CPU milliseconds per call of the client process (this one, which runs
  `generate()`) and of the server process;
* cli_wait: seconds the client's main thread was ready to run but waited for a CPU that other
  processes held (the kernel's run-queue wait): on a shared machine, the share of the gap that
  is not the client's own doing.

To see where the client spends its time, run it under py-spy (`pip install py-spy`):
`py-spy record -o profile.svg -- python scripts/bench_generate.py --bench scheduling ...`.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from spri_sft.generate.config import GenerateConfig
from spri_sft.generate.inputs import PromptSource
from spri_sft.generate.run import generate
from spri_sft.llm.base import EndpointConfig
from spri_sft.testing.fake_openai_server import FakeOpenAIServer


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Measure generate() throughput against a fixed-latency fake OpenAI server "
        "(see the module docstring)."
    )
    parser.add_argument("--prompts", type=int, default=200, help="number of prompts N (default 200)")
    parser.add_argument(
        "--latency", type=float, default=0.2, help="seconds the server waits before each reply (default 0.2)"
    )
    parser.add_argument(
        "--concurrency", default="1,16,64", help="comma-separated concurrency levels C to run (default 1,16,64)"
    )
    parser.add_argument(
        "--server",
        choices=("thread", "process"),
        default="process",
        help="run the fake server in a child process (default: like a real server, it does not share this "
        "process's CPU and GIL) or in a thread of this process (reports the peak in-flight count)",
    )
    parser.add_argument(
        "--no-warmup",
        dest="warmup",
        action="store_false",
        help="skip the untimed warm-up run (by default one small run first pays one-off import and first-use costs)",
    )
    parser.add_argument(
        "--bench",
        choices=("latency", "scheduling"),
        default="latency",
        help="latency: the fixed-latency fake server at each --concurrency (default); scheduling: the "
        "scheduling ratio against a server of C slots with lognormal service times (module docstring)",
    )
    parser.add_argument(
        "--levels",
        default="64:2048,256:4096",
        help="scheduling: comma-separated C:N, server slots and prompts (default 64:2048,256:4096)",
    )
    parser.add_argument(
        "--client-limit",
        default="1",
        help="scheduling: comma-separated factors K, the client's max_concurrency = K * C (default 1)",
    )
    parser.add_argument("--median", type=float, default=0.5, help="scheduling: median service time, s (default 0.5)")
    parser.add_argument("--sigma", type=float, default=0.6, help="scheduling: lognormal sigma (default 0.6)")
    parser.add_argument(
        "--accept-rate",
        type=float,
        default=1.0,
        help="scheduling: chance a critique scores 5 (else 3, and the stage revises); default 1: 4 calls a prompt",
    )
    parser.add_argument("--seed", type=int, default=0, help="scheduling: the server's seed (default 0)")
    parser.add_argument("--progress", action="store_true", help="scheduling: show generate's progress bar")
    parser.add_argument("--output", type=Path, default=None, help="also write the results as JSON to this path")
    args = parser.parse_args(argv)
    try:
        args.levels = [tuple(int(x) for x in level.split(":")) for level in args.levels.split(",") if level.strip()]
        args.client_limit = [float(k) for k in args.client_limit.split(",") if k.strip()]
    except ValueError:
        parser.error("--levels: expected C:N pairs like 64:2048,256:4096; --client-limit: numbers like 1,2")
    if any(len(level) != 2 or min(level) < 1 for level in args.levels) or not args.levels:
        parser.error("--levels: expected C:N pairs of positive integers like 64:2048")
    if not args.client_limit or min(args.client_limit) <= 0:
        parser.error("--client-limit: every factor must be > 0")
    try:
        args.concurrency = [int(c) for c in args.concurrency.split(",") if c.strip()]
    except ValueError:
        parser.error(f"--concurrency: expected integers like 1,16,64, got {args.concurrency!r}")
    if not args.concurrency or min(args.concurrency) < 1:
        parser.error("--concurrency: every level must be >= 1")
    if args.prompts < 1:
        parser.error("--prompts must be >= 1")
    if args.latency < 0:
        parser.error("--latency must be >= 0")
    return args


class ChildServer:
    """`python -m spri_sft.testing.fake_openai_server` in a child process (no stats: counts come from the run)."""

    def __init__(self, latency: float):
        self.latency = latency

    def __enter__(self) -> ChildServer:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "spri_sft.testing.fake_openai_server"]
            + ["--port", "0", "--latency", str(self.latency)],
            stdout=subprocess.PIPE,
            text=True,
        )
        line = self.process.stdout.readline().strip()
        if not line.startswith("listening on "):
            self.process.kill()
            raise RuntimeError(f"fake server did not start: {line!r}")
        self.base_url = line.removeprefix("listening on ")
        return self

    def __exit__(self, *exc) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)

    stats = None
    max_in_flight = None


def run_level(
    concurrency: int, args: argparse.Namespace, prompts_file: Path, workdir: Path, latency: float | None = None
) -> dict:
    latency = args.latency if latency is None else latency
    server_cm = FakeOpenAIServer(latency=latency) if args.server == "thread" else ChildServer(latency)
    with server_cm as server:

        def endpoint() -> EndpointConfig:
            return EndpointConfig(
                backend="openai", model="fake-model", base_url=[server.base_url], max_concurrency=concurrency
            )

        config = GenerateConfig(
            output_dir=str(workdir / f"c{concurrency}"),
            mode="spri",
            prompts=PromptSource(path=str(prompts_file)),
            base=endpoint(),
            critic=endpoint(),
            max_concurrent_prompts=max(concurrency, args.prompts),
            progress=False,
        )
        with contextlib.redirect_stdout(io.StringIO()):  # generate()'s own "[spri-sft] ..." lines
            started = time.perf_counter()
            summary = generate(config)
            measured = time.perf_counter() - started
        server_calls = server.stats["requests"] if server.stats is not None else None
        peak = server.max_in_flight

    prompts = summary["records"]
    run_calls = summary["this_run"]["calls"]
    if server_calls is not None and server_calls != run_calls:
        raise RuntimeError(f"C={concurrency}: the server saw {server_calls} requests but the run counted {run_calls}")
    if summary["missing"] or summary["this_run"]["records"] != prompts:
        generated = summary["this_run"]["records"]
        raise RuntimeError(f"C={concurrency}: {summary['missing']} prompts missing, {generated} generated")
    calls = server_calls if server_calls is not None else run_calls
    ideal = calls * latency / concurrency
    return {
        "concurrency": concurrency,
        "calls": calls,
        "measured_s": round(measured, 3),
        "ideal_s": round(ideal, 3),
        "ideal_over_measured": round(ideal / measured, 3) if measured else None,
        "server_max_in_flight": peak,
        "status": summary["status"],
    }


class CapacityChild:
    """`python -m spri_sft.testing.capacity_server` in a child process, read through GET /stats."""

    def __init__(self, capacity: int, args: argparse.Namespace):
        self.command = [sys.executable, "-m", "spri_sft.testing.capacity_server", "--port", "0"]
        self.command += ["--capacity", str(capacity), "--median", str(args.median), "--sigma", str(args.sigma)]
        self.command += ["--seed", str(args.seed), "--accept-rate", str(args.accept_rate)]

    def __enter__(self) -> CapacityChild:
        self.process = subprocess.Popen(self.command, stdout=subprocess.PIPE, text=True)
        line = self.process.stdout.readline().strip()
        if not line.startswith("listening on "):
            self.process.kill()
            raise RuntimeError(f"capacity server did not start: {line!r}")
        self.base_url = line.removeprefix("listening on ")
        return self

    def stats(self) -> dict:
        url = self.base_url.removesuffix("/v1") + "/stats?served=1"
        with urllib.request.urlopen(url, timeout=60) as reply:
            return json.load(reply)

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime

    def runqueue_wait(self) -> float:
        return runqueue_wait(self.process.pid)

    def __exit__(self, *exc) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


def runqueue_wait(pid: int | str = "self") -> float:
    """Seconds the process's main thread was ready to run but waited for a CPU (other processes had them);
    0 where the kernel does not report it."""
    try:
        return int(Path(f"/proc/{pid}/schedstat").read_text().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return 0.0


def idle_shares(served: list[dict], capacity: int) -> dict:
    """Idle slot-seconds over C * busy, split at the first instant C are in service and at the last arrival."""
    first = min(r["arrived"] for r in served)
    end = max(r["finished"] for r in served)
    last_arrival = max(r["arrived"] for r in served)
    events = sorted([(r["started"], 1) for r in served] + [(r["finished"], -1) for r in served])
    full_at, in_service = None, 0
    for at, step in events:
        in_service += step
        if in_service >= capacity and full_at is None:
            full_at = at
    full_at = full_at if full_at is not None else last_arrival
    drain_from = max(full_at, last_arrival)
    bounds = {"ramp": (first, full_at), "steady": (full_at, drain_from), "drain": (drain_from, end)}
    total = capacity * (end - first)
    shares = {}
    for name, (low, high) in bounds.items():
        occupied = sum(max(0.0, min(r["finished"], high) - max(r["started"], low)) for r in served)
        shares[name] = (capacity * (high - low) - occupied) / total if total else 0.0
    shares["drain_seconds"] = end - bounds["drain"][0]
    return shares


def run_scheduling_level(
    capacity: int, prompts: int, factor: float, args: argparse.Namespace, prompts_file: Path, workdir: Path
) -> dict:
    limit = max(1, round(factor * capacity))
    with CapacityChild(capacity, args) as server:
        endpoint = EndpointConfig(
            backend="openai", model="capacity-model", base_url=[server.base_url], max_concurrency=limit, timeout=600.0
        )
        config = GenerateConfig(
            output_dir=str(workdir / f"c{capacity}-k{factor:g}"),
            mode="spri",
            prompts=PromptSource(path=str(prompts_file)),
            base=endpoint,
            critic=endpoint,
            max_concurrent_prompts=prompts,
            progress=args.progress,
        )
        with contextlib.redirect_stdout(io.StringIO()):  # generate()'s own "[spri-sft] ..." lines
            waits = runqueue_wait(), server.runqueue_wait()
            cpu_started, started = time.process_time(), time.perf_counter()
            summary = generate(config)
            wall, client_cpu = time.perf_counter() - started, time.process_time() - cpu_started
            client_wait, server_wait = runqueue_wait() - waits[0], server.runqueue_wait() - waits[1]
        stats, server_cpu = server.stats(), server.cpu_seconds()

    served = stats.pop("served_requests")
    calls = summary["this_run"]["calls"]
    if stats["served"] != calls or summary["missing"] or summary["this_run"]["records"] != prompts:
        raise RuntimeError(
            f"C={capacity}: the server served {stats['served']} requests, the run counted {calls} calls, "
            f"{summary['this_run']['records']} records, {summary['missing']} missing"
        )
    idle = idle_shares(served, capacity)
    return {
        "capacity": capacity,
        "prompts": prompts,
        "client_limit": limit,
        "calls": calls,
        "ideal_s": round(stats["ideal_seconds"], 3),
        "busy_s": round(stats["busy_seconds"], 3),
        "ratio": round(stats["ratio"], 4),
        "utilization": round(stats["occupied_sum"] / (capacity * stats["busy_seconds"]), 4),
        "idle_ramp": round(idle["ramp"], 4),
        "idle_steady": round(idle["steady"], 4),
        "idle_drain": round(idle["drain"], 4),
        "drain_s": round(idle["drain_seconds"], 3),
        "max_in_service": stats["max_in_service"],
        "max_queued": stats["max_queued"],
        "generate_wall_s": round(wall, 3),
        "client_cpu_ms_per_call": round(1000 * client_cpu / calls, 3),
        "server_cpu_ms_per_call": round(1000 * server_cpu / calls, 3),
        "client_runqueue_wait_s": round(client_wait, 3),
        "server_runqueue_wait_s": round(server_wait, 3),
        "status": summary["status"],
    }


def scheduling_main(args: argparse.Namespace) -> int:
    settings = {
        "bench": "scheduling",
        "levels": [f"{c}:{n}" for c, n in args.levels],
        "client_limit_factors": args.client_limit,
        "median_s": args.median,
        "sigma": args.sigma,
        "accept_rate": args.accept_rate,
        "seed": args.seed,
        "mode": "spri",
        "progress": args.progress,
        "python": sys.version.split()[0],
        "cpus": os.cpu_count(),
    }
    print(
        f"bench_generate scheduling: mode spri, levels {settings['levels']}, client limit K*C for K in "
        f"{args.client_limit}, lognormal service median {args.median} s sigma {args.sigma}",
        flush=True,
    )
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-scheduling-") as tmp:
        workdir = Path(tmp)
        warm = workdir / "warmup-prompts.jsonl"
        warm.write_text("".join(json.dumps({"prompt": f"Warm-up question {i}."}) + "\n" for i in range(8)))
        warm_args = argparse.Namespace(**{**vars(args), "median": 0.001, "progress": False})
        run_scheduling_level(8, 8, 1, warm_args, warm, workdir / "warmup")  # one-off imports, first connections
        for capacity, prompts in args.levels:
            prompts_file = workdir / f"prompts-{prompts}.jsonl"
            lines = (json.dumps({"prompt": f"Benchmark question {i}: explain topic {i}."}) for i in range(prompts))
            prompts_file.write_text("".join(line + "\n" for line in lines))
            for factor in args.client_limit:
                print(f"  C={capacity} N={prompts} client limit {factor:g}*C: running ...", flush=True)
                rows.append(run_scheduling_level(capacity, prompts, factor, args, prompts_file, workdir))

    header = (
        f"{'C':>4} {'N':>5} {'limit':>5} {'calls':>6} {'ideal_s':>8} {'busy_s':>7} {'ratio':>6} "
        f"{'idle:ramp':>9} {'steady':>6} {'drain':>6} {'cli/call':>8} {'srv/call':>8} {'cli_wait':>8}"
    )
    print()
    print(header)
    for row in rows:
        print(
            f"{row['capacity']:>4} {row['prompts']:>5} {row['client_limit']:>5} {row['calls']:>6} "
            f"{row['ideal_s']:>8.1f} {row['busy_s']:>7.1f} {row['ratio']:>6.3f} "
            f"{row['idle_ramp']:>9.3f} {row['idle_steady']:>6.3f} {row['idle_drain']:>6.3f} "
            f"{row['client_cpu_ms_per_call']:>8.2f} {row['server_cpu_ms_per_call']:>8.2f} "
            f"{row['client_runqueue_wait_s']:>8.1f}"
        )
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps({"settings": settings, "results": rows}, indent=2) + "\n")
        print(f"\nwrote {args.output}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.bench == "scheduling":
        return scheduling_main(args)
    settings = {
        "prompts": args.prompts,
        "latency_s": args.latency,
        "concurrency": args.concurrency,
        "mode": "spri",
        "server": args.server,
        "warmup": args.warmup,
        "python": sys.version.split()[0],
    }
    print(
        f"bench_generate: {args.prompts} prompts, mode spri, latency {args.latency} s per reply, "
        f"concurrency {args.concurrency}, server in a {args.server}",
        flush=True,
    )
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-generate-") as tmp:
        workdir = Path(tmp)
        prompts_file, n = workdir / "prompts.jsonl", args.prompts
        prompts_file.write_text(
            "".join(json.dumps({"prompt": f"Benchmark question {i}: explain topic {i}."}) + "\n" for i in range(n))
        )
        if args.warmup:
            warm = workdir / "warmup-prompts.jsonl"
            warm.write_text("".join(json.dumps({"prompt": f"Warm-up question {i}."}) + "\n" for i in range(8)))
            started = time.perf_counter()
            run_level(8, args, warm, workdir / "warmup", latency=0.0)
            print(f"  warm-up (8 prompts, untimed): {time.perf_counter() - started:.2f} s", flush=True)
        for concurrency in args.concurrency:
            expected = args.prompts * 4 * args.latency / concurrency
            print(f"  C={concurrency}: running (ideal about {expected:.1f} s) ...", flush=True)
            rows.append(run_level(concurrency, args, prompts_file, workdir))

    header = (
        f"{'C':>4} {'calls':>6} {'measured_s':>10} {'ideal_s':>8} {'ideal/meas':>10} {'peak':>5}"
    )
    print()
    print(header)
    for row in rows:
        print(
            f"{row['concurrency']:>4} {row['calls']:>6} {row['measured_s']:>10.2f} {row['ideal_s']:>8.2f} "
            f"{row['ideal_over_measured']:>10.3f} "
            f"{row['server_max_in_flight'] if row['server_max_in_flight'] is not None else '-':>5}"
        )
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps({"settings": settings, "results": rows}, indent=2) + "\n")
        print(f"\nwrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
