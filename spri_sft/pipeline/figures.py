"""The report's figures: PNGs beside report.md, drawn from the report (report.json) alone.

- truthfulqa.png: MC1 and MC2 per row (the base model, each mode's adapter and, after DPO or GRPO,
  those models beside it in the mode's colour, each training hatched its own way: DPO //, GRPO xx) with
  ± one standard error and the base model's line; below, each row's Δ vs the base model with its paired
  bootstrap 95% interval.
- critic_scores.png: the critic's final score per stage (principles, response), as the share of
  each mode's records (self-refine: its own feedback's score).
- rounds.png: critique rounds per stage, as the share of each mode's records.
- loss.png: training and validation loss per mode over the training steps.
- reward.png: GRPO's mean reward (the critic's score against the prompt's principles, in [0, 1]) per
  logged step, per mode in its colour, with a band of ± its standard deviation over the step's completions.

A figure with nothing to draw (evaluation skipped, no critic in any mode, no GRPO reward logged) is not
written, and an older run's copy of it is removed, so report.md never embeds a picture of other numbers.
The figures are drawn on matplotlib `Figure` objects (no pyplot, no display): headless by design.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from spri_sft.pipeline.config import AFTER_SFT, continued

BASE_COLOR = "#7f7f7f"
MODE_COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22"]
DPI = 120
# How truthfulqa.png tells a model trained after SFT from its mode's SFT bar (same colour): one hatch per training.
HATCHES = {"dpo": "//", "grpo": "xx"}


def write_figures(report: dict[str, Any], directory: Path) -> dict[str, str]:
    """Draw every figure the report has data for into `directory`; return {figure key: file name}."""
    written = {}
    for key, draw in FIGURES.items():
        path = Path(directory) / f"{key}.png"
        figure = draw(report)
        if figure is None:
            path.unlink(missing_ok=True)
            continue
        png = io.BytesIO()
        figure.savefig(png, format="png", dpi=DPI, bbox_inches="tight")
        if not path.is_file() or path.read_bytes() != png.getvalue():  # a rerun leaves unchanged figures untouched
            path.write_bytes(png.getvalue())
        written[key] = path.name
    return written


def mode_colors(report: dict[str, Any]) -> dict[str, str]:
    """One colour per mode, the same in every figure (recipe order)."""
    return {mode: MODE_COLORS[i % len(MODE_COLORS)] for i, mode in enumerate(report["modes"])}


# -- TruthfulQA ------------------------------------------------------------------------------

METRIC_LABELS = {"mc1": "MC1 accuracy (%)", "mc2": "MC2 score (%)"}


def truthfulqa_figure(report: dict[str, Any]) -> Figure | None:
    base = report["base"]
    if base.get("mc1") is None:
        return None
    colors = mode_colors(report)
    rows = [("base", base, BASE_COLOR)]
    trainings: list[str | None] = [None]  # per row, the training after SFT that made it
    for mode, row in report["modes"].items():
        if row["truthfulqa"]["mc1"] is not None:
            rows.append((f"SFT on {mode}", row["truthfulqa"], colors[mode]))
            trainings.append(None)
        for job, label in AFTER_SFT.items():
            tuned = (report.get(job) or {}).get(continued(mode, job))
            if tuned is not None and tuned["truthfulqa"]["mc1"] is not None:
                rows.append((f"{label} on {mode}", tuned["truthfulqa"], colors[mode]))
                trainings.append(job)
    questions = report["truthfulqa"].get("questions")
    width = max(7.0, 1.5 + 1.1 * len(rows)) * 2
    figure = Figure(figsize=(width, 8.5), layout="constrained")
    axes = figure.subplots(2, 2, height_ratios=[3, 2], sharex="col")
    positions = list(range(len(rows)))
    labels = [label for label, _, _ in rows]
    for column, metric in enumerate(("mc1", "mc2")):
        top, bottom = axes[0][column], axes[1][column]
        values = [100 * scores[metric] for _, scores, _ in rows]
        errors = [100 * (scores.get(f"{metric}_stderr") or 0.0) for _, scores, _ in rows]
        bars = top.bar(positions, values, yerr=errors, capsize=5, color=[c for _, _, c in rows], alpha=0.9)
        for bar, job in zip(bars, trainings):
            if job:  # beside its SFT bar, in the same colour
                bar.set_hatch(HATCHES[job])
                bar.set_edgecolor("white")
        top.axhline(100 * base[metric], color=BASE_COLOR, linestyle="--", linewidth=1.2, label="base model")
        # Inside the bar's foot: clear of the error bars and the base line; on a hatched bar, on a plain patch of its
        # colour, so that its number reads as well as a plain bar's.
        for x, value, (_, _, color), job in zip(positions, values, rows, trainings):
            plain = {"boxstyle": "square,pad=0.15", "facecolor": color, "alpha": 0.9, "edgecolor": "none"}
            top.annotate(f"{value:.1f}", (x, 0), xytext=(0, 4), textcoords="offset points", ha="center", va="bottom",
                         fontsize=10, color="white", fontweight="bold", bbox=plain if job else None)  # fmt: skip
        top.set_ylim(0, max(v + e for v, e in zip(values, errors)) * 1.12)
        top.set_ylabel(METRIC_LABELS[metric])
        asked = f" ({questions} questions)" if questions else ""
        top.set_title(f"TruthfulQA {metric.upper()}{asked}, ± 1 s.e.")

        # Δ vs base with the paired bootstrap interval; the base column is left empty (Δ = 0 by definition).
        bottom.axhline(0, color=BASE_COLOR, linewidth=1.0)
        for x, (_label, scores, color) in enumerate(rows[1:], start=1):
            interval = scores.get(f"{metric}_interval")
            delta = scores.get(f"{metric}_delta")
            if delta is None:
                continue
            excludes_zero = bool(interval and interval["excludes_zero"])
            yerr = None
            if interval:
                # max(0, ·): a percentile interval need not contain the mean (rounding, very skewed Δs)
                below = max(0.0, interval["delta"] - interval["low"])
                above = max(0.0, interval["high"] - interval["delta"])
                yerr = [[100 * below], [100 * above]]
            bottom.errorbar(
                [x], [100 * delta], yerr=yerr, fmt="o", color=color, capsize=6, markersize=7,
                markerfacecolor=color if excludes_zero else "white",
            )  # fmt: skip
        bottom.set_ylabel(f"Δ{metric.upper()} vs base (percentage points)")
        bottom.set_title(f"Δ{metric.upper()} vs base, paired bootstrap 95% interval over questions")
        crowded = len(rows) > 4
        bottom.set_xticks(positions, labels, rotation=20 if crowded else 0, ha="right" if crowded else "center")
        bottom.set_xlim(-0.6, len(rows) - 0.4)
    legend = [
        Line2D([], [], color=BASE_COLOR, linestyle="--", label="base model"),
        Line2D([], [], color="black", marker="o", linestyle="none", label="Δ whose 95% interval excludes 0"),
        Line2D([], [], color="black", marker="o", markerfacecolor="white", linestyle="none",
               label="Δ whose 95% interval includes 0"),
    ]  # fmt: skip
    for job in [job for job in AFTER_SFT if job in trainings]:
        hatched = Patch(facecolor=BASE_COLOR, edgecolor="white", hatch=HATCHES[job], label=AFTER_SFT[job])
        legend.append(hatched)
    # Handles tall enough to show a hatch.
    figure.legend(handles=legend, loc="outside upper center", ncol=len(legend), fontsize=10, frameon=False,
                  handlelength=2.5, handleheight=1.4)  # fmt: skip
    return figure


# -- generation: the critic's final scores and the critique rounds ---------------------------

STAGE_TITLES = {"principles": "Stage I (principles)", "response": "Stage II (response)"}


def critic_scores_figure(report: dict[str, Any]) -> Figure | None:
    loop = report.get("loop") or {}
    return _histogram_figure(
        report,
        "final_score",
        xlabel="the critic's score of the final version (1–5)",
        title="final critic score",
        categories=[str(score) for score in range(1, 6)],
        threshold=loop.get("threshold"),
    )


def rounds_figure(report: dict[str, Any]) -> Figure | None:
    loop = report.get("loop") or {}
    return _histogram_figure(
        report,
        "rounds",
        xlabel="critique rounds (until a score reached the threshold, or the round limit)",
        title="critique rounds",
        categories=[str(rounds) for rounds in range(1, (loop.get("max_rounds") or 1) + 1)],
    )


def _histogram_figure(
    report: dict[str, Any], kind: str, xlabel: str, title: str, categories: list[str], threshold: int | None = None
) -> Figure | None:
    """One panel per stage; per mode, the share of its records in each category (grouped bars).

    Modes nothing scored (direct, oracle, the one-call modes) have nothing to show and are left
    out; self-refine, scored by the base model's own feedback, is shown.
    """
    colors = mode_colors(report)
    by_stage: dict[str, dict[str, dict[str, int]]] = {}
    for mode, row in report["modes"].items():
        if not _scored(row):
            continue
        for stage, counts in ((row.get("histograms") or {}).get(kind) or {}).items():
            if counts:
                by_stage.setdefault(stage, {})[mode] = counts
    stages = [stage for stage in STAGE_TITLES if stage in by_stage] + sorted(set(by_stage) - set(STAGE_TITLES))
    if not stages:
        return None
    shown = [m for m in report["modes"] if any(m in by_stage[stage] for stage in stages)]
    figure = Figure(figsize=(max(6.0, 4 + 0.5 * len(shown)) * len(stages), 4.8), layout="constrained")
    axes = figure.subplots(1, len(stages), squeeze=False, sharey=True)[0]
    for ax, stage in zip(axes, stages):
        modes = by_stage[stage]
        observed = {c for counts in modes.values() for c in counts}
        extra = sorted(observed - set(categories), key=_category_order)  # "None" (unscored), rounds past the limit
        shown_categories = categories + extra
        width = 0.8 / len(modes)
        for i, (mode, counts) in enumerate(modes.items()):
            total = sum(counts.values())
            offsets = [c + (i - (len(modes) - 1) / 2) * width for c in range(len(shown_categories))]
            shares = [100 * counts.get(category, 0) / total for category in shown_categories]
            ax.bar(offsets, shares, width=width * 0.95, color=colors[mode])
        ax.set_xticks(range(len(shown_categories)), ["unscored" if c == "None" else c for c in shown_categories])
        if threshold is not None and str(threshold) in shown_categories:
            edge = shown_categories.index(str(threshold)) - 0.5
            ax.axvline(edge, color=BASE_COLOR, linestyle="--", linewidth=1.2)
            ax.annotate(f"accepted: ≥ {threshold} →", (edge, 100), xytext=(4, 0), textcoords="offset points",
                        fontsize=9, color=BASE_COLOR, va="top")  # fmt: skip
        ax.set_xlabel(xlabel)
        ax.set_ylim(0, 105)
        ax.set_title(f"{STAGE_TITLES.get(stage, stage)} — {title}")
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("share of the mode's records (%)")
    records = {mode: (report["modes"][mode].get("generation") or {}).get("records") for mode in shown}

    def label(mode: str) -> str:
        critic = (report["modes"][mode].get("generation") or {}).get("critic_calls_per_record")
        return f"{mode} ({records[mode]} records" + ("" if critic else ", scored by its own feedback") + ")"

    handles = [Patch(color=colors[mode], label=label(mode)) for mode in shown]
    figure.legend(handles=handles, loc="outside upper center", ncol=min(len(handles), 5), frameon=False, fontsize=10)
    return figure


def _scored(row: dict[str, Any]) -> bool:
    """Whether a mode's versions were scored: by a critic, or by the base model's own feedback (self-refine)."""
    if (row.get("generation") or {}).get("critic_calls_per_record"):
        return True
    finals = ((row.get("histograms") or {}).get("final_score") or {}).values()
    return any(score != "None" for counts in finals for score in counts)


def _category_order(value: str) -> tuple[int, float]:
    try:
        return (0, float(value))
    except ValueError:
        return (1, 0.0)  # "None" (unscored) after the numbers


# -- training --------------------------------------------------------------------------------


def loss_figure(report: dict[str, Any]) -> Figure | None:
    colors = mode_colors(report)
    curves = {mode: row.get("loss_curve") or {} for mode, row in report["modes"].items()}
    if not any(curve.get("train") or curve.get("validation") for curve in curves.values()):
        return None
    figure = Figure(figsize=(13, 4.8), layout="constrained")
    axes = figure.subplots(1, 2, sharey=True, sharex=True)
    for ax, split, title in ((axes[0], "train", "Training loss"), (axes[1], "validation", "Validation loss")):
        for mode, curve in curves.items():
            points = curve.get(split) or []
            if points:
                steps, values = zip(*points)
                ax.plot(steps, values, color=colors[mode], marker="o" if split == "validation" else None,
                        markersize=4, linewidth=1.6)  # fmt: skip
        ax.set_xlabel("training step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(title)
        ax.grid(alpha=0.3)
        if not ax.lines:
            ax.text(0.5, 0.5, "not logged", transform=ax.transAxes, ha="center", va="center", color=BASE_COLOR)
    axes[0].set_ylabel("loss (mean cross-entropy per token)")
    drawn = [mode for mode, curve in curves.items() if curve.get("train") or curve.get("validation")]
    handles = [Line2D([], [], color=colors[mode], linewidth=2, label=mode) for mode in drawn]
    figure.legend(handles=handles, loc="outside upper center", ncol=min(len(handles), 7), frameon=False, fontsize=10)
    return figure


def reward_figure(report: dict[str, Any]) -> Figure | None:
    """GRPO's mean reward per logged step, one line per mode that logged one, with ± its standard deviation over
    the step's completions as a band (clipped to the reward's range, [0, 1])."""
    colors = mode_colors(report)
    curves = {
        row["mode"]: row["reward"]["curve"]
        for row in (report.get("grpo") or {}).values()
        if (row.get("reward") or {}).get("curve")
    }
    if not curves:
        return None
    figure = Figure(figsize=(9, 4.8), layout="constrained")
    ax = figure.subplots()
    for mode, curve in curves.items():
        steps = [step for step, _, _ in curve]
        means = [mean for _, mean, _ in curve]
        spreads = [std or 0.0 for _, _, std in curve]
        ax.fill_between(steps, [max(0.0, m - s) for m, s in zip(means, spreads)],
                        [min(1.0, m + s) for m, s in zip(means, spreads)], color=colors[mode], alpha=0.18,
                        linewidth=0)  # fmt: skip
        ax.plot(steps, means, color=colors[mode], marker="o" if len(steps) < 30 else None, markersize=4, linewidth=1.8)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("GRPO step")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps are whole: no 1.2, 1.4 ticks on a short run
    ax.set_ylabel("mean reward of the step's completions")
    ax.set_title("GRPO after SFT: the critic's score against each prompt's principles, scaled to [0, 1]")
    ax.grid(alpha=0.3)
    handles = [
        Line2D([], [], color=colors[mode], linewidth=2, label=f"{AFTER_SFT['grpo']} on {mode}") for mode in curves
    ]
    handles.append(Patch(color=BASE_COLOR, alpha=0.18, label="± 1 standard deviation over the step's completions"))
    figure.legend(handles=handles, loc="outside upper center", ncol=min(len(handles), 4), frameon=False, fontsize=10)
    return figure


FIGURES: dict[str, Callable[[dict[str, Any]], Figure | None]] = {
    "truthfulqa": truthfulqa_figure,
    "critic_scores": critic_scores_figure,
    "rounds": rounds_figure,
    "loss": loss_figure,
    "reward": reward_figure,
}
