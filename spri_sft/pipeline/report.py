"""report.md / report.json of a pipeline run, read back from what each stage wrote.

Every number comes from a stage's own output file: generate/<mode>/summary.json (records,
statuses, rounds, calls and tokens), dataset/<mode>/summary.json (rows per split, rows over
training's max_length and what format did with them), checkpoints/<mode>/all_results.json and
trainer_state.json (losses, steps), checkpoints/<mode>/lengths.json (rows over max_length as
training counted them, when it wrote one), eval/*/results.json (TruthfulQA, and the BOS convention
it was scored with when it names one) with eval/*/per_question.jsonl (the paired bootstrap
intervals of every Δ),
(a Δ smaller than NEGLIGIBLE_DELTA, half a point, is marked "negligible" whatever its interval),
eval/*/lm_eval/results.json (lm-evaluation-harness tasks, lm-eval's numbers), and each
stage.json (wall time). With `dpo.enabled`, each mode's DPO model is a row of its own ("SFT+DPO on
<mode>", report.json's `dpo`, keyed <mode>+dpo): the preference pairs dataset/<mode>/summary.json
counts, checkpoints/<mode>+dpo's losses (DPO's), eval/<mode>+dpo's scores and Δ vs base; a mode
whose records gave no training pair reads "no pairs". With `grpo.enabled`, likewise each mode's GRPO model
("SFT+GRPO on <mode>", report.json's `grpo`, keyed <mode>+grpo): the prompts it was rewarded on (SFT train rows,
prompts kept, drops by reason: as its training counted them, checkpoints/<mode>+grpo/effective_config.json's
prompts.train, else the pipeline's selection, prompts.json), GRPO's loss, the critic's
mean reward per logged step (trainer_state.json's log_history, TRL's rewards/principles/mean and /std), the
critic's totals (reward.json), eval/<mode>+grpo's scores and Δ vs base; a mode that kept no prompt reads "no prompts
to reward". A skipped model (no pairs, no prompts) has no training, reward, critic or TruthfulQA numbers whatever an
earlier run left in its checkpoints/ and eval/ directories, and is in no comparison, figure, stage list or lm-eval
table. The rows of every training after SFT (`AFTER_SFT`) follow their mode's SFT row in that table's order
(DPO, then GRPO). A value a stage did not produce (no
validation split, evaluation skipped) is shown as "–", never filled in; rows over max_length that
neither format nor training counted read "not counted". The figures (`figures.py`) are PNGs beside report.md,
drawn from report.json alone; with `report.paper_column`, the paper's Table 4 column is set
beside this run's rows. A dataset that read a reviewer's decisions (`spri-sft view`) adds its exclusions by
reason to report.json (`modes.<mode>.dataset.review`) and a Review section to report.md; the report's W&B run
also gets the viewer's HTML sample of the records (review/sample.html). The SFT rows each dataset dropped per
benchmark (format's contamination guard, dataset/<mode>/summary.json `contamination`) are in report.json
(`modes.<mode>.dataset.contamination`) and report.md's Benchmark contamination section.
"""

from __future__ import annotations

import csv
import itertools
import json
from collections import Counter
from importlib import resources
from pathlib import Path
from typing import Any

from spri_sft.errors import UserError
from spri_sft.evaluate.bootstrap import paired_bootstrap
from spri_sft.generate.modes import MODE_SPECS, TABLE4_MODES
from spri_sft.pipeline.config import AFTER_SFT, PROMPTS_FILE, PipelineConfig, continued, split_model
from spri_sft.review.decisions import REVIEW_DIR
from spri_sft.train.grpo import dropped_words
from spri_sft.train.grpo_reward import REWARD_NAME

MISSING = "–"
NOT_COUNTED = "not counted"  # rows over max_length: neither format nor training counted them (an earlier run's dataset)

# The paper's Table 4 rows in its order, each with the names of the mode that runs it (an alias
# included: a run may still call `self-align` by its old name `constitution`), from the modes' table;
# and the row no mode runs: off-the-shelf, the untouched student.
PAPER_ROWS = {
    **{MODE_SPECS[mode].paper_row.label: (mode, *MODE_SPECS[mode].aliases) for mode in TABLE4_MODES},
    "off-the-shelf": (),
}
# Model calls per SPRI record in the paper (App. B, Table 7): base and critic calls together (≈ 2.5 + 2.5).
PAPER_SPRI_CALLS_PER_RECORD = 5.0
# The smallest TruthfulQA Δ (MC1 or MC2, as a fraction) worth a reader's attention: half a point. A smaller Δ
# is "negligible" in report.md and report.json whatever its interval: a 2-step adapter moves MC2 by 1e-5, and
# over 817 questions such a shift can exclude 0 without being a difference anyone would act on.
NEGLIGIBLE_DELTA = 0.005


def generation_row(summary: dict) -> dict[str, Any]:
    """Counts, acceptance, mean rounds per stage, and calls and tokens per record of one generation summary."""
    records = summary["records"] or 0
    status = summary.get("status", {})

    def per_record(value: float) -> float | None:
        return round(value / records, 2) if records else None

    def unscored_rate(stage: str) -> float | None:
        # Critic replies left without a score, over the stage's critiques (summaries before it have none).
        return summary.get("unscored_rate", {}).get(stage)

    def mean_rounds(stage: str) -> float | None:
        counts = summary.get("rounds_histogram", {}).get(stage)
        if not counts:
            return None
        return round(sum(int(r) * n for r, n in counts.items()) / sum(counts.values()), 2)

    calls = {"base": 0, "critic": 0}
    tokens = 0
    for key, usage in summary.get("usage", {}).items():
        role = key.split(":", 1)[0]
        calls[role] = calls.get(role, 0) + usage.get("calls", 0)
        tokens += usage.get("prompt_tokens", 0) + usage.get("completion_tokens", 0)
    return {
        "records": records,
        "accepted": status.get("accepted", 0),
        "max_rounds": status.get("max_rounds", 0),
        "failed": status.get("failed", 0),
        "accepted_rate": round(status.get("accepted", 0) / records, 4) if records else None,
        "principle_rounds_mean": mean_rounds("principles"),
        "response_rounds_mean": mean_rounds("response"),
        "principles_unscored_rate": unscored_rate("principles"),
        "response_unscored_rate": unscored_rate("response"),
        "base_calls_per_record": per_record(calls["base"]),
        "critic_calls_per_record": per_record(calls["critic"]),
        "tokens_per_record": per_record(tokens),
    }


def build_report(
    config: PipelineConfig, root: Path, name: str, student: str, truthfulqa: dict | None
) -> dict[str, Any]:
    evaluated = truthfulqa is not None  # else eval/ may hold an earlier run's scores: not this run's
    base_eval = _read(root / "eval" / "base" / "results.json") if evaluated else None
    base_questions = _per_question(root / "eval" / "base") if evaluated else None
    per_question = {}
    modes = {}
    after_sft: dict[str, dict[str, dict]] = {job: {} for job in AFTER_SFT}  # report.json's `dpo`, `grpo`
    for mode in config.modes:
        generation = _read(config.generation_dir(mode) / "summary.json")
        dataset = _read(root / "dataset" / mode / "summary.json")
        state = _read(root / "checkpoints" / mode / "trainer_state.json")
        scores = _read(root / "eval" / mode / "results.json") if evaluated else None
        per_question[mode] = _per_question(root / "eval" / mode) if scores else None
        modes[mode] = {
            "generation": generation_row(generation) if generation else None,
            "dataset": _dataset_row(dataset) if dataset else None,
            "lengths": {
                "format": (dataset or {}).get("lengths"),
                "train": _read(root / "checkpoints" / mode / "lengths.json"),
            },
            "train": _train_row(root / "checkpoints" / mode),
            "truthfulqa": _scores(scores, base_eval, per_question[mode], base_questions),
            "histograms": {
                "final_score": generation.get("final_score", {}),
                "rounds": generation.get("rounds_histogram", {}),
            }
            if generation
            else None,
            "loss_curve": {"train": _logged_curve(state, "loss"), "validation": _logged_curve(state, "eval_loss")},
        }
        for job in config.after_sft():
            model = continued(mode, job)
            row = CONTINUED_ROWS[job](root, mode, dataset)
            # A skipped model was not made by this run: eval/<model> may still hold an earlier run's scores.
            tuned = _read(root / "eval" / model / "results.json") if evaluated and not row["skipped"] else None
            per_question[model] = _per_question(root / "eval" / model) if tuned else None
            row["truthfulqa"] = _scores(tuned, base_eval, per_question[model], base_questions)
            after_sft[job][model] = row
    # The models this run trained after SFT: a skipped one has no stage, BOS convention or lm-eval row of this run.
    continued_models = [model for job in AFTER_SFT for model, row in after_sft[job].items() if not row["skipped"]]
    stages = {}
    order = [f"{kind}/{mode}" for kind in ("generate", "dataset") for mode in config.modes]
    order += ["eval/base", "eval/base/lm_eval"]
    trained = [
        model
        for mode in config.modes
        for model in (mode, *(continued(mode, job) for job in config.after_sft()))
        if model == mode or model in continued_models
    ]
    order += [s for model in trained for s in (f"checkpoints/{model}", f"eval/{model}", f"eval/{model}/lm_eval")]
    for stage in order:
        directory = config.generation_dir(stage.split("/")[1]) if stage.startswith("generate/") else root / stage
        state = _read(directory / "stage.json")
        if state is not None:
            stages[stage] = {"status": state["status"], "wall_seconds": state.get("wall_seconds")}
    return {
        "run": name,
        "output_dir": str(root),
        "student": student,
        "base_model": config.generate.base.model,
        "critic_model": config.generate.critic.model,
        "loop": {"threshold": config.generate.loop.threshold, "max_rounds": config.generate.loop.max_rounds},
        "truthfulqa": {
            "source": None if truthfulqa is None else truthfulqa["source"],
            "questions": base_eval["n"] if base_eval else None,
            "prompt": base_eval["mode"] if base_eval else None,
            "skipped": truthfulqa is None,
            "bos": _bos_conventions(root, ["base", *config.modes, *continued_models]) if evaluated else {},
        },
        "negligible_delta": NEGLIGIBLE_DELTA,
        "base": _scores(base_eval, None, None, None),
        "modes": modes,
        **after_sft,
        "comparisons": _mode_comparisons(per_question),
        "paper_table4": _paper_table4(config.report.paper_column, base_eval, modes),
        "lm_eval": _lm_eval_scores(config, root, continued_models) if evaluated else None,
        "stages": stages,
    }


def _dataset_row(dataset: dict) -> dict[str, Any]:
    """A mode's dataset in report.json: rows, splits, drops by reason, the rows dropped per benchmark
    (`contamination`), and the reviewer's exclusions (`review`:
    file, excluded, kept by decision; `review_reasons`), absent for a dataset made before reviews were read."""
    row = {key: dataset[key] for key in ("rows", "splits", "dropped")}
    if "contamination" in dataset:  # per benchmark; absent for a dataset made before format counted them
        row["contamination"] = dataset["contamination"]
    if "review" in dataset:
        row["review"] = {**dataset["review"], "reasons": dataset.get("review_reasons") or {}}
    return row


def _bos_conventions(root: Path, models: list[str]) -> dict[str, dict[str, Any]]:
    """Per evaluated model, whether TruthfulQA put a BOS token before each question (`add_bos_token`, resolved) and
    the setting that decided it (`add_bos_token_setting`: auto, true, false); models whose results name none are left
    out."""
    found = {}
    for model in models:
        results = _read(root / "eval" / model / "results.json") or {}
        if "add_bos_token" in results:
            found[model] = {"add_bos_token": results["add_bos_token"], "setting": results.get("add_bos_token_setting")}
    return found


def _train_row(checkpoint: Path | None) -> dict[str, Any]:
    """A training's steps, last logged loss and the saved model's validation loss (all_results.json); all None
    without a checkpoint (a skipped training, whatever an earlier run left there)."""
    if checkpoint is None:
        return {"steps": None, "train_loss": None, "eval_loss": None}
    results = _read(checkpoint / "all_results.json")
    state = _read(checkpoint / "trainer_state.json")
    return {
        "steps": state.get("global_step") if state else None,
        # The last logged loss: all_results' train_loss averages only the steps of the last
        # (resumed) session, and is 0.0 for a rerun that had nothing left to train.
        "train_loss": _last_logged(state, "loss"),
        "eval_loss": results.get("eval_loss") if results else None,
    }


def _dpo_row(root: Path, mode: str, dataset: dict | None) -> dict[str, Any]:
    """One mode's DPO model: its pairs (format's counts) and training (DPO's losses); "no pairs" when format made no
    training pair (then nothing was trained, and nothing an earlier run left in checkpoints/<mode>+dpo is read).
    build_report adds its scores."""
    model = continued(mode, "dpo")
    pairs = (dataset or {}).get("preference")
    skipped = "no pairs" if pairs is not None and "train" not in pairs["splits"] else None
    checkpoint = None if skipped else root / "checkpoints" / model
    return {
        "mode": mode,
        "pairs": {k: pairs[k] for k in ("margin", "records", "pairs", "splits", "no_pair", "gap")} if pairs else None,
        "skipped": skipped,
        # Format does not measure preference pairs; a DPO training that counted its rows wrote lengths.json.
        "lengths": {"format": None, "train": _read(checkpoint / "lengths.json") if checkpoint else None},
        "train": _train_row(checkpoint),
    }


NO_PROMPTS = "no prompts to reward"


def _grpo_row(root: Path, mode: str, dataset: dict | None) -> dict[str, Any]:
    """One mode's GRPO model: the prompts it was rewarded on (`_grpo_prompts`), training (GRPO's loss), the critic's
    mean reward per logged step (TRL's log_history) and its totals (reward.json); "no prompts to reward" when the
    pipeline's selection kept none (then nothing was trained, and nothing an earlier run left in
    checkpoints/<mode>+grpo but prompts.json is read). build_report adds its scores."""
    checkpoint = root / "checkpoints" / continued(mode, "grpo")
    selected = _read(checkpoint / PROMPTS_FILE)
    skipped = NO_PROMPTS if selected is not None and not selected["prompts"] else None
    trained = None if skipped else checkpoint
    state = _read(checkpoint / "trainer_state.json") if trained else None
    return {
        "mode": mode,
        "prompts": selected if skipped else _grpo_prompts(checkpoint, selected),
        "skipped": skipped,
        "lengths": {"format": None, "train": _read(checkpoint / "lengths.json") if trained else None},
        "train": _train_row(trained),
        "reward": {
            "function": REWARD_NAME,
            **_reward_summary(state, f"rewards/{REWARD_NAME}/mean", f"rewards/{REWARD_NAME}/std"),
            # Every reward function's weighted sum, what GRPO's advantages are computed from: the critic's alone
            # unless the recipe adds terms (e.g. overlong_penalty_tokens).
            "terms": _reward_terms(state),
            "total": _reward_summary(state, "reward", "reward_std"),
        },
        "critic": _read(checkpoint / "reward.json") if trained else None,
    }


def _grpo_prompts(checkpoint: Path, selected: dict | None) -> dict | None:
    """The prompts a GRPO model was trained on ({rows, prompts, dropped, admit_unaccepted_principles}): the
    training's own count (effective_config.json's prompts.train) where it trained, which also drops the prompts that
    leave no room for a completion in vllm_max_model_length (prompt_too_long, `grpo.fitting_prompts`); else the
    pipeline's selection before training (prompts.json)."""
    effective = _read(checkpoint / "effective_config.json") or {}
    counted = (effective.get("prompts") or {}).get("train")
    if counted is None:  # not trained yet, or trained before the training recorded its prompts
        return selected
    prompts = {**(selected or {}), **{key: counted[key] for key in ("rows", "prompts", "dropped")}}
    admit = (effective.get("GRPOScriptArguments") or {}).get("admit_unaccepted_principles")
    if admit is not None:  # the training's own setting
        prompts["admit_unaccepted_principles"] = admit
    return prompts


CONTINUED_ROWS = {"dpo": _dpo_row, "grpo": _grpo_row}  # report.json's row of each training in AFTER_SFT


def _reward_summary(trainer_state: dict | None, mean: str, std: str) -> dict[str, Any]:
    """The first and last logged mean reward and the curve [[step, mean, std], ...] of the steps that logged one
    (TRL logs None for a step whose every completion went unrewarded: left out)."""
    curve = [
        [entry["step"], entry[mean], entry.get(std)]
        for entry in (trainer_state or {}).get("log_history", [])
        if entry.get(mean) is not None
    ]
    return {
        "first": curve[0][1] if curve else None,
        "last": curve[-1][1] if curve else None,
        "steps": [curve[0][0], curve[-1][0]] if curve else None,
        "curve": curve,
    }


def _reward_terms(trainer_state: dict | None) -> list[str]:
    """The reward functions TRL logged (rewards/<name>/mean), in the order first logged."""
    names: dict[str, None] = {}
    for entry in (trainer_state or {}).get("log_history", []):
        for key in entry:
            if key.startswith("rewards/") and key.endswith("/mean"):
                names[key.removeprefix("rewards/").removesuffix("/mean")] = None
    return list(names)


def model_label(model: str) -> str:
    """A row's name: "base (before)", "SFT on <mode>", or the label of a training after SFT on <mode> (AFTER_SFT's:
    "SFT+DPO on spri" for report.json's spri+dpo)."""
    if model == "base":
        return "base (before)"
    mode, job = split_model(model)
    return f"{AFTER_SFT[job]} on {mode}" if job else f"SFT on {mode}"


def write_report(report: dict[str, Any], root: Path) -> str:
    """Write the figures, report.json and report.md; return the markdown (also printed at the end of a run)."""
    from spri_sft.pipeline.figures import write_figures

    report["figures"] = write_figures(report, root)
    (root / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    text = render_markdown(report)
    (root / "report.md").write_text(text)
    return text


def render_markdown(report: dict[str, Any]) -> str:
    tqa = report["truthfulqa"]
    lines = [
        f"# {report['run']}",
        "",
        f"- student (fine-tuned): `{report['student']}`",
        f"- generation: base `{report['base_model']}`, critic `{report['critic_model']}`",
        "- TruthfulQA MC1/MC2: "
        + (
            "skipped (evaluate.enabled: false)"
            if tqa["skipped"]
            else f"{tqa['questions']} questions from `{tqa['source']}`, {tqa['prompt']} prompt (lm-eval's scoring)"
        ),
        *([f"- TruthfulQA BOS: {bos_line(tqa['bos'])}"] if tqa.get("bos") else []),
        "",
        "| model | records | accepted | rounds (principles / response) | unscored (principles / response) "
        "| calls per record (base / critic) "
        "| tokens per record | train / val rows | over max_length | steps | final train loss | val loss "
        "| MC1 | ΔMC1 | MC2 | ΔMC2 |",
        "| --- | " + " | ".join("---:" for _ in range(15)) + " |",
    ]
    base = report["base"]
    lines.append(
        f"| base (before) | {MISSING} | {MISSING} | {MISSING} | {MISSING} | {MISSING} | {MISSING} | {MISSING} | {MISSING} "
        f"| {MISSING} | {MISSING} | {MISSING} | {_num(base['mc1'])} | {MISSING} | {_num(base['mc2'])} | {MISSING} |"
    )
    for mode, row in report["modes"].items():
        gen = row["generation"] or {}
        data = row["dataset"] or {}
        splits = data.get("splits", {})
        train, scores = row["train"], row["truthfulqa"]
        lines.append(
            "| "
            + " | ".join(
                [
                    f"SFT on {mode}",
                    _num(gen.get("records")),
                    f"{_num(gen.get('accepted'))} ({_pct(gen.get('accepted_rate'))})",
                    f"{_num(gen.get('principle_rounds_mean'), 2)} / {_num(gen.get('response_rounds_mean'), 2)}",
                    f"{_pct(gen.get('principles_unscored_rate'))} / {_pct(gen.get('response_unscored_rate'))}",
                    f"{_num(gen.get('base_calls_per_record'), 2)} / {_num(gen.get('critic_calls_per_record'), 2)}",
                    _num(gen.get("tokens_per_record"), 0),
                    f"{_num(splits.get('train'))} / {_num(splits.get('validation'))}",
                    over_max_length_cell(row.get("lengths") or {}),
                    _num(train["steps"]),
                    _num(train["train_loss"]),
                    _num(train["eval_loss"]),
                    _num(scores["mc1"]),
                    _delta_cell(scores, "mc1"),
                    _num(scores["mc2"]),
                    _delta_cell(scores, "mc2"),
                ]
            )
            + " |"
        )
        for job in AFTER_SFT:
            continued_row = (report.get(job) or {}).get(continued(mode, job))
            if continued_row is not None:
                lines.append(_continued_markdown_row(continued(mode, job), continued_row))
    lines += _lm_eval_section(report.get("lm_eval"))
    lines += _dpo_section(report.get("dpo") or {})
    lines += _grpo_section(report.get("grpo") or {})
    lines += _differences_section(report)
    lines += _paper_section(report.get("paper_table4"), tqa.get("bos") or {})
    lines += _contamination_section(report["modes"])
    lines += _review_section(report["modes"])
    lines += _figures_section(report.get("figures") or {})
    lines += ["", "| stage | status | wall time (s) |", "| --- | --- | ---: |"]
    lines += [f"| {stage} | {s['status']} | {_num(s['wall_seconds'], 1)} |" for stage, s in report["stages"].items()]
    lines += [
        "",
        "Rounds: mean critique rounds per record for each stage (principles, response); unscored: the share of "
        "that stage's critic replies left without a score in 1-5 (none under the critic's score: constrained "
        "or expected); calls and tokens count "
        "every model call of generation (prompt + completion tokens). Final train loss: the last logged one; "
        "val loss: of the saved adapter (the best checkpoint when the recipe keeps it); an SFT+DPO row's losses are "
        "DPO's and its rows are preference pairs; an SFT+GRPO row's rows are prompts, and its loss is left out (near 0 "
        "whatever GRPO learned: each group's advantages sum to zero; its mean reward is in the GRPO section)."
        f" Over max_length{_max_lengths(report)}: the train + validation "
        "rows longer than training's max_length in the student's tokens, as format counted them "
        "(dataset/<mode>/summary.json) and, where it differs, as training did (checkpoints/<mode>/lengths.json); "
        "dropped, or kept and cut at max_length, "
        "where a row that lost its end-of-turn token (lost EOS) teaches the model not to stop (dropping is this "
        "project's choice, not the paper's). Δ: after minus before, "
        "[its paired bootstrap 95% interval over questions]; “negligible”: "
        f"|Δ| < {NEGLIGIBLE_DELTA} ({100 * NEGLIGIBLE_DELTA:g} points), too small to matter whatever its interval. "
        "Records with status max_rounds reached the round limit without passing the critic's threshold.",
        "",
    ]
    return "\n".join(lines)


def _continued_markdown_row(model: str, row: dict[str, Any]) -> str:
    """The main table's row of a model trained after SFT: what it trained on in the rows column (DPO's pairs,
    GRPO's prompts), that training's losses, its scores and Δs."""
    job = split_model(model)[1]
    train, scores = row["train"], row["truthfulqa"]
    lengths = row.get("lengths") or {}
    # GRPO samples its completions up to max_completion_length: a count against max_length applies to it only where
    # its training wrote one (lengths.json). A skipped model trained on nothing: no count.
    counted = (
        over_max_length_cell(lengths) if not row["skipped"] and (job == "dpo" or lengths.get("train")) else MISSING
    )
    trained_on = row["skipped"] or TRAINED_ON_CELLS[job](row)
    cells = [model_label(model), *[MISSING] * 6, trained_on, counted]
    # GRPO's logged loss is near 0 whatever it learned (on-policy, each group's advantages sum to zero): its reward,
    # in the GRPO section, is the number to read.
    loss = MISSING if job == "grpo" else _num(train["train_loss"])
    cells += [_num(train["steps"]), loss, _num(train["eval_loss"])]
    cells += [
        _num(scores["mc1"]), _delta_cell(scores, "mc1"),
        _num(scores["mc2"]), _delta_cell(scores, "mc2"),
    ]  # fmt: skip
    return "| " + " | ".join(cells) + " |"


def _pairs_cell(row: dict[str, Any]) -> str:
    splits = (row["pairs"] or {}).get("splits", {})
    return f"{_num(splits.get('train'))} / {_num(splits.get('validation'))} pairs"


def _prompts_cell(row: dict[str, Any]) -> str:
    prompts = row["prompts"] or {}
    return f"{_num(prompts.get('prompts'))} of {_num(prompts.get('rows'))} prompts"


# The main table's rows cell of each training in AFTER_SFT, when it trained: what it trained on.
TRAINED_ON_CELLS = {"dpo": _pairs_cell, "grpo": _prompts_cell}


def _dpo_section(dpo: dict[str, dict[str, Any]]) -> list[str]:
    """Per mode, the preference pairs format made for DPO and why the other records have none."""
    if not dpo:
        return []
    margin = next((row["pairs"]["margin"] for row in dpo.values() if row["pairs"]), None)
    lines = [
        "",
        "## DPO after SFT",
        "",
        "Each mode's SFT model trained further with DPO on the preference pairs of its own critique trajectories "
        f"(the final response against an earlier version scored at least {_num(margin, 2)} lower); a mode with no "
        "training pair is not trained (no pairs).",
        "",
        "| model | records | pairs (train / val) | score gap (min / median / max) | records without a pair |",
        "| --- | ---: | ---: | ---: | --- |",
    ]
    for model, row in dpo.items():
        pairs = row["pairs"] or {}
        splits, gap = pairs.get("splits", {}), pairs.get("gap") or {}
        reasons = ", ".join(f"{reason} {n}" for reason, n in (pairs.get("no_pair") or {}).items() if n) or "none"
        lines.append(
            f"| {model_label(model)} | {_num(pairs.get('records'))} | "
            + ("no pairs" if row["skipped"] else f"{_num(splits.get('train'))} / {_num(splits.get('validation'))}")
            + f" | {_num(gap.get('min'), 2)} / {_num(gap.get('median'), 2)} / {_num(gap.get('max'), 2)} | {reasons} |"
        )
    return lines


def _grpo_section(grpo: dict[str, dict[str, Any]]) -> list[str]:
    """Per mode, the prompts GRPO was rewarded on (and the drops by reason), the critic's totals and the mean reward
    at the first and last logged step; a skipped mode with its reason."""
    if not grpo:
        return []
    lines = [
        "",
        "## GRPO after SFT",
        "",
        "Each mode's SFT model trained further with GRPO (TRL's GRPOTrainer) on the prompts of its SFT train split "
        "whose principles the critic accepted (all with principles under admit_unaccepted_principles). The reward of "
        "each sampled completion is the critic's score of it against its prompt's own principles (Stage II's "
        "critique request), scaled to [0, 1]: (s − 1) / 4, s the mean of the critic's digit distribution under "
        "`score: expected`, else its 1–5 score. A completion the critic left unscored or never answered (failed, "
        "after the backend's retries) has a reward of None, which TRL leaves out of the step's mean. Mean reward: "
        "over a logged step's completions, at the first and the last step that logged one. Prompts: as the training "
        "counted them (effective_config.json), which also drops a prompt that leaves no room for "
        "max_completion_length in vllm_max_model_length (prompt too long); for a mode not trained, the pipeline's "
        "selection (prompts.json). A mode with no prompt to reward is not trained. The main table's SFT+GRPO rows: "
        "the prompts kept in the rows column, no loss (GRPO's is near 0 whatever it learned).",
        "",
        "| model | prompts (of SFT train rows) | dropped | completions scored / unscored / failed (of all) "
        "| critic calls | critic tokens | mean reward (first → last logged step) |",
        "| --- | ---: | --- | ---: | ---: | ---: | ---: |",
    ]
    for model, row in grpo.items():
        prompts = row["prompts"] or {}
        kept = f"{_num(prompts.get('prompts'))} of {_num(prompts.get('rows'))}"
        if prompts.get("admit_unaccepted_principles"):
            kept += " (unaccepted principles admitted)"
        if row["skipped"]:
            kept = f"{row['skipped']}: {kept}"
        dropped = prompts.get("dropped")
        reasons = MISSING if dropped is None else dropped_words(Counter(dropped))
        critic = row["critic"]
        if critic is None:
            judged, calls, tokens = MISSING, MISSING, MISSING
        else:
            judged = " / ".join(_num(critic.get(key, 0)) for key in ("scored", "unscored", "failed"))
            judged += f" (of {_num(critic.get('completions', 0))})"
            calls = _num(critic.get("calls", 0))
            tokens = _num(critic.get("prompt_tokens", 0) + critic.get("completion_tokens", 0))
        lines.append(
            f"| {model_label(model)} | {kept} | {reasons} | {judged} | {calls} | {tokens} "
            f"| {_reward_cell(row['reward'])} |"
        )
    totals = {model: row["reward"]["total"] for model, row in grpo.items() if len(row["reward"].get("terms") or []) > 1}
    if totals:
        lines += ["", "With the recipe's other reward terms, the sum GRPO optimized (TRL's `reward`): "]
        lines[-1] += "; ".join(
            f"{model_label(model)} ({' + '.join(grpo[model]['reward']['terms'])}) {_reward_cell(total)}"
            for model, total in totals.items()
        )
        lines[-1] += "."
    return lines


def _reward_cell(reward: dict[str, Any]) -> str:
    """ "0.3100 → 0.3800 (steps 1 → 5)": the mean reward at the first and last step that logged one."""
    if reward.get("first") is None:
        return MISSING
    first, last = reward["steps"]
    return f"{_num(reward['first'])} → {_num(reward['last'])} (steps {first} → {last})"


FIGURE_TITLES = {
    "truthfulqa": "TruthfulQA MC1 and MC2 per model (± standard error), and each Δ vs the base model (95% interval)",
    "critic_scores": "The critic's final score per stage and mode",
    "rounds": "Critique rounds per stage and mode",
    "loss": "Training and validation loss per mode",
    "reward": "GRPO: the critic's mean reward per logged step and mode (± its standard deviation over the step's "
    "completions)",
}


def _differences_section(report: dict[str, Any]) -> list[str]:
    """Every Δ of report.md with its paired bootstrap interval and whether that excludes 0."""
    rows = [(f"{mode} − base", row["truthfulqa"]) for mode, row in report["modes"].items()]
    for job in AFTER_SFT:
        trained = report.get(job) or {}
        rows += [(f"{model} − base", row["truthfulqa"]) for model, row in trained.items() if not row["skipped"]]
    rows += [(f"{c['second']} − {c['first']}", c) for c in report.get("comparisons", [])]
    if all(scores.get(f"{m}_delta") is None for _, scores in rows for m in ("mc1", "mc2")):
        return []
    known = [scores[f"{m}_interval"] for _, scores in rows for m in ("mc1", "mc2") if scores.get(f"{m}_interval")]
    how = (
        f"Paired bootstrap over the {known[0]['questions']} questions both rows scored ({known[0]['resamples']:,} "
        f"resamples of the questions, seeded): Δ and its {known[0]['level']:.0%} percentile interval; "
        f"“yes” where the interval excludes 0, “negligible” where |Δ| < {NEGLIGIBLE_DELTA} "
        f"({100 * NEGLIGIBLE_DELTA:g} points) whatever the interval (report.json: <metric>_negligible)."
        if known
        else ""
    )
    unpaired = "“–”: the two evaluations scored other questions (another file or limit), so nothing is paired."
    lines = [
        "",
        "## Is a difference real?",
        "",
        " ".join(text for text in (how, unpaired if len(known) < 2 * len(rows) else "") if text),
        "",
        "| comparison (a model − base, one mode's SFT model − another's, or two models of one mode) "
        "| ΔMC1 | 95% interval | excludes 0 | ΔMC2 | 95% interval | excludes 0 |",
        "| --- | ---: | ---: | :---: | ---: | ---: | :---: |",
    ]
    for name, scores in rows:
        cells = [name]
        for metric in ("mc1", "mc2"):
            interval = scores.get(f"{metric}_interval")
            if interval is None:
                cells += [MISSING, MISSING, MISSING]
            else:
                cells += [
                    _signed(interval["delta"]),
                    _bounds(interval),
                    "negligible"
                    if scores.get(f"{metric}_negligible")
                    else "yes"
                    if interval["excludes_zero"]
                    else "no",
                ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _lm_eval_section(table: dict[str, Any] | None) -> list[str]:
    """One column per lm-eval task: its main metric ± standard error per model, (Δ vs the base model)."""
    if table is None:
        return []
    tasks = table["tasks"]
    versions = ", ".join(
        f"{task} v{table['versions'].get(task, MISSING)} ({_num(table['n-shot'].get(task))}-shot)" for task in tasks
    )
    lines = [
        "",
        "## lm-evaluation-harness tasks",
        "",
        f"lm-eval {table['lm_eval_version'] or MISSING}'s own numbers (every metric in eval/<model>/lm_eval/results.json): "
        f"each task's main metric ± its standard error; (Δ): minus the base model's. Tasks: {versions}.",
        "",
        "| model | " + " | ".join(f"{task} ({table['metrics'][task] or MISSING})" for task in tasks) + " |",
        "| --- | " + " | ".join("---:" for _ in tasks) + " |",
    ]
    for model, scores in table["rows"].items():
        cells = []
        for task in tasks:
            score = scores[task]
            cell = _num(score["value"]) + (f" ± {_num(score['stderr'])}" if score["stderr"] is not None else "")
            cells.append(cell + (f" ({_signed(score['delta'])})" if score["delta"] is not None else ""))
        lines.append(f"| {model_label(model)} | " + " | ".join(cells) + " |")
    return lines


def _paper_section(table: dict[str, Any] | None, bos: dict[str, dict[str, Any]]) -> list[str]:
    if table is None:
        return []
    scored = (
        f" This run's TruthfulQA was scored {bos_line(bos)}; the paper's numbers are comparable only where its "
        "harness did the same."
        if bos
        else ""
    )
    lines = [
        "",
        f"## The paper's Table 4, column {table['column']}",
        "",
        "TruthfulQA in %, rows in the paper's order; this run's number is its MC2 (the paper's metric is most "
        f"likely lm-eval's mc2). off-the-shelf = the untouched student (base).{scored}",
        "",
        "| paper row | this run's mode | this run (%) | paper (%) | this run − paper |",
        "| --- | --- | ---: | ---: | ---: |",
    ]
    for row in table["rows"]:
        lines.append(
            f"| {row['row']} | {row['mode'] or 'not run'} | {_num(row['ours'], 2)} | {row['paper']:.2f} "
            f"| {_signed(row['difference'], 2)} |"
        )
    calls = table.get("spri_calls_per_record")
    if calls is not None:
        lines += [
            "",
            f"SPRI model calls per record (base + critic): {calls:.2f}; the paper's: {PAPER_SPRI_CALLS_PER_RECORD} "
            "(its App. B Table 7, base and critic calls together).",
        ]
    return lines


def bos_line(bos: dict[str, dict[str, Any]]) -> str:
    """Which BOS convention TruthfulQA was scored with: one phrase when every model's was the same, else per model."""

    def convention(entry: dict[str, Any]) -> str:
        how = "with a BOS token before each question" if entry["add_bos_token"] else "without a BOS token"
        setting = entry.get("setting")
        why = {"auto": ", the tokenizer's default"}.get(setting, "")
        if isinstance(setting, bool):  # written as the YAML/command line spells it
            setting = "true" if setting else "false"
        return f"{how} (evaluate.add_bos_token: {setting}{why})" if setting is not None else how

    phrases = {model: convention(entry) for model, entry in bos.items()}
    if len(set(phrases.values())) == 1:
        return next(iter(phrases.values()))
    return "; ".join(f"{model_label(model)} {phrase}" for model, phrase in phrases.items())


def over_max_length_cell(lengths: dict[str, Any]) -> str:
    """The main table's "over max_length" cell: format's count and what it did, then training's where it adds to it
    (it counts what format left); "not counted" when neither counted."""
    measured, trained = lengths.get("format") or {}, lengths.get("train")
    parts = []
    if measured.get("checked"):
        rows, over = sum(measured["rows"].values()), sum(measured["over_max_length"].values())
        lost = sum(measured["lost_eos"].values())
        parts.append(_what_happened(over, rows, measured["policy"], lost))
    if trained is not None:
        splits = trained.get("splits") or {}
        rows, over, lost = (
            sum(s.get(key, 0) for s in splits.values()) for key in ("rows", "over_max_length", "lost_eos")
        )
        if not parts:
            parts.append(_what_happened(over, rows, trained.get("policy"), lost) + " (training)")
        elif over:
            parts.append("training: " + _what_happened(over, rows, trained.get("policy"), lost))
    return "; ".join(parts) or NOT_COUNTED


def _max_lengths(report: dict[str, Any]) -> str:
    """ " (1,024 tokens)": the max_length the rows were counted against, as format or training recorded it."""
    found = set()
    continued_rows = [row for job in AFTER_SFT for row in (report.get(job) or {}).values()]
    for row in [*report["modes"].values(), *continued_rows]:
        lengths = row.get("lengths") or {}
        for counted in (lengths.get("format"), lengths.get("train")):
            if counted and counted.get("checked", True) and counted.get("max_length") is not None:
                found.add(counted["max_length"])
    return f" ({' or '.join(f'{n:,}' for n in sorted(found))} tokens)" if found else ""


def _what_happened(over: int, rows: int, policy: str | None, lost_eos: int) -> str:
    if not over:
        return f"0 of {rows:,}"
    if policy == "drop":
        return f"{over:,} of {rows:,} dropped"
    return f"{over:,} of {rows:,} kept, {lost_eos:,} lost EOS"


def _contamination_section(modes: dict[str, dict[str, Any]]) -> list[str]:
    """The SFT rows each mode's dataset dropped per benchmark (format's contamination guard; each row, with the
    document it matched, in dataset/<mode>/dropped.jsonl); nothing when no dataset counted them."""
    counted = {mode: (row["dataset"] or {}).get("contamination") for mode, row in modes.items()}
    counted = {mode: found for mode, found in counted.items() if found and found["benchmarks"]}
    if not counted:
        return []
    first = next(iter(counted.values()))
    benchmarks = list(dict.fromkeys(name for found in counted.values() for name in found["benchmarks"]))
    lines = [
        "",
        "## Benchmark contamination",
        "",
        f"SFT rows dropped because their {' and '.join(first['fields'])} covers at least {first['threshold']:.0%} of "
        f"a benchmark document's words with shared word {first['ngram']}-grams (a shorter document: held whole); "
        "each with the document it matched in dataset/<mode>/dropped.jsonl. Columns: the benchmark (its documents).",
        "",
        "| mode | " + " | ".join(f"{name} ({_benchmark_documents(counted, name)})" for name in benchmarks) + " |",
        "| --- | " + " | ".join("---:" for _ in benchmarks) + " |",
    ]
    for mode, found in counted.items():
        cells = [found["benchmarks"].get(name, {}).get("dropped", MISSING) for name in benchmarks]
        lines.append(f"| {mode} | " + " | ".join(map(str, cells)) + " |")
    return lines


def _benchmark_documents(counted: dict[str, dict], name: str) -> str:
    sizes = {found["benchmarks"][name]["documents"] for found in counted.values() if name in found["benchmarks"]}
    return ", ".join(f"{size:,}" for size in sorted(sizes))


def _review_section(modes: dict[str, dict[str, Any]]) -> list[str]:
    """The records a reviewer excluded from each mode's dataset (`spri-sft view`'s decisions, which format obeys);
    nothing when no dataset read a decisions file."""
    reviews = {mode: (row["dataset"] or {}).get("review") or {} for mode, row in modes.items()}
    reviewed = {mode: review for mode, review in reviews.items() if review.get("file")}
    if not reviewed:
        return []
    files = sorted({review["file"] for review in reviewed.values()})
    lines = [
        "",
        "## Review",
        "",
        f"Records excluded by a reviewer's decision (`spri-sft view`; decisions in {', '.join(f'`{f}`' for f in files)}), "
        "dropped from the dataset before every other filter; a keep decision changes nothing.",
        "",
        "| mode | excluded | by reason | kept by decision |",
        "| --- | ---: | --- | ---: |",
    ]
    for mode, review in reviewed.items():
        reasons = ", ".join(f"{reason} {n}" for reason, n in review["reasons"].items()) or MISSING
        lines.append(f"| {mode} | {review['excluded']} | {reasons} | {review['kept']} |")
    return lines


def _figures_section(figures: dict[str, str]) -> list[str]:
    lines = []
    for key, filename in figures.items():
        lines += ["", f"![{FIGURE_TITLES[key]}]({filename})"]
    return ["", "## Figures", *lines] if lines else []


def log_report_to_wandb(report: dict[str, Any], root: Path, project: str, group: str, run_name: str) -> None:
    """The comparison table (every trained model's row), the lm-eval and GRPO tables when the run has them, the
    figures (reward.png among them) and the report files, in a run of the pipeline's group."""
    from spri_sft import tracking

    figures = report.get("figures") or {}
    sample = export_records_sample(root)
    with tracking.run(project=project, group=group, name=run_name, job_type="report") as run:
        tables = {"report/comparison": (COMPARISON_COLUMNS, comparison_rows(report))}
        if report.get("lm_eval"):
            tables["report/lm_eval"] = lm_eval_rows(report)
        if report.get("grpo"):
            tables["report/grpo"] = (GRPO_COLUMNS, grpo_rows(report))
        run.log(
            tables=tables,
            images={f"report/figures/{key}": (root / name, FIGURE_TITLES[key]) for key, name in figures.items()},
            pages={"report/records_sample": sample} if sample else None,
        )
        files = ["report.md", "report.json", *figures.values(), *([SAMPLE_FILE] if sample else [])]
        run.log_artifact(f"report-{run.id}", "report", {name: root / name for name in files})


SAMPLE_FILE = f"{REVIEW_DIR}/sample.html"  # the run's records sample, beside its review decisions


def export_records_sample(root: Path) -> Path | None:
    """The viewer's self-contained HTML sample of the run's records (`spri-sft view RUN --export`, stratified by mode
    and status), written to <run>/review/sample.html for the report's W&B run; None (and one line why) when it
    cannot be made: the report is logged without it rather than the finished run failing at its last step."""
    from spri_sft.review.export import export_html

    if not (root / "config.yaml").is_file():  # not a pipeline run's directory: no records to find from it
        return None
    try:
        return export_html(root, root / SAMPLE_FILE)
    except UserError as err:
        print(f"[spri-sft] report: no records sample in W&B ({err})", flush=True)
        return None


COMPARISON_COLUMNS = [
    "model", "records", "accepted_rate", "principles_unscored_rate", "response_unscored_rate", "train_loss", "eval_loss",
    "mc1", "mc1_stderr", "mc1_delta", "mc1_delta_low", "mc1_delta_high", "mc1_delta_excludes_zero",
    "mc1_delta_negligible",
    "mc2", "mc2_stderr", "mc2_delta", "mc2_delta_low", "mc2_delta_high", "mc2_delta_excludes_zero",
    "mc2_delta_negligible",
]  # fmt: skip


def comparison_rows(report: dict[str, Any]) -> list[list[Any]]:
    """The rows of the W&B comparison table: the base model, then each mode (Δ vs base with its interval)."""

    def truthfulqa_cells(scores: dict) -> list[Any]:
        cells = []
        for metric in ("mc1", "mc2"):
            interval = scores.get(f"{metric}_interval") or {}
            cells += [
                scores[metric], scores.get(f"{metric}_stderr"), scores.get(f"{metric}_delta"),
                interval.get("low"), interval.get("high"), interval.get("excludes_zero"),
                scores.get(f"{metric}_negligible"),
            ]  # fmt: skip
        return cells

    rows = [["base", None, None, None, None, None, None, *truthfulqa_cells(report["base"])]]
    for mode, row in report["modes"].items():
        gen, train = row["generation"] or {}, row["train"]
        rows.append(
            [mode, gen.get("records"), gen.get("accepted_rate"), gen.get("principles_unscored_rate"),
             gen.get("response_unscored_rate"), train["train_loss"], train["eval_loss"],
             *truthfulqa_cells(row["truthfulqa"])]
        )  # fmt: skip
    for job in AFTER_SFT:
        for model, row in (report.get(job) or {}).items():
            if not row["skipped"]:
                train = row["train"]
                scores = truthfulqa_cells(row["truthfulqa"])
                rows.append([model, None, None, None, None, train["train_loss"], train["eval_loss"], *scores])
    return rows


GRPO_COLUMNS = [
    "model", "mode", "skipped", "rows", "prompts", "dropped", "admit_unaccepted_principles", "steps", "train_loss",
    "reward_first", "reward_last", "critic_completions", "critic_scored", "critic_unscored", "critic_failed",
    "critic_calls", "critic_tokens",
]  # fmt: skip


def grpo_rows(report: dict[str, Any]) -> list[list[Any]]:
    """The rows of the W&B GRPO table: per mode, its prompts (kept of the SFT train rows, drops by reason), training,
    the critic's mean reward at the first and last logged step and its totals; a skipped mode with its reason."""
    rows = []
    for model, row in report["grpo"].items():
        prompts, critic = row["prompts"] or {}, row["critic"] or {}
        dropped = prompts.get("dropped")
        tokens = critic.get("prompt_tokens", 0) + critic.get("completion_tokens", 0) if critic else None
        rows.append(
            [model, row["mode"], row["skipped"], prompts.get("rows"), prompts.get("prompts"),
             None if dropped is None else dropped_words(Counter(dropped)), prompts.get("admit_unaccepted_principles"),
             row["train"]["steps"], row["train"]["train_loss"], row["reward"]["first"], row["reward"]["last"],
             *(critic.get(key) for key in ("completions", "scored", "unscored", "failed", "calls")), tokens]
        )  # fmt: skip
    return rows


def lm_eval_rows(report: dict[str, Any]) -> tuple[list[str], list[list[Any]]]:
    """The W&B table of the lm-eval tasks: per model, each task's main metric, its standard error and Δ vs base."""
    table = report["lm_eval"]
    columns = ["model"]
    for task in table["tasks"]:
        metric = table["metrics"][task]
        columns += [f"{task}/{metric}", f"{task}/{metric}_stderr", f"{task}/{metric}_delta"]
    rows = [
        [model, *(scores[task][key] for task in table["tasks"] for key in ("value", "stderr", "delta"))]
        for model, scores in table["rows"].items()
    ]
    return columns, rows


def _lm_eval_scores(config: PipelineConfig, root: Path, continued_models: list[str]) -> dict[str, Any] | None:
    """Per model (base, each mode, each model trained after its SFT and scored), each lm-eval task's main metric,
    standard error and Δ vs the base model."""
    tasks = config.evaluate.lm_eval_tasks
    if not tasks:
        return None
    found = {model: _read(root / "eval" / model / "lm_eval" / "results.json") for model in ("base", *config.modes)}
    for model in continued_models:  # after its mode's row; a skipped one has none
        if (root / "eval" / model / "lm_eval" / "results.json").is_file():
            found[model] = _read(root / "eval" / model / "lm_eval" / "results.json")
    found = {model: found[model] for model in sorted(found, key=lambda m: _row_order(m, config.modes))}
    base = (found["base"] or {}).get("tasks", {})
    rows: dict[str, dict[str, dict]] = {}
    for model, results in found.items():
        rows[model] = {}
        for task in tasks:
            score = (results or {}).get("tasks", {}).get(task) or {}
            before = base.get(task) if model != "base" else None
            known = before is not None and None not in (before.get("value"), score.get("value"))
            comparable = known and before["metric"] == score["metric"]
            rows[model][task] = {
                "metric": score.get("metric"),
                "value": score.get("value"),
                "stderr": score.get("stderr"),
                "delta": score["value"] - before["value"] if comparable else None,
            }
    first = next((results for results in found.values() if results), {})
    return {
        "tasks": list(tasks),
        "metrics": {
            task: next((r[task]["metric"] for r in rows.values() if r[task]["metric"]), None) for task in tasks
        },
        "versions": {task: first.get("versions", {}).get(task) for task in tasks if task in first.get("versions", {})},
        "n-shot": {task: first.get("n-shot", {}).get(task) for task in tasks if task in first.get("n-shot", {})},
        "lm_eval_version": first.get("lm_eval_version"),
        "rows": rows,
    }


def _row_order(model: str, modes: list[str]) -> tuple[int, int]:
    """base first, then each mode followed by its models trained after SFT, in AFTER_SFT's order."""
    if model == "base":
        return (-1, 0)
    mode, job = split_model(model)
    return (modes.index(mode), 0 if job is None else 1 + list(AFTER_SFT).index(job))


def _scores(
    results: dict | None, before: dict | None, questions: dict | None, before_questions: dict | None
) -> dict[str, Any]:
    """MC1/MC2 with their standard errors; with `before`, each Δ and its paired bootstrap interval."""
    scores: dict[str, Any] = {}
    for metric in ("mc1", "mc2"):
        value = results[metric] if results else None
        scores[metric] = value
        scores[f"{metric}_stderr"] = results.get(f"{metric}_stderr") if results else None
        scores[f"{metric}_delta"] = value - before[metric] if value is not None and before else None
        scores[f"{metric}_negligible"] = negligible(scores[f"{metric}_delta"])
    if before is not None:
        for metric, interval in _intervals(before_questions, questions).items():
            scores[f"{metric}_interval"] = interval
    return scores


def negligible(delta: float | None) -> bool | None:
    """Whether a Δ is below NEGLIGIBLE_DELTA in size (None when there is no Δ)."""
    return None if delta is None else abs(delta) < NEGLIGIBLE_DELTA


def _intervals(before: dict | None, after: dict | None) -> dict[str, dict | None]:
    """Per metric, the paired bootstrap interval of mean(after) − mean(before), or None when not paired.

    Paired means the same questions in the same order: two evaluations of other question sets
    (another limit, another file) have no per-question difference to resample.
    """
    if not before or not after or before["questions"] != after["questions"]:
        return {"mc1": None, "mc2": None}
    return {metric: paired_bootstrap(before[metric], after[metric]).as_dict() for metric in ("mc1", "mc2")}


def _comparison(first: str, second: str, per_question: dict[str, dict | None]) -> dict[str, Any]:
    intervals = _intervals(per_question[first], per_question[second])
    comparison: dict[str, Any] = {"first": first, "second": second}
    for metric, interval in intervals.items():
        comparison[f"{metric}_delta"] = interval["delta"] if interval else None
        comparison[f"{metric}_negligible"] = negligible(comparison[f"{metric}_delta"])
        comparison[f"{metric}_interval"] = interval
    return comparison


def _mode_comparisons(per_question: dict[str, dict | None]) -> list[dict[str, Any]]:
    """The Δ of the second model over the first, with intervals (report order), for every pair of evaluated modes'
    SFT models, and within a mode, every pair of its models (SFT, SFT+DPO, SFT+GRPO): what DPO or GRPO added to the
    SFT model. Not a mode's DPO against another mode's GRPO: with seven modes that would be 210 rows, not 42."""
    evaluated = [model for model, questions in per_question.items() if questions]

    def compared(first: str, second: str) -> bool:
        (mode, job), (other_mode, other_job) = split_model(first), split_model(second)
        return mode == other_mode or job is other_job is None

    pairs = [pair for pair in itertools.combinations(evaluated, 2) if compared(*pair)]
    return [_comparison(first, second, per_question) for first, second in pairs]


def _per_question(directory: Path) -> dict[str, list] | None:
    """The questions and per-question MC1/MC2 scores of one evaluation (per_question.jsonl), in data order."""
    path = directory / "per_question.jsonl"
    if not path.is_file():
        return None
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return {
        "questions": [row["question"] for row in rows],
        "mc1": [row["mc1_acc"] for row in rows],
        "mc2": [row["mc2_acc"] for row in rows],
    }


def load_paper_table4() -> dict[str, dict[str, float]]:
    """The SPRI paper's Table 4 (TruthfulQA %, most likely lm-eval's MC2): {column: {row: number}}."""
    text = resources.files("spri_sft").joinpath("data/paper_table4.csv").read_text(encoding="utf-8")
    rows = list(csv.DictReader(text.splitlines()))
    columns = [name for name in rows[0] if name != "row"]
    return {column: {row["row"]: float(row[column]) for row in rows} for column in columns}


def _paper_table4(column: str | None, base: dict | None, modes: dict[str, dict]) -> dict[str, Any] | None:
    """The paper's rows of `column` in its order, each beside this run's MC2 (in %) and the difference."""
    if column is None:
        return None
    published = load_paper_table4()[column]
    rows = []
    for paper_row, candidates in PAPER_ROWS.items():
        mode = next((m for m in candidates if m in modes), None)
        if paper_row == "off-the-shelf":
            ours = base["mc2"] if base else None
        else:
            ours = modes[mode]["truthfulqa"]["mc2"] if mode else None
        ours = None if ours is None else round(100 * ours, 2)
        paper = published[paper_row]
        rows.append(
            {
                "row": paper_row,
                "mode": "base" if paper_row == "off-the-shelf" else mode,
                "ours": ours,
                "paper": paper,
                "difference": None if ours is None else round(ours - paper, 2),
            }
        )
    spri = (modes.get("spri") or {}).get("generation") or {}
    calls = [spri.get("base_calls_per_record"), spri.get("critic_calls_per_record")]
    return {
        "column": column,
        "metric": "mc2",
        "rows": rows,
        "spri_calls_per_record": round(sum(calls), 2) if None not in calls else None,
    }


def _last_logged(trainer_state: dict | None, key: str) -> float | None:
    values = [entry[key] for entry in (trainer_state or {}).get("log_history", []) if key in entry]
    return values[-1] if values else None


def _logged_curve(trainer_state: dict | None, key: str) -> list[list[float]]:
    """[step, value] of every log_history entry that has `key` (the figures' loss curves)."""
    return [[entry["step"], entry[key]] for entry in (trainer_state or {}).get("log_history", []) if key in entry]


def _read(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _num(value: Any, digits: int = 4) -> str:
    if value is None:
        return MISSING
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def _delta_cell(scores: dict[str, Any], metric: str) -> str:
    """Δ, its [interval] when paired, and "negligible" when it is (NEGLIGIBLE_DELTA)."""
    delta, interval = scores[f"{metric}_delta"], scores.get(f"{metric}_interval")
    cell = _signed(delta) if delta is None or interval is None else f"{_signed(delta)} {_bounds(interval)}"
    return f"{cell} negligible" if scores.get(f"{metric}_negligible") else cell


def _bounds(interval: dict) -> str:
    """[low, high]; a bound that is not 0 but rounds to it keeps its digits, so "excludes 0" reads true."""

    def bound(value: float) -> str:
        return f"{value:+.1e}" if 0 < abs(value) < 5e-5 else _signed(value)

    return f"[{bound(interval['low'])}, {bound(interval['high'])}]"


def _signed(value: float | None, digits: int = 4) -> str:
    return MISSING if value is None else f"{value:+.{digits}f}"


def _pct(value: float | None) -> str:
    return MISSING if value is None else f"{100 * value:.0f}%"
