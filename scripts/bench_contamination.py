"""Benchmark: what format's benchmark contamination guard costs, beside format without it.

Run (defaults: 5,000 and 50,000 records; a few minutes on 2 cores):

    python scripts/bench_contamination.py --prompts ../shared/data/self-instruct/user_oriented_instructions.jsonl
    python scripts/bench_contamination.py --prompts PROMPTS.jsonl --records 5000 --documents 2000

Not a test (scripts/ is not collected by pytest, CI never runs it). It writes SPRI-like records whose prompts
are the given prompt set's instructions (and inputs), cycled with a numbered suffix, and formats them three
ways, each in its own process (so its peak RSS is its own), near-duplicate detection off in all three (it is
not what is measured):

* none: `truthfulqa_file: none`, no lm-eval task: no guard;
* truthfulqa: the packaged TruthfulQA questions (817, most shorter than 13 words);
* truthfulqa + lm-eval: also a local lm-eval task of `--documents` synthetic documents of 80-120 words
  (12,000 is MMLU-Pro's test split's size), read through lm-eval's TaskManager as format reads any task.

It prints, per size, each case's wall time and peak RSS, and the ratio of its wall time to the no-guard one.
Measured on 2 CPU cores shared with other jobs (Self-Instruct's 252 user-oriented prompts, 12,000 documents):

      5,000 records  none                   wall   3.02 s (1.00x)  peak RSS   210 MB
      5,000 records  truthfulqa             wall   2.90 s (0.96x)  peak RSS   210 MB
      5,000 records  truthfulqa + lm-eval   wall  15.97 s (5.29x)  peak RSS   316 MB
     50,000 records  none                   wall  11.91 s (1.00x)  peak RSS   437 MB
     50,000 records  truthfulqa             wall  17.53 s (1.47x)  peak RSS   438 MB
     50,000 records  truthfulqa + lm-eval   wall  29.98 s (2.52x)  peak RSS   496 MB

The lm-eval task's ~13 s are fixed, not per record: importing lm-eval (3 s) and rendering its 12,000
documents, which lm-eval's `doc_to_text` does by compiling the task's Jinja template anew for every
document (~1 ms each, as it does when it evaluates them); indexing their 1.1 million 13-grams takes ~2.5 s.
Checking a prompt costs ~0.1 ms.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CASES = ("none", "truthfulqa", "truthfulqa + lm-eval")


def write_records(path: Path, prompts: list[str], count: int) -> None:
    with path.open("w") as handle:
        for number in range(count):
            prompt = f"{prompts[number % len(prompts)]} (request {number})"
            handle.write(
                json.dumps(
                    {
                        "id": f"rec{number:07d}", "prompt": prompt, "mode": "spri", "principles": "Be exact.",
                        "response": f"An answer to request {number}.", "status": "accepted", "error": None,
                        "rounds": [{"stage": "response", "round": 1, "text": "An answer.", "finish_reason": "stop",
                                    "critique": "ok", "score": 5}],
                        "usage": {},
                    }
                )
                + "\n"
            )  # fmt: skip


def write_task(directory: Path, documents: int) -> None:
    import yaml

    rng = random.Random(0)
    vocabulary = [f"term{i}" for i in range(30000)]
    data = directory / "synthetic.jsonl"
    with data.open("w") as handle:
        for _ in range(documents):
            handle.write(json.dumps({"question": " ".join(rng.choices(vocabulary, k=rng.randint(80, 120)))}) + "\n")
    task = {
        "task": "bench_synthetic", "dataset_path": "json", "dataset_name": None,
        "dataset_kwargs": {"data_files": {"test": str(data)}}, "test_split": "test",
        "output_type": "multiple_choice", "doc_to_text": "{{question}}", "doc_to_choice": ["a", "b"],
        "doc_to_target": 0, "metric_list": [{"metric": "acc"}],
    }  # fmt: skip
    (directory / "bench_synthetic.yaml").write_text(yaml.safe_dump(task))


def run_case(case: str, records: Path, task_dir: Path, output_dir: Path) -> dict:
    """One format run in this process (called as a child): its wall time and peak RSS."""
    from spri_sft.format.build import build_dataset
    from spri_sft.format.config import FormatConfig

    settings = {"truthfulqa_file": "none"} if case == "none" else {}
    if case == "truthfulqa + lm-eval":
        settings.update(
            lm_eval_tasks=["bench_synthetic"], lm_eval_include_path=str(task_dir), lm_eval_include_defaults=False
        )
    config = FormatConfig(records=[str(records)], output_dir=str(output_dir), near_duplicate_threshold=None, **settings)
    start = time.perf_counter()
    summary = build_dataset(config)
    wall = time.perf_counter() - start
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"wall_s": round(wall, 2), "peak_rss_mb": round(rss), "dropped": summary["dropped"]["contamination"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", required=True, help="A JSON-lines prompt set with `instruction` (and `input`).")
    parser.add_argument("--records", type=int, nargs="+", default=[5000, 50000])
    parser.add_argument("--documents", type=int, default=12000, help="Documents of the synthetic lm-eval task.")
    parser.add_argument("--case", help=argparse.SUPPRESS)  # a child's one case
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        work = Path(args.work)
        print(json.dumps(run_case(args.case, work / "records.jsonl", work / "tasks", work / "out")))
        return
    prompts = []
    for line in Path(args.prompts).read_text().splitlines():
        row = json.loads(line)
        instance = (row.get("instances") or [{}])[0]
        prompts.append(row["instruction"] + (f"\n\n{instance['input']}" if instance.get("input") else ""))
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "tasks").mkdir()
        environment["HF_DATASETS_CACHE"] = str(work / "datasets-cache")
        write_task(work / "tasks", args.documents)
        for count in args.records:
            write_records(work / "records.jsonl", prompts, count)
            results = {}
            for case in CASES:
                child = subprocess.run(
                    [sys.executable, __file__, "--prompts", args.prompts, "--case", case, "--work", str(work)],
                    env=environment, capture_output=True, text=True, check=True,
                )  # fmt: skip
                results[case] = json.loads(child.stdout.strip().splitlines()[-1])
            base = results["none"]["wall_s"]
            for case, result in results.items():
                print(
                    f"{count:>7,} records  {case:<22} wall {result['wall_s']:>6.2f} s ({result['wall_s'] / base:.2f}x)"
                    f"  peak RSS {result['peak_rss_mb']:>5} MB  dropped {result['dropped']}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
