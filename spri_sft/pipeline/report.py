"""report.md / report.json of a pipeline run, read back from what each stage wrote.

Every number comes from a stage's own output file: generate/<mode>/summary.json (records,
statuses, rounds, calls and tokens), dataset/<mode>/summary.json (rows per split),
checkpoints/<mode>/all_results.json and trainer_state.json (losses, steps), eval/*/results.json
(TruthfulQA), and each stage.json (wall time). A value a stage did not produce (no validation
split, evaluation skipped) is shown as "–", never filled in.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from spri_sft.pipeline.config import PipelineConfig

MISSING = "–"


def generation_row(summary: dict) -> dict[str, Any]:
    """Counts, acceptance, mean rounds per stage, and calls and tokens per record of one generation summary."""
    records = summary["records"] or 0
    status = summary.get("status", {})

    def per_record(value: float) -> float | None:
        return round(value / records, 2) if records else None

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
        "base_calls_per_record": per_record(calls["base"]),
        "critic_calls_per_record": per_record(calls["critic"]),
        "tokens_per_record": per_record(tokens),
    }


def build_report(
    config: PipelineConfig, root: Path, name: str, student: str, truthfulqa: dict | None
) -> dict[str, Any]:
    evaluated = truthfulqa is not None  # else eval/ may hold an earlier run's scores: not this run's
    base_eval = _read(root / "eval" / "base" / "results.json") if evaluated else None
    modes = {}
    for mode in config.modes:
        generation = _read(config.generation_dir(mode) / "summary.json")
        dataset = _read(root / "dataset" / mode / "summary.json")
        results = _read(root / "checkpoints" / mode / "all_results.json")
        state = _read(root / "checkpoints" / mode / "trainer_state.json")
        scores = _read(root / "eval" / mode / "results.json") if evaluated else None
        modes[mode] = {
            "generation": generation_row(generation) if generation else None,
            "dataset": {"rows": dataset["rows"], "splits": dataset["splits"], "dropped": dataset["dropped"]} if dataset else None,
            "train": {
                "steps": state.get("global_step") if state else None,
                # The last logged loss: all_results' train_loss averages only the steps of the last
                # (resumed) session, and is 0.0 for a rerun that had nothing left to train.
                "train_loss": _last_logged(state, "loss"),
                "eval_loss": results.get("eval_loss") if results else None,
            },
            "truthfulqa": _scores(scores, base_eval),
        }
    stages = {}
    order = [f"{kind}/{mode}" for kind in ("generate", "dataset") for mode in config.modes] + ["eval/base"]
    order += [f"{kind}/{mode}" for mode in config.modes for kind in ("checkpoints", "eval")]
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
        "truthfulqa": {
            "source": None if truthfulqa is None else truthfulqa["source"],
            "questions": base_eval["n"] if base_eval else None,
            "prompt": base_eval["mode"] if base_eval else None,
            "skipped": truthfulqa is None,
        },
        "base": _scores(base_eval, None),
        "modes": modes,
        "stages": stages,
    }


def write_report(report: dict[str, Any], root: Path) -> str:
    """Write report.json and report.md; return the markdown (also printed at the end of a run)."""
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
            "skipped (no data: give evaluate.truthfulqa_file)"
            if tqa["skipped"]
            else f"{tqa['questions']} questions from `{tqa['source']}`, {tqa['prompt']} prompt (lm-eval's scoring)"
        ),
        "",
        "| model | records | accepted | rounds (principles / response) | calls per record (base / critic) "
        "| tokens per record | train / val rows | steps | final train loss | val loss | MC1 | ΔMC1 | MC2 | ΔMC2 |",
        "| --- | " + " | ".join("---:" for _ in range(13)) + " |",
    ]
    base = report["base"]
    lines.append(
        f"| base (before) | {MISSING} | {MISSING} | {MISSING} | {MISSING} | {MISSING} | {MISSING} | {MISSING} "
        f"| {MISSING} | {MISSING} | {_num(base['mc1'])} | {MISSING} | {_num(base['mc2'])} | {MISSING} |"
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
                    f"{_num(gen.get('base_calls_per_record'), 2)} / {_num(gen.get('critic_calls_per_record'), 2)}",
                    _num(gen.get("tokens_per_record"), 0),
                    f"{_num(splits.get('train'))} / {_num(splits.get('validation'))}",
                    _num(train["steps"]),
                    _num(train["train_loss"]),
                    _num(train["eval_loss"]),
                    _num(scores["mc1"]),
                    _signed(scores["mc1_delta"]),
                    _num(scores["mc2"]),
                    _signed(scores["mc2_delta"]),
                ]
            )
            + " |"
        )
    lines += ["", "| stage | status | wall time (s) |", "| --- | --- | ---: |"]
    lines += [f"| {stage} | {s['status']} | {_num(s['wall_seconds'], 1)} |" for stage, s in report["stages"].items()]
    lines += [
        "",
        "Rounds: mean critique rounds per record for each stage (principles, response); calls and tokens count "
        "every model call of generation (prompt + completion tokens). Final train loss: the last logged one; "
        "val loss: of the saved adapter (the best checkpoint when the recipe keeps it). Δ: after minus before. "
        "Records with status max_rounds reached the round limit without passing the critic's threshold.",
        "",
    ]
    return "\n".join(lines)


def log_report_to_wandb(report: dict[str, Any], root: Path, project: str, group: str, run_name: str) -> None:
    """The comparison table and the report files, in a run of the pipeline's group."""
    import wandb

    run = wandb.init(project=project, group=group, name=run_name, job_type="report", reinit="create_new")
    columns = ["model", "records", "accepted_rate", "train_loss", "eval_loss", "mc1", "mc1_delta", "mc2", "mc2_delta"]
    table = wandb.Table(columns=columns)
    table.add_data("base", None, None, None, None, report["base"]["mc1"], None, report["base"]["mc2"], None)
    for mode, row in report["modes"].items():
        gen, train, scores = row["generation"] or {}, row["train"], row["truthfulqa"]
        table.add_data(
            mode, gen.get("records"), gen.get("accepted_rate"), train["train_loss"], train["eval_loss"],
            scores["mc1"], scores["mc1_delta"], scores["mc2"], scores["mc2_delta"],
        )  # fmt: skip
    run.log({"report/comparison": table})
    artifact = wandb.Artifact(f"report-{run.id}", type="report")
    artifact.add_file(str(root / "report.md"))
    artifact.add_file(str(root / "report.json"))
    run.log_artifact(artifact)
    run.finish()


def _scores(results: dict | None, before: dict | None) -> dict[str, float | None]:
    mc1 = results["mc1"] if results else None
    mc2 = results["mc2"] if results else None
    return {
        "mc1": mc1,
        "mc2": mc2,
        "mc1_delta": mc1 - before["mc1"] if mc1 is not None and before else None,
        "mc2_delta": mc2 - before["mc2"] if mc2 is not None and before else None,
    }


def _last_logged(trainer_state: dict | None, key: str) -> float | None:
    values = [entry[key] for entry in (trainer_state or {}).get("log_history", []) if key in entry]
    return values[-1] if values else None


def _read(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _num(value: Any, digits: int = 4) -> str:
    if value is None:
        return MISSING
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def _signed(value: float | None) -> str:
    return MISSING if value is None else f"{value:+.4f}"


def _pct(value: float | None) -> str:
    return MISSING if value is None else f"{100 * value:.0f}%"
