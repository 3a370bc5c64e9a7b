"""The report's figures, drawn from a constructed report: what each panel shows is the report's numbers."""

from __future__ import annotations

import pytest
from matplotlib.container import BarContainer, ErrorbarContainer

from spri_sft.pipeline.figures import critic_scores_figure, loss_figure, rounds_figure, truthfulqa_figure, write_figures


def interval(delta: float, low: float, high: float) -> dict:
    return {"delta": delta, "low": low, "high": high, "excludes_zero": low > 0 or high < 0, "questions": 817}


def make_report(evaluated: bool = True) -> dict:
    def scores(mc1, mc2, with_delta=True):
        if not evaluated:
            return {"mc1": None, "mc2": None}
        row = {"mc1": mc1, "mc2": mc2, "mc1_stderr": 0.015, "mc2_stderr": 0.012}
        if with_delta:
            row |= {"mc1_delta": mc1 - 0.25, "mc2_delta": mc2 - 0.40,
                    "mc1_interval": interval(mc1 - 0.25, mc1 - 0.27, mc1 - 0.23),
                    "mc2_interval": interval(mc2 - 0.40, mc2 - 0.42, mc2 - 0.38)}  # fmt: skip
        return row

    return {
        "truthfulqa": {"questions": 817 if evaluated else None},
        "loop": {"threshold": 4, "max_rounds": 4},
        "base": scores(0.25, 0.40, with_delta=False),
        "modes": {
            "spri": {
                "generation": {"records": 10, "critic_calls_per_record": 2.5},
                "truthfulqa": scores(0.30, 0.41),
                "histograms": {
                    "final_score": {"principles": {"4": 3, "5": 7}, "response": {"3": 2, "4": 3, "5": 5}},
                    "rounds": {"principles": {"1": 8, "2": 2}, "response": {"1": 5, "2": 3, "4": 2}},
                },
                "loss_curve": {"train": [[1, 2.0], [2, 1.6], [3, 1.4]], "validation": [[3, 1.5]]},
            },  # fmt: skip
            "self-refine": {  # scored by its own feedback: no critic calls, but scores
                "generation": {"records": 10, "critic_calls_per_record": 0.0},
                "truthfulqa": scores(0.27, 0.40),
                "histograms": {"final_score": {"response": {"4": 10}}, "rounds": {"response": {"2": 10}}},
                "loss_curve": {"train": [[1, 2.2]], "validation": []},
            },
            "direct": {
                "generation": {"records": 10, "critic_calls_per_record": 0.0},
                "truthfulqa": scores(0.26, 0.39),
                "histograms": {"final_score": {"response": {"None": 10}}, "rounds": {"response": {"1": 10}}},
                "loss_curve": {"train": [[1, 2.1], [2, 1.9], [3, 1.8]], "validation": []},
            },
        },
    }


def test_truthfulqa_bars_are_each_rows_score_in_percent_with_its_standard_error():
    figure = truthfulqa_figure(make_report())
    mc1, mc2 = figure.axes[0], figure.axes[1]
    (bars,) = [c for c in mc1.containers if isinstance(c, BarContainer)]
    assert [round(bar.get_height(), 6) for bar in bars] == [25.0, 30.0, 27.0, 26.0]
    assert [tick.get_text() for tick in figure.axes[2].get_xticklabels()] == [
        "base", "SFT on spri", "SFT on self-refine", "SFT on direct"
    ]  # fmt: skip
    (errors,) = [c for c in mc2.containers if isinstance(c, ErrorbarContainer)]
    (segments,) = errors.lines[2]
    assert [seg[1][1] - seg[0][1] for seg in segments.get_segments()] == pytest.approx([2.4] * 4)  # ± 1.2 points
    base_line = [line for line in mc2.lines if line.get_linestyle() == "--"]
    assert base_line[0].get_ydata()[0] == pytest.approx(40.0)


def test_truthfulqa_deltas_are_drawn_with_their_bootstrap_intervals():
    figure = truthfulqa_figure(make_report())
    delta_mc2 = figure.axes[3]
    spri, _, _ = [c for c in delta_mc2.containers if isinstance(c, ErrorbarContainer)]
    (segments,) = spri.lines[2]
    (low, high) = segments.get_segments()[0][:, 1]
    assert (low, high) == pytest.approx((-1.0, 3.0))  # Δ +1 point, interval [−1, +3]
    assert spri.lines[0].get_ydata()[0] == pytest.approx(1.0)
    # an interval that includes 0 is drawn hollow, one that excludes it filled
    assert spri.lines[0].get_markerfacecolor() == "white"
    mc1_spri = [c for c in figure.axes[2].containers if isinstance(c, ErrorbarContainer)][0]
    assert mc1_spri.lines[0].get_markerfacecolor() != "white"


def test_without_evaluation_there_is_no_truthfulqa_figure():
    assert truthfulqa_figure(make_report(evaluated=False)) is None


def test_critic_panels_show_each_modes_share_per_score_and_leave_out_modes_nothing_scored():
    figure = critic_scores_figure(make_report())
    principles, response = figure.axes
    assert [tick.get_text() for tick in response.get_xticklabels()] == ["1", "2", "3", "4", "5"]
    heights = [round(bar.get_height(), 6) for bar in response.patches]
    assert heights == [0.0, 0.0, 20.0, 30.0, 50.0] + [0.0, 0.0, 0.0, 100.0, 0.0]  # spri, self-refine; not direct
    assert [t.get_text() for t in figure.legends[0].get_texts()] == [
        "spri (10 records)", "self-refine (10 records, scored by its own feedback)"
    ]  # fmt: skip
    assert "Stage I" in principles.get_title() and "Stage II" in response.get_title()


def test_rounds_run_from_one_to_the_round_limit():
    _, response = rounds_figure(make_report()).axes
    assert [tick.get_text() for tick in response.get_xticklabels()] == ["1", "2", "3", "4"]
    assert [round(bar.get_height(), 6) for bar in response.patches] == [50.0, 30.0, 0.0, 20.0] + [0.0, 100.0, 0.0, 0.0]


def test_loss_curves_are_each_modes_logged_losses():
    train, validation = loss_figure(make_report()).axes
    assert [list(line.get_ydata()) for line in train.lines] == [[2.0, 1.6, 1.4], [2.2], [2.1, 1.9, 1.8]]
    assert [list(line.get_ydata()) for line in validation.lines] == [[1.5]]
    assert validation.get_xlabel() == "training step" and "loss" in train.get_ylabel()


def test_write_figures_writes_pngs_and_removes_a_figure_with_nothing_left_to_draw(tmp_path):
    assert write_figures(make_report(), tmp_path) == {
        "truthfulqa": "truthfulqa.png", "critic_scores": "critic_scores.png", "rounds": "rounds.png", "loss": "loss.png"
    }  # fmt: skip
    assert all((tmp_path / name).read_bytes()[:4] == b"\x89PNG" for name in ("truthfulqa.png", "loss.png"))
    assert "truthfulqa" not in write_figures(make_report(evaluated=False), tmp_path)
    assert not (tmp_path / "truthfulqa.png").exists()


def test_redrawing_the_same_report_leaves_the_files_untouched(tmp_path):
    write_figures(make_report(), tmp_path)
    before = {path.name: path.stat().st_mtime_ns for path in tmp_path.iterdir()}
    write_figures(make_report(), tmp_path)
    assert {path.name: path.stat().st_mtime_ns for path in tmp_path.iterdir()} == before
