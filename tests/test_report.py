"""report.md / report.json from a run directory's stage outputs: every Δ with its paired interval, Table 4, figures.

The run directories here are written by hand in the layout the stages write (summary.json,
trainer_state.json, results.json, per_question.jsonl), so each test controls the per-question
scores and knows the answer; test_pipeline.py checks the same report on a real run.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import get_args

import pytest
from wandb_log import wandb_records, without_wandb_credentials

from spri_sft.config import from_dict, read_recipe
from spri_sft.errors import UserError
from spri_sft.pipeline.config import PaperColumn, PipelineConfig
from spri_sft.pipeline.report import (
    PAPER_ROWS,
    build_report,
    load_paper_table4,
    log_report_to_wandb,
    render_markdown,
    write_report,
)

REPO = Path(__file__).resolve().parents[1]
QUESTIONS = [f"Question {i}?" for i in range(40)]


def write_json(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def write_evaluation(directory: Path, mc1: list[float], mc2: list[float], questions=QUESTIONS) -> None:
    n = len(mc1)
    write_json(directory / "results.json", {"mc1": sum(mc1) / n, "mc1_stderr": 0.05, "mc2": sum(mc2) / n,
                                            "mc2_stderr": 0.04, "n": n, "mode": "plain"})  # fmt: skip
    rows = [
        {"index": i, "question": q, "mc1_acc": a, "mc2_acc": b} for i, (q, a, b) in enumerate(zip(questions, mc1, mc2))
    ]
    (directory / "per_question.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))


def write_mode(root: Path, mode: str, mc1: list[float], mc2: list[float]) -> None:
    write_json(root / "generate" / mode / "summary.json", {
        "records": 10, "status": {"accepted": 9, "max_rounds": 1},
        "final_score": {"response": {"3": 1, "4": 4, "5": 5}}, "rounds_histogram": {"response": {"1": 7, "2": 3}},
        "usage": {"base:m": {"calls": 13, "prompt_tokens": 100, "completion_tokens": 50},
                  "critic:m": {"calls": 13, "prompt_tokens": 100, "completion_tokens": 50}},
    })  # fmt: skip
    splits = {"train": 8, "validation": 2}
    write_json(root / "dataset" / mode / "summary.json", {"rows": 10, "splits": splits, "dropped": {}})
    log = [{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.5}, {"step": 2, "eval_loss": 1.7}]
    write_json(root / "checkpoints" / mode / "trainer_state.json", {"global_step": 2, "log_history": log})
    write_json(root / "checkpoints" / mode / "all_results.json", {"eval_loss": 1.7})
    write_evaluation(root / "eval" / mode, mc1, mc2)


def report_of(root: Path, modes: dict[str, tuple[list, list]], base=None, paper_column=None) -> dict:
    recipe = {"output_dir": str(root), "modes": list(modes), "report": {"paper_column": paper_column}}
    config = from_dict(PipelineConfig, recipe)
    base_mc1, base_mc2 = base or ([0.0] * 20 + [1.0] * 20, [0.5] * 40)
    write_evaluation(root / "eval" / "base", base_mc1, base_mc2)
    for mode, (mc1, mc2) in modes.items():
        write_mode(root, mode, mc1, mc2)
    return build_report(config, root, "run", "student", {"file": "tqa.json", "source": "tqa.json"})


def table_row(text: str, first_cell: str) -> list[str]:
    (line,) = [line for line in text.splitlines() if line.startswith(f"| {first_cell} |")]
    return [cell.strip() for cell in line.strip("|").split("|")]


BASE_MC1 = [0.0] * 20 + [1.0] * 20


# -- paired intervals of every Δ ------------------------------------------------------------


def test_a_mode_scoring_exactly_as_the_base_model_has_the_interval_zero_to_zero(tmp_path):
    report = report_of(tmp_path, {"spri": (BASE_MC1, [0.5] * 40)})
    interval = report["modes"]["spri"]["truthfulqa"]["mc1_interval"]
    assert (interval["delta"], interval["low"], interval["high"], interval["excludes_zero"]) == (0.0, 0.0, 0.0, False)
    text = write_report(report, tmp_path)
    assert table_row(text, "spri − base")[1:4] == ["+0.0000", "[+0.0000, +0.0000]", "negligible"]
    assert table_row(text, "SFT on spri")[13] == "+0.0000 [+0.0000, +0.0000] negligible"


def test_a_mode_better_on_every_question_has_an_interval_that_excludes_zero(tmp_path):
    report = report_of(tmp_path, {"spri": (BASE_MC1, [0.6] * 40)})
    interval = report["modes"]["spri"]["truthfulqa"]["mc2_interval"]
    assert interval["low"] == pytest.approx(0.1) and interval["high"] == pytest.approx(0.1)
    assert table_row(write_report(report, tmp_path), "spri − base")[4:7] == ["+0.1000", "[+0.1000, +0.1000]", "yes"]


def test_every_pair_of_modes_is_compared_over_the_same_questions(tmp_path):
    flipped = [1.0] * 20 + [1.0] * 20  # direct: right on every question spri gets wrong
    modes = {"spri": (BASE_MC1, [0.5] * 40), "direct": (flipped, [0.5] * 40), "self-refine": (BASE_MC1, [0.5] * 40)}
    report = report_of(tmp_path, modes)
    pairs = [(c["first"], c["second"]) for c in report["comparisons"]]
    assert pairs == [("spri", "direct"), ("spri", "self-refine"), ("direct", "self-refine")]
    spri_to_direct = report["comparisons"][0]["mc1_interval"]
    assert spri_to_direct["delta"] == 0.5 and spri_to_direct["excludes_zero"]
    assert table_row(write_report(report, tmp_path), "direct − spri")[1] == "+0.5000"


@pytest.mark.parametrize(
    "after_mc2, verdict, negligible",
    [(0.500006, "negligible", True), (0.506, "yes", False)],
    ids=["2-step-adapter-6e-06", "0.6-points"],
)
def test_a_delta_below_half_a_point_is_negligible_whatever_its_interval(tmp_path, after_mc2, verdict, negligible):
    report = report_of(tmp_path, {"spri": (BASE_MC1, [after_mc2] * 40)})  # every question moves alike: excludes 0
    scores = report["modes"]["spri"]["truthfulqa"]
    assert scores["mc2_interval"]["excludes_zero"] and scores["mc2_negligible"] is negligible
    assert report["negligible_delta"] == 0.005
    text = write_report(report, tmp_path)
    assert table_row(text, "spri − base")[6] == verdict
    assert table_row(text, "SFT on spri")[15].endswith(" negligible") is negligible
    assert "“negligible” where |Δ| < 0.005 (0.5 points) whatever the interval" in text


def test_a_negligible_difference_between_two_modes_is_marked_too(tmp_path):
    modes = {"spri": (BASE_MC1, [0.6] * 40), "direct": (BASE_MC1, [0.6001] * 40)}
    report = report_of(tmp_path, modes)
    (comparison,) = report["comparisons"]
    assert comparison["mc2_interval"]["excludes_zero"] and comparison["mc2_negligible"]
    assert table_row(write_report(report, tmp_path), "direct − spri")[4:7] == [
        "+0.0001",
        "[+0.0001, +0.0001]",
        "negligible",
    ]


def test_evaluations_of_other_questions_get_no_interval(tmp_path):
    report = report_of(tmp_path, {"spri": (BASE_MC1, [0.5] * 40)})
    write_evaluation(tmp_path / "eval" / "spri", BASE_MC1, [0.5] * 40, questions=[q + " (v2)" for q in QUESTIONS])
    config = from_dict(PipelineConfig, {"output_dir": str(tmp_path), "modes": ["spri"]})
    report = build_report(config, tmp_path, "run", "student", {"file": "tqa.json", "source": "tqa.json"})
    scores = report["modes"]["spri"]["truthfulqa"]
    assert scores["mc1_delta"] == 0.0 and scores["mc1_interval"] is None
    assert table_row(write_report(report, tmp_path), "spri − base")[1:] == ["–"] * 6


# -- the paper's Table 4 ---------------------------------------------------------------------


def test_the_paper_columns_a_recipe_may_name_are_the_columns_of_the_shipped_table():
    table = load_paper_table4()
    assert list(table) == list(get_args(PaperColumn))
    assert all(list(column) == list(PAPER_ROWS) for column in table.values())
    assert table["L3.1-8B Dolly"]["spri"] == 55.92 and table["Gemma-2-9B-it Mix"]["off-the-shelf"] == 60.47


def test_table_4_lists_the_papers_rows_in_its_order_beside_this_runs_mc2(tmp_path):
    # constitution is this package's self-align; the untouched student is off-the-shelf.
    modes = {"spri": (BASE_MC1, [0.6] * 40), "constitution": (BASE_MC1, [0.55] * 40)}
    report = report_of(tmp_path, modes, paper_column="L3.1-8B Dolly")
    rows = {row["row"]: row for row in report["paper_table4"]["rows"]}
    assert list(rows) == [
        "oracle", "direct", "self-instruct", "self-align", "self-refine", "seed-principles", "spri", "off-the-shelf"
    ]  # fmt: skip
    assert rows["spri"] == {"row": "spri", "mode": "spri", "ours": 60.0, "paper": 55.92, "difference": 4.08}
    assert rows["self-align"]["mode"] == "constitution" and rows["self-align"]["ours"] == 55.0
    base = {"row": "off-the-shelf", "mode": "base", "ours": 50.0, "paper": 45.03, "difference": 4.97}
    assert rows["off-the-shelf"] == base
    assert rows["oracle"]["ours"] is None
    text = write_report(report, tmp_path)
    assert "## The paper's Table 4, column L3.1-8B Dolly" in text
    assert table_row(text, "spri")[1:] == ["spri", "60.00", "55.92", "+4.08"]
    assert table_row(text, "oracle")[1:] == ["not run", "–", "41.62", "–"]
    # the stage summaries count 13 base and 13 critic calls for 10 records
    assert report["paper_table4"]["spri_calls_per_record"] == 2.6
    assert "SPRI model calls per record (base + critic): 2.60; the paper's: 5.0" in text


def test_a_paper_column_that_is_not_in_table_4_is_refused_when_the_recipe_is_read():
    with pytest.raises(UserError, match="report.paper_column"):
        from_dict(PipelineConfig, {"report": {"paper_column": "L3.1-8B Alpaca"}})


PAPER_RECIPES = sorted(
    [*(REPO / "recipes/paper/dolly").glob("*.yaml"), *(REPO / "recipes/paper/mixinstruct").glob("*.yaml")]
)


@pytest.mark.parametrize("recipe", PAPER_RECIPES, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_each_paper_recipe_names_the_column_of_its_student_and_prompt_set(recipe):
    config = from_dict(PipelineConfig, read_recipe(recipe))  # the student with its shared setup (include:)
    students = {
        "llama-3.1-8b": "L3.1-8B", "llama-3.1-8b-instruct": "L3.1-8B-Inst",
        "mistral-7b-v0.3": "Mistral-7B-v0.3", "mistral-7b-instruct-v0.3": "Mistral-7B-v0.3-Inst",
        "gemma-2-9b": "Gemma-2-9B", "gemma-2-9b-it": "Gemma-2-9B-it",
    }  # fmt: skip
    prompt_sets = {"dolly": "Dolly", "mixinstruct": "Mix"}
    assert config.report.paper_column == f"{students[recipe.stem]} {prompt_sets[recipe.parent.name]}"


# -- figures in report.md and in W&B -----------------------------------------------------------


def test_report_md_embeds_the_figures_written_beside_it(tmp_path):
    report = report_of(tmp_path, {"spri": (BASE_MC1, [0.6] * 40)})
    text = write_report(report, tmp_path)
    assert report["figures"] == {k: f"{k}.png" for k in ("truthfulqa", "critic_scores", "rounds", "loss")}
    for filename in report["figures"].values():
        assert f"]({filename})" in text
        assert (tmp_path / filename).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((tmp_path / "report.json").read_text())["figures"] == report["figures"]


def test_a_report_without_evaluation_drops_the_old_truthfulqa_figure(tmp_path):
    write_report(report_of(tmp_path, {"spri": (BASE_MC1, [0.6] * 40)}), tmp_path)
    config = from_dict(PipelineConfig, {"output_dir": str(tmp_path), "modes": ["spri"]})
    report = build_report(config, tmp_path, "run", "student", None)  # evaluation skipped this time
    text = write_report(report, tmp_path)
    assert "truthfulqa" not in report["figures"] and not (tmp_path / "truthfulqa.png").exists()
    assert "truthfulqa.png" not in text and "## Is a difference real?" not in text


def test_the_report_run_logs_the_figures_and_the_comparison_table(tmp_path, monkeypatch):
    without_wandb_credentials(monkeypatch, tmp_path / "home", tmp_path / "wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    (tmp_path / "wandb").mkdir()
    root = tmp_path / "run"
    report = report_of(root, {"spri": (BASE_MC1, [0.6] * 40)})
    write_report(report, root)
    log_report_to_wandb(report, root, "report-test", "group", "run-report")

    (run_dir,) = (tmp_path / "wandb" / "wandb").glob("offline-run-*")
    records = wandb_records(run_dir)
    history = [item for r in records if r.WhichOneof("record_type") == "history" for item in r.history.item]
    logged: dict[str, dict] = {}  # each logged media's fields arrive as items keyed [name, field]
    for item in history:
        if len(item.nested_key) == 2:
            logged.setdefault(item.nested_key[0], {})[item.nested_key[1]] = json.loads(item.value_json)
    assert {key for key in logged if key.startswith("report/figures/")} == {
        f"report/figures/{k}" for k in ("truthfulqa", "critic_scores", "rounds", "loss")
    }
    assert logged["report/figures/truthfulqa"]["_type"] == "image-file"
    assert logged["report/comparison"]["_type"] == "table-file" and logged["report/comparison"]["nrows"] == 2
    (table_file,) = run_dir.glob("files/media/table/report/comparison_*.table.json")
    table = json.loads(table_file.read_text())
    spri = dict(zip(table["columns"], table["data"][1]))
    assert spri["model"] == "spri" and spri["mc2_delta_low"] == pytest.approx(0.1) and spri["mc2_delta_excludes_zero"]


# -- rows over training's max_length, and TruthfulQA's BOS convention --------------------------


def per_split(train: int, validation: int = 0) -> dict[str, int]:
    return {"train": train, "validation": validation}


def format_lengths(policy: str, over: dict, lost: dict, rows=None) -> dict:
    """dataset/<mode>/summary.json's `lengths`, as `spri-sft format` writes it when it measured the rows."""
    rows = rows or {"train": 8, "validation": 2}
    return {"checked": True, "max_length": 1024, "tokenizer": "student", "template": "t", "approximate": False,
            "policy": policy, "rows": rows, "over_max_length": over, "lost_eos": lost,
            "prompt_too_long": {name: 0 for name in rows},
            "dropped": over if policy == "drop" else {name: 0 for name in rows}, "longest": 2000}  # fmt: skip


def training_lengths(policy: str, over: dict, lost: dict, rows=None) -> dict:
    """checkpoints/<mode>/lengths.json, as `spri-sft train` writes it."""
    rows = rows or {"train": 8, "validation": 2}
    splits = {
        name: {"rows": n, "over_max_length": over[name], "lost_eos": lost[name], "no_trained_token": 0,
               "dropped": over[name] if policy == "drop" else 0}
        for name, n in rows.items()
    }  # fmt: skip
    return {"max_length": 1024, "policy": policy, "packing": False, "splits": splits}


def report_with_lengths(root: Path, dataset: dict | None = None, trained: dict | None = None) -> tuple[dict, str]:
    """A one-mode run whose dataset summary and training say what they did with rows over max_length."""
    report_of(root, {"spri": (BASE_MC1, [0.6] * 40)})
    summary = json.loads((root / "dataset/spri/summary.json").read_text())
    if dataset is not None:
        write_json(root / "dataset/spri/summary.json", {**summary, "lengths": dataset})
    if trained is not None:
        write_json(root / "checkpoints/spri/lengths.json", trained)
    config = from_dict(PipelineConfig, {"output_dir": str(root), "modes": ["spri"]})
    report = build_report(config, root, "run", "student", {"file": "tqa.json", "source": "tqa.json"})
    return report, render_markdown(report)


def over_max_length(text: str, model: str = "SFT on spri") -> str:
    header = next(line for line in text.splitlines() if line.startswith("| model | records |"))
    columns = [cell.strip() for cell in header.strip("|").split("|")]
    return table_row(text, model)[columns.index("over max_length")]


def test_the_report_shows_the_rows_format_dropped_over_max_length(tmp_path):
    report, text = report_with_lengths(tmp_path, format_lengths("drop", per_split(2, 1), per_split(2, 1)))
    assert over_max_length(text) == "3 of 10 dropped"
    assert report["modes"]["spri"]["lengths"]["format"]["over_max_length"] == {"train": 2, "validation": 1}
    assert "Over max_length (1,024 tokens): the train + validation rows longer than training's max_length" in text


def test_the_report_shows_kept_rows_with_how_many_lost_their_eos(tmp_path):
    _, text = report_with_lengths(tmp_path, format_lengths("keep", per_split(3), per_split(2)))
    assert over_max_length(text) == "3 of 10 kept, 2 lost EOS"


def test_training_adds_its_count_where_it_still_found_rows_over_max_length(tmp_path):
    dataset = format_lengths("keep", per_split(3), per_split(2))
    trained = training_lengths("drop", per_split(3), per_split(2))
    report, text = report_with_lengths(tmp_path, dataset, trained)
    assert over_max_length(text) == "3 of 10 kept, 2 lost EOS; training: 3 of 10 dropped"
    assert report["modes"]["spri"]["lengths"]["train"] == trained


def test_training_that_found_none_left_adds_nothing_to_formats_count(tmp_path):
    dataset = format_lengths("drop", per_split(1), per_split(1))
    trained = training_lengths("drop", per_split(0), per_split(0), rows=per_split(7, 2))
    _, text = report_with_lengths(tmp_path, dataset, trained)
    assert over_max_length(text) == "1 of 10 dropped"


def test_a_dataset_made_without_counting_shows_trainings_count_alone(tmp_path):
    trained = training_lengths("keep", per_split(4, 1), per_split(4))
    _, text = report_with_lengths(tmp_path, {"checked": False, "why": "not measured"}, trained)
    assert over_max_length(text) == "5 of 10 kept, 4 lost EOS (training)"


def test_rows_nobody_counted_say_so(tmp_path):
    _, text = report_with_lengths(tmp_path)
    assert over_max_length(text) == "not counted"


def write_bos(root: Path, model: str, add_bos_token: bool, setting: str | bool) -> None:
    """results.json as evaluation writes it: the setting "auto", or the bool a true/false setting parsed to."""
    results = json.loads((root / "eval" / model / "results.json").read_text())
    write_json(root / "eval" / model / "results.json", {**results, "add_bos_token": add_bos_token,
                                                        "add_bos_token_setting": setting})  # fmt: skip


def test_the_report_says_which_bos_convention_truthfulqa_was_scored_with_beside_the_paper_column(tmp_path):
    report_of(tmp_path, {"spri": (BASE_MC1, [0.6] * 40)})
    for model in ("base", "spri"):
        write_bos(tmp_path, model, False, False)
    recipe = {"output_dir": str(tmp_path), "modes": ["spri"], "report": {"paper_column": "L3.1-8B Dolly"}}
    config = from_dict(PipelineConfig, recipe)
    text = render_markdown(build_report(config, tmp_path, "run", "student", {"file": "t", "source": "t"}))

    assert "- TruthfulQA BOS: without a BOS token (evaluate.add_bos_token: false)" in text.splitlines()
    paper = text[text.index("## The paper's Table 4") :]
    assert "This run's TruthfulQA was scored without a BOS token (evaluate.add_bos_token: false)" in paper


def test_models_scored_with_different_bos_conventions_are_named_each(tmp_path):
    report_of(tmp_path, {"spri": (BASE_MC1, [0.6] * 40)})
    write_bos(tmp_path, "base", True, "auto")
    write_bos(tmp_path, "spri", False, False)
    config = from_dict(PipelineConfig, {"output_dir": str(tmp_path), "modes": ["spri"]})
    text = render_markdown(build_report(config, tmp_path, "run", "student", {"file": "t", "source": "t"}))

    assert (
        "- TruthfulQA BOS: base (before) with a BOS token before each question (evaluate.add_bos_token: auto, the "
        "tokenizer's default); SFT on spri without a BOS token (evaluate.add_bos_token: false)"
    ) in text.splitlines()


def test_results_that_name_no_bos_convention_add_no_line(tmp_path):
    _, text = report_with_lengths(tmp_path)
    assert "TruthfulQA BOS" not in text
