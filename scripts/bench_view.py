"""Benchmark: does `spri-sft view` stay responsive on a 50,000-record SPRI run?

Run (defaults: 50,000 spri records into a temporary directory, removed afterwards; a few minutes on 2 cores,
most of it writing the records):

    python scripts/bench_view.py --output bench_view.json
    python scripts/bench_view.py --records 5000 --keep /tmp/view-bench     # smaller, and keep the files

Not a test (scripts/ is not collected by pytest, CI never runs it). It writes SPRI-like records of realistic
sizes (principles ~1 KB and responses ~1.5 KB per version, 2 to 4 critique rounds per stage, each with its
critique and score; statuses and scores mixed as a real run's are) as one generate output dir, then starts
`spri-sft view` on it as its own process, as a user would, and measures:

* index build: from the server's start to its printed URL (the index built from nothing);
* reopen: the same with the index already built (a second `spri-sft view` of the run);
* first page (GET /api/records, page 1), a filter (mode + status + response score range), a full-text
  search, a deep page (page 500 of the list sorted by tokens), a record page (a record in the middle of the
  file, with its same-prompt lookup) and the overview: the first request and the median of 5;
* the server process's peak resident memory (VmHWM), the records file's and the index's sizes.

Measured on 2 CPU cores shared with other jobs (load average 4.8), 50,000 records (663 MB; index 80 MB):

    index build 4.4-11.6 s (once; with the machine's load), reopen 0.09-0.27 s
    first page 7.6 ms, filter (mode + status + score range) 20 ms, search (36,361 matches) 29-69 ms,
    deep page (page 500 by tokens) 41-92 ms, record page 0.9-2.2 ms, overview 60-104 ms first, then ~1 ms
    server peak RSS 40 MB (records are read from the file by offset, never all loaded)
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

WORDS = (
    "the a of to and in that is for it as with be on not this but by from or have an they which one you were all "
    "we her she there would their will when who him been has more if no out so said what up its about into than "
    "them can only other new some could time these two may then do first any my now such like our over man me even "
    "most made after also did many before must through back years where much your way well down should because "
    "each just those people how too little state good very make world still own see men work long get here between "
    "both life being under never day same another know while last might us great old year off come since against go "
    "came right used take three salt river ocean mineral rock water evaporation sodium chloride rain erosion answer "
    "accurate honest helpful principle response critique score revise cite source evidence explain clearly concise"
).split()


def text_pool(rng: random.Random, size: int = 4_000_000) -> str:
    words, length = [], 0
    while length < size:
        word = rng.choice(WORDS)
        words.append(word)
        length += len(word) + 1
    return " ".join(words)


def make_records(path: Path, count: int, seed: int) -> None:
    """`count` SPRI-like records (module docstring) into `path`, one JSON line each."""
    rng = random.Random(seed)
    pool = text_pool(rng)

    def text(size: int) -> str:
        size = max(20, int(rng.gauss(size, size * 0.2)))
        start = rng.randrange(0, len(pool) - size)
        return pool[start : start + size]

    statuses = ["accepted"] * 80 + ["max_rounds"] * 18 + ["failed"] * 2
    with path.open("w", encoding="utf-8") as handle:
        for number in range(count):
            status = rng.choice(statuses)
            prompt = f"Question {number}: " + text(200)
            rounds = []
            if status != "failed":
                for stage, size in (("principles", 1000), ("response", 1500)):
                    count_rounds = rng.randint(2, 4)
                    for round_number in range(1, count_rounds + 1):
                        last = round_number == count_rounds
                        score = rng.choice([4, 5]) if last and status == "accepted" else rng.randint(1, 3)
                        if rng.random() < 0.02:
                            score = None  # an unscored critique
                        rounds.append({
                            "stage": stage, "round": round_number, "text": text(size), "finish_reason": "stop",
                            "critique": text(400), "score": score,
                        })  # fmt: skip
            record = {
                "id": f"{number:016x}",
                "prompt": prompt,
                "mode": "spri",
                "principles": next((r["text"] for r in reversed(rounds) if r["stage"] == "principles"), None),
                "response": next((r["text"] for r in reversed(rounds) if r["stage"] == "response"), None),
                "status": status,
                "rounds": rounds,
                "usage": {
                    "base": {
                        "model": "base-model",
                        "calls": len(rounds),
                        "prompt_tokens": rng.randint(2000, 8000),
                        "completion_tokens": rng.randint(600, 2400),
                    },
                    "critic": {
                        "model": "critic-model",
                        "calls": len(rounds),
                        "prompt_tokens": rng.randint(2000, 8000),
                        "completion_tokens": rng.randint(200, 800),
                    },
                },  # fmt: skip
            }
            if status == "failed":
                record.update(error="APITimeoutError: Request timed out.", error_kind="transient")
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")


def start_viewer(directory: Path) -> tuple[subprocess.Popen, str, float]:
    """`spri-sft view directory` as its own process; returns it, its URL and the seconds until it printed it."""
    started = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-m", "spri_sft.cli", "view", str(directory)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    for line in process.stdout:
        if "view: http://" in line:
            return process, line.split("view: ", 1)[1].strip(), time.perf_counter() - started
    raise SystemExit(f"the viewer stopped without a URL (exit {process.wait()})")


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    process.wait(timeout=30)


def timed_get(url: str) -> tuple[float, dict]:
    started = time.perf_counter()
    with urllib.request.urlopen(url, timeout=120) as response:
        body = json.loads(response.read())
    return time.perf_counter() - started, body


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=50_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", help="write the records here and keep them (default: a temporary directory)")
    parser.add_argument("--output", help="also write the results as JSON here")
    args = parser.parse_args()

    directory = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench-view-"))
    directory.mkdir(parents=True, exist_ok=True)
    records = directory / "records.jsonl"
    try:
        if not records.is_file():
            began = time.perf_counter()
            make_records(records, args.records, args.seed)
            print(
                f"wrote {args.records:,} records ({records.stat().st_size / 1e6:.0f} MB) in {time.perf_counter() - began:.0f} s"
            )
        shutil.rmtree(directory / "review", ignore_errors=True)  # the index is built from nothing

        process, url, build = start_viewer(directory)
        try:
            middle = f"{args.records // 2:016x}"
            requests = {
                "first page": "api/records?page=1",
                "filter": "api/records?mode=spri&status=max_rounds&score_stage=response&min_score=2&max_score=3",
                "search": "api/records?q=evaporation%20sodium",
                "deep page": "api/records?sort=tokens&order=desc&page=500",
                "record page": f"api/record/{middle}",
                "overview": "api/overview",
            }
            timings = {}
            for name, path in requests.items():
                first, body = timed_get(url + path)
                rest = [timed_get(url + path)[0] for _ in range(5)]
                timings[name] = {"first_s": first, "median_s": statistics.median(rest)}
                if "total" in body:
                    timings[name]["total"] = body["total"]
            peak = peak_rss_mb(process.pid)
        finally:
            stop(process)
        process, _, reopen = start_viewer(directory)
        stop(process)

        results = {
            "records": args.records,
            "records_file_mb": round(records.stat().st_size / 1e6, 1),
            "index_file_mb": round((directory / "review" / "index.sqlite").stat().st_size / 1e6, 1),
            "index_build_s": round(build, 2),
            "reopen_s": round(reopen, 2),
            "server_peak_rss_mb": round(peak, 1),
            "requests": timings,
            "cpus": os.cpu_count(),
            "load_average": os.getloadavg(),
        }
        print(f"\n{args.records:,} records, {results['records_file_mb']} MB; index {results['index_file_mb']} MB\n")
        print(f"{'':<14}{'first':>10}{'median of 5':>14}{'matches':>10}")
        print(f"{'index build':<14}{build:>9.2f}s")
        print(f"{'reopen':<14}{reopen:>9.2f}s")
        for name, timing in timings.items():
            total = f"{timing['total']:>10,}" if "total" in timing else ""
            print(f"{name:<14}{timing['first_s'] * 1000:>8.1f}ms{timing['median_s'] * 1000:>12.1f}ms{total}")
        print(f"\nserver peak RSS {peak:.0f} MB; {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
        if args.output:
            Path(args.output).write_text(json.dumps(results, indent=2) + "\n")
    finally:
        if not args.keep:
            shutil.rmtree(directory, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
