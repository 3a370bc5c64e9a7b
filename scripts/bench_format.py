"""Benchmark: how long do near duplicates take in `spri-sft format`, at 5k, 50k and 500k templated prompts?

Run (defaults: 5,000, 50,000 and 500,000 records; about 10 minutes on 2 shared cores, most of it the
older passes at 50,000; the table is in docs/benchmarks.md):

    python scripts/bench_format.py --output bench_format.json
    python scripts/bench_format.py --sizes 5000,50000 --variants none,exact   # quicker

Not a test (scripts/ is not collected by pytest, CI never runs it). It writes N SPRI records of
templated prompts, synthetic and seeded, shaped as the prompt sets that share long templates:
ShareGPT's "I want you to act as ..." frames, MixInstruct's Alpaca-style instruction + input, Dolly-style
questions about a passage (instruction and context, the instruction kept apart as generate keeps it), a
chat preamble before a question, and `slots`, one short template whose slots take few values ("Write a
short poem about topic 12 for chefs, in 3 paragraphs."), the hard case for prefix filtering, since even
its rarest shingles are shared by many prompts; 5% of the prompts repeat an earlier one with a word
added (the near duplicates to find). Then, for every variant, in a child process of its own (its wall
time and its peak RSS, `os.wait4`'s rusage of that child alone):

* none: `near_duplicate_threshold: null`, the floor;
* exact: this version's pass (`spri_sft.format.dedupe.near_duplicates`: prefix filtering over integer
  shingle ranks, exact);
* before: the pass as it was before it (commit 3183455: the same prefix filtering over Python sets of word
  tuples, ranked by a sort of every distinct shingle), exact, the same drops;
* lsh: MinHash LSH from `datasketch` (`pip install datasketch`; skipped without it), 128 permutations in 16
  bands of 8 rows, with the exact Jaccard confirmed for every candidate, so it drops only pairs at or above the
  threshold but misses a pair at exactly 0.9 with probability (1 - 0.9^8)^16 = 1.2e-4 (less above it).

Up to `--format-up-to` records (default 50,000) each child runs `build_dataset` end to end on the records file
(TruthfulQA guard off: it is the same in every variant); above, it runs the near-duplicate pass alone on the
prompts, since format holds every record in memory. `before` and `lsh` run up to `--slow-up-to` records
(default 50,000); above, their time is projected from the two largest sizes they ran at (a power law).
Columns: wall s and CPU s of the child (user + system; on a shared machine CPU time is the steadier
measure), the near-duplicate pass's own CPU s, peak RSS MB, near duplicates found, missed (found by `exact`
but not by the variant), and the child's CPU over `none`'s at the same size.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

VARIANTS = ("none", "exact", "before", "lsh")
THRESHOLD = 0.9
LSH_BANDS, LSH_ROWS = 16, 8

SYLLABLES = (
    "ba be bi bo bu da de di do du ka ke ki ko ku la le li lo lu ma me mi mo mu na ne ni no nu ra re ri ro ru".split()
)
ROLES = "travel guide;math teacher;poet;career counselor;historian;nutritionist;software engineer;storyteller".split(
    ";"
)
VERBS = "Summarize Paraphrase Translate Classify Shorten Rewrite Proofread Explain".split()
QUESTIONS = (
    "what is the main idea?",
    "who is mentioned?",
    "when did it happen?",
    "list the key facts.",
    "why does it matter?",
)
ADJECTIVES = "short funny sad formal detailed simple rhyming dramatic gentle angry".split()
FORMS = "poem story essay letter song speech summary dialogue review tweet".split()
AUDIENCES = "children students engineers doctors farmers tourists parents voters chefs pilots".split()


def templated_prompts(count: int, seed: int = 0) -> list[tuple[str, str | None]]:
    """(prompt, instruction or None) for `count` prompts of the module docstring's families, seeded."""
    rng = random.Random(seed)
    vocabulary = ["".join(rng.choices(SYLLABLES, k=rng.randint(1, 3))) for _ in range(5000)]
    topics = [" ".join(rng.choices(vocabulary, k=2)) for _ in range(300)]

    def words(low: int, high: int) -> str:
        return " ".join(rng.choices(vocabulary, k=rng.randint(low, high)))

    prompts: list[tuple[str, str | None]] = []
    for _ in range(count):
        if prompts and rng.random() < 0.05:
            prompt, instruction = rng.choice(prompts)
            split = prompt.split(" ")
            split.insert(rng.randrange(len(split) + 1), rng.choice(vocabulary))
            prompts.append((" ".join(split), None))  # compared whole
            continue
        family = rng.choices(("act-as", "alpaca", "dolly", "preamble", "slots"), weights=(25, 25, 20, 10, 20))[0]
        topic = rng.choice(topics)
        if family == "act-as":
            prompt = (
                f"I want you to act as a {rng.choice(ROLES)}. I will provide you with some details about {topic}, "
                "and it will be your job to come up with a clear explanation that a beginner can follow. You "
                "should only reply with the explanation, and nothing else. Do not write explanations of your "
                f'reasoning. My first request is "{words(4, 30)}"'
            )
            instruction = None
        elif family == "alpaca":
            instruction = (
                "Below is an instruction that describes a task, paired with an input that provides further "
                "context. Write a response that appropriately completes the request.\n\nInstruction: "
                f"{rng.choice(VERBS)} the following text about {topic}."
            )
            prompt = f"{instruction}\n\nInput: {words(4, 30)}"
        elif family == "dolly":
            instruction = f"Given this paragraph about {topic}, {rng.choice(QUESTIONS)}"
            prompt = f"{instruction}\n\n{words(20, 90)}"
        elif family == "preamble":
            prompt = (
                "You are a helpful, respectful and honest assistant. Always answer as helpfully as possible, "
                "while being safe. If a question does not make any sense, explain why instead of answering "
                f"something not correct. Question: {words(4, 30)}"
            )
            instruction = None
        else:
            prompt = (
                f"Write a {rng.choice(ADJECTIVES)} {rng.choice(FORMS)} about topic {rng.randrange(300)} for "
                f"{rng.choice(AUDIENCES)}, in {rng.randint(1, 9)} paragraphs."
            )
            instruction = None
        prompts.append((prompt, instruction))
    return prompts


def write_records(path: Path, count: int) -> None:
    """SPRI records as generate writes them, small (one principles and one response round)."""
    with path.open("w", encoding="utf-8") as handle:
        for number, (prompt, instruction) in enumerate(templated_prompts(count)):
            record = {
                "id": f"r{number:07d}",
                "prompt": prompt,
                "mode": "spri",
                "status": "accepted",
                "response": f"An answer to prompt {number}, in a few words.",
                "principles": "Be exact.",
                "rounds": [
                    {"stage": "principles", "round": 1, "text": "Be exact.", "finish_reason": "stop",
                     "critique": "Good.", "score": 5},
                    {"stage": "response", "round": 1, "text": f"An answer to prompt {number}.",
                     "finish_reason": "stop", "critique": "Good.", "score": 5},
                ],
            }  # fmt: skip
            if instruction is not None:
                record["instruction"] = instruction
            handle.write(json.dumps(record) + "\n")


def near_duplicates_before(texts: list[str], threshold: float) -> dict[int, tuple[int, float]]:
    """The pass before this version's (commit 3183455 of spri_sft/format/dedupe.py), for the `before` column."""
    from collections import Counter, defaultdict

    from spri_sft.format.dedupe import SHINGLE_WORDS, normalize, word_ngrams

    shingles = [word_ngrams(normalize(text).split(), SHINGLE_WORDS) for text in texts]
    frequency = Counter(s for text_shingles in shingles for s in text_shingles)
    rank = {s: r for r, s in enumerate(sorted(frequency, key=lambda s: (frequency[s], s)))}
    index: dict[int, list[int]] = defaultdict(list)
    found: dict[int, tuple[int, float]] = {}
    for i, mine in enumerate(shingles):
        ranked = sorted(rank[s] for s in mine)
        prefix = ranked[: len(ranked) - math.ceil(threshold * len(ranked) - 1e-9) + 1]
        best, seen = None, set()
        for r in prefix:
            for j in index.get(r, ()):
                if j in seen:
                    continue
                seen.add(j)
                theirs = shingles[j]
                shared = len(mine & theirs)
                similarity = shared / (len(mine) + len(theirs) - shared)
                if similarity >= threshold and (best is None or similarity > best[1]):
                    best = (j, similarity)
        if best is None:
            for r in prefix:
                index[r].append(i)
        else:
            found[i] = best
    return found


def near_duplicates_lsh(texts: list[str], threshold: float) -> dict[int, tuple[int, float]]:
    """MinHash LSH (datasketch) for candidates, the exact Jaccard of each candidate for the decision, in order."""
    from datasketch import MinHash, MinHashLSH

    from spri_sft.format.dedupe import SHINGLE_WORDS, normalize, word_ngrams

    shingles = [word_ngrams(normalize(text).split(), SHINGLE_WORDS) for text in texts]
    permutations = LSH_BANDS * LSH_ROWS
    signatures = MinHash.bulk([[" ".join(s).encode() for s in mine] for mine in shingles], num_perm=permutations)
    index = MinHashLSH(num_perm=permutations, params=(LSH_BANDS, LSH_ROWS))
    found: dict[int, tuple[int, float]] = {}
    for i, (mine, signature) in enumerate(zip(shingles, signatures)):
        best = None
        for j in sorted(index.query(signature)):
            theirs = shingles[j]
            shared = len(mine & theirs)
            similarity = shared / (len(mine) + len(theirs) - shared)
            if similarity >= threshold and (best is None or similarity > best[1]):
                best = (j, similarity)
        if best is None:
            index.insert(i, signature, check_duplication=False)
        else:
            found[i] = best
    return found


def child(variant: str, records: Path, level: str, workdir: Path) -> dict:
    """One variant's run, in this (child) process: the result as a dict."""
    import spri_sft.format.build as build
    from spri_sft.format.dedupe import near_duplicates

    passes = {"exact": near_duplicates, "before": near_duplicates_before, "lsh": near_duplicates_lsh}
    timed = {"seconds": 0.0, "cpu": 0.0, "found": []}

    def near_duplicates_timed(texts, threshold, also=None):
        started, cpu = time.perf_counter(), time.process_time()
        found = passes[variant](texts, threshold)
        timed["seconds"] += time.perf_counter() - started
        timed["cpu"] += time.process_time() - cpu
        timed["found"] = sorted(found)
        return found

    started = time.perf_counter()
    if level == "format":
        from spri_sft.format.config import FormatConfig

        build.near_duplicates = near_duplicates_timed
        config = FormatConfig(
            records=[str(records)],
            output_dir=str(workdir / f"out-{variant}"),
            truthfulqa_file="none",
            near_duplicate_threshold=None if variant == "none" else THRESHOLD,
            near_duplicate_field="instruction",  # what the variants compare (`--compare-fields` for the others)
        )
        summary = build.build_dataset(config)
        rows = summary["rows"]
    else:
        prompts = []
        with records.open(encoding="utf-8") as handle:
            for line in handle:
                record = json.loads(line)
                prompts.append(record.get("instruction") or record["prompt"])  # near_duplicate_field: instruction
        if variant != "none":
            near_duplicates_timed(prompts, THRESHOLD)
        rows = len(prompts) - len(timed["found"])
    return {
        "wall": time.perf_counter() - started,
        "pass": timed["seconds"],
        "pass_cpu": timed["cpu"],
        "found": timed["found"],
        "rows": rows,
    }


def run_child(variant: str, records: Path, level: str, workdir: Path) -> dict:
    command = [sys.executable, __file__, "--child", variant, "--records", str(records), "--level", level]
    process = subprocess.Popen([*command, "--workdir", str(workdir)], stdout=subprocess.PIPE, text=True)
    output = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise RuntimeError(f"{variant}: the child exited with {process.returncode}")
    result = json.loads(output.strip().splitlines()[-1])
    result["peak_rss_mb"] = usage.ru_maxrss / 1024  # KiB on Linux
    result["cpu"] = usage.ru_utime + usage.ru_stime  # the child's whole run, imports included
    return result


def projected(times: dict[int, float], size: int) -> float | None:
    """A power law through the two largest sizes measured, at `size`."""
    sizes = sorted(times)[-2:]
    if len(sizes) < 2 or min(times[s] for s in sizes) <= 0:
        return None
    exponent = math.log(times[sizes[1]] / times[sizes[0]]) / math.log(sizes[1] / sizes[0])
    return times[sizes[1]] * (size / sizes[1]) ** exponent


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="5000,50000,500000", help="Record counts, comma-separated.")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"Of {', '.join(VARIANTS)}.")
    parser.add_argument("--format-up-to", type=int, default=50_000, help="Above this, the pass alone is run.")
    parser.add_argument("--slow-up-to", type=int, default=50_000, help="Above this, before and lsh are projected.")
    parser.add_argument("--output", help="Write the rows as JSON here.")
    parser.add_argument(
        "--compare-fields",
        type=int,
        metavar="N",
        help="Instead: near duplicates found, and the pass's CPU s, under each near_duplicate_field at N records.",
    )
    parser.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--records", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--level", choices=("format", "pass"), help=argparse.SUPPRESS)
    parser.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.sizes = [int(size) for size in args.sizes.split(",")]
    args.variants = [variant for variant in args.variants.split(",") if variant]
    unknown = sorted(set(args.variants) - set(VARIANTS))
    if unknown:
        parser.error(f"--variants: {', '.join(unknown)} unknown; they are {', '.join(VARIANTS)}")
    return args


def compare_fields(size: int) -> None:
    """What each near_duplicate_field drops of `size` templated prompts (after exact duplicates, as format does)."""
    from spri_sft.format.dedupe import exact_duplicates, near_duplicates

    prompts = templated_prompts(size)
    exact = exact_duplicates([prompt for prompt, _ in prompts])
    prompts = [pair for i, pair in enumerate(prompts) if i not in exact]
    instructions = [instruction or prompt for prompt, instruction in prompts]
    whole = [prompt for prompt, _ in prompts]
    print(f"{size:,} templated prompts, {len(exact):,} exact duplicates; near_duplicate_threshold {THRESHOLD}")
    for field, texts, also in (
        ("instruction+prompt", instructions, whole),
        ("instruction", instructions, None),
        ("prompt", whole, None),
    ):
        cpu = time.process_time()
        found = near_duplicates(texts, THRESHOLD, also=also)
        print(f"  {field:<19} {len(found):>8,} near duplicates, pass {time.process_time() - cpu:.2f} s of CPU")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.compare_fields:
        compare_fields(args.compare_fields)
        return 0
    if args.child:
        print(json.dumps(child(args.child, args.records, args.level, args.workdir)))
        return 0
    variants = list(args.variants)
    if "lsh" in variants:
        try:
            import datasketch  # noqa: F401
        except ImportError:
            print("lsh: skipped, datasketch is not installed (pip install datasketch)")
            variants.remove("lsh")
    rows, measured = [], {variant: {} for variant in variants}
    with tempfile.TemporaryDirectory(prefix="bench-format-") as folder:
        workdir = Path(folder)
        for size in args.sizes:
            records = workdir / f"records-{size}.jsonl"
            started = time.perf_counter()
            write_records(records, size)
            level = "format" if size <= args.format_up_to else "pass"
            print(f"{size} records written in {time.perf_counter() - started:.1f} s; level {level}", flush=True)
            exact_found = None
            for variant in variants:
                if variant in ("before", "lsh") and size > args.slow_up_to:
                    guess = projected(measured[variant], size)
                    rows.append({"size": size, "level": level, "variant": variant, "skipped": True,
                                 "projected_pass_s": guess})  # fmt: skip
                    print(f"  {variant}: skipped (> --slow-up-to), projected pass {guess or float('nan'):.0f} s")
                    continue
                print(f"  {variant} ...", flush=True)
                result = run_child(variant, records, level, workdir)
                found = set(result.pop("found"))
                if variant == "exact":
                    exact_found = found
                result.update(size=size, level=level, variant=variant, found=len(found))
                result["missed"] = len(exact_found - found) if exact_found is not None and variant != "none" else None
                measured[variant][size] = result["pass_cpu"]
                rows.append(result)
    floor = {row["size"]: row["cpu"] for row in rows if row["variant"] == "none" and not row.get("skipped")}
    print(f"\nnear_duplicate_threshold {THRESHOLD}, near_duplicate_field instruction; RSS = the child's peak")
    print(f"{'records':>8} {'level':<6} {'variant':<7} {'wall_s':>8} {'cpu_s':>8} {'pass_cpu_s':>10} {'rss_mb':>7} "
          f"{'found':>6} {'missed':>6} {'cpu/none':>8}")  # fmt: skip
    for row in rows:
        if row.get("skipped"):
            guess = row["projected_pass_s"]
            note = f"skipped; pass projected {guess:.0f} s of CPU" if guess else "skipped"
            print(f"{row['size']:>8} {row['level']:<6} {row['variant']:<7} {note}")
            continue
        ratio = row["cpu"] / floor[row["size"]] if row["size"] in floor else float("nan")
        missed = "" if row["missed"] is None else row["missed"]
        print(f"{row['size']:>8} {row['level']:<6} {row['variant']:<7} {row['wall']:>8.2f} {row['cpu']:>8.2f} "
              f"{row['pass_cpu']:>10.2f} {row['peak_rss_mb']:>7.0f} {row['found']:>6} {missed!s:>6} "
              f"{ratio:>8.2f}")  # fmt: skip
    if args.output:
        Path(args.output).write_text(json.dumps(rows, indent=2) + "\n")
        print(f"\nwrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
