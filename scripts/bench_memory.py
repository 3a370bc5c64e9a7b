"""Benchmark: peak memory (RSS) of `spri-sft generate` and `spri-sft format` as records grow.

Run (defaults: 50,000 records; this checkout only):

    python scripts/bench_memory.py --output bench_memory.json

Before and after a change, side by side in one run (each code tree is put first on the PYTHONPATH
of its own child processes; `git worktree add --detach /tmp/before <commit>` makes one):

    python scripts/bench_memory.py --records 50000,500000 --code before=/tmp/before --code after=.

Every measurement is its own child process, and its peak is the kernel's `ru_maxrss` of that one
child (`os.wait4`, what `resource.getrusage(RUSAGE_CHILDREN)` reports when it is the only child
waited for). For each size N and each code tree:

* generate: mode `spri` on N synthetic Dolly-like prompts (an instruction of 8-20 words, and for
  half of them a context of 40-120 words, from a seeded 5,000-word vocabulary) against
  `tests/support/capacity_server.py` in a child process (`--capacity` slots, `--median` s service
  times, 100-word replies, every critique scoring 5: 4 calls a prompt), `--in-flight` prompts at once.
  At most `--fresh` prompts (default 50,000) are generated; the others' records are synthesized
  beforehand (copies of a record the server produced, under each prompt's own id), so a size above
  it measures a resumed run of N prompts of which `--fresh` are left: the store holds N records
  while the engine generates. (50,000 prompts take minutes here; 500,000 would take most of an hour
  on 2 shared cores.)
* format: `spri-sft format` of that run's records.jsonl, offline, with default settings (the packaged
  TruthfulQA guard, exact and near deduplication) but for the `--format-setting`s given: e.g.
  `--format-setting near_duplicate_threshold=null` leaves out the near-duplicate pass, whose memory
  grows with the prompts' shingles, not with the records.

Columns: code, stage, N, peak RSS in MB, wall seconds; the JSON (`--output`) holds every row and,
for each stage and size, every tree's peak over the first tree's.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # `support` (tests/support/): the capacity server, which the wheel leaves out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Peak RSS of generate and format at growing record counts, each in its own process "
        "(see the module docstring)."
    )
    parser.add_argument("--records", default="50000", help="comma-separated record counts N (default 50000)")
    parser.add_argument(
        "--code",
        action="append",
        default=[],
        metavar="LABEL=PATH",
        help="a checkout to measure (its spri_sft is imported first); repeat for before/after (default: this one)",
    )
    parser.add_argument(
        "--fresh", type=int, default=50_000, help="prompts generated at most; the rest are synthesized (default 50000)"
    )
    parser.add_argument("--capacity", type=int, default=256, help="the server's slots C (default 256)")
    parser.add_argument("--in-flight", type=int, default=1024, help="max_concurrent_prompts (default 1024)")
    parser.add_argument("--median", type=float, default=0.002, help="median service time, s (default 0.002)")
    parser.add_argument(
        "--format-setting",
        action="append",
        default=[],
        metavar="FIELD=JSON",
        help="a FormatConfig field for the format runs, e.g. near_duplicate_threshold=null (repeatable)",
    )
    parser.add_argument("--stages", default="generate,format", help="comma-separated: generate, format (default both)")
    parser.add_argument("--seed", type=int, default=0, help="the prompts' seed (default 0)")
    parser.add_argument("--workdir", type=Path, default=None, help="keep the runs here (default: a temporary folder)")
    parser.add_argument("--output", type=Path, default=None, help="also write the results as JSON to this path")
    parser.add_argument("--child", choices=("generate", "format"), help=argparse.SUPPRESS)
    parser.add_argument("--job", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    try:
        args.records = [int(n) for n in args.records.split(",") if n.strip()]
    except ValueError:
        parser.error(f"--records: expected integers like 50000,500000, got {args.records!r}")
    if not args.records or min(args.records) < 1:
        parser.error("--records: every count must be >= 1")
    codes = {}
    for item in args.code or [f"this={REPO}"]:
        label, sep, path = item.partition("=")
        if not sep or not (Path(path) / "spri_sft").is_dir():
            parser.error(f"--code {item!r}: expected LABEL=PATH of a checkout holding spri_sft/")
        codes[label] = Path(path).resolve()
    args.code = codes
    settings = {}
    for item in args.format_setting:
        field, sep, value = item.partition("=")
        try:
            settings[field] = json.loads(value)
        except json.JSONDecodeError:
            parser.error(f"--format-setting {item!r}: expected FIELD=JSON, e.g. near_duplicate_threshold=null")
        if not sep:
            parser.error(f"--format-setting {item!r}: expected FIELD=JSON")
    args.format_setting = settings
    args.stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    if not set(args.stages) <= {"generate", "format"} or not args.stages:
        parser.error("--stages: generate, format or both")
    return args


# -- the measured children -------------------------------------------------------------------


def generate_config(job: dict):
    from spri_sft.generate.config import GenerateConfig
    from spri_sft.generate.inputs import PromptSource
    from spri_sft.llm.base import EndpointConfig

    endpoint = EndpointConfig(
        backend="openai", model="capacity-model", base_url=[job["base_url"]], max_concurrency=job["capacity"],
        timeout=600.0,
    )  # fmt: skip
    return GenerateConfig(
        output_dir=job["output_dir"],
        mode="spri",
        prompts=PromptSource(path=job["prompts"]),
        base=endpoint,
        critic=endpoint,
        max_concurrent_prompts=job["in_flight"],
        progress=False,
    )


def child_main(stage: str, job_file: Path) -> int:
    job = json.loads(job_file.read_text())
    if stage == "generate":
        from spri_sft.generate.run import generate

        summary = generate(generate_config(job))
        result = {"records": summary["records"], "generated": summary["this_run"]["records"]}
    else:
        from spri_sft.format.build import build_dataset
        from spri_sft.format.config import FormatConfig

        config = FormatConfig(records=[job["records"]], output_dir=job["output_dir"], **job["settings"])
        summary = build_dataset(config)
        result = {"records": summary["records"], "rows": summary["rows"], "dropped": summary["dropped"]}
    print("RESULT " + json.dumps(result), flush=True)
    return 0


def measure(stage: str, job: dict, code: Path, workdir: Path) -> dict:
    """Run one stage in its own child process with `code` first on its import path: its peak RSS and wall time."""
    job_file = workdir / f"{stage}-job.json"
    job_file.write_text(json.dumps(job))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    env["PYTHONPATH"] = os.pathsep.join([str(code), str(REPO / "tests"), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    command = [sys.executable, str(Path(__file__).resolve()), "--child", stage, "--job", str(job_file)]
    started = time.perf_counter()
    log = (workdir / f"{stage}.log").open("w")
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=log, text=True)
    output = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - started
    log.close()
    if process.returncode != 0:
        raise RuntimeError(f"{stage} failed (exit {process.returncode}); see {workdir / f'{stage}.log'}")
    result = json.loads(next(line for line in output.splitlines() if line.startswith("RESULT "))[7:])
    return {"peak_rss_mb": round(usage.ru_maxrss / 1024, 1), "wall_s": round(wall, 1), **result}


# -- inputs ----------------------------------------------------------------------------------


def write_prompts(path: Path, count: int, seed: int) -> None:
    """Dolly-like prompts: an instruction, and for half of them a context passage (module docstring)."""
    rng = random.Random(seed)
    letters = "abcdefghijklmnopqrstuvwxyz"
    vocabulary = ["".join(rng.choice(letters) for _ in range(rng.randint(2, 9))) for _ in range(5000)]
    with path.open("w", encoding="utf-8") as handle:
        for i in range(count):
            instruction = " ".join(rng.choices(vocabulary, k=rng.randint(8, 20))).capitalize() + "?"
            prompt = instruction
            if rng.random() < 0.5:
                prompt += "\n\n" + " ".join(rng.choices(vocabulary, k=rng.randint(40, 120))) + "."
            handle.write(json.dumps({"prompt": f"{prompt} ({i})"}) + "\n")


def synthesize_records(config, template: dict, skip_last: int, path: Path) -> int:
    """Finished records for all but the last `skip_last` prompts of `config`: `template` under each prompt's id."""
    from spri_sft.generate.run import _inputs

    _, prompts, ids = _inputs(config)
    count = max(0, len(prompts) - skip_last)
    with path.open("w", encoding="utf-8") as handle:
        for record_id, prompt in zip(ids[:count], prompts[:count]):
            handle.write(json.dumps({**template, "id": record_id, "prompt": prompt}, ensure_ascii=False) + "\n")
    return count


def template_record(args: argparse.Namespace, code: Path, server, workdir: Path) -> dict:
    """One record the server produced: generated for a prompt of its own, in this process's spri_sft."""
    from spri_sft.generate.run import generate

    prompts = workdir / "template-prompts.jsonl"
    write_prompts(prompts, 1, args.seed + 1)
    job = job_of(args, server, prompts, workdir / "template")
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):
        generate(generate_config(job))
    return json.loads((workdir / "template" / "records.jsonl").read_text().splitlines()[0])


def job_of(args, server, prompts: Path, output_dir: Path) -> dict:
    return {
        "base_url": server.base_url,
        "capacity": args.capacity,
        "in_flight": args.in_flight,
        "prompts": str(prompts),
        "output_dir": str(output_dir),
    }


# -- main ------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        return child_main(args.child, args.job)
    import support
    from bench_generate import CapacityChild

    support.put_tests_on_pythonpath()
    server_args = argparse.Namespace(median=args.median, sigma=0.6, seed=args.seed, accept_rate=1.0)
    rows = []
    print(
        f"bench_memory: N {args.records}, code {', '.join(args.code)}, stages {args.stages}; generate: mode spri, "
        f"C={args.capacity}, {args.in_flight} prompts in flight, at most {args.fresh:,} generated",
        flush=True,
    )
    with (
        tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp,
        CapacityChild(args.capacity, server_args) as server,
    ):
        root = args.workdir or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        template = template_record(args, REPO, server, root)
        for count in args.records:
            prompts = root / f"prompts-{count}.jsonl"
            write_prompts(prompts, count, args.seed)
            for label, code in args.code.items():
                workdir = root / f"{label}-{count}"
                workdir.mkdir(parents=True, exist_ok=True)
                job = job_of(args, server, prompts, workdir / "generate")
                records = workdir / "generate" / "records.jsonl"
                if "generate" in args.stages:
                    records.parent.mkdir(parents=True, exist_ok=True)
                    synthesized = synthesize_records(generate_config(job), template, args.fresh, records)
                    print(f"  {label} N={count:,}: generate ({synthesized:,} synthesized) ...", flush=True)
                    row = measure("generate", job, code, workdir)
                    rows.append({"code": label, "stage": "generate", "n": count, "synthesized": synthesized, **row})
                elif not records.exists():
                    records.parent.mkdir(parents=True, exist_ok=True)
                    synthesize_records(generate_config(job), template, 0, records)
                if "format" in args.stages:
                    print(f"  {label} N={count:,}: format ...", flush=True)
                    job = {
                        "records": str(records),
                        "output_dir": str(workdir / "format"),
                        "settings": args.format_setting,
                    }
                    row = measure("format", job, code, workdir)
                    rows.append({"code": label, "stage": "format", "n": count, **row})

    print(f"\n{'code':<10} {'stage':<9} {'N':>8} {'peak_MB':>8} {'wall_s':>7}")
    for row in rows:
        print(f"{row['code']:<10} {row['stage']:<9} {row['n']:>8,} {row['peak_rss_mb']:>8.0f} {row['wall_s']:>7.1f}")
    ratios = {}
    first = next(iter(args.code))
    for row in rows:
        base = next(r for r in rows if (r["code"], r["stage"], r["n"]) == (first, row["stage"], row["n"]))
        ratios.setdefault(f"{row['stage']}@{row['n']}", {})[row["code"]] = round(
            row["peak_rss_mb"] / base["peak_rss_mb"], 3
        )
    if len(args.code) > 1:
        for key, values in ratios.items():
            print(
                f"peak RSS over {first}, {key}: " + ", ".join(f"{code} {ratio:.2f}x" for code, ratio in values.items())
            )
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        settings = {k: v for k, v in vars(args).items() if k not in ("child", "job", "output", "workdir", "code")}
        settings["code"] = {label: str(path) for label, path in args.code.items()}
        args.output.write_text(
            json.dumps({"settings": settings, "results": rows, "over_first": ratios}, indent=2) + "\n"
        )
        print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
