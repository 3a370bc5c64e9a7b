"""Benchmark: does `spri-sft train` train as fast as a plain TRL script, and what does packing buy?

Run (defaults: SmolLM2-135M-Instruct, the CPU LoRA recipe, 10 steps per run, 2 rounds of three
arms):

    python scripts/bench_train.py --output bench_train.json

On 2 CPU cores that other processes also loaded (load average 2-4), this took 12 min 30 s with
6 steps per run and one thread (half of it the packed arm: about 2000 tokens a step against about
800, at 28-34 s a step against 13-19 s):

    python scripts/bench_train.py --max-steps 6 --threads 1 --output bench_train.json

Ours against plain only, more rounds:

    python scripts/bench_train.py --max-steps 6 --threads 1 --rounds 4 --no-packing-arm

Measured (2026-11-26, 2 cores, quiet apart from a code reader, load average 1.6-2.2, 2 threads,
`--max-steps 8 --rounds 3 --no-packing-arm`: 21 timed steps per arm, 16,083 tokens each):
ours 59.2 tokens/s, plain 54.8: ours/plain 1.080 tokens/s, 1.043 tokens/CPU-s (the rounds
swung 49.7-67.0 tokens/s; identical setups, so the gap is noise). With the packed arm
(earlier, loaded machine, 1 thread, 6 steps): packing on/off 1.29x tokens/s.

What it measures: training throughput, in tokens per second, of three arms run side by side in
one process, in rounds whose order alternates (ours, plain, packed, then packed, plain, ours, ...)
so that a drift (thermal, other load) falls on every arm alike:

* ours: `spri_sft.train.sft.build_trainer` + `trainer.train()`, configured exactly as
  `spri-sft train --config recipes/smollm2-135m-instruct/sft/lora.yaml` would be (the recipe
  goes through the package's own `make_parser`), except `--report_to none`, no checkpoints
  (`--save_strategy no`, so `--load_best_model_at_end false`), no evaluation
  (`--eval_strategy no`), `--max_steps` from `--max-steps`, and the dataset and output dir below;
* plain: a plain TRL script: `AutoTokenizer` with the same training chat template (the string
  `training_chat_template` returns; assistant_only_loss needs `{% generation %}` markers and TRL
  has none for SmolLM2), `AutoModelForCausalLM` in float32, `peft.LoraConfig` with the recipe's
  r/alpha/dropout/target modules, and `trl.SFTTrainer` with the very same `SFTConfig` values;
* packed: ours with `--packing true` (TRL's default strategy `bfd`, which turns on padding-free).

Data: one `messages` row per task of self-instruct's user-oriented instructions (`--data`): the
user turn is the instruction, followed by a blank line and `instances[0].input` when there is
one; the assistant turn is `instances[0].output`. Saved once with `save_to_disk` and loaded by
every arm with `load_from_disk`.

Tokens: the non-padding tokens the model sees, as TRL's `SFTTrainer.compute_loss` counts them
for its logged `num_tokens` metric: `attention_mask.sum()` of each collated batch, or, for a
padding-free batch (one flattened row, nothing padded), its length. A callback reads that
running count and `time.perf_counter()` at the end of every optimizer step; a run's seconds and
tokens are the differences between the end of step 1 (the warm-up step, excluded) and the end
of the last step, so they cover steps 2..N, data loading and per-step logging included, and
exclude model loading, dataset tokenization and everything after the last step. The count is
identical for all arms (same code path in TRL), and ours and plain see the same batches (same
seed), so their token counts must agree; the script says so when they do not.

Between runs the previous trainer is freed (checked) and garbage collected before the next
arm's timed steps, so no arm pays for another's cleanup.

Setup check: from each arm's first trainer the script takes what decides the cost of a step
(trainer and callback classes, every training argument but the output dir, the LoRA config,
model class, dtype, attention implementation, parameter counts, gradient checkpointing, chat
template, pad/EOS tokens, collator, the tokenized training set) and prints whether ours and plain
match, and where not. Equal setups mean any timing gap between them is noise.

Each run also reports process CPU seconds (all threads) over the same steps, and tokens per
CPU-second, and the 1-minute load average after it: on a machine other processes load, wall
time swings with the scheduler (13-22 s for the same step of the same arm); compare arms on
both, and prefer `--threads 1` there: on 2 loaded cores a forward and backward pass of the model
took 10-24 s with 2 threads against 5.5 s with 1.

Isolation check (packed arm, after its first run, untimed): the trainer's own collator makes one
batch of the 2 packed rows holding the most examples (padding-free: one flattened row,
`position_ids` restarting at 0 for each example, no attention mask, TRL's `cu_seq_lens_*`
kwargs), and it goes through the model in eval mode as `compute_loss` sends it, with the `sdpa`
and then the `eager` attention. Each example's logits are compared with those of the example
run alone; a difference at rounding level means examples do not see each other. As a control,
the same batch without `position_ids` (one long causal sequence, each example attending to the
ones before it) must differ, or the check could not fail.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import tempfile
import time
import weakref
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "self-instruct" / "user_oriented_instructions.jsonl"
DEFAULT_RECIPE = REPO / "recipes" / "smollm2-135m-instruct" / "sft" / "lora.yaml"
DEFAULT_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Training throughput of `spri-sft train` against a plain TRL script, and with packing "
        "(see the module docstring)."
    )
    parser.add_argument(
        "--model", default=DEFAULT_MODEL, help=f"model id or directory, through resolve_model (default {DEFAULT_MODEL})"
    )
    parser.add_argument(
        "--data",
        type=Path,
        default=DEFAULT_DATA,
        help="self-instruct user_oriented_instructions.jsonl "
        "(default ../shared/data/self-instruct/user_oriented_instructions.jsonl from the repository root)",
    )
    parser.add_argument(
        "--recipe", type=Path, default=DEFAULT_RECIPE, help="training recipe (default: the CPU LoRA one)"
    )
    parser.add_argument(
        "--max-steps", type=int, default=10, help="optimizer steps per run, the first untimed (default 10)"
    )
    parser.add_argument("--rounds", type=int, default=2, help="rounds of (ours, plain[, packed]) (default 2)")
    parser.add_argument("--no-packing-arm", dest="packing_arm", action="store_false", help="skip the packed arm")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch.set_num_threads for every arm (default: torch's own choice, one per core); 1 keeps the "
        "measurement stable when other processes load the machine",
    )
    parser.add_argument("--output", type=Path, default=None, help="also write the results as JSON to this path")
    args = parser.parse_args(argv)
    if args.max_steps < 2:
        parser.error("--max-steps must be at least 2 (step 1 is the untimed warm-up)")
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    if not args.data.is_file():
        parser.error(f"{args.data}: not found (pass --data)")
    return args


def build_dataset(jsonl: Path, directory: Path) -> int:
    from datasets import Dataset, DatasetDict

    rows = []
    for line in jsonl.read_text().splitlines():
        task = json.loads(line)
        instance = task["instances"][0]
        user = task["instruction"].strip()
        if instance["input"].strip():
            user += "\n\n" + instance["input"].strip()
        answer = instance["output"].strip()
        if answer:
            rows.append({"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]})
    DatasetDict({"train": Dataset.from_list(rows)}).save_to_disk(directory)
    return len(rows)


def parse_recipe(args: argparse.Namespace, dataset_dir: Path, output_dir: Path, packing: bool):
    """(script_args, SFTConfig, ModelConfig) as `spri-sft train --config RECIPE <overrides>` would build them."""
    from spri_sft.train.sft import make_parser

    argv = [
        "--config",
        str(args.recipe),
        "--model_name_or_path",
        args.model,
        "--dataset_path",
        str(dataset_dir),
        "--output_dir",
        str(output_dir),
        "--max_steps",
        str(args.max_steps),
        "--report_to",
        "none",
        "--save_strategy",
        "no",
        "--eval_strategy",
        "no",
        "--load_best_model_at_end",
        "false",
        "--packing",
        str(packing).lower(),
    ]
    return make_parser().parse_args_and_config(args=argv)


def make_clock():
    from transformers import TrainerCallback

    class StepClock(TrainerCallback):
        """(step, wall clock, process CPU time, tokens seen so far) at the end of every optimizer step."""

        def __init__(self):
            self.trainer = None
            self.marks: list[tuple[int, float, float, int]] = []
            self.began = 0.0

        def on_train_begin(self, args, state, control, **kwargs):
            self.began = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            now, cpu = time.perf_counter(), time.process_time()
            self.marks.append((state.global_step, now, cpu, int(self.trainer._total_train_tokens)))

    return StepClock()


def ours_trainer(args, dataset_dir, output_dir, packing):
    from spri_sft.train.sft import build_trainer

    return build_trainer(*parse_recipe(args, dataset_dir, output_dir, packing))


def plain_trainer(args, dataset_dir, output_dir, template):
    """A plain TRL script: no spri-sft code past the parsed settings and the template string."""
    import torch
    from datasets import load_from_disk
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTTrainer

    from spri_sft.models import resolve_model

    _, training_args, model_args = parse_recipe(args, dataset_dir, output_dir, packing=False)
    model_path = resolve_model(args.model)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    tokenizer.chat_template = template
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    peft_config = LoraConfig(
        task_type="CAUSAL_LM",
        r=model_args.lora_r,
        lora_alpha=model_args.lora_alpha,
        lora_dropout=model_args.lora_dropout,
        target_modules=model_args.lora_target_modules,
        bias="none",
    )
    return SFTTrainer(
        model=model,
        args=training_args,
        train_dataset=load_from_disk(str(dataset_dir))["train"],
        processing_class=tokenizer,
        peft_config=peft_config,
    )


def setup_fingerprint(trainer) -> dict:
    """What decides a step's cost, as plain values: two arms with equal fingerprints run the same computation."""
    import hashlib

    def digest(value) -> str:
        return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]

    args = {k: v for k, v in trainer.args.to_dict().items() if k not in ("output_dir", "logging_dir")}
    peft = trainer.model.peft_config["default"].to_dict()
    peft = {k: sorted(v) if isinstance(v, set) else v for k, v in peft.items()}
    tokenizer, data = trainer.processing_class, trainer.train_dataset
    base = trainer.model.get_base_model()
    return {
        "trainer": type(trainer).__name__,
        "callbacks": sorted(
            type(c).__name__ for c in trainer.callback_handler.callbacks if type(c).__name__ != "StepClock"
        ),
        "training_args": digest(args),
        "peft_config": digest(peft),
        "model": f"{type(base).__name__} {base.dtype} attn={base.config._attn_implementation}",
        "parameters": sum(p.numel() for p in trainer.model.parameters()),
        "trainable_parameters": sum(p.numel() for p in trainer.model.parameters() if p.requires_grad),
        "training_mode": trainer.model.training,
        "gradient_checkpointing": bool(getattr(base, "is_gradient_checkpointing", False)),
        "chat_template": digest(tokenizer.chat_template),
        "pad_eos": f"pad={tokenizer.pad_token!r} eos={tokenizer.eos_token!r} side={tokenizer.padding_side}",
        "collator": repr(trainer.data_collator),
        "dataset": f"{len(data)} rows, columns {sorted(data.column_names)}",
        "dataset_tokens": digest([data[i]["input_ids"] + data[i]["labels"] for i in range(len(data))]),
        "_training_args": args,
    }


def timed_run(name: str, round_index: int, make_trainer) -> tuple[dict, object]:
    clock = make_clock()
    trainer = make_trainer()
    clock.trainer = trainer
    trainer.add_callback(clock)
    gc.collect()  # the previous arm's garbage is collected here, not inside this arm's timed steps
    trainer.train()
    clock.trainer = None  # no trainer -> callback -> trainer cycle: the trainer is freed when its last name goes
    marks = clock.marks
    if len(marks) < 2:
        raise RuntimeError(f"{name}: only {len(marks)} steps ran")
    (first, t0, c0, n0), (step, t1, c1, n1) = marks[0], marks[-1]
    logged = [e["num_tokens"] for e in trainer.state.log_history if "num_tokens" in e]
    if logged and int(logged[-1]) != n1:
        print(f"[bench] warning: {name}: logged num_tokens {logged[-1]} != counted {n1}", file=sys.stderr)
    result = {
        "arm": name,
        "round": round_index,
        "steps": step - first,
        "seconds": t1 - t0,
        "cpu_seconds": c1 - c0,
        "tokens": n1 - n0,
        "tokens_per_s": (n1 - n0) / (t1 - t0),
        "tokens_per_cpu_s": (n1 - n0) / (c1 - c0),
        "loadavg_1min_after": os.getloadavg()[0],
        "warmup_step_s": t0 - clock.began,
        "trainable_params": sum(p.numel() for p in trainer.model.parameters() if p.requires_grad),
        "padding_free": bool(getattr(trainer, "padding_free", False)),
        "attn_implementation": trainer.model.config._attn_implementation,
    }
    print(
        f"[bench] round {round_index} {name}: {result['steps']} steps, {result['seconds']:.1f} s, "
        f"{result['tokens']} tokens, {result['tokens_per_s']:.1f} tokens/s, "
        f"{result['tokens_per_cpu_s']:.1f} tokens/CPU-s, load {result['loadavg_1min_after']:.1f}",
        flush=True,
    )
    return result, trainer


def check_packed_isolation(trainer, rows: int = 2) -> dict:
    """Do packed examples see each other? Compare each example's logits in a packed batch with its logits alone.

    The batch is what the trainer's own collator makes of the `rows` packed rows holding the most examples
    (padding-free: one flattened row, `position_ids` restarting at 0 for each example, no attention mask,
    `cu_seq_lens_*`), and it goes to the model as `Trainer.compute_loss` sends it (every key but `labels`).
    """
    import torch

    counts = [len(lengths) for lengths in trainer.train_dataset["seq_lengths"]]
    fullest = sorted(range(len(counts)), key=lambda i: -counts[i])[:rows]
    batch = trainer.data_collator([trainer.train_dataset[i] for i in fullest])
    model = trainer.model
    was_training = model.training
    model.eval()  # no LoRA dropout: the only difference left is what each token attends to
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    starts = (inputs["position_ids"][0] == 0).nonzero().flatten().tolist() + [inputs["input_ids"].shape[1]]
    segments = list(zip(starts[:-1], starts[1:]))
    report = {
        "batch_keys": sorted(inputs),
        "attention_mask_in_batch": "attention_mask" in inputs,
        "packed_rows": rows,
        "examples": len(segments),
        "tokens": int(inputs["input_ids"].shape[1]),
    }
    base = model.get_base_model()
    original = base.config._attn_implementation
    with torch.no_grad():
        for implementation in ("sdpa", "eager"):
            base.set_attn_implementation(implementation)
            packed = model(**inputs).logits[0]
            alone = [model(input_ids=inputs["input_ids"][:, a:b]).logits[0] for a, b in segments]
            worst = max(float((packed[a:b] - x).abs().max()) for (a, b), x in zip(segments, alone))
            report[implementation] = {"max_abs_diff_vs_alone": worst}
            if implementation == "sdpa":  # control: one causal sequence, no boundaries; must differ
                leaky = model(input_ids=inputs["input_ids"]).logits[0]
                report["control_without_position_ids"] = max(
                    float((leaky[a:b] - x).abs().max()) for (a, b), x in zip(segments[1:], alone[1:])
                )
        base.set_attn_implementation(original)
    model.train(was_training)
    return report


def summarize(results: list[dict]) -> dict:
    arms = {}
    for name in dict.fromkeys(r["arm"] for r in results):
        runs = [r for r in results if r["arm"] == name]
        seconds, tokens = sum(r["seconds"] for r in runs), sum(r["tokens"] for r in runs)
        cpu_seconds = sum(r["cpu_seconds"] for r in runs)
        arms[name] = {
            "runs": len(runs),
            "steps": sum(r["steps"] for r in runs),
            "seconds": seconds,
            "cpu_seconds": cpu_seconds,
            "tokens": tokens,
            "tokens_per_s": tokens / seconds,
            "tokens_per_cpu_s": tokens / cpu_seconds,
            "s_per_step": seconds / sum(r["steps"] for r in runs),
        }
    return arms


def print_table(results: list[dict], arms: dict, ratios: dict) -> None:
    header = (
        f"{'arm':<7} {'round':>5} {'steps':>5} {'seconds':>8} {'cpu_s':>7} {'tokens':>7} "
        f"{'tokens/s':>9} {'tok/cpu_s':>9} {'s/step':>7} {'load':>5}"
    )
    print("\n" + header + "\n" + "-" * len(header))
    for r in results:
        print(
            f"{r['arm']:<7} {r['round']:>5} {r['steps']:>5} {r['seconds']:>8.1f} {r['cpu_seconds']:>7.1f} "
            f"{r['tokens']:>7} {r['tokens_per_s']:>9.1f} {r['tokens_per_cpu_s']:>9.1f} "
            f"{r['seconds'] / r['steps']:>7.2f} {r['loadavg_1min_after']:>5.1f}"
        )
    print("-" * len(header))
    for name, a in arms.items():
        print(
            f"{name:<7} {'all':>5} {a['steps']:>5} {a['seconds']:>8.1f} {a['cpu_seconds']:>7.1f} {a['tokens']:>7} "
            f"{a['tokens_per_s']:>9.1f} {a['tokens_per_cpu_s']:>9.1f} {a['s_per_step']:>7.2f}"
        )
    print()
    for name, value in ratios.items():
        print(f"{name}: {value:.3f}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch
    from transformers import AutoTokenizer

    from spri_sft.format.template import training_chat_template
    from spri_sft.models import resolve_model

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    model_path = resolve_model(args.model)
    template = training_chat_template(AutoTokenizer.from_pretrained(model_path))
    results: list[dict] = []
    isolation = None
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        dataset_dir = Path(tmp) / "data"
        rows = build_dataset(args.data, dataset_dir)
        print(
            f"[bench] {rows} rows from {args.data}; model {model_path}; torch threads {torch.get_num_threads()}; "
            f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs",
            flush=True,
        )
        arms = [
            ("ours", lambda out: ours_trainer(args, dataset_dir, out, packing=False)),
            ("plain", lambda out: plain_trainer(args, dataset_dir, out, template)),
        ]
        if args.packing_arm:
            arms.append(("packed", lambda out: ours_trainer(args, dataset_dir, out, packing=True)))
        setups: dict[str, dict] = {}
        for round_index in range(1, args.rounds + 1):
            # A B C, C B A, A B C, ...: a drift that is linear in time falls on every arm alike.
            for name, make in arms if round_index % 2 else arms[::-1]:
                out = Path(tmp) / f"{name}-{round_index}"
                result, trainer = timed_run(name, round_index, lambda make=make, out=out: make(out))
                results.append(result)
                setups.setdefault(name, setup_fingerprint(trainer))
                if name == "packed" and isolation is None:
                    isolation = check_packed_isolation(trainer)
                    print(f"[bench] packed isolation: {json.dumps(isolation)}", flush=True)
                model = weakref.ref(trainer.model)
                del trainer  # the last reference: the model and its data go before the next arm loads its own
                gc.collect()
                if model() is not None:
                    print(f"[bench] warning: {name}'s model is still alive after its run", file=sys.stderr)

    summary = summarize(results)
    ratios = {}
    for key, label in (("tokens_per_s", "tokens/s"), ("tokens_per_cpu_s", "tokens/CPU-s")):
        ratios[f"ours/plain {label}"] = summary["ours"][key] / summary["plain"][key]
        if "packed" in summary:
            ratios[f"packing on/off {label}"] = summary["packed"][key] / summary["ours"][key]
    token_mismatch = [
        (o["round"], o["tokens"], p["tokens"])
        for o, p in zip([r for r in results if r["arm"] == "ours"], [r for r in results if r["arm"] == "plain"])
        if o["tokens"] != p["tokens"]
    ]
    print_table(results, summary, ratios)
    differences = {
        key: (setups["ours"][key], setups["plain"][key])
        for key in setups["ours"]
        if not key.startswith("_") and setups["ours"][key] != setups["plain"][key]
    }
    args_differences = {
        key: (value, setups["plain"]["_training_args"].get(key))
        for key, value in setups["ours"]["_training_args"].items()
        if value != setups["plain"]["_training_args"].get(key)
    }
    if differences or args_differences:
        print(f"ours and plain set up differently: {differences} {args_differences}")
    else:
        print(
            "ours and plain set up identically (training args, LoRA config, model, dtype, attention, "
            "callbacks, template, collator, tokenized dataset)"
        )
    if token_mismatch:
        print(f"warning: ours and plain saw different token counts (round, ours, plain): {token_mismatch}")
    if isolation is not None:
        for implementation in ("sdpa", "eager"):
            print(
                f"packed isolation ({implementation}, {isolation['examples']} examples in {isolation['packed_rows']} "
                f"packed rows, {isolation['tokens']} tokens): max |logit diff| packed vs alone "
                f"{isolation[implementation]['max_abs_diff_vs_alone']:.2e}"
            )
        print(
            "packed isolation control (same batch without position_ids, examples attend to earlier ones): "
            f"max |logit diff| {isolation['control_without_position_ids']:.2e}"
        )
    if args.output:
        payload = {
            "config": {k: str(v) for k, v in vars(args).items()},
            "model_path": model_path,
            "rows": rows,
            "torch_threads": torch.get_num_threads(),
            "runs": results,
            "arms": summary,
            "ratios": ratios,
            "packed_isolation": isolation,
            "setups": {name: {k: v for k, v in s.items() if not k.startswith("_")} for name, s in setups.items()},
            "setup_differences_ours_plain": {k: list(v) for k, v in {**differences, **args_differences}.items()},
        }
        args.output.write_text(json.dumps(payload, indent=2))
        print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
