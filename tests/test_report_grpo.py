"""The report of a run with `grpo.enabled`: an "SFT+GRPO on <mode>" row beside each mode's SFT row, the GRPO section
(prompts kept, the critic's totals, mean reward first → last), reward.png, and the rows in W&B.

The run directories are written by hand in the layout the stages write: checkpoints/<mode>+grpo/prompts.json (the
pipeline's, always), trainer_state.json with log_history as TRL's GRPOTrainer logs it, reward.json (the critic's
totals, `spri-sft grpo`'s), eval/<mode>+grpo/ as every evaluation; so each test knows the answer. The pipeline's own
test runs the same report end to end.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from matplotlib.container import BarContainer
from test_report import BASE_MC1, table_row, write_evaluation, write_json, write_mode
from wandb_log import wandb_records, without_wandb_credentials

from spri_sft.config import from_dict
from spri_sft.pipeline.config import PipelineConfig
from spri_sft.pipeline.figures import reward_figure, truthfulqa_figure
from spri_sft.pipeline.report import (
    build_report,
    comparison_rows,
    grpo_rows,
    log_report_to_wandb,
    render_markdown,
    write_report,
)

KEPT = {"rows": 8, "prompts": 6, "dropped": {"principles_not_accepted": 2}, "admit_unaccepted_principles": False}
NONE_KEPT = {"rows": 8, "prompts": 0, "dropped": {"no_principles": 8}, "admit_unaccepted_principles": False}
CRITIC_TOTALS = {"completions": 48, "scored": 45, "unscored": 2, "failed": 1, "calls": 50,
                 "prompt_tokens": 12000, "completion_tokens": 3000}  # fmt: skip


def grpo_step(step: int, reward: float | None, std: float | None = 0.1, loss: float = 0.02) -> dict:
    """One log_history entry as TRL's GRPOTrainer writes it (only one reward function: the critic's, `principles`).
    A step whose every completion went unrewarded logs None (TRL: no valid value to average)."""
    return {"step": step, "loss": loss, "reward": reward, "reward_std": std, "rewards/principles/mean": reward,
            "rewards/principles/std": std, "frac_reward_zero_std": 0.0, "completions/mean_length": 40.0,
            "kl": 0.001, "learning_rate": 1e-5, "epoch": step / 5}  # fmt: skip


REWARDS = [(1, 0.30, 0.12), (2, 0.35, 0.10), (3, 0.42, 0.08), (4, 0.50, 0.05)]


def write_grpo(
    root: Path, mode: str, prompts: dict, log: list[dict] | None = None, mc2: float = 0.6, counted: dict | None = None
) -> None:
    """checkpoints/<mode>+grpo and eval/<mode>+grpo as the pipeline leaves them: prompts.json (the pipeline's
    selection) always; when a prompt was kept, the trained model's files, with the prompts its training `counted`
    in effective_config.json (by default the selection's), and its evaluation."""
    checkpoint = root / "checkpoints" / f"{mode}+grpo"
    write_json(checkpoint / "prompts.json", prompts)
    if not prompts["prompts"]:
        return
    counted = counted or {key: prompts[key] for key in ("rows", "prompts", "dropped")}
    admit = {"admit_unaccepted_principles": prompts["admit_unaccepted_principles"]}
    write_json(checkpoint / "effective_config.json", {"GRPOScriptArguments": admit, "prompts": {"train": counted}})
    log = log if log is not None else [grpo_step(step, mean, std, loss=0.01 * step) for step, mean, std in REWARDS]
    steps = max(entry["step"] for entry in log)
    summary = {"step": steps, "train_runtime": 60.0, "train_loss": 0.025, "epoch": 1.0}  # the Trainer's last entry
    write_json(checkpoint / "trainer_state.json", {"global_step": steps, "log_history": [*log, summary]})
    write_json(checkpoint / "all_results.json", {"train_loss": 0.025, "epoch": 1.0})
    write_json(checkpoint / "reward.json", CRITIC_TOTALS)
    write_evaluation(root / "eval" / f"{mode}+grpo", BASE_MC1, [mc2] * 40)


def write_dpo(root: Path, mode: str) -> None:
    """A mode's preference pairs (format's counts, in its dataset summary) and its DPO model, trained and scored."""
    summary = json.loads((root / "dataset" / mode / "summary.json").read_text())
    pairs = {"margin": 1.0, "records": 10, "pairs": 8, "splits": {"train": 6, "validation": 2},
             "no_pair": {"single_version": 2}, "gap": {"min": 1.0, "median": 3.0, "max": 3.0}}  # fmt: skip
    write_json(root / "dataset" / mode / "summary.json", {**summary, "preference": pairs})
    log = [{"step": 1, "loss": 0.69}, {"step": 2, "loss": 0.6}]
    write_json(root / "checkpoints" / f"{mode}+dpo" / "trainer_state.json", {"global_step": 2, "log_history": log})
    write_evaluation(root / "eval" / f"{mode}+dpo", BASE_MC1, [0.55] * 40)


def grpo_report(root: Path, modes: dict[str, dict], dpo: bool = False, lm_eval_tasks=(), **grpo_kwargs) -> dict:
    """A run of `modes` (each with its prompts.json) with GRPO after SFT (and DPO before it with `dpo`)."""
    write_evaluation(root / "eval" / "base", BASE_MC1, [0.5] * 40)
    for mode, prompts in modes.items():
        write_mode(root, mode, BASE_MC1, [0.55] * 40)
        if dpo:
            write_dpo(root, mode)
        write_grpo(root, mode, prompts, **grpo_kwargs)
    return report_as_on_disk(root, list(modes), dpo, lm_eval_tasks)


def report_as_on_disk(root: Path, modes: list[str], dpo: bool = False, lm_eval_tasks=()) -> dict:
    """The report of a run of `modes` with GRPO after SFT (and DPO with `dpo`), from the files in `root` now."""
    recipe = {"output_dir": str(root), "modes": modes, "grpo": {"enabled": True}, "dpo": {"enabled": dpo},
              "evaluate": {"lm_eval_tasks": list(lm_eval_tasks)}}  # fmt: skip
    config = from_dict(PipelineConfig, recipe)
    return build_report(config, root, "run", "student", {"file": "tqa.json", "source": "tqa.json"})


def write_lm_eval(root: Path, model: str, value: float) -> None:
    write_json(root / "eval" / model / "lm_eval" / "results.json", {
        "tasks": {"arc_easy": {"metric": "acc", "value": value, "stderr": 0.01}},
        "versions": {"arc_easy": 1.0}, "n-shot": {"arc_easy": 0}, "lm_eval_version": "0.4.9",
    })  # fmt: skip


def main_table(text: str) -> str:
    return text.split("\n## ")[0]


def section(text: str, title: str) -> str:
    return text[text.index(f"## {title}") :].split("\n## ")[0]


def grpo_section(text: str) -> str:
    return section(text, "GRPO after SFT")


def main_table_names(text: str) -> list[str]:
    return [line.split("|")[1].strip() for line in main_table(text).splitlines() if line.startswith("| SFT")]


# -- report.json ----------------------------------------------------------------------------------


def test_the_grpo_row_holds_its_prompts_training_and_the_critics_totals(tmp_path):
    row = grpo_report(tmp_path, {"spri": KEPT})["grpo"]["spri+grpo"]
    assert row["mode"] == "spri" and row["skipped"] is None
    assert row["prompts"] == KEPT
    assert row["train"] == {"steps": 4, "train_loss": 0.04, "eval_loss": None}  # GRPO's last logged loss
    assert row["critic"] == CRITIC_TOTALS


def test_the_grpo_reward_is_the_critics_mean_at_the_first_and_last_logged_step_and_its_curve(tmp_path):
    reward = grpo_report(tmp_path, {"spri": KEPT})["grpo"]["spri+grpo"]["reward"]
    assert (reward["function"], reward["first"], reward["last"], reward["steps"]) == ("principles", 0.30, 0.50, [1, 4])
    assert reward["curve"] == [[1, 0.30, 0.12], [2, 0.35, 0.10], [3, 0.42, 0.08], [4, 0.50, 0.05]]
    assert reward["terms"] == ["principles"]


def test_a_step_whose_completions_all_went_unrewarded_is_left_out_of_the_reward_curve(tmp_path):
    log = [grpo_step(1, 0.3), grpo_step(2, None, None), grpo_step(3, 0.4)]
    reward = grpo_report(tmp_path, {"spri": KEPT}, log=log)["grpo"]["spri+grpo"]["reward"]
    assert [step for step, _, _ in reward["curve"]] == [1, 3] and reward["last"] == 0.4


def test_the_grpo_model_is_scored_against_the_base_model_with_a_paired_interval(tmp_path):
    scores = grpo_report(tmp_path, {"spri": KEPT})["grpo"]["spri+grpo"]["truthfulqa"]
    assert scores["mc2"] == pytest.approx(0.6) and scores["mc2_delta"] == pytest.approx(0.1)
    assert scores["mc2_interval"]["low"] == pytest.approx(0.1) and scores["mc2_interval"]["excludes_zero"]


def test_a_mode_with_no_prompt_to_reward_is_skipped_with_its_drops(tmp_path):
    row = grpo_report(tmp_path, {"direct": NONE_KEPT})["grpo"]["direct+grpo"]
    assert row["skipped"] == "no prompts to reward" and row["prompts"]["dropped"] == {"no_principles": 8}
    assert row["train"]["steps"] is None and row["reward"]["curve"] == [] and row["critic"] is None


# -- report.md ------------------------------------------------------------------------------------


def test_the_main_table_has_an_sft_grpo_row_with_its_prompts_steps_and_scores_and_no_loss(tmp_path):
    text = render_markdown(grpo_report(tmp_path, {"spri": KEPT}))
    cells = table_row(main_table(text), "SFT+GRPO on spri")
    assert cells[1:7] == ["–"] * 6  # generation's columns: GRPO generates no records
    # prompts, over max_length, steps, loss (GRPO's is near 0 whatever it learned: report.json keeps it), val loss
    assert cells[7:12] == ["6 of 8 prompts", "–", "4", "–", "–"]
    assert "an SFT+GRPO row's rows are prompts, and its loss is left out" in text
    assert cells[14:] == ["0.6000", "+0.1000 [+0.1000, +0.1000]"]


def test_a_grpo_training_that_counted_rows_over_max_length_shows_its_count(tmp_path):
    grpo_report(tmp_path, {"spri": KEPT})
    splits = {"train": {"rows": 6, "over_max_length": 2, "lost_eos": 0, "dropped": 2}}
    write_json(tmp_path / "checkpoints/spri+grpo/lengths.json", {"max_length": 256, "policy": "drop", "splits": splits})
    config = from_dict(PipelineConfig, {"output_dir": str(tmp_path), "modes": ["spri"], "grpo": {"enabled": True}})
    report = build_report(config, tmp_path, "run", "student", {"file": "tqa.json", "source": "tqa.json"})
    assert report["grpo"]["spri+grpo"]["lengths"]["train"]["splits"] == splits
    assert table_row(main_table(render_markdown(report)), "SFT+GRPO on spri")[8] == "2 of 6 dropped (training)"


def test_the_grpo_section_gives_prompts_drops_critic_totals_and_the_reward_first_to_last(tmp_path):
    section = grpo_section(render_markdown(grpo_report(tmp_path, {"spri": KEPT})))
    assert table_row(section, "SFT+GRPO on spri")[1:] == [
        "6 of 8", "2 principles not accepted", "45 / 2 / 1 (of 48)", "50", "15,000", "0.3000 → 0.5000 (steps 1 → 4)"
    ]  # fmt: skip
    assert "scaled to [0, 1]" in section and "TRL leaves out of the step's mean" in section


def test_a_skipped_mode_reads_no_prompts_to_reward_in_both_tables(tmp_path):
    text = render_markdown(grpo_report(tmp_path, {"spri": KEPT, "direct": NONE_KEPT}))
    assert table_row(main_table(text), "SFT+GRPO on direct")[7:12] == ["no prompts to reward", "–", "–", "–", "–"]
    assert table_row(grpo_section(text), "SFT+GRPO on direct")[1:] == [
        "no prompts to reward: 0 of 8", "8 no principles", "–", "–", "–", "–"
    ]  # fmt: skip
    assert "| direct+grpo − base |" not in text  # nothing trained, nothing to compare


def test_admitted_unaccepted_principles_are_said_beside_the_prompts(tmp_path):
    admitted = {**KEPT, "prompts": 8, "dropped": {}, "admit_unaccepted_principles": True}
    section = grpo_section(render_markdown(grpo_report(tmp_path, {"spri": admitted})))
    assert table_row(section, "SFT+GRPO on spri")[1:3] == ["8 of 8 (unaccepted principles admitted)", "none dropped"]


def test_with_another_reward_term_the_section_also_gives_the_sum_grpo_optimized(tmp_path):
    log = [
        {**grpo_step(step, mean), "reward": mean - 0.1, "rewards/soft_overlong_punishment_reward/mean": -0.1}
        for step, mean in ((1, 0.3), (2, 0.5))
    ]
    report = grpo_report(tmp_path, {"spri": KEPT}, log=log)
    assert report["grpo"]["spri+grpo"]["reward"]["terms"] == ["principles", "soft_overlong_punishment_reward"]
    section = grpo_section(render_markdown(report))
    assert table_row(section, "SFT+GRPO on spri")[6] == "0.3000 → 0.5000 (steps 1 → 2)"  # the critic's own
    assert (
        "the sum GRPO optimized (TRL's `reward`): SFT+GRPO on spri (principles + soft_overlong_punishment_reward) "
        "0.2000 → 0.4000 (steps 1 → 2)."
    ) in section


def test_a_critics_reward_alone_adds_no_sum_line(tmp_path):
    assert "the sum GRPO optimized" not in render_markdown(grpo_report(tmp_path, {"spri": KEPT}))


# -- DPO and GRPO together: each mode, then its DPO model, then its GRPO model ---------------------


def test_dpo_and_grpo_rows_follow_their_modes_sft_row_in_that_order(tmp_path):
    report = grpo_report(tmp_path, {"spri": KEPT, "self-refine": KEPT}, dpo=True)
    text = render_markdown(report)
    assert main_table_names(text) == [
        "SFT on spri", "SFT+DPO on spri", "SFT+GRPO on spri",
        "SFT on self-refine", "SFT+DPO on self-refine", "SFT+GRPO on self-refine",
    ]  # fmt: skip
    assert table_row(main_table(text), "SFT+DPO on spri")[7] == "6 / 2 pairs"  # DPO's row is DPO's


def test_the_w_and_b_comparison_table_lists_dpo_then_grpo_models_after_the_modes(tmp_path):
    report = grpo_report(tmp_path, {"spri": KEPT, "direct": NONE_KEPT}, dpo=True)
    # direct+grpo: skipped, no row; direct+dpo: trained (its pairs written by write_dpo)
    assert [row[0] for row in comparison_rows(report)] == [
        "base", "spri", "direct", "spri+dpo", "direct+dpo", "spri+grpo"
    ]  # fmt: skip


def test_every_difference_of_a_grpo_model_is_listed_with_its_interval(tmp_path):
    text = render_markdown(grpo_report(tmp_path, {"spri": KEPT}, dpo=True))
    assert table_row(text, "spri+grpo − base")[4:7] == ["+0.1000", "[+0.1000, +0.1000]", "yes"]
    assert table_row(text, "spri+grpo − spri+dpo")[4:7] == ["+0.0500", "[+0.0500, +0.0500]", "yes"]


def test_lm_eval_rows_put_each_grpo_model_after_its_modes_dpo_model(tmp_path):
    for model, value in (("base", 0.5), ("spri", 0.52), ("spri+grpo", 0.55), ("spri+dpo", 0.53)):
        write_lm_eval(tmp_path, model, value)
    report = grpo_report(tmp_path, {"spri": KEPT}, dpo=True, lm_eval_tasks=["arc_easy"])
    rows = report["lm_eval"]["rows"]
    assert list(rows) == ["base", "spri", "spri+dpo", "spri+grpo"]
    assert rows["spri+grpo"]["arc_easy"]["delta"] == pytest.approx(0.05)
    lm_eval_table = section(render_markdown(report), "lm-evaluation-harness tasks")
    assert table_row(lm_eval_table, "SFT+GRPO on spri")[1] == "0.5500 ± 0.0100 (+0.0500)"


def test_the_stages_are_listed_mode_then_dpo_then_grpo(tmp_path):
    for stage in ("checkpoints/spri", "eval/spri", "checkpoints/spri+grpo", "eval/spri+grpo", "checkpoints/spri+dpo"):
        write_json(tmp_path / stage / "stage.json", {"status": "done", "wall_seconds": 1.0})
    report = grpo_report(tmp_path, {"spri": KEPT}, dpo=True)
    assert list(report["stages"]) == [
        "checkpoints/spri", "eval/spri", "checkpoints/spri+dpo", "checkpoints/spri+grpo", "eval/spri+grpo"
    ]  # fmt: skip


# -- figures and W&B --------------------------------------------------------------------------------


def test_reward_png_is_written_when_a_grpo_model_logged_a_reward_and_embedded(tmp_path):
    report = grpo_report(tmp_path, {"spri": KEPT})
    text = write_report(report, tmp_path)
    assert report["figures"]["reward"] == "reward.png"
    assert (tmp_path / "reward.png").read_bytes()[:4] == b"\x89PNG" and "](reward.png)" in text


def test_reward_png_is_removed_when_no_grpo_model_logged_a_reward(tmp_path):
    write_report(grpo_report(tmp_path / "run", {"spri": KEPT}), tmp_path / "run")
    for stage in ("checkpoints/spri+grpo", "eval/spri+grpo"):  # redone, as --redo removes them first
        shutil.rmtree(tmp_path / "run" / stage)
    report = grpo_report(tmp_path / "run", {"spri": NONE_KEPT})  # and this time spri kept no prompt
    text = write_report(report, tmp_path / "run")
    assert "reward" not in report["figures"] and not (tmp_path / "run" / "reward.png").exists()
    assert "](reward.png)" not in text


def test_the_truthfulqa_figure_draws_dpo_and_grpo_bars_hatched_apart_beside_the_sft_bar(tmp_path):
    figure = truthfulqa_figure(grpo_report(tmp_path, {"spri": KEPT}, dpo=True))
    (bars,) = [c for c in figure.axes[1].containers if isinstance(c, BarContainer)]
    assert [round(bar.get_height(), 6) for bar in bars] == [50.0, 55.0, 55.0, 60.0]  # MC2: base, SFT, +DPO, +GRPO
    assert [bar.get_hatch() for bar in bars] == [None, None, "//", "xx"]
    assert len({bar.get_facecolor() for bar in bars[1:]}) == 1  # the mode's colour
    assert [tick.get_text() for tick in figure.axes[3].get_xticklabels()] == [
        "base", "SFT on spri", "SFT+DPO on spri", "SFT+GRPO on spri"
    ]  # fmt: skip


def test_the_report_run_logs_reward_png_the_grpo_rows_and_the_grpo_table(tmp_path, monkeypatch):
    without_wandb_credentials(monkeypatch, tmp_path / "home", tmp_path / "wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    (tmp_path / "wandb").mkdir()
    root = tmp_path / "run"
    report = grpo_report(root, {"spri": KEPT, "direct": NONE_KEPT})
    write_report(report, root)
    log_report_to_wandb(report, root, "report-test", "group", "run-report")

    (run_dir,) = (tmp_path / "wandb" / "wandb").glob("offline-run-*")
    history = [
        item for r in wandb_records(run_dir) if r.WhichOneof("record_type") == "history" for item in r.history.item
    ]
    logged = {item.nested_key[0]: json.loads(item.value_json) for item in history if item.nested_key[1:] == ["_type"]}
    assert logged["report/figures/reward"] == "image-file"
    (comparison,) = run_dir.glob("files/media/table/report/comparison_*.table.json")
    assert [row[0] for row in json.loads(comparison.read_text())["data"]] == ["base", "spri", "direct", "spri+grpo"]
    (grpo_file,) = run_dir.glob("files/media/table/report/grpo_*.table.json")
    grpo = json.loads(grpo_file.read_text())
    rows = [dict(zip(grpo["columns"], row)) for row in grpo["data"]]
    assert [(row["model"], row["skipped"], row["prompts"], row["reward_last"]) for row in rows] == [
        ("spri+grpo", None, 6, 0.5), ("direct+grpo", "no prompts to reward", 0, None)
    ]  # fmt: skip
    assert rows[0]["critic_scored"] == 45 and rows[0]["critic_completions"] == 48


def test_modes_are_compared_by_their_sft_models_and_each_continued_model_within_its_own_mode(tmp_path):
    report = grpo_report(tmp_path, {"spri": KEPT, "direct": KEPT}, dpo=True)
    pairs = [(c["first"], c["second"]) for c in report["comparisons"]]
    assert pairs == [
        ("spri", "spri+dpo"), ("spri", "spri+grpo"), ("spri", "direct"), ("spri+dpo", "spri+grpo"),
        ("direct", "direct+dpo"), ("direct", "direct+grpo"), ("direct+dpo", "direct+grpo"),
    ]  # fmt: skip
    grpo_over_sft = report["comparisons"][1]["mc2_interval"]
    assert grpo_over_sft["delta"] == pytest.approx(0.6 - 0.55)  # write_grpo's MC2 over write_mode's, per question
    assert table_row(write_report(report, tmp_path), "spri+grpo − spri")[4] == "+0.0500"


# -- a model this run skipped, over an earlier run's training of it ----------------------------------
# An earlier run trained and scored spri+grpo (and spri+dpo); this run's selection kept no prompt (its records gave no
# training pair). The earlier files are still on disk: none of their numbers is this run's. Each number below is
# written by the earlier training only, so that finding it anywhere in the report means it was read.

EARLIER_GRPO_LOG = [grpo_step(1, 0.3141, 0.05, loss=0.0777), grpo_step(2, 0.2718, 0.05, loss=0.0777)]
EARLIER_MC2 = 0.6789  # eval/<model>'s MC2; the base's is 0.5, the SFT model's 0.55
EARLIER_LM_EVAL = 0.4321
EARLIER_NUMBERS = ["0.3141", "0.2718", "0.0777", "0.6789", "0.1789", "0.4321", "12000", "15,000", "45 / 2 / 1"]


def write_earlier_training(root: Path, model: str) -> None:
    """What an earlier run's training and evaluation of `model` left: its stages, BOS convention and lm-eval scores."""
    for stage in (f"checkpoints/{model}", f"eval/{model}", f"eval/{model}/lm_eval"):
        write_json(root / stage / "stage.json", {"status": "done", "wall_seconds": 1.0})
    results = root / "eval" / model / "results.json"
    write_json(results, {**json.loads(results.read_text()), "add_bos_token": True, "add_bos_token_setting": "auto"})
    write_lm_eval(root, model, EARLIER_LM_EVAL)


def grpo_skipped_over_an_earlier_training(root: Path) -> dict:
    for model, value in (("base", 0.5), ("spri", 0.52)):
        write_lm_eval(root, model, value)
    trained_before = {"rows": 8, "prompts": 5, "dropped": {"principles_not_accepted": 2, "prompt_too_long": 1}}
    grpo_report(root, {"spri": KEPT}, log=EARLIER_GRPO_LOG, mc2=EARLIER_MC2, counted=trained_before)
    write_earlier_training(root, "spri+grpo")
    write_json(root / "checkpoints" / "spri+grpo" / "prompts.json", NONE_KEPT)  # this run's selection: none kept
    return report_as_on_disk(root, ["spri"], lm_eval_tasks=["arc_easy"])


def test_a_skipped_grpo_model_has_none_of_an_earlier_trainings_numbers_in_report_json(tmp_path):
    report = grpo_skipped_over_an_earlier_training(tmp_path)
    row = report["grpo"]["spri+grpo"]
    assert row["skipped"] == "no prompts to reward" and row["prompts"] == NONE_KEPT  # this run's selection
    assert row["train"] == {"steps": None, "train_loss": None, "eval_loss": None}
    assert row["reward"]["first"] is None and row["reward"]["curve"] == [] and row["reward"]["terms"] == []
    assert row["critic"] is None and row["lengths"]["train"] is None
    assert (row["truthfulqa"]["mc1"], row["truthfulqa"]["mc2"], row["truthfulqa"]["mc2_delta"]) == (None, None, None)
    written = json.dumps(report)
    assert [number for number in EARLIER_NUMBERS if number in written] == []


def test_a_skipped_grpo_model_has_none_of_an_earlier_trainings_numbers_in_report_md(tmp_path):
    text = render_markdown(grpo_skipped_over_an_earlier_training(tmp_path))
    assert table_row(main_table(text), "SFT+GRPO on spri")[7:] == ["no prompts to reward", *["–"] * 8]
    assert table_row(grpo_section(text), "SFT+GRPO on spri")[3:] == ["–"] * 4
    assert "SFT+GRPO on spri" not in section(text, "lm-evaluation-harness tasks")
    assert "spri+grpo" not in text  # no difference, no stage
    assert [number for number in EARLIER_NUMBERS if number in text] == []


def test_a_skipped_grpo_model_is_in_no_comparison_stage_list_lm_eval_bos_or_w_and_b_table(tmp_path):
    report = grpo_skipped_over_an_earlier_training(tmp_path)
    assert [c for c in report["comparisons"] if "spri+grpo" in (c["first"], c["second"])] == []
    assert [stage for stage in report["stages"] if "spri+grpo" in stage] == []
    assert list(report["lm_eval"]["rows"]) == ["base", "spri"]
    assert "spri+grpo" not in report["truthfulqa"]["bos"]
    assert [row[0] for row in comparison_rows(report)] == ["base", "spri"]
    (grpo_row,) = grpo_rows(report)
    assert grpo_row[3:5] == [8, 0] and grpo_row[7:] == [None] * 10  # prompts of the selection; nothing trained


def test_a_skipped_grpo_model_is_left_out_of_the_figures(tmp_path):
    report = grpo_skipped_over_an_earlier_training(tmp_path)
    figure = truthfulqa_figure(report)
    assert [tick.get_text() for tick in figure.axes[3].get_xticklabels()] == ["base", "SFT on spri"]
    assert reward_figure(report) is None


def dpo_skipped_over_an_earlier_training(root: Path) -> dict:
    """spri+dpo trained and scored by an earlier run (losses 0.69, 0.6), then spri's dataset remade with no training
    pair (and no prompt for GRPO: only DPO's numbers are in the run)."""
    grpo_report(root, {"spri": NONE_KEPT}, dpo=True)
    write_json(root / "checkpoints" / "spri+dpo" / "all_results.json", {"eval_loss": 0.0777})
    write_evaluation(root / "eval" / "spri+dpo", BASE_MC1, [EARLIER_MC2] * 40)
    write_earlier_training(root, "spri+dpo")
    write_lm_eval(root, "base", 0.5)
    summary_path = root / "dataset" / "spri" / "summary.json"
    summary = json.loads(summary_path.read_text())
    no_train_pair = {**summary["preference"], "pairs": 0, "splits": {}, "no_pair": {"single_version": 10}}
    write_json(summary_path, {**summary, "preference": no_train_pair})
    return report_as_on_disk(root, ["spri"], dpo=True, lm_eval_tasks=["arc_easy"])


def test_a_skipped_dpo_model_has_none_of_an_earlier_trainings_numbers_in_report_json_or_md(tmp_path):
    report = dpo_skipped_over_an_earlier_training(tmp_path)
    row = report["dpo"]["spri+dpo"]
    assert row["skipped"] == "no pairs"
    assert row["train"] == {"steps": None, "train_loss": None, "eval_loss": None} and row["lengths"]["train"] is None
    assert (row["truthfulqa"]["mc1"], row["truthfulqa"]["mc2"], row["truthfulqa"]["mc2_delta"]) == (None, None, None)
    text = render_markdown(report)
    assert table_row(main_table(text), "SFT+DPO on spri")[7:] == ["no pairs", *["–"] * 8]
    written = json.dumps(report) + text
    assert [number for number in ("0.6900", "0.6000", *EARLIER_NUMBERS) if number in written] == []


def test_a_skipped_dpo_model_is_in_no_comparison_stage_list_lm_eval_table_or_figure(tmp_path):
    report = dpo_skipped_over_an_earlier_training(tmp_path)
    assert [c for c in report["comparisons"] if "spri+dpo" in (c["first"], c["second"])] == []
    assert [stage for stage in report["stages"] if "spri+dpo" in stage] == []
    assert "spri+dpo" not in report["lm_eval"]["rows"] and "spri+dpo" not in report["truthfulqa"]["bos"]
    assert "spri+dpo" not in [row[0] for row in comparison_rows(report)]
    ticks = [tick.get_text() for tick in truthfulqa_figure(report).axes[3].get_xticklabels()]
    assert "SFT+DPO on spri" not in ticks


# -- the prompts of a trained GRPO model: as its training counted them --------------------------------

TRAINING_COUNT = {"rows": 8, "prompts": 5, "dropped": {"principles_not_accepted": 2, "prompt_too_long": 1}}


def test_a_trained_grpo_models_prompts_are_its_trainings_count_with_the_prompts_too_long(tmp_path):
    report = grpo_report(tmp_path, {"spri": KEPT}, counted=TRAINING_COUNT)
    assert report["grpo"]["spri+grpo"]["prompts"] == {**TRAINING_COUNT, "admit_unaccepted_principles": False}
    text = render_markdown(report)
    assert table_row(main_table(text), "SFT+GRPO on spri")[7] == "5 of 8 prompts"
    assert table_row(grpo_section(text), "SFT+GRPO on spri")[1:3] == [
        "5 of 8", "2 principles not accepted, 1 prompt too long"
    ]  # fmt: skip
    assert "vllm_max_model_length (prompt too long)" in grpo_section(text)


def test_the_w_and_b_grpo_table_gives_the_trainings_prompt_count(tmp_path):
    (row,) = grpo_rows(grpo_report(tmp_path, {"spri": KEPT}, counted=TRAINING_COUNT))
    assert row[3:6] == [8, 5, "2 principles not accepted, 1 prompt too long"]


def test_a_grpo_model_not_trained_yet_shows_the_pipelines_selection(tmp_path):
    grpo_report(tmp_path, {"spri": KEPT}, counted=TRAINING_COUNT)
    (tmp_path / "checkpoints" / "spri+grpo" / "effective_config.json").unlink()  # the training has not started
    report = report_as_on_disk(tmp_path, ["spri"])
    assert report["grpo"]["spri+grpo"]["prompts"] == KEPT
    assert table_row(main_table(render_markdown(report)), "SFT+GRPO on spri")[7] == "6 of 8 prompts"
