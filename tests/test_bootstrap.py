"""The paired bootstrap of a Δ between two models scored on the same questions, on scores with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from spri_sft.evaluate.bootstrap import paired_bootstrap


def test_identical_scores_give_the_interval_zero_to_zero():
    scores = np.random.default_rng(1).random(817)
    interval = paired_bootstrap(scores, scores)
    assert (interval.delta, interval.low, interval.high) == (0.0, 0.0, 0.0)
    assert not interval.excludes_zero


def test_a_constant_shift_gives_an_interval_at_the_shift():
    before = np.random.default_rng(2).random(500) * 0.5
    interval = paired_bootstrap(before, before + 0.25)
    assert interval.delta == pytest.approx(0.25)
    assert interval.low == pytest.approx(0.25) and interval.high == pytest.approx(0.25)
    assert interval.excludes_zero


def test_two_questions_differing_by_0_and_1_give_the_interval_zero_to_one():
    # Resampling two questions gives a mean Δ of 0, 0.5 or 1 with probabilities 1/4, 1/2, 1/4, so
    # the 2.5% and 97.5% quantiles are exactly 0 and 1.
    interval = paired_bootstrap([0.0, 0.0], [0.0, 1.0])
    assert (interval.delta, interval.low, interval.high) == (0.5, 0.0, 1.0)
    assert not interval.excludes_zero


def test_many_questions_give_the_normal_approximation_interval():
    rng = np.random.default_rng(3)
    before = rng.integers(0, 2, 800).astype(float)
    after = np.where(rng.random(800) < 0.15, 1 - before, before)  # 15% of the answers flip
    differences = after - before
    half_width = 1.96 * differences.std() / np.sqrt(differences.size)
    interval = paired_bootstrap(before, after)
    assert interval.low == pytest.approx(differences.mean() - half_width, abs=0.15 * half_width)
    assert interval.high == pytest.approx(differences.mean() + half_width, abs=0.15 * half_width)


def test_pairing_removes_the_spread_shared_by_both_models():
    # Question difficulty varies a lot, but the second model is better by 0.02 on every question but
    # a few: paired, the interval is narrow and excludes 0 (unpaired it would not).
    before = np.random.default_rng(4).random(817)
    after = before + 0.02
    after[:20] -= 0.05
    assert paired_bootstrap(before, after).excludes_zero


def test_the_same_seed_gives_the_same_interval_and_another_seed_another():
    rng = np.random.default_rng(5)
    before, after = rng.random(300), rng.random(300)
    assert paired_bootstrap(before, after, seed=7) == paired_bootstrap(before, after, seed=7)
    assert paired_bootstrap(before, after, seed=7) != paired_bootstrap(before, after, seed=8)


def test_the_record_says_how_it_was_computed():
    record = paired_bootstrap([0.0, 1.0, 1.0], [1.0, 1.0, 1.0], resamples=1000).as_dict()
    assert record["resamples"] == 1000 and record["questions"] == 3 and record["level"] == 0.95
    assert record["excludes_zero"] is False  # a resample of the two unchanged questions has Δ 0


def test_scores_of_different_question_sets_are_refused():
    with pytest.raises(ValueError, match="equal-length"):
        paired_bootstrap([0.0, 1.0], [1.0])
