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
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import subprocess
import sys
import tempfile
import time
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
    parser.add_argument("--output", type=Path, default=None, help="also write the results as JSON to this path")
    args = parser.parse_args(argv)
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


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
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
