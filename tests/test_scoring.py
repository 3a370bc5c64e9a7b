"""Reading a score and feedback out of critic replies of varied styles."""

import pytest

from spri_sft.generate.scoring import parse_feedback, parse_score


@pytest.mark.parametrize(
    "reply, score",
    [
        ("Feedback: The principles cover the key risks. [RESULT] 4", 4),
        ("Feedback: Thorough.\n[RESULT] 5\n", 5),
        ("[RESULT]: 3", 3),
        ("[RESULT] (2)", 2),
        ("[result] 1", 1),
        ("[RESULT] 4.0", 4),
        ("Score: 4/5", 4),
        ("**Score:** 3 out of 5", 3),
        ("Rating: 2", 2),
        ("Overall, the score is 5.", 5),
        ("score=2", 2),
        ("4", 4),
        ("  **5**  ", 5),
    ],
)
def test_score_is_read_from_common_critic_styles(reply, score):
    assert parse_score(reply) == score


@pytest.mark.parametrize(
    "reply",
    [
        "The principles look good overall.",
        "Here are 5 reasons the response works.",
        "[RESULT] 7",
        "[RESULT] 0",
        "[RESULT] 4.5",
        "Score: 8/10",
        "",
    ],
)
def test_reply_without_a_score_in_range_has_none(reply):
    assert parse_score(reply) is None


def test_last_score_wins_over_restated_rubric():
    reply = "Score 1: useless. Score 5: excellent.\nFeedback: Mostly relevant. [RESULT] 3"
    assert parse_score(reply) == 3


def test_result_marker_beats_a_labelled_score_earlier_in_the_text():
    assert parse_score("A score of 2 would be unfair here. [RESULT] 4") == 4


def test_feedback_drops_the_label_and_the_score():
    assert parse_feedback("Feedback: Misses the safety angle. [RESULT] 2") == "Misses the safety angle."


def test_feedback_without_marker_is_the_whole_reply():
    assert parse_feedback("Too vague to act on.") == "Too vague to act on."
